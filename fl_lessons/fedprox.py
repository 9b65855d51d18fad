"""FedProx: FedAvg with a proximal term that keeps each local model near the global one.

Taught in notebook 06 (when hospitals differ). Li et al. 2020, "Federated Optimization in
Heterogeneous Networks" (MLSys, arXiv 1812.06127): client k minimises, from w_t,

    h_k(w) = F_k(w) + (mu / 2) ||w - w_t||^2,

so each local SGD step uses the gradient of F_k plus mu (w - w_t). With mu = 0 this is FedAvg
exactly (same minibatches, same steps); a larger mu pulls the local model back towards w_t,
which limits client drift on heterogeneous data at the price of slower local progress.
The server is unchanged: the same weighted average as FedAvg.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from . import federated
from .data import HospitalData
from .federated import Client, ClientUpdate, FedConfig, History
from .models import get_flat_weights, set_flat_weights
from .training import sgd_epochs


def proximal_gradient(gradient: torch.Tensor, weights: torch.Tensor, anchor: torch.Tensor, mu: float) -> torch.Tensor:
    """The gradient of F_k(w) + (mu / 2) ||w - w_t||^2: ``gradient + mu (weights - anchor)``.

    Parameters
    ----------
    gradient : the gradient of the client's own loss F_k at ``weights``.
    weights : w, the local model.
    anchor : w_t, the global model the round started from.
    mu : the proximal strength, >= 0.
    """
    # The gradient of (mu / 2) ||w - w_t||^2 is mu (w - w_t): it points away from w_t, so the
    # step, which goes against it, pulls w back towards w_t.
    return gradient + mu * (weights - anchor)


def proximal_sgd_epochs(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    anchor: torch.Tensor,
    epochs: int,
    batch_size: float,
    lr: float,
    mu: float,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Minibatch SGD on F_k(w) + (mu / 2) ||w - anchor||^2, in place on ``model``.

    Parameters
    ----------
    model : trained in place; starts at (and is pulled towards) ``anchor``.
    features, labels : the client's data.
    anchor : w_t, the flat global weights the proximal term measures distance from.
    epochs : L.
    batch_size : B (``math.inf`` for one full-batch step per epoch).
    lr : eta.
    mu : the proximal strength, >= 0 (0 gives plain SGD, step for step).
    generator : shuffles the minibatches, exactly as :func:`fl_lessons.training.sgd_epochs` does.

    Returns the mean data loss F_k of each epoch (the proximal term is not included).
    """
    if not mu >= 0:
        raise ValueError(f"The proximal strength mu must be >= 0, got {mu}.")
    parameters = list(model.parameters())
    anchors = []
    offset = 0
    for parameter in parameters:
        anchors.append(anchor[offset:offset + parameter.numel()].view_as(parameter))
        offset += parameter.numel()

    def with_proximal_term(gradients):
        return [proximal_gradient(gradient, parameter.detach(), start, mu)
                for gradient, parameter, start in zip(gradients, parameters, anchors)]

    # The same SGD loop as every other client: same checks, same batches, same steps.
    return sgd_epochs(model, features, labels, epochs, batch_size, lr, generator,
                      adjust_gradients=with_proximal_term)


class ProxClient(Client):
    """A :class:`fl_lessons.Client` that also offers FedProx's local training.

    Parameters
    ----------
    features, labels, model, name : as for :class:`fl_lessons.Client`.
    """

    def train_proximal(
        self,
        global_weights: torch.Tensor,
        local_epochs: int,
        batch_size: float,
        lr: float,
        mu: float,
        generator: torch.Generator | None = None,
    ) -> ClientUpdate:
        """FedProx service: L epochs of SGD on F_k(w) + (mu / 2)||w - w_t||^2 from w_t.

        Parameters
        ----------
        global_weights : w_t (the start and the anchor).
        local_epochs : L.
        batch_size : B.
        lr : eta.
        mu : the proximal strength (0 = FedAvg).
        generator : seeds this client's minibatch order.
        """
        set_flat_weights(self._model, global_weights)
        losses = proximal_sgd_epochs(self._model, self._features, self._labels, global_weights,
                                     local_epochs, batch_size, lr, mu, generator)
        return ClientUpdate(get_flat_weights(self._model), self.num_examples, float(np.mean(losses)))


def make_prox_clients(data: HospitalData, model: nn.Module) -> list[ProxClient]:
    """One :class:`ProxClient` per hospital, all sharing the workspace ``model``.

    Parameters
    ----------
    data : the hospitals (or clients carved out by a partitioner).
    model : the workspace module.
    """
    return [ProxClient(hospital.train_x, hospital.train_y, model, hospital.name) for hospital in data.hospitals]


def run_fedprox(
    clients: Sequence[ProxClient],
    model: nn.Module,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    config: FedConfig,
    mu: float,
    initial_weights: torch.Tensor | None = None,
    progress: bool = True,
) -> History:
    """FedProx: FedAvg whose clients add the proximal term mu (w - w_t) to every gradient.

    Parameters
    ----------
    clients : :class:`ProxClient` objects sharing ``model``.
    model : the workspace module; it holds w_N when the run ends.
    test_x, test_y : the common test set.
    config : N, L, B, C, eta, seed, ... as for :func:`fl_lessons.run_fedavg`.
    mu : the proximal strength, >= 0; ``mu = 0`` reproduces :func:`fl_lessons.run_fedavg`.
    initial_weights : w_0 (default: the model's current weights).
    progress : show a progress bar over rounds.
    """
    if not mu >= 0:
        raise ValueError(f"The proximal strength mu must be >= 0, got {mu}.")
    missing = [client.name for client in clients if not isinstance(client, ProxClient)]
    if missing:
        raise TypeError(f"run_fedprox() needs ProxClient objects (make_prox_clients); got plain clients {missing}.")

    def client_step(client: ProxClient, weights: torch.Tensor, round_index: int, k: int) -> ClientUpdate:
        generator = federated._client_generator(config.seed, round_index, k)
        return client.train_proximal(weights, config.local_epochs, config.batch_size, config.lr, mu, generator)

    def server_step(weights: torch.Tensor, average_weights: torch.Tensor) -> torch.Tensor:
        return average_weights

    return federated._run(f"FedProx (mu={mu:g})", clients, model, test_x, test_y, config, client_step,
                          server_step, initial_weights, progress)


def local_models(
    clients: Sequence[ProxClient],
    global_weights: torch.Tensor,
    local_epochs: int,
    batch_size: float,
    lr: float,
    mu: float = 0.0,
    seed: int = 0,
) -> torch.Tensor:
    """Each client's model after one round of local training from w_t: a ``(K, d)`` tensor.

    Parameters
    ----------
    clients : the clients (each trains once from ``global_weights``).
    global_weights : w_t.
    local_epochs : L.
    batch_size : B.
    lr : eta.
    mu : FedProx's proximal strength (0 = FedAvg's local training).
    seed : seeds the minibatch order (client k uses the stream of round 1, client k).
    """
    rows = []
    for k, client in enumerate(clients):
        generator = federated._client_generator(seed, 1, k)
        rows.append(client.train_proximal(global_weights, local_epochs, batch_size, lr, mu, generator).values)
    return torch.stack(rows)


def client_drift(
    clients: Sequence[ProxClient],
    global_weights: torch.Tensor,
    local_epochs: int,
    batch_size: float,
    lr: float,
    mu: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """How far each client's model moves from w_t in one round: ||w^k_{t+1} - w_t|| per client.

    Parameters
    ----------
    clients : the clients (each trains once from ``global_weights``).
    global_weights : w_t.
    local_epochs : L.
    batch_size : B.
    lr : eta.
    mu : FedProx's proximal strength (0 = FedAvg's local training).
    seed : seeds the minibatch order (client k uses the stream of round 1, client k).
    """
    models = local_models(clients, global_weights, local_epochs, batch_size, lr, mu, seed)
    return torch.linalg.vector_norm(models - global_weights, dim=1).numpy().astype(float)
