"""Slider panels: change N, L, K, C, B (or the hospitals' heterogeneity) and watch the plots redraw.

Used in notebook 03 (:class:`EquivalencePanel`: where weight averaging stops being FedSGD)
and notebook 04 (:class:`FedAvgPanel`: FedAvg against FedSGD and the pooled model).

The callbacks are thin: they call :func:`panel_experiment` or
:func:`fl_lessons.federated.averaging_gap_curve` and draw with :mod:`fl_lessons.plots`.
Results are cached by setting, so a setting seen before answers at once. A run is cached
by everything but N: moving N left shows fewer rounds of the same run, and moving it right
continues the run from its last round (``resume_from``), so only the new rounds train.
"""

from __future__ import annotations

import base64
import io
import math
import time
from dataclasses import dataclass, replace

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

from .data import HospitalData, hospitals_from_partition, partition_dirichlet, partition_iid
from .federated import (
    Client,
    FedConfig,
    History,
    averaging_gap_curve,
    fedsgd_trajectory,
    run_fedavg,
    run_fedsgd,
)
from .models import get_flat_weights, make_model
from .plots import plot_histories
from .training import evaluate, set_seed, train

PARTITIONS = ("iid", "label skew")
LABEL_SKEW_ALPHA = 0.5
BATCH_SIZES = (8, 32, 128, math.inf)


@dataclass(frozen=True)
class PanelSettings:
    """One setting of the FedAvg panel, and its defaults (the notebook's starting point).

    Parameters
    ----------
    num_rounds : N, the rounds run and shown.
    local_epochs : L.
    num_clients : K; the panel's data is re-partitioned into K clients.
    client_fraction : C.
    batch_size : B (``math.inf`` = full batch).
    partition : ``"iid"`` or ``"label skew"`` (Dirichlet, alpha = 0.5).
    """

    num_rounds: int = 10
    local_epochs: int = 1
    num_clients: int = 5
    client_fraction: float = 1.0
    batch_size: float = 32
    partition: str = "iid"


@dataclass(frozen=True)
class PanelLimits:
    """The slider ranges, and the size of the panel's copy of the data (it sets the speed)."""

    max_rounds: int = 15
    max_local_epochs: int = 5
    min_clients: int = 2
    max_clients: int = 20
    train_per_hospital: int = 400
    test_size: int = 400
    fedavg_lr: float = 0.1
    fedsgd_lr: float = 0.5
    seed: int = 0


def panel_data(data: HospitalData, limits: PanelLimits = PanelLimits()) -> HospitalData:
    """A smaller copy of the hospitals (first images of each) so a new setting answers fast.

    Parameters
    ----------
    data : the full hospitals.
    limits : how many training images per hospital and test images to keep.
    """
    hospitals = [
        replace(hospital, train_x=hospital.train_x[: limits.train_per_hospital],
                train_y=hospital.train_y[: limits.train_per_hospital])
        for hospital in data.hospitals
    ]
    test_order = torch.randperm(data.test_y.shape[0], generator=torch.Generator().manual_seed(limits.seed))
    keep = test_order[: limits.test_size]
    return HospitalData(hospitals, data.test_x[keep], data.test_y[keep], source=data.source)


def repartition(data: HospitalData, num_clients: int, partition: str, seed: int = 0) -> HospitalData:
    """Pool the hospitals' training data and split it into K clients, IID or label-skewed.

    Parameters
    ----------
    data : the hospitals (their common test set is kept).
    num_clients : K.
    partition : ``"iid"`` or ``"label skew"`` (Dirichlet with alpha = ``LABEL_SKEW_ALPHA``).
    seed : seeds the split.
    """
    features, labels = data.pooled()
    if partition == "iid":
        parts = partition_iid(labels.shape[0], num_clients, seed=seed)
    elif partition == "label skew":
        parts = partition_dirichlet(labels.numpy(), num_clients, LABEL_SKEW_ALPHA, seed=seed)
    else:
        raise ValueError(f"Unknown partition {partition!r}; choose one of {PARTITIONS}.")
    return hospitals_from_partition(features, labels, parts, data.test_x, data.test_y, source=partition)


def panel_experiment(
    data: HospitalData,
    settings: PanelSettings,
    limits: PanelLimits = PanelLimits(),
    algorithm: str = "FedAvg",
    progress: bool = False,
    resume_from: History | None = None,
) -> History:
    """One run of N rounds on the data re-partitioned into K clients.

    Parameters
    ----------
    data : the panel's hospitals (see :func:`panel_data`).
    settings : N, L, K, C, B and the partition.
    limits : the learning rates and the seed.
    algorithm : ``"FedAvg"`` or ``"FedSGD"`` (which ignores L and B).
    progress : show a progress bar.
    resume_from : this setting's run with fewer rounds: only the rounds it lacks are trained,
        and the result equals a fresh N-round run.

    Every run starts from the same seeded w_0, so FedAvg and FedSGD compare fairly.
    """
    clients_data = repartition(data, settings.num_clients, settings.partition, seed=limits.seed)
    model = make_model("cnn", seed=limits.seed)
    clients = [Client(h.train_x, h.train_y, model, h.name) for h in clients_data.hospitals]
    config = FedConfig(num_rounds=settings.num_rounds, local_epochs=settings.local_epochs,
                       batch_size=settings.batch_size, lr=limits.fedavg_lr,
                       client_fraction=settings.client_fraction, seed=limits.seed)
    set_seed(limits.seed)
    if algorithm == "FedAvg":
        return run_fedavg(clients, model, clients_data.test_x, clients_data.test_y, config,
                          progress=progress, resume_from=resume_from)
    if algorithm == "FedSGD":
        config = replace(config, local_epochs=1, batch_size=math.inf, lr=limits.fedsgd_lr)
        return run_fedsgd(clients, model, clients_data.test_x, clients_data.test_y, config,
                          progress=progress, resume_from=resume_from)
    raise ValueError(f"Unknown algorithm {algorithm!r}; choose 'FedAvg' or 'FedSGD'.")


def pooled_reference(data: HospitalData, epochs: int, lr: float, seed: int = 0) -> float:
    """Test accuracy of the CNN trained on the pooled data: the line FL aims at.

    Parameters
    ----------
    data : the hospitals.
    epochs : training epochs (the panel uses one per round, as FedAvg with L = 1 does).
    lr : eta.
    seed : seeds the model and the minibatches.
    """
    features, labels = data.pooled()
    model = make_model("cnn", seed=seed)
    set_seed(seed)
    train(model, features, labels, epochs=epochs, lr=lr, seed=seed, progress=False)
    return evaluate(model, data.test_x, data.test_y).accuracy


def summarize(history_avg: History, history_sgd: History, num_rounds: int) -> str:
    """Accuracy and megabytes after N rounds, for both algorithms, as printed lines.

    Parameters
    ----------
    history_avg, history_sgd : the two runs.
    num_rounds : N, where to read them.
    """
    lines = []
    for history in (history_avg, history_sgd):
        megabytes = history.cumulative_megabytes()[num_rounds - 1]
        accuracy = history.test_accuracy[num_rounds - 1]
        lines.append(f"{history.algorithm:>6} after N={num_rounds:2d} rounds: "
                     f"accuracy {accuracy:.3f}, {megabytes:.2f} MB sent")
    return "\n".join(lines)


def show_in_output(output: widgets.Output, figure, text: str) -> None:
    """Replace what an Output widget shows with a figure (as PNG) and a line of text.

    Parameters
    ----------
    output : the panel's Output widget.
    figure : a matplotlib figure; it is closed afterwards, so the notebook won't draw it twice.
    text : printed below the figure.

    Setting ``outputs`` in one assignment swaps the view without flicker, and works the
    same in JupyterLab, under nbval and in a plain pytest process.
    """
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    picture = {"output_type": "display_data", "metadata": {},
               "data": {"image/png": base64.b64encode(buffer.getvalue()).decode("ascii"),
                        "text/plain": repr(figure)}}
    caption = {"output_type": "stream", "name": "stdout", "text": text + "\n"}
    output.outputs = (picture, caption)


class FedAvgPanel:
    """Sliders for N, L, K, C and B (and the partition) that redraw FedAvg against FedSGD.

    Parameters
    ----------
    data : the hospitals; the panel works on a smaller copy (:func:`panel_data`).
    settings : the starting setting.
    limits : slider ranges, data size and learning rates.
    """

    def __init__(self, data: HospitalData, settings: PanelSettings = PanelSettings(),
                 limits: PanelLimits = PanelLimits()):
        self.limits = limits
        self.data = panel_data(data, limits)
        self.pooled_accuracy = pooled_reference(self.data, limits.max_rounds, limits.fedavg_lr, limits.seed)
        self._cache: dict[tuple, History] = {}
        self.last_seconds = math.nan
        self.summary = ""
        self.figure = None
        style = {"description_width": "initial"}
        self.sliders = {
            "N": widgets.IntSlider(settings.num_rounds, 1, limits.max_rounds, description="rounds N", style=style),
            "L": widgets.IntSlider(settings.local_epochs, 1, limits.max_local_epochs, description="local epochs L", style=style),
            "K": widgets.IntSlider(settings.num_clients, limits.min_clients, limits.max_clients, description="clients K", style=style),
            "C": widgets.FloatSlider(settings.client_fraction, min=0.1, max=1.0, step=0.1, description="fraction C", style=style),
            "B": widgets.SelectionSlider(options=[("inf" if b == math.inf else str(b), b) for b in BATCH_SIZES],
                                         value=settings.batch_size, description="batch B", style=style),
            "partition": widgets.ToggleButtons(options=PARTITIONS, value=settings.partition, description="data"),
        }
        self.output = widgets.Output()
        self.status = widgets.HTML()
        for slider in self.sliders.values():
            slider.observe(self._on_change, names="value")
        controls = widgets.VBox([
            widgets.HBox([self.sliders["N"], self.sliders["L"], self.sliders["K"]]),
            widgets.HBox([self.sliders["C"], self.sliders["B"], self.sliders["partition"]]),
        ])
        self.widget = widgets.VBox([controls, self.status, self.output])
        self.update()

    @property
    def settings(self) -> PanelSettings:
        return PanelSettings(
            num_rounds=self.sliders["N"].value, local_epochs=self.sliders["L"].value,
            num_clients=self.sliders["K"].value, client_fraction=round(self.sliders["C"].value, 2),
            batch_size=self.sliders["B"].value, partition=self.sliders["partition"].value,
        )

    def results(self, settings: PanelSettings) -> tuple[History, History]:
        """FedAvg and FedSGD for a setting, each at least N rounds long, from the cache when seen.

        N is in neither key: a cached run shorter than N is continued to N rounds (only the
        new rounds train), and a longer one is shown up to round N. FedSGD's key leaves out
        L and B, which FedSGD does not use, so moving them retrains FedAvg only.
        """
        shared = (settings.num_clients, settings.client_fraction, settings.partition)
        keys = {"FedAvg": ("FedAvg", settings.local_epochs, settings.batch_size) + shared,
                "FedSGD": ("FedSGD",) + shared}
        for algorithm, key in keys.items():
            cached = self._cache.get(key)
            if cached is None or len(cached.rounds) < settings.num_rounds:
                self._cache[key] = panel_experiment(self.data, settings, self.limits, algorithm,
                                                    resume_from=cached)
        return self._cache[keys["FedAvg"]], self._cache[keys["FedSGD"]]

    def _on_change(self, change) -> None:
        self.update()

    def update(self) -> None:
        """Recompute (or fetch) the runs for the sliders' setting and redraw."""
        started = time.perf_counter()
        settings = self.settings
        history_avg, history_sgd = self.results(settings)
        self.summary = summarize(history_avg, history_sgd, settings.num_rounds)
        figure = plot_histories([history_avg, history_sgd], self.pooled_accuracy,
                                max_round=settings.num_rounds,
                                title=f"K={settings.num_clients} clients ({settings.partition}), "
                                      f"C={settings.client_fraction:g}")
        figure.axes[0].set_xlim(-0.5, self.limits.max_rounds + 0.5)
        self.last_seconds = time.perf_counter() - started
        show_in_output(self.output, figure, self.summary)
        self.figure = figure
        self.status.value = f"<small>answered in {self.last_seconds:.2f} s</small>"

    def _ipython_display_(self):
        display(self.widget)


class EquivalencePanel:
    """Sliders for L and heterogeneity (Dirichlet alpha) that redraw the averaging gap.

    Parameters
    ----------
    data : the hospitals; pooled, subsampled and re-split into K label-skewed clients.
    num_clients : K.
    num_examples : how many pooled training images to use (sets the speed).
    max_local_steps : the largest L on the slider.
    lr : eta.
    seed : seeds the subsample, the split and w_0.
    """

    def __init__(self, data: HospitalData, num_clients: int = 5, num_examples: int = 1000,
                 max_local_steps: int = 10, lr: float = 0.1, seed: int = 0):
        features, labels = data.pooled()
        keep = torch.randperm(labels.shape[0], generator=torch.Generator().manual_seed(seed))[:num_examples]
        self.features, self.labels = features[keep], labels[keep]
        self.num_clients, self.max_local_steps, self.lr, self.seed = num_clients, max_local_steps, lr, seed
        self.model = make_model("cnn", seed=seed)
        self.initial_weights = get_flat_weights(self.model)
        # FedSGD's path is the same for every split of the data: compute it once, pooled.
        pooled_client = Client(self.features, self.labels, self.model)
        self.fedsgd_path = fedsgd_trajectory([pooled_client], self.model, self.initial_weights,
                                             max_local_steps, lr)
        self._cache: dict[float, np.ndarray] = {}
        self.figure = None
        self.summary = ""
        style = {"description_width": "initial"}
        self.sliders = {
            "L": widgets.IntSlider(3, 1, max_local_steps, description="local steps L", style=style),
            # A wide layout: the long description would otherwise squeeze the track to a few pixels.
            "alpha": widgets.FloatLogSlider(1.0, base=10, min=-2, max=2, step=0.25,
                                            description="alpha (small = more different)", style=style,
                                            layout=widgets.Layout(width="480px")),
        }
        self.output = widgets.Output()
        for slider in self.sliders.values():
            slider.observe(self._on_change, names="value")
        self.widget = widgets.VBox([widgets.HBox(list(self.sliders.values())), self.output])
        self.update()

    def gap_curve(self, alpha: float) -> np.ndarray:
        """The averaging gap for l = 1..max_local_steps at this alpha (cached)."""
        alpha = round(float(alpha), 6)
        if alpha not in self._cache:
            parts = partition_dirichlet(self.labels.numpy(), self.num_clients, alpha, seed=self.seed)
            clients = [Client(self.features[part], self.labels[part], self.model) for part in parts]
            self._cache[alpha] = averaging_gap_curve(clients, self.model, self.initial_weights,
                                                     self.max_local_steps, self.lr, self.fedsgd_path)
        return self._cache[alpha]

    def _on_change(self, change) -> None:
        self.update()

    def update(self) -> None:
        local_steps, alpha = self.sliders["L"].value, self.sliders["alpha"].value
        gaps = self.gap_curve(alpha)
        steps = np.arange(1, self.max_local_steps + 1)
        figure, ax = plt.subplots(figsize=(6.4, 3.6), layout="constrained")
        ax.plot(steps, gaps, marker="o", label=f"alpha = {alpha:.2g}")
        ax.plot([local_steps], [gaps[local_steps - 1]], marker="o", markersize=12, color="tab:red",
                fillstyle="none", label=f"L = {local_steps}")
        ax.set_xlabel("local steps L before averaging (B = inf)")
        ax.set_ylabel("gap to FedSGD (relative)")
        ax.set_title("Weight averaging equals FedSGD at L = 1, then drifts away")
        ax.grid(alpha=0.3)
        ax.legend(frameon=False)
        self.summary = f"alpha={alpha:.2g}, L={local_steps}: relative gap {gaps[local_steps - 1]:.3f}"
        show_in_output(self.output, figure, self.summary)
        self.figure = figure

    def _ipython_display_(self):
        display(self.widget)
