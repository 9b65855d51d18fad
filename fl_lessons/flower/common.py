"""What the Flower apps and the deployment helper share: run settings, keys, the weights' two forms.

Taught in notebook 07 (from simulation to deployment).

Flower sends a model as an ``ArrayRecord``: named arrays, one per entry of the model's
``state_dict``. ``fl_lessons`` works with one flat weight vector w. The two functions at
the bottom convert between them, so the apps can hand Flower's arrays to our unchanged
:class:`fl_lessons.Client` and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from ..federated import FedConfig
from ..models import get_flat_weights, set_flat_weights
from .hospital_data import common_test_size, course_specs

NUM_EXAMPLES_KEY = "num-examples"
"""The MetricRecord key holding n_k; Flower's FedAvg weights each reply by it (its default)."""

TRAIN_LOSS_KEY = "train-loss"
HOSPITAL_ID_KEY = "hospital-id"
"""The node config key that tells a SuperNode which hospital it is."""

HOSPITAL_RECORD_KEY = "hospital"
"""The ConfigRecord in a ClientApp's reply that names its hospital (``hospital-id``)."""

# What the ServerApp writes into the run config's output-dir, for the deployment helper.
ROUNDS_FILE = "rounds.jsonl"
FINAL_WEIGHTS_FILE = "final_weights.npy"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class FlowerSettings:
    """One run's settings, read from Flower's run config (``[tool.flwr.app.config]``).

    Parameters
    ----------
    num_rounds : N.
    local_epochs : L.
    batch_size : B (``inf`` in the run config means full batch).
    lr : eta.
    seed : seeds every client's minibatch order, as ``FedConfig.seed`` does.
    model : ``"cnn"`` or ``"logreg"``.
    model_seed : seeds the initial weights w_0.
    num_hospitals : K, the first K of the course's hospitals.
    data_seed : the seed the synthetic hospitals are rendered from.
    data_scale : multiplies every hospital's number of images (1.0 is the course).
    output_dir : where the ServerApp writes its per-round metrics and w_N ("" for nowhere).
    """

    num_rounds: int = 3
    local_epochs: int = 1
    batch_size: float = 32
    lr: float = 0.1
    seed: int = 0
    model: str = "cnn"
    model_seed: int = 0
    num_hospitals: int = 5
    data_seed: int = 0
    data_scale: float = 1.0
    output_dir: str = ""

    @classmethod
    def from_run_config(cls, run_config: Mapping) -> FlowerSettings:
        """Read the settings from a Flower run config (kebab-case keys), checking them.

        Parameters
        ----------
        run_config : ``context.run_config`` in a ServerApp or ClientApp.
        """
        known = {name.replace("_", "-"): name for name in cls.__dataclass_fields__}
        values = {known[key]: value for key, value in run_config.items() if key in known}
        settings = cls(**values)
        settings.fed_config()  # validates N, L, B, eta and the seed in one place
        course_specs(settings.num_hospitals, settings.data_scale)  # validates K and the scale
        return settings

    def fed_config(self) -> FedConfig:
        """The same settings as an ``fl_lessons.FedConfig`` (full participation: C = 1)."""
        return FedConfig(num_rounds=self.num_rounds, local_epochs=self.local_epochs,
                         batch_size=self.batch_size, lr=self.lr, client_fraction=1.0, seed=self.seed)

    def specs(self):
        """The K hospitals' specs at this run's data scale."""
        return course_specs(self.num_hospitals, self.data_scale)

    def common_test_per_hospital(self) -> int:
        """Common test images per hospital at this run's data scale."""
        return common_test_size(self.data_scale)


def arrays_from_flat(model: nn.Module, weights: torch.Tensor):
    """Flower's form of a flat weight vector w: one named array per ``state_dict`` entry.

    Parameters
    ----------
    model : a workspace module of the right architecture (its weights are overwritten).
    weights : the flat vector w.
    """
    # Imported here so that this module, and the deployment helper that reads the run
    # settings, import without Flower and can say how to install it.
    from flwr.app import ArrayRecord

    set_flat_weights(model, weights)
    return ArrayRecord(model.state_dict())


def flat_from_arrays(model: nn.Module, arrays) -> torch.Tensor:
    """Our form of Flower's ``ArrayRecord``: the flat weight vector w.

    Parameters
    ----------
    model : a workspace module of the right architecture (its weights are overwritten).
    arrays : the ``ArrayRecord`` a message carried.
    """
    # strict=True: a missing or unexpected array means the two sides built different models.
    model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
    return get_flat_weights(model)
