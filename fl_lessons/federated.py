"""Federated learning: clients, server aggregation, client sampling, FedSGD and FedAvg.

Taught in notebooks 02 (FedSGD), 03 (FedSGD equals one step of weight averaging) and 04
(FedAvg). This is Algorithm 1 of McMahan et al. 2017, "Communication-Efficient Learning of
Deep Networks from Decentralized Data" (AISTATS, arXiv 1602.05629), in the paper's symbols:

- K clients, client k holding n_k examples; n = sum_k n_k.
- Each round t the server picks m = max(ceil(C K), 1) clients, the set S_t.
- FedSGD: each k in S_t returns its gradient g_k at w_t; w_{t+1} = w_t - eta sum_k (n_k / m_t) g_k.
- FedAvg: each k in S_t runs L local epochs of SGD with batch size B from w_t and returns
  w^k_{t+1}; w_{t+1} = sum_k (n_k / m_t) w^k_{t+1}.

Here m_t = sum of n_k over the clients of S_t that reported, as in the paper's erratum.

The server only ever sees what a client chooses to send: a flat vector (weights or a
gradient), its example count n_k, and its training loss as a single number. Client data
stays inside :class:`Client`.
"""

from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass, field, fields, replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .data import HospitalData
from .models import get_flat_weights, model_size_bytes, set_flat_weights
from .training import DEFAULT_BATCH_SIZE, DEFAULT_LR, Metrics, evaluate, full_batch_gradient, sgd_epochs


def _is_whole_number(value) -> bool:
    """True for 3 and numpy.int64(3); False for 3.0, 2.5 and True."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


ENGINES = ("auto", "loop", "vectorized")


@dataclass(frozen=True)
class FedConfig:
    """Every setting of a federated run, validated in one place. The defaults live here.

    Parameters
    ----------
    num_rounds : N, communication rounds.
    local_epochs : L (the paper's E), passes over its own data a client makes per round.
    batch_size : B, local minibatch size; ``math.inf`` means the full local dataset.
    lr : eta, the learning rate.
    client_fraction : C, the fraction of clients selected each round, in (0, 1].
    num_clients : K; ``None`` uses every client given, a number uses the first K of them.
    dropout_prob : chance that a selected client fails to report in a round.
    seed : seeds client selection, dropout and every client's minibatch order.
    eval_every : evaluate the global model every this many rounds (and after the last).
    engine : how the clients of a round are computed: ``"loop"`` one after another in one
        shared module, ``"vectorized"`` all at once with ``torch.func`` (see
        :mod:`fl_lessons.vectorized`; same numbers up to float rounding), or ``"auto"``:
        vectorized when the model is on a GPU, the loop on a CPU (faster there).
    """

    num_rounds: int = 20
    local_epochs: int = 1
    batch_size: float = DEFAULT_BATCH_SIZE
    lr: float = DEFAULT_LR
    client_fraction: float = 1.0
    num_clients: int | None = None
    dropout_prob: float = 0.0
    seed: int = 0
    eval_every: int = 1
    engine: str = "auto"

    def __post_init__(self):
        if not (_is_whole_number(self.num_rounds) and self.num_rounds >= 1):
            raise ValueError(f"num_rounds (N) must be an integer >= 1, got {self.num_rounds!r}.")
        if not (_is_whole_number(self.local_epochs) and self.local_epochs >= 1):
            raise ValueError(f"local_epochs (L) must be an integer >= 1, got {self.local_epochs!r}.")
        if not self.batch_size >= 1:
            raise ValueError(f"batch_size (B) must be >= 1, or math.inf for full batch; got {self.batch_size!r}.")
        if not self.lr > 0:
            raise ValueError(f"lr (eta) must be > 0, got {self.lr!r}.")
        if not 0.0 < self.client_fraction <= 1.0:
            raise ValueError(
                f"client_fraction (C) must lie in (0, 1], got {self.client_fraction!r}; "
                "C = 1 means every client takes part in every round."
            )
        if self.num_clients is not None and not (_is_whole_number(self.num_clients) and self.num_clients >= 1):
            raise ValueError(f"num_clients (K) must be an integer >= 1, got {self.num_clients!r}.")
        if not 0.0 <= self.dropout_prob < 1.0:
            raise ValueError(f"dropout_prob must lie in [0, 1), got {self.dropout_prob!r}.")
        if not (_is_whole_number(self.eval_every) and self.eval_every >= 1):
            raise ValueError(f"eval_every must be an integer >= 1, got {self.eval_every!r}.")
        if self.engine not in ENGINES:
            raise ValueError(
                f"engine must be one of {ENGINES}, got {self.engine!r}; 'auto' picks 'vectorized' "
                "on a GPU and 'loop' on a CPU."
            )


@dataclass(frozen=True)
class ClientUpdate:
    """What one client sends to the server in one round, and nothing more.

    ``values`` is a flat vector the size of the model: new weights (FedAvg) or a gradient
    (FedSGD). ``num_examples`` is n_k. ``loss`` is the client's mean training loss, one number.
    """

    values: torch.Tensor
    num_examples: int
    loss: float


class Client:
    """A hospital as a federated client: it keeps its data and offers two services.

    Parameters
    ----------
    features, labels : the client's own training data; never sent anywhere.
    model : a workspace module shared by all clients in this process (weights are loaded
        into it for each service call, so no client ever copies a whole module).
    name : shown in tables and figures.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, model: nn.Module, name: str = ""):
        if labels.shape[0] < 1:
            raise ValueError(f"Client {name!r} has no examples; every client needs n_k >= 1.")
        self._features = features
        self._labels = labels
        self._model = model
        self.name = name

    @property
    def num_examples(self) -> int:
        """n_k, the number of examples this client holds."""
        return int(self._labels.shape[0])

    def gradient(self, global_weights: torch.Tensor) -> ClientUpdate:
        """FedSGD service: g_k, the gradient of the mean loss over all local data at w_t.

        Parameters
        ----------
        global_weights : w_t, the flat global weight vector.
        """
        set_flat_weights(self._model, global_weights)
        gradients, loss = full_batch_gradient(self._model, self._features, self._labels)
        flat_gradient = torch.cat([gradient.reshape(-1) for gradient in gradients])
        return ClientUpdate(flat_gradient, self.num_examples, loss)

    def train(
        self,
        global_weights: torch.Tensor,
        local_epochs: int,
        batch_size: float,
        lr: float,
        generator: torch.Generator | None = None,
    ) -> ClientUpdate:
        """FedAvg service: start from w_t, run L epochs of SGD locally, return w^k_{t+1}.

        Parameters
        ----------
        global_weights : w_t.
        local_epochs : L.
        batch_size : B (``math.inf`` for full batch).
        lr : eta.
        generator : seeds this client's minibatch order.
        """
        set_flat_weights(self._model, global_weights)
        losses = sgd_epochs(self._model, self._features, self._labels, local_epochs,
                            batch_size, lr, generator)
        return ClientUpdate(get_flat_weights(self._model), self.num_examples, float(np.mean(losses)))

    def evaluate(self, weights: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> Metrics:
        """Evaluate given weights on a test set held at this client (e.g. its own test set)."""
        set_flat_weights(self._model, weights)
        return evaluate(self._model, features, labels)


def make_clients(data: HospitalData, model: nn.Module) -> list[Client]:
    """One :class:`Client` per hospital, all sharing the workspace ``model``.

    Parameters
    ----------
    data : the hospitals.
    model : the workspace module.
    """
    return [Client(hospital.train_x, hospital.train_y, model, hospital.name) for hospital in data.hospitals]


def aggregate(updates: Sequence[ClientUpdate]) -> torch.Tensor:
    """The server's weighted average: sum_k (n_k / sum_j n_j) v_k over the updates received.

    Parameters
    ----------
    updates : what the reporting clients sent (weights or gradients, with n_k).

    The sum in the denominator runs over these updates only, so clients that were not
    selected or that dropped out carry no weight.
    """
    if len(updates) == 0:
        raise ValueError("aggregate() needs at least one client update; no client reported.")
    total_examples = sum(update.num_examples for update in updates)
    if total_examples <= 0 or any(update.num_examples < 0 for update in updates):
        raise ValueError(
            f"aggregate() needs positive example counts n_k; got {[u.num_examples for u in updates]}."
        )
    average = torch.zeros_like(updates[0].values)
    for update in updates:
        average.add_(update.values, alpha=update.num_examples / total_examples)
    return average


def gradient_step(weights: torch.Tensor, gradient: torch.Tensor, lr: float) -> torch.Tensor:
    """w - eta g: the server's FedSGD update with the averaged gradient (a new tensor).

    Parameters
    ----------
    weights : w_t.
    gradient : sum_k (n_k / n) g_k, the output of :func:`aggregate` on gradients.
    lr : eta.
    """
    return weights - lr * gradient


def num_selected(num_clients: int, client_fraction: float) -> int:
    """m = max(ceil(C K), 1): how many clients each round selects.

    Parameters
    ----------
    num_clients : K.
    client_fraction : C.
    """
    if not 0.0 < client_fraction <= 1.0:
        raise ValueError(f"client_fraction (C) must lie in (0, 1], got {client_fraction}.")
    # The small tolerance stops float error (0.3 * 10 = 3.0000000000000004) adding a client.
    return max(math.ceil(client_fraction * num_clients - 1e-9), 1)


def sample_clients(num_clients: int, client_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Select S_t: m = max(ceil(C K), 1) distinct clients, uniformly at random, sorted.

    Parameters
    ----------
    num_clients : K.
    client_fraction : C in (0, 1].
    rng : the server's random generator (seeded for reproducible runs).
    """
    if num_clients < 1:
        raise ValueError(f"num_clients (K) must be >= 1, got {num_clients}.")
    chosen = rng.choice(num_clients, size=num_selected(num_clients, client_fraction), replace=False)
    return np.sort(chosen)


@dataclass
class History:
    """What happened in a federated run, round by round (index 0 is round 1).

    Metrics are NaN in rounds that were not evaluated. ``initial`` holds the metrics of w_0.
    """

    algorithm: str
    config: FedConfig
    client_sizes: list[int]
    model_bytes: int
    initial: Metrics
    test_accuracy: list[float] = field(default_factory=list)
    test_auc: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    bytes_down: list[int] = field(default_factory=list)
    bytes_up: list[int] = field(default_factory=list)
    selected: list[list[int]] = field(default_factory=list)
    reported: list[list[int]] = field(default_factory=list)
    skipped: list[bool] = field(default_factory=list)
    final_weights: torch.Tensor | None = None
    # The server's random generator after the last round: with w_N, all a run needs to go on
    # (see ``resume_from`` in run_fedsgd / run_fedavg).
    server_rng_state: dict | None = field(default=None, repr=False)

    @property
    def rounds(self) -> list[int]:
        return list(range(1, len(self.test_accuracy) + 1))

    def accuracy_curve(self) -> tuple[list[int], list[float]]:
        """Rounds 0..N and the test accuracy of w_0..w_N (evaluated rounds only)."""
        points = [(0, self.initial.accuracy)] + [
            (t, accuracy) for t, accuracy in zip(self.rounds, self.test_accuracy) if not math.isnan(accuracy)
        ]
        return [t for t, _ in points], [accuracy for _, accuracy in points]

    def cumulative_megabytes(self) -> list[float]:
        """Megabytes sent down and up together, after each round."""
        return list(np.cumsum(np.add(self.bytes_down, self.bytes_up)) / 1e6)

    @property
    def total_bytes(self) -> int:
        return int(sum(self.bytes_down) + sum(self.bytes_up))


ClientStep = Callable[[Client, torch.Tensor, int, int], ClientUpdate]
ServerStep = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# The vectorized engine's version of a client step: all reporting clients of a round at once.
RoundStep = Callable[[torch.Tensor, int, list[int]], list[ClientUpdate]]


def resolve_engine(config: FedConfig, model: nn.Module, clients: Sequence[Client] = ()) -> str:
    """``"loop"`` or ``"vectorized"``: the engine a run with this config and model uses.

    Parameters
    ----------
    config : its ``engine`` is ``"auto"``, ``"loop"`` or ``"vectorized"``.
    model : the workspace module; ``"auto"`` vectorizes when its weights are on a GPU.
    clients : the run's clients. The vectorized engine computes what a plain :class:`Client`
        computes; clients of a subclass that changes it (FedProx's, or one that reports
        n_k = 1) need the loop, which calls their own methods.
    """
    plain = all(type(client) is Client for client in clients)
    if config.engine == "vectorized" and not plain:
        kinds = sorted({type(client).__name__ for client in clients if type(client) is not Client})
        raise ValueError(
            f"engine='vectorized' computes plain Client updates, but these clients are {kinds}, "
            "which compute their own: use engine='loop' (or 'auto', which picks it for them).")
    if config.engine != "auto":
        return config.engine
    return "vectorized" if plain and next(model.parameters()).is_cuda else "loop"


def _client_generator(seed: int, round_index: int, client_index: int) -> torch.Generator:
    """An independent, reproducible minibatch stream for client k in round t."""
    state = np.random.SeedSequence([seed, round_index, client_index]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def _run(
    algorithm: str,
    clients: Sequence[Client],
    model: nn.Module,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    config: FedConfig,
    client_step: ClientStep,
    server_step: ServerStep,
    initial_weights: torch.Tensor | None,
    progress: bool,
    make_round_step: Callable[[Sequence[Client]], RoundStep] | None = None,
    resume_from: History | None = None,
) -> History:
    """The server loop both algorithms share: select, collect, aggregate, evaluate, record.

    With ``make_round_step`` (the vectorized engine), each round's updates come from the
    round step it builds for the run's clients instead of from ``client_step`` per client.
    With ``resume_from``, the loop picks up after that run's last round (see
    :func:`_check_resumable`).
    """
    if config.num_clients is not None and config.num_clients > len(clients):
        raise ValueError(
            f"num_clients (K) = {config.num_clients}, but only {len(clients)} clients are "
            f"available. Use K <= {len(clients)} or partition the data into more clients."
        )
    clients = list(clients[: config.num_clients or len(clients)])
    num_clients = len(clients)
    bytes_per_message = model_size_bytes(model)
    if resume_from is not None:
        _check_resumable(resume_from, algorithm, config, clients, bytes_per_message, initial_weights)
    round_step = None if make_round_step is None else make_round_step(clients)
    if resume_from is None:
        rng = np.random.default_rng(config.seed)
        weights = (get_flat_weights(model) if initial_weights is None else initial_weights).clone()
        set_flat_weights(model, weights)
        history = History(algorithm, config, [client.num_examples for client in clients],
                          bytes_per_message, evaluate(model, test_x, test_y))
    else:
        rng = np.random.default_rng(config.seed)
        rng.bit_generator.state = resume_from.server_rng_state
        weights = resume_from.final_weights.clone()
        history = copy.deepcopy(resume_from)  # the earlier run's History stays as it was
        history.config = config
        rounds_done = len(history.rounds)
        if config.num_rounds > rounds_done and rounds_done % config.eval_every != 0:
            # The earlier run evaluated its last round only because it was the last; one
            # longer run would not have, so neither does the continued one.
            for metric in (history.test_accuracy, history.test_auc, history.test_loss):
                metric[-1] = math.nan
    first_round = len(history.rounds) + 1
    rounds = range(first_round, config.num_rounds + 1)
    for round_index in tqdm(rounds, desc=algorithm, disable=not progress, leave=False):
        selected = sample_clients(num_clients, config.client_fraction, rng)
        # Every selected client draws whether it fails this round, so dropout never
        # changes which clients the next round selects.
        fails = rng.uniform(size=len(selected)) < config.dropout_prob
        reported = [int(k) for k, failed in zip(selected, fails) if not failed]
        if round_step is None:
            updates = [client_step(clients[k], weights, round_index, k) for k in reported]
        else:
            updates = round_step(weights, round_index, reported) if reported else []
        if updates:
            weights = server_step(weights, aggregate(updates))
            total = sum(update.num_examples for update in updates)
            history.train_loss.append(sum(u.loss * u.num_examples for u in updates) / total)
        else:
            history.train_loss.append(math.nan)  # nobody reported: w_{t+1} = w_t
        history.bytes_down.append(len(selected) * bytes_per_message)
        history.bytes_up.append(len(updates) * bytes_per_message)
        history.selected.append([int(k) for k in selected])
        history.reported.append(reported)
        history.skipped.append(not updates)
        if round_index % config.eval_every == 0 or round_index == config.num_rounds:
            set_flat_weights(model, weights)
            metrics = evaluate(model, test_x, test_y)
            history.test_accuracy.append(metrics.accuracy)
            history.test_auc.append(metrics.auc)
            history.test_loss.append(metrics.loss)
        else:
            history.test_accuracy.append(math.nan)
            history.test_auc.append(math.nan)
            history.test_loss.append(math.nan)
    set_flat_weights(model, weights)
    history.final_weights = weights
    history.server_rng_state = rng.bit_generator.state  # a fresh dict on every read
    return history


def _check_resumable(
    earlier: History,
    algorithm: str,
    config: FedConfig,
    clients: Sequence[Client],
    bytes_per_message: int,
    initial_weights: torch.Tensor | None,
) -> None:
    """Refuse to continue a run with anything but its own settings, clients and model.

    Going on from ``earlier`` (its w_N, its server generator and its seeded minibatch
    streams) gives exactly the History of one longer run, so nothing may differ but N.

    Parameters
    ----------
    earlier : the History to continue.
    algorithm, config, clients : what this call asks for.
    bytes_per_message : the size of this call's model, in bytes.
    initial_weights : must be None: a continued run starts from ``earlier``'s w_N.
    """
    rounds_done = len(earlier.rounds)
    if earlier.algorithm != algorithm:
        raise ValueError(f"resume_from is a {earlier.algorithm} run; continue it with the same "
                         f"algorithm, not {algorithm}.")
    if initial_weights is not None:
        raise ValueError("Give either initial_weights (a new run from w_0) or resume_from "
                         "(going on from the earlier run's w_N), not both.")
    if earlier.final_weights is None or earlier.server_rng_state is None:
        raise ValueError("resume_from must be a History returned by run_fedsgd or run_fedavg.")
    changed = [
        f"{setting.name} {getattr(earlier.config, setting.name)!r} -> {getattr(config, setting.name)!r}"
        for setting in fields(FedConfig)
        if setting.name != "num_rounds" and getattr(earlier.config, setting.name) != getattr(config, setting.name)
    ]
    if changed:
        raise ValueError(
            "To continue a run, keep its settings and change only num_rounds (N); this call changes "
            + ", ".join(changed) + ". Change them back, or start a new run with initial_weights.")
    if config.num_rounds < rounds_done:
        raise ValueError(
            f"resume_from already has {rounds_done} rounds; ask for num_rounds (N) >= {rounds_done} "
            "(to look at fewer rounds, read the first N entries of its History).")
    # The clients are recognised by their n_k: the server never sees more of them.
    sizes = [client.num_examples for client in clients]
    if len(sizes) != len(earlier.client_sizes):
        raise ValueError(f"resume_from ran with {len(earlier.client_sizes)} clients, this call has "
                         f"{len(sizes)}. Continue a run with its own clients.")
    if sizes != earlier.client_sizes:
        k = next(k for k, (before, now) in enumerate(zip(earlier.client_sizes, sizes)) if before != now)
        raise ValueError(f"resume_from's client {k} had n_k = {earlier.client_sizes[k]}, this call's has "
                         f"n_k = {sizes[k]}. Continue a run with its own clients, in the same order.")
    if bytes_per_message != earlier.model_bytes:
        raise ValueError(f"resume_from ran with a {earlier.model_bytes}-byte model, this call's model has "
                         f"{bytes_per_message} bytes. Continue a run with the same model.")


def run_fedsgd(
    clients: Sequence[Client],
    model: nn.Module,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    config: FedConfig = FedConfig(),
    initial_weights: torch.Tensor | None = None,
    progress: bool = True,
    resume_from: History | None = None,
) -> History:
    """FedSGD: each round, selected clients send g_k at w_t; w_{t+1} = w_t - eta * average g_k.

    Parameters
    ----------
    clients : the clients (their ``model`` must be ``model``).
    model : the workspace module; it holds w_N when the run ends.
    test_x, test_y : the common test set the server evaluates on.
    config : N, C, eta, seed, ... (L and B are not used: FedSGD is one full-batch gradient).
    initial_weights : w_0 (default: the model's current weights).
    progress : show a progress bar over rounds.
    resume_from : an earlier run with these clients, this model and this config, but with
        at most N rounds: only the missing rounds are run, and the weights and History equal
        those of one N-round run.
    """

    def client_step(client: Client, weights: torch.Tensor, round_index: int, k: int) -> ClientUpdate:
        return client.gradient(weights)

    def server_step(weights: torch.Tensor, average_gradient: torch.Tensor) -> torch.Tensor:
        return gradient_step(weights, average_gradient, config.lr)

    def make_round_step(run_clients: Sequence[Client]) -> RoundStep:
        from .vectorized import VectorizedEngine  # imported here: it imports this module

        engine = VectorizedEngine(run_clients, model)
        return lambda weights, round_index, reported: engine.fedsgd_round(weights, reported)

    vectorized = resolve_engine(config, model, clients) == "vectorized"
    return _run("FedSGD", clients, model, test_x, test_y, config, client_step, server_step,
                initial_weights, progress, make_round_step if vectorized else None,
                resume_from)


def run_fedavg(
    clients: Sequence[Client],
    model: nn.Module,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    config: FedConfig = FedConfig(),
    initial_weights: torch.Tensor | None = None,
    progress: bool = True,
    resume_from: History | None = None,
) -> History:
    """FedAvg: each round, selected clients train L epochs from w_t; the server averages weights.

    Parameters
    ----------
    clients : the clients (their ``model`` must be ``model``).
    model : the workspace module; it holds w_N when the run ends.
    test_x, test_y : the common test set the server evaluates on.
    config : N, L, B, C, eta, seed, dropout, ...
    initial_weights : w_0 (default: the model's current weights).
    progress : show a progress bar over rounds.
    resume_from : an earlier run with these clients, this model and this config, but with
        at most N rounds: only the missing rounds are run, and the weights and History equal
        those of one N-round run.
    """

    def client_step(client: Client, weights: torch.Tensor, round_index: int, k: int) -> ClientUpdate:
        generator = _client_generator(config.seed, round_index, k)
        return client.train(weights, config.local_epochs, config.batch_size, config.lr, generator)

    def server_step(weights: torch.Tensor, average_weights: torch.Tensor) -> torch.Tensor:
        return average_weights

    def make_round_step(run_clients: Sequence[Client]) -> RoundStep:
        from .vectorized import VectorizedEngine  # imported here: it imports this module

        engine = VectorizedEngine(run_clients, model)

        def round_step(weights: torch.Tensor, round_index: int, reported: list[int]) -> list[ClientUpdate]:
            generators = [_client_generator(config.seed, round_index, k) for k in reported]
            return engine.fedavg_round(weights, reported, config.local_epochs, config.batch_size,
                                       config.lr, generators)

        return round_step

    vectorized = resolve_engine(config, model, clients) == "vectorized"
    return _run("FedAvg", clients, model, test_x, test_y, config, client_step, server_step,
                initial_weights, progress, make_round_step if vectorized else None,
                resume_from)


def fedsgd_trajectory(
    clients: Sequence[Client], model: nn.Module, initial_weights: torch.Tensor, num_steps: int, lr: float
) -> list[torch.Tensor]:
    """w_1, ..., w_l: the global weights after each of ``num_steps`` FedSGD rounds (all clients).

    Parameters
    ----------
    clients : the clients (all take part).
    model : the workspace module.
    initial_weights : w_0.
    num_steps : how many rounds.
    lr : eta.

    FedSGD with every client taking part is gradient descent on the pooled data, so the
    path does not depend on how the data is split across the clients.
    """
    path, weights = [], initial_weights.clone()
    for _ in range(num_steps):
        weights = gradient_step(weights, aggregate([client.gradient(weights) for client in clients]), lr)
        path.append(weights)
    return path


def averaging_gap_curve(
    clients: Sequence[Client],
    model: nn.Module,
    initial_weights: torch.Tensor,
    max_local_steps: int,
    lr: float,
    fedsgd_path: Sequence[torch.Tensor] | None = None,
) -> np.ndarray:
    """How far weight averaging after l local steps lands from l steps of FedSGD, l = 1..max.

    Parameters
    ----------
    clients : the clients (all take part).
    model : the workspace module.
    initial_weights : w_0, where both procedures start.
    max_local_steps : the largest l (local full-batch gradient steps, i.e. L with B = inf).
    lr : eta, the same for both procedures.
    fedsgd_path : :func:`fedsgd_trajectory` for the same data, if already computed (it does
        not depend on the split, so a panel that re-splits the data computes it once).

    Returns ``gap[l - 1] = ||w_avg(l) - w_sgd(l)|| / ||w_sgd(l) - w_0||`` where w_avg(l) is
    the n_k-weighted average of the clients' weights after l local steps each (one FedAvg
    round with L = l, B = inf) and w_sgd(l) is the result of l FedSGD rounds (l full-batch
    gradient steps on the pooled data). At l = 1 the two are equal (notebook 03's proof), so
    the gap is float noise; beyond it, the gap measures how far local training drifts.
    """
    if max_local_steps < 1:
        raise ValueError(f"max_local_steps must be >= 1, got {max_local_steps}.")
    if fedsgd_path is None:
        fedsgd_path = fedsgd_trajectory(clients, model, initial_weights, max_local_steps, lr)
    if len(fedsgd_path) < max_local_steps:
        raise ValueError(f"fedsgd_path has {len(fedsgd_path)} steps; {max_local_steps} are needed.")
    local_weights = [initial_weights.clone() for _ in clients]
    gaps = []
    for step in range(max_local_steps):
        for k, client in enumerate(clients):
            gradient_k = client.gradient(local_weights[k]).values
            local_weights[k] = gradient_step(local_weights[k], gradient_k, lr)
        averaged = aggregate([ClientUpdate(w_k, client.num_examples, math.nan)
                              for w_k, client in zip(local_weights, clients)])
        distance_travelled = torch.linalg.vector_norm(fedsgd_path[step] - initial_weights)
        gaps.append(float(torch.linalg.vector_norm(averaged - fedsgd_path[step]) / distance_travelled))
    return np.array(gaps)


def fedsgd_config(config: FedConfig) -> FedConfig:
    """The FedAvg settings that are exactly FedSGD: L = 1 and B = inf (full batch)."""
    return replace(config, local_epochs=1, batch_size=math.inf)
