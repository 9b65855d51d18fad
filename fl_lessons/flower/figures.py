"""Figures for notebook 07: the deployment as a picture, and the two runs side by side.

Taught in notebook 07 (from simulation to deployment).
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from ..plots import COLORS

FLOWER_COLOR = "tab:purple"
HOSPITAL_COLOR = "#e8f1fa"
COORDINATOR_COLOR = "#f1ebf7"


def _box(ax, center, size, title, body, facecolor):
    x, y = center
    width, height = size
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height,
                                boxstyle="round,pad=0.02,rounding_size=0.03",
                                facecolor=facecolor, edgecolor="0.3", linewidth=1))
    ax.text(x, y + height / 2 - 0.035, title, ha="center", va="top", fontsize=9, weight="bold")
    ax.text(x, y + height / 2 - 0.1, body, ha="center", va="top", fontsize=7.5, linespacing=1.4)


def _arrow(ax, start, end, text, color, text_offset=(0.0, 0.0)):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color=color,
                                 linewidth=1.2, connectionstyle="arc3,rad=0.0"))
    middle = ((start[0] + end[0]) / 2 + text_offset[0], (start[1] + end[1]) / 2 + text_offset[1])
    ax.text(*middle, text, ha="center", va="center", fontsize=9, color=color,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})


def plot_deployment(hospital_names: Sequence[str], num_examples: Sequence[int]):
    """The loopback deployment: who runs where, and what travels between the processes.

    Parameters
    ----------
    hospital_names : one name per hospital (one SuperNode each).
    num_examples : n_k of each hospital, shown in its box.
    """
    num_hospitals = len(hospital_names)
    figure, ax = plt.subplots(figsize=(9.2, 4.6), layout="constrained")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    link = (0.5, 0.78)
    _box(ax, (0.13, 0.78), (0.21, 0.22), "you: flwr run",
         "sends the app (FAB)\nand its run config\nN, L, B, eta", "white")
    _box(ax, link, (0.36, 0.3), "SuperLink (coordinator)",
         "ServerApp: Flower's FedAvg strategy\nw_0 = make_model(seed), N rounds,\n"
         "average weighted by num-examples,\nevaluate w_t on the common test set", COORDINATOR_COLOR)
    _arrow(ax, (0.24, 0.78), (0.32, 0.78), "submit", "0.3")
    width = min(0.28, 0.94 / num_hospitals - 0.02)
    for k, (name, n_k) in enumerate(zip(hospital_names, num_examples)):
        x = (k + 0.5) / num_hospitals
        _box(ax, (x, 0.2), (width, 0.3), f"SuperNode hospital-id={k}",
             f"{name}\nClientApp: fl_lessons.Client.train\non its own {n_k} images only", HOSPITAL_COLOR)
        # One pair of arrows per hospital, leaving the SuperLink spread along its lower edge.
        anchor = link[0] + 0.13 * (2 * k / max(num_hospitals - 1, 1) - 1) if num_hospitals > 1 else link[0]
        first = k == 0
        _arrow(ax, (anchor - 0.012, 0.625), (x - 0.02, 0.36), r"$w_t$" if first else "",
               FLOWER_COLOR, (-0.04, 0.0))
        _arrow(ax, (x + 0.02, 0.36), (anchor + 0.012, 0.625), r"$w^k_{t+1},\ n_k$" if first else "",
               COLORS["FedAvg"], (0.055, 0.0))
    ax.text(0.99, 0.99, "every box is its own process, talking HTTP over 127.0.0.1",
            ha="right", va="top", fontsize=8, color="0.35", style="italic")
    ax.set_title("One federated round on Flower: the hospitals' images never leave their SuperNode",
                 fontsize=10)
    return figure
