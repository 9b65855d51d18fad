"""fl_lessons: the helper package of the course "Federated Learning for Health AI".

Each module names the notebook that teaches it:

- :mod:`fl_lessons.data` - hospitals and their chest X-rays, PneumoniaMNIST, partitioners (01).
- :mod:`fl_lessons.models` - the small CNN, logistic regression, flat weights (01, 02).
- :mod:`fl_lessons.training` - ``set_seed``, SGD training, clinical metrics (01).
- :mod:`fl_lessons.federated` - clients, aggregation, FedSGD and FedAvg (02-04).
- :mod:`fl_lessons.plots` and :mod:`fl_lessons.widgets` - figures and slider panels.
"""

from .data import (
    DEFAULT_HOSPITALS,
    Hospital,
    HospitalData,
    HospitalSpec,
    Scanner,
    download_pneumoniamnist,
    hospitals_from_partition,
    label_counts,
    load_hospitals,
    load_pneumoniamnist,
    make_hospitals,
    partition_dirichlet,
    partition_iid,
    partition_quantity,
)
from .federated import (
    Client,
    ClientUpdate,
    FedConfig,
    History,
    aggregate,
    averaging_gap_curve,
    fedsgd_config,
    fedsgd_trajectory,
    gradient_step,
    make_clients,
    num_selected,
    run_fedavg,
    run_fedsgd,
    sample_clients,
)
from .models import (
    LogisticRegression,
    SmallCNN,
    get_flat_weights,
    make_model,
    model_size_bytes,
    num_parameters,
    set_flat_weights,
)
from .training import Metrics, evaluate, roc_auc, set_seed, train

__version__ = "0.1.0"
