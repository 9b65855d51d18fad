"""Notebook 03's claims: one step of weight averaging is FedSGD, and where that ends.

Two parts:

(a) The claims against the package: the n_k-weighted average of the clients' weights after
    one local full-batch step (``Client.train``) equals ``gradient_step(w_0, aggregate(g_k))``
    to float64 precision; an unweighted average differs exactly when the n_k differ; and
    ``averaging_gap_curve`` is float noise at one local step and clearly positive beyond.
(b) The notebook's live functions (``fedsgd_update``, ``weight_averaging_update``,
    ``unweighted_average_update``) are read out of the notebook and compared with the
    package on random inputs, so an edit that breaks them in the notebook fails here.
"""

from __future__ import annotations

import math
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

import fl_lessons as fl
from fl_lessons import HospitalSpec

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "03_fedsgd_equals_weight_averaging.ipynb"
LIVE_FUNCTIONS = ("fedsgd_update", "weight_averaging_update", "unweighted_average_update")

# float64 rounding noise is ~1e-16; anything below this is "equal" for a 26k-weight CNN.
EXACT = 1e-12
LR = 0.3


@pytest.fixture(scope="module")
def pooled64() -> tuple[torch.Tensor, torch.Tensor]:
    """120 float64 chest X-rays (both classes) from three small synthetic hospitals."""
    specs = [HospitalSpec("A", 50, 0, 0.4), HospitalSpec("B", 40, 0, 0.3), HospitalSpec("C", 30, 0, 0.6)]
    data = fl.make_hospitals(0, specs=specs, common_test_per_hospital=0)
    features, labels = data.pooled()
    return features.double(), labels.double()


def float64_clients(pooled64, parts, seed):
    """A float64 CNN with seeded w_0, and one client per index array, sharing the CNN."""
    features, labels = pooled64
    model = fl.make_model("cnn", seed=seed, dtype=torch.float64)
    clients = [fl.Client(features[part], labels[part], model, f"client {k}") for k, part in enumerate(parts)]
    return model, fl.get_flat_weights(model), clients


def max_difference(first: torch.Tensor, second: torch.Tensor) -> float:
    return (first - second).abs().max().item()


# ---------------------------------------------------------------------------------------
# (a) The equivalence, with the package's own clients and server operations
# ---------------------------------------------------------------------------------------

SETTINGS = [(2, 0), (3, 1), (4, 2), (5, 3)]  # (K, seed)


def unequal_parts(num_examples: int, num_clients: int, seed: int) -> list[np.ndarray]:
    parts = fl.partition_quantity(num_examples, num_clients, alpha=0.5, seed=seed)
    sizes = [len(part) for part in parts]
    assert len(set(sizes)) > 1, f"test setup: the n_k should differ, got {sizes}"
    return parts


@pytest.mark.parametrize("num_clients, seed", SETTINGS)
def test_averaging_weights_after_one_full_batch_step_is_fedsgd(pooled64, num_clients, seed):
    parts = unequal_parts(len(pooled64[1]), num_clients, seed)
    model, initial, clients = float64_clients(pooled64, parts, seed)
    stepped = [client.train(initial, 1, math.inf, LR) for client in clients]
    by_weights = fl.aggregate(stepped)
    by_gradients = fl.gradient_step(initial, fl.aggregate([client.gradient(initial) for client in clients]), LR)
    assert max_difference(by_weights, by_gradients) < EXACT
    # An independent reference: the gradient of the pooled mean loss, by autograd on all data.
    fl.set_flat_weights(model, initial)
    features, labels = pooled64
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(features), labels)
    pooled_gradient = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])
    assert max_difference(by_weights, initial - LR * pooled_gradient) < EXACT
    # Guard against a vacuous pass: the step really moved the weights.
    assert (by_weights - initial).norm() > 1e-3


@pytest.mark.parametrize("num_clients, seed", SETTINGS)
def test_unweighted_average_misses_fedsgd_when_sizes_differ(pooled64, num_clients, seed):
    parts = unequal_parts(len(pooled64[1]), num_clients, seed)
    _, initial, clients = float64_clients(pooled64, parts, seed)
    stepped = [client.train(initial, 1, math.inf, LR).values for client in clients]
    unweighted = torch.stack(stepped).mean(dim=0)
    fedsgd = fl.gradient_step(initial, fl.aggregate([client.gradient(initial) for client in clients]), LR)
    relative_miss = ((unweighted - fedsgd).norm() / (fedsgd - initial).norm()).item()
    assert relative_miss > 1e-3, f"unweighted averaging should miss FedSGD, missed by only {relative_miss:.2e}"


@pytest.mark.parametrize("num_clients", [2, 3, 4])
def test_unweighted_average_is_fedsgd_when_sizes_are_equal(pooled64, num_clients):
    parts = fl.partition_iid(len(pooled64[1]), num_clients, seed=num_clients)
    assert len({len(part) for part in parts}) == 1, "test setup: 120 splits evenly into 2, 3, 4"
    _, initial, clients = float64_clients(pooled64, parts, num_clients)
    stepped = [client.train(initial, 1, math.inf, LR).values for client in clients]
    unweighted = torch.stack(stepped).mean(dim=0)
    fedsgd = fl.gradient_step(initial, fl.aggregate([client.gradient(initial) for client in clients]), LR)
    assert max_difference(unweighted, fedsgd) < EXACT


def label_skewed_parts(labels: torch.Tensor) -> list[np.ndarray]:
    """Three clients: all normal, all pneumonia, and a mixed one: strong heterogeneity."""
    normal = np.flatnonzero(labels.numpy() == 0)
    sick = np.flatnonzero(labels.numpy() == 1)
    return [normal[10:], sick[10:], np.concatenate([normal[:10], sick[:10]])]


def test_gap_is_float_noise_at_one_step_and_clearly_positive_at_three(pooled64):
    parts = label_skewed_parts(pooled64[1])
    model, initial, clients = float64_clients(pooled64, parts, seed=0)
    gaps = fl.averaging_gap_curve(clients, model, initial, max_local_steps=3, lr=LR)
    assert gaps.shape == (3,)
    assert gaps[0] < 1e-10
    assert gaps[2] > 1e-2, f"label-skewed clients should drift apart by l=3, gap {gaps[2]:.2e}"
    # The gap at 3 steps is what a FedAvg round with L=3, B=inf does against 3 FedSGD steps,
    # recomputed here with the clients' own services.
    local = [client.train(initial, 3, math.inf, LR) for client in clients]
    fedsgd = initial
    for _ in range(3):
        fedsgd = fl.gradient_step(fedsgd, fl.aggregate([client.gradient(fedsgd) for client in clients]), LR)
    expected = ((fl.aggregate(local) - fedsgd).norm() / (fedsgd - initial).norm()).item()
    assert gaps[2] == pytest.approx(expected, rel=1e-9)


def test_gap_curve_leaves_the_initial_weights_alone(pooled64):
    parts = label_skewed_parts(pooled64[1])
    model, initial, clients = float64_clients(pooled64, parts, seed=0)
    kept = initial.clone()
    fl.averaging_gap_curve(clients, model, initial, max_local_steps=2, lr=LR)
    assert torch.equal(initial, kept)


@pytest.mark.parametrize("max_local_steps", [0, -3])
def test_gap_curve_rejects_fewer_than_one_local_step(pooled64, max_local_steps):
    parts = label_skewed_parts(pooled64[1])
    model, initial, clients = float64_clients(pooled64, parts, seed=0)
    with pytest.raises(ValueError, match="max_local_steps must be >= 1"):
        fl.averaging_gap_curve(clients, model, initial, max_local_steps=max_local_steps, lr=LR)


# ---------------------------------------------------------------------------------------
# (b) The notebook's live functions against the package
# ---------------------------------------------------------------------------------------


def load_live_functions(path: Path = NOTEBOOK) -> dict:
    """Execute only the notebook cells that define the live functions, and return them.

    Parameters
    ----------
    path : the notebook to read (a copy, to check that a broken function is caught).
    """
    notebook = nbformat.read(path, as_version=4)
    namespace = {"torch": torch, "math": math, "np": np, "fl": fl}
    defined = set()
    for index, cell in enumerate(notebook.cells):
        names = [name for name in LIVE_FUNCTIONS if f"def {name}(" in cell.source]
        if cell.cell_type == "code" and names:
            exec(compile(cell.source, f"{path.name}, cell {index}", "exec"), namespace)
            defined.update(names)
    missing = [name for name in LIVE_FUNCTIONS if name not in defined]
    assert not missing, f"{path.name} should define {missing} in code cells of their own"
    return {name: namespace[name] for name in LIVE_FUNCTIONS}


def random_round(seed: int, num_parameters: int = 50):
    """Random w_t, gradients g_k and clearly unequal n_k, in float64."""
    generator = torch.Generator().manual_seed(seed)
    num_clients = 2 + seed % 4
    weights = torch.randn(num_parameters, dtype=torch.float64, generator=generator)
    gradients = [torch.randn(num_parameters, dtype=torch.float64, generator=generator)
                 for _ in range(num_clients)]
    num_examples = [int(n) for n in torch.randint(1, 500, (num_clients,), generator=generator)]
    num_examples[0] = 1000 + seed  # at least one hospital far larger than the others
    return weights, gradients, num_examples


def check_live_functions(functions: dict, seeds=range(6)) -> None:
    """Raise AssertionError unless the live functions match the package on random rounds."""
    for seed in seeds:
        weights, gradients, num_examples = random_round(seed)
        gradient_updates = [fl.ClientUpdate(g, n, math.nan) for g, n in zip(gradients, num_examples)]
        expected_fedsgd = fl.gradient_step(weights, fl.aggregate(gradient_updates), LR)
        stepped = [fl.gradient_step(weights, g, LR) for g in gradients]
        expected_averaging = fl.aggregate([fl.ClientUpdate(w, n, math.nan) for w, n in zip(stepped, num_examples)])
        expected_unweighted = torch.stack(stepped).mean(dim=0)

        expected = {"fedsgd_update": expected_fedsgd, "weight_averaging_update": expected_averaging,
                    "unweighted_average_update": expected_unweighted}
        for name, expected_weights in expected.items():
            weights_given = weights.clone()
            result = functions[name](weights_given, gradients, num_examples, LR)
            assert torch.equal(weights_given, weights), f"{name} changed w_t in place (seed {seed})"
            assert max_difference(result, expected_weights) < EXACT, f"{name} is wrong (seed {seed})"


def test_notebook_functions_match_the_package():
    check_live_functions(load_live_functions())


def test_notebook_unweighted_average_really_differs_from_fedsgd():
    functions = load_live_functions()
    weights, gradients, num_examples = random_round(0)
    fedsgd = functions["fedsgd_update"](weights, gradients, num_examples, LR)
    unweighted = functions["unweighted_average_update"](weights, gradients, num_examples, LR)
    assert max_difference(fedsgd, unweighted) > 1e-3


def test_the_check_catches_a_wrong_live_function():
    """The comparison has teeth: swapping in a plausible mistake makes it fail."""
    functions = load_live_functions()
    for name in ("fedsgd_update", "weight_averaging_update"):
        # The mistake section 4 warns about: weighting every client by 1/K.
        broken = dict(functions, **{name: functions["unweighted_average_update"]})
        with pytest.raises(AssertionError, match=name):
            check_live_functions(broken)
