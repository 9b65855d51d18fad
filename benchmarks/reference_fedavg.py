"""BASELINE ONLY - the usual FedAvg reimplementation pattern, kept to measure our speed-up.

The course never uses this file. It is written the way many popular FedAvg tutorials and
reimplementations write a simulation on one machine:

1. ``copy.deepcopy`` the global model for every client, every round;
2. build a ``DataLoader`` (with its ``TensorDataset``) for every client, every round;
3. train with ``torch.optim.SGD`` and ``loss.backward()``;
4. collect every client's ``state_dict`` and average them key by key in Python.

It is correct FedAvg (weighted by n_k, as the paper says; several tutorials forget the
weights) so that ``benchmarks/run.py`` compares like with like, and
``tests/test_vectorized.py`` checks it computes the same weights as ``fl.run_fedavg``.
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, RandomSampler, TensorDataset


def reference_fedavg(
    global_model: nn.Module,
    client_data: Sequence[tuple[torch.Tensor, torch.Tensor]],
    num_rounds: int,
    local_epochs: int,
    batch_size: float,
    lr: float,
    make_generator: Callable[[int, int], torch.Generator] | None = None,
) -> nn.Module:
    """FedAvg with every client taking part every round (C = 1), the usual way.

    Parameters
    ----------
    global_model : w_0; updated in place and returned.
    client_data : one (features, labels) pair per client.
    num_rounds : N.
    local_epochs : L.
    batch_size : B (``math.inf`` = the client's whole dataset in one batch).
    lr : eta.
    make_generator : ``(round, client) -> torch.Generator`` for the shuffle; only the test
        uses it, to replay the course's minibatch order.
    """
    sizes = [labels.shape[0] for _, labels in client_data]
    total = sum(sizes)
    for round_index in range(1, num_rounds + 1):
        client_states = []
        for k, (features, labels) in enumerate(client_data):
            local_model = copy.deepcopy(global_model)
            optimizer = torch.optim.SGD(local_model.parameters(), lr=lr)
            generator = None if make_generator is None else make_generator(round_index, k)
            dataset = TensorDataset(features, labels)
            # The same as shuffle=True; the sampler holds the generator so a test can
            # replay the minibatch order (DataLoader(generator=...) draws from it first).
            loader = DataLoader(dataset, batch_size=int(min(batch_size, len(dataset))),
                                sampler=RandomSampler(dataset, generator=generator))
            local_model.train()
            for _ in range(local_epochs):
                for batch_x, batch_y in loader:
                    optimizer.zero_grad()
                    loss = F.binary_cross_entropy_with_logits(local_model(batch_x), batch_y)
                    loss.backward()
                    optimizer.step()
            client_states.append(local_model.state_dict())
        averaged = copy.deepcopy(client_states[0])
        for key in averaged:
            averaged[key] = sum(state[key] * (n_k / total) for state, n_k in zip(client_states, sizes))
        global_model.load_state_dict(averaged)
    return global_model


if __name__ == "__main__":  # pragma: no cover - a smoke run
    import fl_lessons as fl

    data = fl.make_hospitals(0)
    model = fl.make_model("cnn", 0)
    reference_fedavg(model, [(h.train_x, h.train_y) for h in data.hospitals], 1, 1, 32, 0.1)
    print(f"accuracy after one round: {fl.evaluate(model, data.test_x, data.test_y).accuracy:.3f}")
