"""Counting rounds: how many communication rounds a run needs to reach a target accuracy.

Taught in notebook 05 (our version of Table 2 of McMahan et al. 2017, arXiv 1602.05629) and
used again in notebook 06 (heterogeneous hospitals).

The paper makes each curve monotone (the best accuracy so far) and interpolates linearly
between the two rounds where it crosses the target; :func:`rounds_to_target` does the same.
:func:`sweep` runs a grid of settings (L, B, C, partition) and, as the paper does, keeps the
best learning rate of a small stated grid for each. The full Table 2 sweep takes minutes, so
it is a command whose results are committed as a small JSON file::

    python -m fl_lessons.experiments table2            # writes results/table2.json
    python -m fl_lessons.experiments table2 --quick    # a small slice, for a smoke test

Notebook 05 reads the file; a test re-runs a slice of it so it cannot go stale.

Reproducing a curve exactly needs the same torch thread count and the same CPU kernels
(``torch.backends.cpu.get_cpu_capability()``): both change the order of float additions, and
a run of tens of rounds turns a last-bit difference into a different test image or two. The
command therefore fixes the thread count (``--threads``, default 1), records it, the kernel
set and the CPU model in the file, and :func:`replay_trial` replays with the recorded thread count.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import platform
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import federated
from .data import HospitalData, _check_partition_request, load_hospitals, partition_dirichlet, partition_iid
from .federated import Client, ClientUpdate, FedConfig, gradient_step, num_selected
from .models import get_flat_weights, make_model, model_size_bytes, set_flat_weights
from .training import evaluate, set_seed

ALGORITHMS = ("FedSGD", "FedAvg")
PARTITIONS = ("iid", "shards", "dirichlet")
RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
TABLE2_PATH = RESULTS_DIR / "table2.json"
DECIMALS = 4  # accuracies are stored rounded to this many decimals


# ---------------------------------------------------------------------------------------
# Rounds to a target
# ---------------------------------------------------------------------------------------


def rounds_to_target(
    rounds: Sequence[float], accuracies: Sequence[float], target: float
) -> float | None:
    """The (fractional) round at which the running-best accuracy first reaches ``target``.

    Parameters
    ----------
    rounds : the rounds at which the curve was measured, increasing (e.g. 0, 1, ..., N).
    accuracies : the test accuracy at each of those rounds (NaN = not evaluated, skipped).
    target : the accuracy to reach.

    Returns ``None`` when the target is not reached within the rounds given, so "not reached
    within N" is reported as such and never mistaken for a number.
    """
    if len(rounds) != len(accuracies):
        raise ValueError(f"rounds and accuracies differ in length: {len(rounds)} vs {len(accuracies)}.")
    points = [(float(t), float(a)) for t, a in zip(rounds, accuracies) if not math.isnan(a)]
    if any(later <= earlier for (earlier, _), (later, _) in zip(points, points[1:])):
        raise ValueError("rounds must be strictly increasing.")
    best_so_far = -math.inf
    previous_round = None
    for round_index, accuracy in points:
        if accuracy >= target and best_so_far < target:
            if previous_round is None:
                return round_index
            # Linear interpolation between the last point below and the first at or above.
            fraction = (target - best_so_far) / (accuracy - best_so_far)
            return previous_round + fraction * (round_index - previous_round)
        best_so_far = max(best_so_far, accuracy)
        previous_round = round_index
    return None


# ---------------------------------------------------------------------------------------
# The paper's pathological non-IID split, and one function for every split
# ---------------------------------------------------------------------------------------


def partition_shards(
    labels: np.ndarray, num_clients: int, shards_per_client: int = 2, seed: int = 0
) -> list[np.ndarray]:
    """Pathological label skew: sort by label, cut into K * s shards, deal s shards to each client.

    Parameters
    ----------
    labels : one integer class label per example.
    num_clients : K.
    shards_per_client : s; the paper uses 2 (so most MNIST clients see only two digits).
    seed : seeds the order within each class and the dealing of the shards.

    This is the split of McMahan et al. 2017 (Sec. 3): every client gets the same number of
    examples (within one), but only the classes of its s shards. With two classes and s = 1,
    each client holds a single class (one shard may straddle the class boundary).
    """
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    _check_partition_request(len(labels), num_clients)
    if not (isinstance(shards_per_client, (int, np.integer)) and shards_per_client >= 1):
        raise ValueError(f"shards_per_client must be a whole number >= 1, got {shards_per_client!r}.")
    num_shards = num_clients * shards_per_client
    if num_shards > len(labels):
        raise ValueError(
            f"Cannot cut {len(labels)} examples into K * shards_per_client = {num_shards} shards: "
            f"every shard needs at least one example. Use fewer clients or fewer shards per client."
        )
    rng = np.random.default_rng(seed)
    # Shuffle first, then sort stably by label: each shard is a random sample of its class.
    shuffled = rng.permutation(len(labels))
    order = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(order, num_shards)
    dealt = rng.permutation(num_shards).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([shards[j] for j in row])) for row in dealt]


def make_partition(
    labels: np.ndarray,
    num_clients: int,
    partition: str,
    seed: int = 0,
    alpha: float = 0.1,
    shards_per_client: int = 2,
) -> list[np.ndarray]:
    """Split examples into K clients: ``"iid"``, ``"shards"`` or ``"dirichlet"`` label skew.

    Parameters
    ----------
    labels : one class label per example.
    num_clients : K.
    partition : ``"iid"`` (:func:`partition_iid`), ``"shards"`` (:func:`partition_shards`) or
        ``"dirichlet"`` (:func:`fl_lessons.data.partition_dirichlet`).
    seed : seeds the split.
    alpha : the Dirichlet concentration (``"dirichlet"`` only).
    shards_per_client : s (``"shards"`` only).
    """
    labels = np.asarray(labels).reshape(-1)
    if partition == "iid":
        return partition_iid(len(labels), num_clients, seed=seed)
    if partition == "shards":
        return partition_shards(labels, num_clients, shards_per_client, seed=seed)
    if partition == "dirichlet":
        return partition_dirichlet(labels, num_clients, alpha, seed=seed)
    raise ValueError(f"Unknown partition {partition!r}; choose one of {PARTITIONS}.")


# ---------------------------------------------------------------------------------------
# One run, stopped once it reaches the target
# ---------------------------------------------------------------------------------------


@dataclass
class Trial:
    """One run at one learning rate: its accuracy curve and the round it reached the target.

    ``rounds`` starts at 0 (w_0) and lists the evaluated rounds; ``rounds_run`` is how many
    rounds were actually run (fewer than the allowed ``num_rounds`` when it stopped at the target).
    """

    lr: float
    rounds: list[int]
    accuracy: list[float]
    rounds_to_target: float | None
    rounds_run: int
    num_rounds: int

    @property
    def final_accuracy(self) -> float:
        return self.accuracy[-1]

    @property
    def best_accuracy(self) -> float:
        return max(self.accuracy)


class _TargetReached(Exception):
    """Raised inside the server loop to end a run early; never escapes this module."""


def run_to_target(
    algorithm: str,
    clients: Sequence[Client],
    model: torch.nn.Module,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    config: FedConfig,
    target: float,
    initial_weights: torch.Tensor | None = None,
    stop_at_target: bool = True,
    progress: bool = False,
) -> Trial:
    """Run FedSGD or FedAvg for up to N rounds, stopping once the best accuracy reaches ``target``.

    Parameters
    ----------
    algorithm : ``"FedSGD"`` or ``"FedAvg"``.
    clients, model, test_x, test_y : as in :func:`fl_lessons.run_fedavg`.
    config : N, L, B, C, eta, seed and ``eval_every`` (dropout is not supported here).
    target : the accuracy to reach.
    initial_weights : w_0 (default: the model's current weights).
    stop_at_target : end the run at the first evaluated round whose accuracy reaches the
        target (the rest of the curve cannot change the rounds to target).
    progress : show a progress bar over rounds.

    The run is the package's own server loop with the same client and server steps as
    :func:`fl_lessons.run_fedsgd` / :func:`fl_lessons.run_fedavg`, so its curve equals theirs
    round for round; only the evaluation moved into the server step, where it can stop the run.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"Unknown algorithm {algorithm!r}; choose one of {ALGORITHMS}.")
    if config.dropout_prob != 0:
        raise ValueError("run_to_target() counts rounds without dropout; use dropout_prob=0.")
    weights = (get_flat_weights(model) if initial_weights is None else initial_weights).clone()
    set_flat_weights(model, weights)
    rounds, accuracy = [0], [evaluate(model, test_x, test_y).accuracy]
    current_round = 0

    def client_step(client: Client, weights: torch.Tensor, round_index: int, k: int) -> ClientUpdate:
        nonlocal current_round
        current_round = round_index
        if algorithm == "FedSGD":
            return client.gradient(weights)
        generator = federated._client_generator(config.seed, round_index, k)
        return client.train(weights, config.local_epochs, config.batch_size, config.lr, generator)

    def server_step(weights: torch.Tensor, average: torch.Tensor) -> torch.Tensor:
        new_weights = gradient_step(weights, average, config.lr) if algorithm == "FedSGD" else average
        if current_round % config.eval_every == 0 or current_round == config.num_rounds:
            set_flat_weights(model, new_weights)
            rounds.append(current_round)
            accuracy.append(evaluate(model, test_x, test_y).accuracy)
            if stop_at_target and max(accuracy) >= target:
                raise _TargetReached
        return new_weights

    # The loop's own evaluation would repeat ours, so it is asked for only after round N.
    loop_config = replace(config, eval_every=config.num_rounds)
    try:
        federated._run(algorithm, clients, model, test_x, test_y, loop_config, client_step,
                       server_step, weights, progress)
    except _TargetReached:
        pass
    return Trial(config.lr, rounds, accuracy, rounds_to_target(rounds, accuracy, target), current_round,
                 config.num_rounds)


# ---------------------------------------------------------------------------------------
# A sweep over settings, with the best learning rate of a grid for each
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One cell of a Table-2-like grid: an algorithm, its local work, the data split, the budget.

    Parameters
    ----------
    algorithm : ``"FedSGD"`` or ``"FedAvg"``.
    local_epochs : L (the paper's E); FedSGD is L = 1.
    batch_size : B; ``math.inf`` is full batch (FedSGD is B = inf).
    partition : ``"iid"``, ``"shards"`` or ``"dirichlet"`` (see :func:`make_partition`).
    num_rounds : N, the most rounds a run may take ("not reached within N" beyond that).
    eval_every : evaluate every this many rounds (the target crossing is interpolated).
    client_fraction : C.
    """

    algorithm: str = "FedAvg"
    local_epochs: int = 1
    batch_size: float = math.inf
    partition: str = "iid"
    num_rounds: int = 100
    eval_every: int = 1
    client_fraction: float = 0.1

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"Unknown algorithm {self.algorithm!r}; choose one of {ALGORITHMS}.")
        if self.algorithm == "FedSGD" and (self.local_epochs != 1 or self.batch_size != math.inf):
            raise ValueError("FedSGD is L = 1 and B = inf; leave local_epochs and batch_size at their defaults.")
        if self.partition not in PARTITIONS:
            raise ValueError(f"Unknown partition {self.partition!r}; choose one of {PARTITIONS}.")

    @property
    def name(self) -> str:
        """The row label: ``FedSGD`` or ``FedAvg L=5, B=10``."""
        if self.algorithm == "FedSGD":
            return "FedSGD"
        return f"FedAvg L={self.local_epochs}, B={format_batch_size(self.batch_size)}"

    def local_updates(self, num_examples: int, num_clients: int) -> float:
        """u = L n / (K B), the expected local updates per client per round (L when B = inf).

        Parameters
        ----------
        num_examples : n, all training examples.
        num_clients : K.
        """
        if self.batch_size == math.inf:
            return float(self.local_epochs)
        return self.local_epochs * num_examples / (num_clients * self.batch_size)


def format_batch_size(batch_size: float) -> str:
    """``"inf"`` for full batch, else the whole number: ``10``."""
    return "inf" if batch_size == math.inf else str(int(batch_size))


@dataclass
class SweepRecord:
    """A setting, every learning rate tried for it, and the one kept (as the paper reports)."""

    setting: Setting
    trials: list[Trial]
    megabytes_per_round: float
    local_updates: float
    best: Trial = field(init=False)

    def __post_init__(self):
        self.best = choose_best(self.trials)

    @property
    def lr(self) -> float:
        return self.best.lr

    @property
    def rounds_to_target(self) -> float | None:
        return self.best.rounds_to_target


def choose_best(trials: Sequence[Trial]) -> Trial:
    """The trial the paper would report: fewest rounds to the target.

    Parameters
    ----------
    trials : one per learning rate.

    Ties, and settings where no learning rate reached the target, go to the highest final
    accuracy; remaining ties to the smallest learning rate, so the choice is deterministic.
    """
    if not trials:
        raise ValueError("choose_best() needs at least one trial.")

    def key(trial: Trial):
        reached = trial.rounds_to_target is not None
        return (0 if reached else 1, trial.rounds_to_target if reached else 0.0,
                -trial.final_accuracy, trial.lr)

    return min(trials, key=key)


LR_GRID_KEYS = ("full-batch", "minibatch")


def learning_rates(lr_grid: Sequence[float] | Mapping[str, Sequence[float]], setting: Setting) -> list[float]:
    """The learning rates a setting tries: the whole grid, or its kind's part of it.

    Parameters
    ----------
    lr_grid : one list for every setting, or ``{"full-batch": [...], "minibatch": [...]}``:
        full-batch gradient steps (FedSGD, and FedAvg with B = inf) tolerate larger steps than
        noisy minibatch steps, so each kind of row gets a grid of its own.
    setting : the setting.
    """
    if isinstance(lr_grid, Mapping):
        unknown = sorted(set(lr_grid) - set(LR_GRID_KEYS))
        if unknown:
            raise ValueError(f"Unknown learning-rate grid keys {unknown}; use {LR_GRID_KEYS}.")
        kind = "full-batch" if setting.batch_size == math.inf else "minibatch"
        if kind not in lr_grid:
            raise ValueError(f"The learning-rate grid has no {kind!r} rates, which {setting.name} needs; "
                             f"give both keys {LR_GRID_KEYS}, or one list for every setting.")
        rates = lr_grid[kind]
    else:
        rates = lr_grid
    rates = [float(lr) for lr in rates]
    if not rates or any(not lr > 0 for lr in rates):
        raise ValueError(f"The learning-rate grid for {setting.name} must hold positive numbers, got {rates}.")
    return rates


def trial_order(rates: Sequence[float]) -> list[float]:
    """The order a setting tries its rates in: the middle of the sorted grid first, then the rest.

    Parameters
    ----------
    rates : the setting's learning-rate grid.
    """
    ordered = sorted(rates)
    middle = ordered.pop(len(ordered) // 2)
    return [middle] + ordered


def sweep(
    settings: Sequence[Setting],
    lr_grid: Sequence[float] | Mapping[str, Sequence[float]],
    data: HospitalData,
    target: float,
    num_clients: int = 50,
    seed: int = 0,
    alpha: float = 0.1,
    shards_per_client: int = 2,
    stop_at_target: bool = True,
    prune: bool = True,
    progress: bool = True,
) -> list[SweepRecord]:
    """Run every setting at every learning rate of the grid; keep the best rate per setting.

    Parameters
    ----------
    settings : the grid, one :class:`Setting` per cell.
    lr_grid : the learning rates to try: one list for all, or one for full-batch rows and one
        for minibatch rows (see :func:`learning_rates`); the paper tunes each row.
    data : the hospitals; their training data is pooled and re-split into K clients.
    target : the accuracy on the common test set to reach.
    num_clients : K.
    seed : seeds the split, w_0, client selection and minibatches: the same seed, the same records.
    alpha : the Dirichlet concentration of the ``"dirichlet"`` split.
    shards_per_client : s for the ``"shards"`` split.
    stop_at_target : end each run once it reaches the target (saves most of the time).
    prune : once a rate has reached the target in r rounds, run the setting's other rates only
        up to the first evaluated round at or after r: beyond it they cannot win, and up to it
        they are evaluated exactly as a full run would be, so the choice is unchanged.
    progress : show one progress bar over all runs.

    Every run starts from the same w_0, so the settings differ only in what they set. The
    rates are tried middle first (:func:`trial_order`), which makes pruning pay off early.
    """
    features, labels = data.pooled()
    splits: dict[str, list[Client]] = {}
    model = make_model("cnn", seed=seed)
    initial_weights = get_flat_weights(model)
    runs = [(setting, lr) for setting in settings for lr in trial_order(learning_rates(lr_grid, setting))]
    trials: dict[Setting, list[Trial]] = {setting: [] for setting in settings}
    bar = tqdm(runs, desc="sweep", disable=not progress)
    for setting, lr in bar:
        bar.set_postfix_str(f"{setting.partition}, {setting.name}, lr={lr:g}")
        if setting.partition not in splits:
            parts = make_partition(labels.numpy(), num_clients, setting.partition, seed=seed,
                                   alpha=alpha, shards_per_client=shards_per_client)
            splits[setting.partition] = [Client(features[part], labels[part], model, f"client {k + 1}")
                                         for k, part in enumerate(parts)]
        num_rounds = setting.num_rounds
        reached = [t.rounds_to_target for t in trials[setting] if t.rounds_to_target is not None]
        if prune and reached:
            # A rate still short of the target at the best rate's round can no longer win. The
            # cap is rounded up to the evaluation grid: an extra evaluation off the grid would
            # give the pruned run a finer look at its crossing than the full run would have.
            every = setting.eval_every
            num_rounds = min(num_rounds, every * math.ceil(min(reached) / every))
        config = FedConfig(num_rounds=num_rounds, local_epochs=setting.local_epochs,
                           batch_size=setting.batch_size, lr=lr, client_fraction=setting.client_fraction,
                           seed=seed, eval_every=setting.eval_every)
        set_seed(seed)
        trials[setting].append(run_to_target(setting.algorithm, splits[setting.partition], model,
                                             data.test_x, data.test_y, config, target,
                                             initial_weights, stop_at_target))
    for setting_trials in trials.values():
        setting_trials.sort(key=lambda t: t.lr)
    bytes_per_message = model_size_bytes(model)
    return [
        SweepRecord(setting, trials[setting],
                    megabytes_per_round=2 * num_selected(num_clients, setting.client_fraction)
                    * bytes_per_message / 1e6,
                    local_updates=setting.local_updates(labels.shape[0], num_clients))
        for setting in settings
    ]


# ---------------------------------------------------------------------------------------
# Table 2: the settings, the command, the committed file
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def torch_threads(num_threads: int) -> Iterator[None]:
    """Run the body with ``num_threads`` torch threads, then restore the previous count.

    Parameters
    ----------
    num_threads : intra-op threads; results are reproducible bit for bit only at a fixed count.
    """
    if not (isinstance(num_threads, (int, np.integer)) and not isinstance(num_threads, bool) and num_threads >= 1):
        raise ValueError(f"num_threads must be a whole number >= 1, got {num_threads!r}.")
    previous = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def cpu_capability() -> str:
    """The CPU kernel set torch dispatches to here (e.g. ``"AVX512"``, ``"AVX2"``)."""
    return torch.backends.cpu.get_cpu_capability()


def cpu_model() -> str:
    """The processor's model name (MKL and oneDNN pick their kernels by it, not only by the kernel set)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


TABLE2_TARGET = 0.85
TABLE2_LR_GRID = {"full-batch": (0.25, 0.5, 1.0), "minibatch": (0.05, 0.1, 0.2)}
TABLE2_NUM_CLIENTS = 50
TABLE2_CLIENT_FRACTION = 0.1
TABLE2_SHARDS_PER_CLIENT = 2
# (algorithm, L, B, N, eval_every) per row, FedSGD first. Slow learners get more rounds,
# evaluated less often (the crossing is interpolated between evaluations).
TABLE2_ROWS = (
    ("FedSGD", 1, math.inf, 1000, 10),
    ("FedAvg", 5, math.inf, 200, 5),
    ("FedAvg", 1, 50, 400, 4),
    ("FedAvg", 1, 10, 300, 2),
    ("FedAvg", 5, 10, 150, 1),
    ("FedAvg", 20, 10, 60, 1),
)


def table2_settings(partitions: Sequence[str] = ("iid", "shards"), quick: bool = False) -> list[Setting]:
    """The rows of our Table 2, for each partition (columns).

    Parameters
    ----------
    partitions : the columns.
    quick : a tiny slice (two rows, three rounds) for smoke tests.
    """
    rows = TABLE2_ROWS[::3] if quick else TABLE2_ROWS
    return [
        Setting(algorithm, local_epochs, batch_size, partition,
                num_rounds=min(num_rounds, 3) if quick else num_rounds,
                eval_every=1 if quick else eval_every, client_fraction=TABLE2_CLIENT_FRACTION)
        for partition in partitions
        for algorithm, local_epochs, batch_size, num_rounds, eval_every in rows
    ]


def _rounded(value: float | None, decimals: int) -> float | None:
    return None if value is None else round(float(value), decimals)


def records_to_json(records: Sequence[SweepRecord]) -> list[dict]:
    """The records as plain JSON-ready dicts (B = inf is written as the string "inf")."""
    rows = []
    for record in records:
        setting = asdict(record.setting)
        # JSON has no infinity: B = inf is written as the string "inf".
        setting["batch_size"] = "inf" if record.setting.batch_size == math.inf else int(record.setting.batch_size)
        rows.append({
            "name": record.setting.name,
            **setting,
            "local_updates": round(record.local_updates, 3),
            "megabytes_per_round": round(record.megabytes_per_round, 4),
            "lr": record.lr,
            "rounds_to_target": _rounded(record.rounds_to_target, 2),
            "trials": [
                {"lr": trial.lr, "rounds_to_target": _rounded(trial.rounds_to_target, 2),
                 "rounds_run": trial.rounds_run, "num_rounds": trial.num_rounds, "rounds": trial.rounds,
                 "accuracy": [round(a, DECIMALS) for a in trial.accuracy]}
                for trial in record.trials
            ],
        })
    return rows


def setting_from_json(row: Mapping) -> Setting:
    """The :class:`Setting` a record of the results file was run with."""
    batch_size = math.inf if row["batch_size"] == "inf" else float(row["batch_size"])
    return Setting(row["algorithm"], int(row["local_epochs"]), batch_size, row["partition"],
                   int(row["num_rounds"]), int(row["eval_every"]), float(row["client_fraction"]))


def run_table2(
    settings: Sequence[Setting] | None = None,
    data_source: str = "synthetic",
    seed: int = 0,
    target: float = TABLE2_TARGET,
    lr_grid: Mapping[str, Sequence[float]] = TABLE2_LR_GRID,
    num_clients: int = TABLE2_NUM_CLIENTS,
    shards_per_client: int = TABLE2_SHARDS_PER_CLIENT,
    alpha: float = 0.1,
    workers: int = 1,
    threads: int = 1,
    progress: bool = True,
) -> dict:
    """Run the Table 2 sweep and return the results file's contents (metadata and records).

    Parameters
    ----------
    settings : the grid (default: :func:`table2_settings`).
    data_source : ``"synthetic"`` or ``"pneumoniamnist"``.
    seed : seeds the data, the split and every run.
    target : the accuracy to reach on the common test set.
    lr_grid : learning rates per algorithm.
    num_clients : K, clients carved out of the pooled training data.
    shards_per_client : s for the ``"shards"`` split.
    alpha : the Dirichlet concentration for a ``"dirichlet"`` column.
    workers : processes to share the settings among (the results do not depend on it).
    threads : torch threads in every process; recorded, since the last bits depend on it.
    progress : show a progress bar over runs (over settings when there are several workers).
    """
    from . import __version__

    settings = table2_settings() if settings is None else list(settings)
    started = time.perf_counter()
    sweep_options = dict(lr_grid=lr_grid, target=target, num_clients=num_clients, seed=seed,
                         alpha=alpha, shards_per_client=shards_per_client)
    if workers <= 1:
        with torch_threads(threads):
            records = _sweep_chunk(settings, data_source, progress=progress, **sweep_options)
    else:
        # Each setting is an independent computation from the same w_0 and seeds, so sharing
        # the settings among processes changes nothing but the wall-clock time. One task per
        # setting lets an idle process take the next one.
        context = multiprocessing.get_context("spawn")
        records = [None] * len(settings)
        with ProcessPoolExecutor(workers, mp_context=context, initializer=torch.set_num_threads,
                                 initargs=(threads,)) as pool:
            futures = {pool.submit(_sweep_chunk, [setting], data_source, False, **sweep_options): index
                       for index, setting in enumerate(settings)}
            for future in tqdm(as_completed(futures), total=len(futures), desc="settings",
                               disable=not progress):
                records[futures[future]] = future.result()[0]
    data = _hospitals(data_source, seed)
    _, labels = data.pooled()
    model = make_model("cnn", seed=seed)
    return {
        "description": "Rounds to reach a target test accuracy, FedSGD and FedAvg (our Table 2 of "
                       "McMahan et al. 2017). Regenerate with: python -m fl_lessons.experiments table2",
        "package_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        # The curves are reproducible bit for bit at this thread count on this kernel set.
        "torch_threads": threads,
        "cpu_capability": cpu_capability(),
        "cpu_model": cpu_model(),
        "data_source": data_source,
        "seed": seed,
        "target": target,
        "model": "cnn",
        "model_bytes": model_size_bytes(model),
        "num_examples": int(labels.shape[0]),
        "num_test_examples": int(data.test_y.shape[0]),
        "num_clients": num_clients,
        "client_fraction": TABLE2_CLIENT_FRACTION,
        "partitions": {"iid": "partition_iid",
                       "shards": f"partition_shards, {shards_per_client} shard(s) per client",
                       "dirichlet": f"partition_dirichlet, alpha={alpha}"},
        "shards_per_client": shards_per_client,
        "alpha": alpha,
        "lr_grid": {kind: list(rates) for kind, rates in lr_grid.items()},
        "stop_at_target": True,
        "prune": True,
        "seconds": round(time.perf_counter() - started, 1),
        "records": records,
    }


@lru_cache(maxsize=2)
def _hospitals(data_source: str, seed: int) -> HospitalData:
    """The hospitals, built once per process (each worker of the sweep builds its own)."""
    return load_hospitals(data_source, seed=seed)


def _sweep_chunk(settings: Sequence[Setting], data_source: str, progress: bool, **options) -> list[dict]:
    """Run part of the sweep in this process, on data rebuilt from its seed; return JSON rows."""
    data = _hospitals(data_source, options["seed"])
    return records_to_json(sweep(settings, data=data, progress=progress, **options))


def save_results(results: dict, path: str | Path) -> Path:
    """Write results as indented JSON (curves on one line each, so the file stays readable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=1)
    # Lists of numbers go on one line each: a curve is one line in the file (and in a diff).
    text = re.sub(r"\[\s*([-+0-9.eE,\s]+?)\s*\]",
                  lambda match: "[" + ", ".join(x.strip() for x in match.group(1).split(",")) + "]", text)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def load_results(path: str | Path = TABLE2_PATH) -> dict:
    """Read a results file written by ``python -m fl_lessons.experiments table2``.

    Parameters
    ----------
    path : the JSON file (default: the committed ``results/table2.json``).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"No results at {path}. Create them with: python -m fl_lessons.experiments table2 --out {path}"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def replay_trial(results: dict, record_index: int, lr: float, num_rounds: int) -> tuple[list[int], list[float]]:
    """Re-run the first rounds of one committed trial; its curve must match the file's.

    Parameters
    ----------
    results : the contents of a results file (:func:`load_results`).
    record_index : which record (setting).
    lr : which of its learning rates.
    num_rounds : how many rounds to re-run (the first ones).

    Returns the evaluated rounds and accuracies (rounded as in the file), up to ``num_rounds``.
    The run uses the file's recorded torch thread count, so the curve can match it exactly.
    """
    if "torch_threads" not in results:
        raise ValueError("These results do not record their torch thread count, so they cannot be replayed "
                         "exactly; regenerate them with python -m fl_lessons.experiments table2")
    row = results["records"][record_index]
    setting = setting_from_json(row)
    setting = replace(setting, num_rounds=min(num_rounds, setting.num_rounds))
    data = load_hospitals(results["data_source"], seed=results["seed"])
    with torch_threads(results["torch_threads"]):
        records = sweep([setting], [lr], data, results["target"], num_clients=results["num_clients"],
                        seed=results["seed"], alpha=results["alpha"],
                        shards_per_client=results["shards_per_client"], progress=False)
    trial = records[0].best
    return trial.rounds, [round(a, DECIMALS) for a in trial.accuracy]


# ---------------------------------------------------------------------------------------
# Reading the results: the table notebook 05 shows
# ---------------------------------------------------------------------------------------

PAPER_TABLE2 = {
    # McMahan et al. 2017, Table 2, MNIST CNN to 99%, C = 0.1: (u, rounds IID, rounds non-IID).
    "FedSGD": (1, 626, 483),
    "FedAvg L=5, B=inf": (5, 179, 1000),
    "FedAvg L=1, B=50": (12, 65, 600),
    "FedAvg L=1, B=10": (60, 34, 350),
    "FedAvg L=5, B=10": (300, 20, 229),
    "FedAvg L=20, B=10": (1200, 18, 173),
}


def table2_rows(results: dict, partitions: Sequence[str] = ("iid", "shards")) -> list[dict]:
    """One row per setting: u, and per partition the rounds to target and the speed-up over FedSGD.

    Parameters
    ----------
    results : the contents of a results file.
    partitions : the columns.

    ``rounds`` is None when no learning rate reached the target within N; the speed-up is
    then None too, and ``limit`` holds N so the table can say "not within N".
    Where FedSGD itself did not reach the target, ``speedup_at_least`` is N_FedSGD / rounds: a lower bound.
    """
    by_key = {(row["partition"], row["name"]): row for row in results["records"]}
    names = list(dict.fromkeys(row["name"] for row in results["records"]))
    table = []
    for name in names:
        entry = {"name": name}
        for partition in partitions:
            row = by_key.get((partition, name))
            if row is None:
                continue
            baseline = by_key.get((partition, "FedSGD"))
            rounds = row["rounds_to_target"]
            entry["u"] = row["local_updates"]
            entry[partition] = {"rounds": rounds, "limit": row["num_rounds"], "lr": row["lr"],
                                "speedup": None, "speedup_at_least": None}
            if rounds is not None and baseline is not None:
                if baseline["rounds_to_target"] is not None:
                    entry[partition]["speedup"] = baseline["rounds_to_target"] / rounds
                else:
                    entry[partition]["speedup_at_least"] = baseline["num_rounds"] / rounds
        table.append(entry)
    return table


def format_rounds(cell: Mapping) -> str:
    """``"23.4"``, or ``"> 500"`` when not reached within N = 500."""
    return f"{cell['rounds']:.1f}" if cell["rounds"] is not None else f"> {cell['limit']}"


def format_speedup(cell: Mapping) -> str:
    """``"12.3x"``, ``">= 4.0x"`` (FedSGD never got there), or ``"-"`` (this row never got there)."""
    if cell["speedup"] is not None:
        return f"{cell['speedup']:.1f}x"
    if cell["speedup_at_least"] is not None:
        return f">= {cell['speedup_at_least']:.1f}x"
    return "-"


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fl_lessons.experiments table2 [--out FILE] [--quick]``."""
    parser = argparse.ArgumentParser(prog="python -m fl_lessons.experiments",
                                     description="Run the course's long experiments and save their results.")
    parser.add_argument("experiment", choices=["table2"], help="which experiment to run")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the JSON (default: results/table2.json, "
                             "or results/table2_quick.json with --quick)")
    parser.add_argument("--quick", action="store_true", help="a tiny slice, to check that it runs")
    parser.add_argument("--data-source", default="synthetic", choices=["synthetic", "pneumoniamnist"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process (recorded in the file: the last bits of every "
                             "curve depend on it; 1 is also fastest for this small CNN)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes to share the settings among (same results, less waiting)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    out = args.out or RESULTS_DIR / ("table2_quick.json" if args.quick else "table2.json")
    results = run_table2(table2_settings(quick=args.quick), data_source=args.data_source,
                         seed=args.seed, workers=args.workers, threads=args.threads,
                         progress=not args.no_progress)
    save_results(results, out)
    print(f"wrote {out} in {results['seconds']:.0f} s")
    for entry in table2_rows(results):
        cells = "  ".join(f"{p}: {format_rounds(entry[p])} ({format_speedup(entry[p])})"
                          for p in ("iid", "shards") if p in entry)
        print(f"{entry['name']:<20} u={entry['u']:<8g} {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
