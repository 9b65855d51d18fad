"""Figures for the course: the hospitals' images, their label mix, and learning curves.

Used from notebook 01 (images, label mix, the collaboration chart) onwards (learning curves
in 02-04, the equivalence gap in 03). Each function draws on an ``Axes`` it is given, or on
a new figure, and returns the figure, so notebooks and widget panels share one drawing code.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from .data import HospitalData
from .federated import History

# One colour per algorithm, everywhere in the course.
COLORS = {"FedAvg": "tab:blue", "FedSGD": "tab:orange", "pooled": "black", "hospital": "tab:gray"}
NORMAL_COLOR, PNEUMONIA_COLOR = "tab:green", "tab:red"


def _new_axes(ax=None, figsize=(6.4, 3.8)):
    if ax is not None:
        return ax.figure, ax
    figure, ax = plt.subplots(figsize=figsize, layout="constrained")
    return figure, ax


def plot_hospital_images(data: HospitalData, per_hospital: int = 6, seed: int = 0):
    """A grid of chest X-rays, one row per hospital, half normal and half pneumonia.

    Parameters
    ----------
    data : the hospitals.
    per_hospital : images per row.
    seed : which images are picked.
    """
    rng = np.random.default_rng(seed)
    rows = len(data.hospitals)
    figure, axes = plt.subplots(rows, per_hospital, figsize=(1.3 * per_hospital + 1.6, 1.35 * rows),
                                layout="constrained", squeeze=False)
    for row, hospital in enumerate(data.hospitals):
        labels = hospital.train_y.numpy()
        normal = rng.permutation(np.flatnonzero(labels == 0))[: per_hospital - per_hospital // 2]
        sick = rng.permutation(np.flatnonzero(labels == 1))[: per_hospital // 2]
        for column, index in enumerate(np.concatenate([normal, sick])):
            ax = axes[row, column]
            ax.imshow(hospital.train_x[index, 0], cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            sick_image = labels[index] == 1
            ax.set_title("pneumonia" if sick_image else "normal", fontsize=8,
                         color=PNEUMONIA_COLOR if sick_image else NORMAL_COLOR)
        axes[row, 0].set_ylabel(f"{hospital.name}\nn_k={hospital.num_examples}", fontsize=8,
                                rotation=0, ha="right", va="center")
    figure.suptitle("One row per hospital: same anatomy, different scanners", fontsize=10)
    return figure


def plot_label_mix(counts: np.ndarray, names: Sequence[str] | None = None, ax=None, title: str | None = None):
    """Stacked bars of normal and pneumonia examples at each client.

    Parameters
    ----------
    counts : ``(K, 2)`` array of normal and pneumonia counts (:func:`fl_lessons.label_counts`).
    names : client names (default: "1", "2", ...).
    ax : draw here instead of on a new figure.
    title : the axes title.
    """
    counts = np.asarray(counts)
    names = list(names) if names is not None else [str(k + 1) for k in range(len(counts))]
    figure, ax = _new_axes(ax, figsize=(max(4.0, 0.9 * len(counts) + 2), 3.4))
    positions = np.arange(len(counts))
    ax.bar(positions, counts[:, 0], color=NORMAL_COLOR, label="normal")
    ax.bar(positions, counts[:, 1], bottom=counts[:, 0], color=PNEUMONIA_COLOR, label="pneumonia")
    ax.set_xticks(positions, names, rotation=20 if len(names) <= 10 else 90, ha="right",
                  fontsize=8 if len(names) <= 10 else 6)
    ax.set_ylabel("training images (n_k)")
    ax.legend(frameon=False)
    ax.set_title(title or "Label mix per client")
    return figure


def plot_accuracy_table(names: Sequence[str], rows: dict[str, Sequence[float]], ax=None, title: str = ""):
    """Grouped bars: for each test set (``names``), one bar per model (``rows``).

    Parameters
    ----------
    names : the test sets (e.g. "common", then each hospital's own).
    rows : model name -> accuracy on each test set, in the order of ``names``.
    ax : draw here instead of on a new figure.
    title : the axes title.
    """
    figure, ax = _new_axes(ax, figsize=(9, 3.8))
    positions = np.arange(len(names))
    width = 0.8 / len(rows)
    for offset, (label, values) in enumerate(rows.items()):
        ax.bar(positions + (offset - (len(rows) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(positions, names, rotation=15, ha="right", fontsize=8)
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("test accuracy")
    ax.legend(frameon=False, fontsize=8, ncol=min(len(rows), 4), loc="lower right")
    ax.set_title(title)
    return figure


def plot_histories(
    histories: Sequence[History],
    pooled_accuracy: float | None = None,
    ax=None,
    x: str = "round",
    max_round: int | None = None,
    title: str = "",
):
    """Test accuracy of the global model after each round, one line per run.

    Parameters
    ----------
    histories : runs of :func:`run_fedavg` / :func:`run_fedsgd`.
    pooled_accuracy : draw the pooled (centralized) model's accuracy as a dashed line.
    ax : draw here instead of on a new figure.
    x : ``"round"`` or ``"megabytes"`` (cumulative communication).
    max_round : only show rounds up to this one.
    title : the axes title.
    """
    figure, ax = _new_axes(ax)
    for history in histories:
        rounds, accuracy = history.accuracy_curve()
        if max_round is not None:
            keep = [i for i, t in enumerate(rounds) if t <= max_round]
            rounds, accuracy = [rounds[i] for i in keep], [accuracy[i] for i in keep]
        if x == "megabytes":
            traffic = [0.0] + history.cumulative_megabytes()
            positions = [traffic[t] for t in rounds]
        else:
            positions = rounds
        label = history.algorithm
        if history.algorithm == "FedAvg":
            batch = "inf" if history.config.batch_size == float("inf") else int(history.config.batch_size)
            label = f"FedAvg (L={history.config.local_epochs}, B={batch})"
        ax.plot(positions, accuracy, marker="o", markersize=3, label=label,
                color=COLORS.get(history.algorithm) if len(histories) <= 2 else None)
    if pooled_accuracy is not None:
        ax.axhline(pooled_accuracy, color=COLORS["pooled"], linestyle="--", linewidth=1,
                   label=f"pooled data ({pooled_accuracy:.2f})")
    ax.set_xlabel("communication round t" if x == "round" else "megabytes sent (down + up)")
    ax.set_ylabel("test accuracy of $w_t$")
    ax.set_ylim(0.4, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    ax.set_title(title)
    return figure


def show_image(image: torch.Tensor, ax=None, title: str = ""):
    """Show one ``1 x 28 x 28`` image in grey levels."""
    figure, ax = _new_axes(ax, figsize=(2.5, 2.5))
    ax.imshow(image.reshape(28, 28), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    return figure
