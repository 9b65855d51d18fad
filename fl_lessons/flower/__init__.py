"""The course's hospitals on Flower: the same Client and FedAvg, as separate processes.

Taught in notebook 07 (from simulation to deployment). Needs the Flower extra:
``pip install -e ".[flower]"``; the core course (``import fl_lessons``) never imports this.

- :mod:`fl_lessons.flower.hospital_data` - one hospital's own data, and nothing else.
- :mod:`fl_lessons.flower.common` - the run settings and the ArrayRecord <-> flat weights bridge.
- :mod:`fl_lessons.flower.client_app` - the ClientApp: ``fl_lessons.Client.train`` on one hospital.
- :mod:`fl_lessons.flower.server_app` - the ServerApp: Flower's FedAvg strategy from our w_0.
- :mod:`fl_lessons.flower.deploy` - a SuperLink and one SuperNode per hospital on 127.0.0.1.
- :mod:`fl_lessons.flower.figures` - notebook 07's picture of the deployment.

This folder is also the Flower App itself: its ``pyproject.toml`` is what ``flwr run`` reads.
"""

from .common import FlowerSettings
from .deploy import (
    APP_DIR,
    DeploymentError,
    FlowerRunResult,
    LoopbackFederation,
    PeakMemory,
    run_loopback,
    supernode_command,
)
from .hospital_data import check_hospital_id, course_specs, load_common_test_set, load_own_hospital

__all__ = [
    "APP_DIR",
    "DeploymentError",
    "FlowerRunResult",
    "FlowerSettings",
    "LoopbackFederation",
    "PeakMemory",
    "check_hospital_id",
    "course_specs",
    "load_common_test_set",
    "load_own_hospital",
    "run_loopback",
    "supernode_command",
]
