"""When hospitals differ: label skew you can steer, client drift, weighting, the worst hospital.

Used in notebook 06. :class:`LabelSkewPanel` has one slider, the Dirichlet alpha of the label
skew; moving it re-splits the pooled images into K hospitals, redraws their label mix and
re-runs FedAvg against the same run on an IID split. The callback is thin: it calls
:func:`label_skew_experiment` and draws with :mod:`fl_lessons.plots`; results are cached by
alpha, so returning to a value answers at once.

:func:`drift_table` measures client drift as L and alpha grow, :class:`EqualWeightClient`
turns FedAvg's weighted average into a plain mean (to see what weighting does to small
hospitals), and :func:`per_hospital_accuracy` scores the global model on each hospital's
own test set, so the worst hospital is in view and not only the average.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import display

from .data import HospitalData, hospitals_from_partition, label_counts, partition_dirichlet, partition_iid
from .fedprox import ProxClient, local_models
from .federated import Client, FedConfig, History, run_fedavg
from .models import get_flat_weights, make_model, set_flat_weights
from .plots import COLORS, plot_label_mix
from .training import Metrics, evaluate, set_seed
from .widgets import PanelLimits, panel_data, show_in_output

ALPHAS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 100.0)
"""The slider's stops: from one class per hospital (0.02) to nearly IID (100)."""


def accuracy_for_label_mix(metrics: Metrics, pneumonia_share: float) -> float:
    """The accuracy a hospital whose patients have this pneumonia share would measure.

    Parameters
    ----------
    metrics : the model's sensitivity and specificity on a common test set.
    pneumonia_share : the hospital's fraction of pneumonia cases, p.

    Under pure label skew the images of each class look alike everywhere, so a test set with
    the hospital's own mix scores p * sensitivity + (1 - p) * specificity.
    """
    if not 0.0 <= pneumonia_share <= 1.0:
        raise ValueError(f"pneumonia_share must lie in [0, 1], got {pneumonia_share}.")
    return pneumonia_share * metrics.sensitivity + (1 - pneumonia_share) * metrics.specificity


@dataclass(frozen=True)
class SkewSettings:
    """The panel's fixed settings: K hospitals, N rounds, L, B, eta, and the data size.

    Parameters
    ----------
    num_clients : K.
    num_rounds : N.
    local_epochs : L.
    batch_size : B.
    lr : eta.
    seed : seeds the split, w_0 and the runs.
    train_per_hospital : the panel's copy of the data keeps this many training images per hospital.
    test_size : and this many images of the common test set.
    """

    num_clients: int = 5
    num_rounds: int = 15
    local_epochs: int = 1
    batch_size: float = 32
    lr: float = 0.1
    seed: int = 0
    train_per_hospital: int = 200
    test_size: int = 400

    def small_copy(self, data: HospitalData) -> HospitalData:
        """The smaller copy of the hospitals the panel works on (first images of each).

        Parameters
        ----------
        data : the full hospitals.
        """
        return panel_data(data, PanelLimits(train_per_hospital=self.train_per_hospital,
                                            test_size=self.test_size, seed=self.seed))


def label_skew_split(data: HospitalData, alpha: float, settings: SkewSettings = SkewSettings()) -> HospitalData:
    """Pool the hospitals' training images and split them into K label-skewed hospitals.

    Parameters
    ----------
    data : the hospitals (their common test set is kept).
    alpha : the Dirichlet concentration; ``math.inf`` gives an IID split.
    settings : K and the seed.
    """
    features, labels = data.pooled()
    if alpha == math.inf:
        parts = partition_iid(labels.shape[0], settings.num_clients, seed=settings.seed)
    else:
        parts = partition_dirichlet(labels.numpy(), settings.num_clients, alpha, seed=settings.seed)
    return hospitals_from_partition(features, labels, parts, data.test_x, data.test_y,
                                    source=f"dirichlet alpha={alpha:g}")


def label_skew_experiment(
    data: HospitalData, alpha: float, settings: SkewSettings = SkewSettings()
) -> tuple[np.ndarray, History]:
    """The label mix of a split at this alpha, and a FedAvg run on it.

    Parameters
    ----------
    data : the hospitals (pooled and re-split).
    alpha : the Dirichlet concentration (``math.inf`` = IID).
    settings : K, N, L, B, eta, seed.

    Returns the ``(K, 2)`` label counts and the run's :class:`fl_lessons.History`.
    """
    split = label_skew_split(data, alpha, settings)
    model = make_model("cnn", seed=settings.seed)
    clients = [Client(h.train_x, h.train_y, model, h.name) for h in split.hospitals]
    config = FedConfig(num_rounds=settings.num_rounds, local_epochs=settings.local_epochs,
                       batch_size=settings.batch_size, lr=settings.lr, seed=settings.seed)
    set_seed(settings.seed)
    history = run_fedavg(clients, model, split.test_x, split.test_y, config, progress=False)
    counts = label_counts(np.concatenate([h.train_y.numpy() for h in split.hospitals]),
                          _consecutive_parts([h.num_examples for h in split.hospitals]))
    return counts, history


def _consecutive_parts(sizes: list[int]) -> list[np.ndarray]:
    edges = np.concatenate([[0], np.cumsum(sizes)])
    return [np.arange(start, stop) for start, stop in zip(edges[:-1], edges[1:])]


def summarize_skew(alpha: float, counts: np.ndarray, history: History, iid_history: History) -> str:
    """One printed line: the most one-sided hospital and both runs' final accuracy.

    Parameters
    ----------
    alpha : the Dirichlet concentration of the split.
    counts : ``(K, 2)`` normal and pneumonia images per hospital.
    history : FedAvg on that split.
    iid_history : the same run on an IID split, for comparison.
    """
    shares = counts[:, 1] / counts.sum(axis=1)
    one_sided = float(np.max(np.maximum(shares, 1 - shares)))
    return (f"alpha={alpha:g}: most one-sided hospital {one_sided:.0%} one class; "
            f"FedAvg accuracy after N={len(history.test_accuracy)} rounds "
            f"{history.test_accuracy[-1]:.3f} (IID split: {iid_history.test_accuracy[-1]:.3f})")


def plot_skew(alpha: float, counts: np.ndarray, history: History, iid_history: History):
    """Label mix per hospital (left) and FedAvg's learning curve against the IID split (right).

    Parameters
    ----------
    alpha : the Dirichlet concentration of the split.
    counts : ``(K, 2)`` normal and pneumonia images per hospital.
    history : FedAvg on that split.
    iid_history : the same run on an IID split.
    """
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    plot_label_mix(counts, [f"H{k + 1}" for k in range(len(counts))], ax=left,
                   title=f"Label mix, Dirichlet alpha = {alpha:g}")
    for run, label, color in ((iid_history, "IID split", COLORS["hospital"]),
                              (history, f"alpha = {alpha:g}", COLORS["FedAvg"])):
        rounds, accuracy = run.accuracy_curve()
        right.plot(rounds, accuracy, marker="o", markersize=3, label=label, color=color)
    right.set_xlabel("communication round t")
    right.set_ylabel("test accuracy of $w_t$")
    right.set_ylim(0.4, 1.0)
    right.grid(alpha=0.3)
    right.legend(frameon=False, loc="lower right")
    right.set_title("FedAvg on these hospitals")
    return figure


class LabelSkewPanel:
    """An alpha slider that re-splits the hospitals and redraws label mix and FedAvg's curve.

    Parameters
    ----------
    data : the hospitals; the panel works on a smaller copy (:meth:`SkewSettings.small_copy`).
    settings : K, N, L, B, eta, seed and the size of the copy.
    alpha : the starting alpha (one of :data:`ALPHAS`).
    """

    def __init__(self, data: HospitalData, settings: SkewSettings = SkewSettings(), alpha: float = 0.1):
        self.settings = settings
        self.data = settings.small_copy(data)
        self._cache: dict[float, tuple[np.ndarray, History]] = {}
        self.iid_history = label_skew_experiment(self.data, math.inf, settings)[1]
        self.summary = ""
        self.figure = None
        self.slider = widgets.SelectionSlider(options=[(f"{a:g}", a) for a in ALPHAS], value=alpha,
                                              description="Dirichlet alpha (small = more different)",
                                              style={"description_width": "initial"},
                                              layout=widgets.Layout(width="480px"))
        self.output = widgets.Output()
        self.slider.observe(self._on_change, names="value")
        self.widget = widgets.VBox([self.slider, self.output])
        self.update()

    def result(self, alpha: float) -> tuple[np.ndarray, History]:
        """Label counts and FedAvg run at this alpha (from the cache when seen before).

        Parameters
        ----------
        alpha : one of :data:`ALPHAS`.
        """
        if alpha not in self._cache:
            self._cache[alpha] = label_skew_experiment(self.data, alpha, self.settings)
        return self._cache[alpha]

    def _on_change(self, change) -> None:
        self.update()

    def update(self) -> None:
        """Recompute (or fetch) the run for the slider's alpha and redraw."""
        alpha = self.slider.value
        counts, history = self.result(alpha)
        self.summary = summarize_skew(alpha, counts, history, self.iid_history)
        figure = plot_skew(alpha, counts, history, self.iid_history)
        show_in_output(self.output, figure, self.summary)
        self.figure = figure

    def _ipython_display_(self):
        display(self.widget)


# ---------------------------------------------------------------------------------------
# Client drift, weighting, and the worst hospital
# ---------------------------------------------------------------------------------------


def drift_table(
    data: HospitalData,
    alphas: tuple[float, ...],
    local_epochs: tuple[int, ...],
    settings: SkewSettings = SkewSettings(),
    mu: float = 0.0,
) -> dict[tuple[float, int], tuple[float, float]]:
    """Client drift after one round of local training from w_0, for each (alpha, L).

    Parameters
    ----------
    data : the hospitals (pooled and re-split by :func:`label_skew_split`).
    alphas : Dirichlet concentrations (``math.inf`` = IID).
    local_epochs : the values of L.
    settings : K, B, eta and the seed.
    mu : FedProx's proximal strength (0 = FedAvg's local training).

    Returns ``{(alpha, L): (moved, spread)}``: ``moved`` is the mean distance
    ||w^k - w_0|| of the local models from the global one; ``spread`` is their mean distance
    from their own weighted average, the disagreement the server's average has to paper over.
    """
    model = make_model("cnn", seed=settings.seed)
    start = get_flat_weights(model)
    table = {}
    for alpha in alphas:
        split = label_skew_split(data, alpha, settings)
        clients = [ProxClient(h.train_x, h.train_y, model, h.name) for h in split.hospitals]
        for epochs in local_epochs:
            models = local_models(clients, start, epochs, settings.batch_size, settings.lr, mu, settings.seed)
            weights = torch.tensor([c.num_examples for c in clients], dtype=models.dtype)
            average = (weights[:, None] * models).sum(dim=0) / weights.sum()
            moved = torch.linalg.vector_norm(models - start, dim=1).mean()
            spread = torch.linalg.vector_norm(models - average, dim=1).mean()
            table[(alpha, epochs)] = (float(moved), float(spread))
    return table


class EqualWeightClient(Client):
    """A client that reports n_k = 1, so the server's weighted average becomes a plain mean.

    Parameters
    ----------
    features, labels, model, name : as for :class:`fl_lessons.Client`.

    Its local training still uses all its examples; only the count it reports changes. That
    is the one knob that separates FedAvg's weighted average from an unweighted one.
    """

    @property
    def num_examples(self) -> int:
        """The count this client reports: always 1, whatever it holds."""
        return 1


def per_hospital_accuracy(model: torch.nn.Module, weights: torch.Tensor, data: HospitalData) -> np.ndarray:
    """The accuracy of one global model on each hospital's own test set.

    Parameters
    ----------
    model : a module of the right architecture (its weights are overwritten).
    weights : the flat global weights w_t to score.
    data : the hospitals; each needs a test set of its own.
    """
    empty = [h.name for h in data.hospitals if h.test_y.shape[0] == 0]
    if empty:
        raise ValueError(f"Hospitals {empty} have no test set of their own; use the original hospitals, "
                         "not clients carved out of pooled data.")
    set_flat_weights(model, weights)
    return np.array([evaluate(model, h.test_x, h.test_y).accuracy for h in data.hospitals])


def scaled_copy(data: HospitalData, fraction: float, test_size: int = 400, seed: int = 0) -> HospitalData:
    """A smaller copy that keeps the hospitals' unequal sizes: the first ``fraction`` of each.

    Parameters
    ----------
    data : the hospitals.
    fraction : the share of each hospital's training images to keep, in (0, 1].
    test_size : images kept from the common test set (each hospital keeps its own test set).
    seed : seeds which common test images are kept.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}.")
    smaller = panel_data(data, PanelLimits(train_per_hospital=max(h.num_examples for h in data.hospitals),
                                           test_size=test_size, seed=seed))
    for hospital in smaller.hospitals:
        keep = max(1, int(round(fraction * hospital.num_examples)))
        hospital.train_x, hospital.train_y = hospital.train_x[:keep], hospital.train_y[:keep]
    return smaller
