"""The vectorized engine: every selected client of a round trained in one batched pass.

Not taught in a notebook of its own: it is how :func:`fl_lessons.federated.run_fedavg` and
:func:`~fl_lessons.federated.run_fedsgd` run when ``FedConfig(engine="vectorized")`` is
chosen, and by default on a GPU (notebook 04 runs the same FedAvg with either engine).

The plain ("loop") engine trains one client after another in one shared module. This engine
stacks the weights of the m selected clients into one ``(m, P)`` tensor and takes each local
SGD step for all of them at once with ``torch.func``: ``vmap`` over the clients of
``grad`` of the loss, with the model run by ``functional_call`` on each client's weights.

It computes the same numbers as the loop engine, up to float rounding:

- each client's minibatch order comes from the same seeded generator, drawn the same way
  as :func:`fl_lessons.training.sgd_epochs` draws it (one ``randperm`` per epoch, none when
  the batch holds all n_k examples);
- clients have different n_k, so batches are padded to a common width with a 0/1 mask per
  example: the masked mean loss equals the plain mean over the real examples, and a client
  that has finished its steps gets an all-zero mask, hence a zero gradient and no change;
- it still returns one :class:`~fl_lessons.federated.ClientUpdate` (weights or gradient,
  n_k, loss) per client, so the server's :func:`~fl_lessons.federated.aggregate` sees
  exactly what it sees with the loop engine.

Speed: on a GPU, batching the clients is the usual winner. On a laptop CPU the loop engine
is faster for the small CNN (a batched convolution with a different filter per client is
slower there than many small ordinary ones); ``benchmarks/run.py`` measures both.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.nn import functional as F

from .federated import Client, ClientUpdate

# How many images one batched call may hold (clients are split into groups to stay below
# it). Bounds the memory of the activations: about 0.1 MB per image for the small CNN.
MAX_EXAMPLES_PER_CALL = {"cpu": 4096, "cuda": 65536}


class VectorizedEngine:
    """Trains the selected clients of a round together, on stacked flat weight vectors.

    Parameters
    ----------
    clients : all the clients of the run (the engine reads their data, as the loop engine's
        clients do, and gathers it into one tensor once per run).
    model : the workspace module: it supplies the architecture; its weights are not used.
    max_examples_per_call : images per batched call (default: by device, see
        ``MAX_EXAMPLES_PER_CALL``); more clients than fit are processed in groups.
    """

    def __init__(self, clients: Sequence[Client], model: nn.Module, max_examples_per_call: int | None = None):
        self._model = model
        self._names = [name for name, _ in model.named_parameters()]
        self._shapes = [parameter.shape for parameter in model.parameters()]
        self._sizes = [parameter.numel() for parameter in model.parameters()]
        # The simulator holds every client's data in one process, so one tensor with
        # offsets serves all of them: a batch for any set of clients is one gather.
        features = [client._features for client in clients]
        labels = [client._labels for client in clients]
        self._features = torch.cat(features)
        self._labels = torch.cat(labels).to(self._features.dtype)
        self._device = self._features.device
        sizes = torch.tensor([client.num_examples for client in clients])
        self._num_examples = sizes.tolist()
        self._offsets = (torch.cumsum(sizes, 0) - sizes).tolist()
        if max_examples_per_call is None:
            max_examples_per_call = MAX_EXAMPLES_PER_CALL.get(self._device.type, MAX_EXAMPLES_PER_CALL["cpu"])
        self._max_examples = max_examples_per_call
        self._step = vmap(grad_and_value(self._masked_loss), in_dims=(0, 0, 0, 0))
        self._gradient_at_shared_weights = vmap(grad_and_value(self._masked_loss), in_dims=(None, 0, 0, 0))

    def _masked_loss(self, flat_weights, features, labels, mask):
        """Mean BCE over the examples whose mask is 1 (0 when there are none)."""
        parameters, offset = {}, 0
        for name, shape, size in zip(self._names, self._shapes, self._sizes):
            parameters[name] = flat_weights[offset:offset + size].view(shape)
            offset += size
        logits = functional_call(self._model, parameters, (features,))
        losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        return (losses * mask).sum() / mask.sum().clamp(min=1.0)

    def _groups(self, clients: Sequence[int], width: int) -> list[list[int]]:
        """Consecutive groups of clients with at most ``max_examples_per_call`` padded images."""
        per_group = max(self._max_examples // max(width, 1), 1)
        return [list(clients[start:start + per_group]) for start in range(0, len(clients), per_group)]

    def _padded_batches(self, client: int, batches: list[torch.Tensor], num_steps: int, width: int):
        """One client's schedule as global indices ``(num_steps, width)`` and a 0/1 mask."""
        indices = torch.full((num_steps, width), self._offsets[client], dtype=torch.long)
        mask = torch.zeros(num_steps, width, dtype=self._features.dtype)
        for step, batch in enumerate(batches):
            indices[step, :batch.numel()] = batch + self._offsets[client]
            mask[step, :batch.numel()] = 1.0
        return indices, mask

    def fedavg_round(
        self,
        weights: torch.Tensor,
        clients: Sequence[int],
        local_epochs: int,
        batch_size: float,
        lr: float,
        generators: Sequence[torch.Generator],
    ) -> list[ClientUpdate]:
        """Every listed client runs L epochs of SGD from w_t; returns their w^k_{t+1}.

        Parameters
        ----------
        weights : w_t, the flat global weights.
        clients : indices of the clients that train this round (into the engine's clients).
        local_epochs : L.
        batch_size : B (``math.inf`` for full batch).
        lr : eta.
        generators : one per listed client, seeded exactly as the loop engine seeds them.
        """
        schedules = [minibatch_schedule(self._num_examples[client], local_epochs, batch_size, generator)
                     for client, generator in zip(clients, generators)]
        width = max(batch.numel() for schedule in schedules for batch in schedule)
        updates: list[ClientUpdate] = []
        positions = list(range(len(clients)))
        for group in self._groups(positions, width):
            num_steps = max(len(schedules[j]) for j in group)
            padded = [self._padded_batches(clients[j], schedules[j], num_steps, width) for j in group]
            indices = torch.stack([index for index, _ in padded], dim=1).to(self._device)  # (S, m, width)
            masks = torch.stack([mask for _, mask in padded], dim=1).to(self._device)
            counts = masks.sum(dim=2)  # real examples per step and client
            # Detached: each step's weights are data for the next, never part of a graph.
            stacked = weights.detach().unsqueeze(0).repeat(len(group), 1)
            loss_sums = torch.zeros(len(group), dtype=weights.dtype, device=weights.device)
            for step in range(num_steps):
                batch = indices[step]
                gradients, step_losses = self._step(stacked, self._features[batch], self._labels[batch], masks[step])
                stacked.add_(gradients, alpha=-lr)
                loss_sums.add_(step_losses * counts[step])
            # Each epoch covers all n_k examples: the mean of the L epoch losses is this.
            mean_losses = loss_sums.cpu().tolist()
            for row, j in enumerate(group):
                num_examples = self._num_examples[clients[j]]
                updates.append(ClientUpdate(stacked[row], num_examples,
                                            mean_losses[row] / (num_examples * local_epochs)))
        return updates

    def fedsgd_round(self, weights: torch.Tensor, clients: Sequence[int]) -> list[ClientUpdate]:
        """Every listed client's full-batch gradient g_k at w_t, in batched passes.

        Parameters
        ----------
        weights : w_t, shared by all clients (so only the data is batched).
        clients : indices of the clients that report this round.
        """
        width = max(self._num_examples[client] for client in clients)
        updates: list[ClientUpdate] = []
        for group in self._groups(list(clients), width):
            padded = [self._padded_batches(client, [torch.arange(self._num_examples[client])], 1, width)
                      for client in group]
            indices = torch.cat([index for index, _ in padded]).to(self._device)  # (m, width)
            masks = torch.cat([mask for _, mask in padded]).to(self._device)
            gradients, losses = self._gradient_at_shared_weights(
                weights.detach(), self._features[indices], self._labels[indices], masks)
            for row, (client, loss) in enumerate(zip(group, losses.cpu().tolist())):
                updates.append(ClientUpdate(gradients[row], self._num_examples[client], loss))
        return updates


def minibatch_schedule(
    num_examples: int, local_epochs: int, batch_size: float, generator: torch.Generator | None
) -> list[torch.Tensor]:
    """The local indices of each SGD step a client takes, drawn as ``sgd_epochs`` draws them.

    Parameters
    ----------
    num_examples : n_k.
    local_epochs : L.
    batch_size : B; B >= n_k means one full-batch step per epoch, with no shuffle drawn.
    generator : the client's generator for this round.
    """
    if batch_size >= num_examples:
        return [torch.arange(num_examples)] * local_epochs
    step = int(batch_size)
    batches = []
    for _ in range(local_epochs):
        order = torch.randperm(num_examples, generator=generator)
        batches.extend(order[start:start + step] for start in range(0, num_examples, step))
    return batches
