"""Tests for the workbook checks of notebooks 05 and 06 (fl_lessons.checks, their section).

Each check must accept the package's reference, reject a stub that still raises
NotImplementedError with the friendly message, and reject the common wrong answers with the
diagnosis that names them.
"""

from __future__ import annotations

import math

import pytest
import torch

from fl_lessons import checks
from fl_lessons import experiments as ex
from fl_lessons.fedprox import proximal_gradient


def stub(*args):
    raise NotImplementedError("Exercise: write your solution here.")


# ---------------------------------------------------------------------------------------
# check_rounds_to_target
# ---------------------------------------------------------------------------------------


def first_round_at_or_above(rounds, accuracies, target):
    return next((float(t) for t, a in zip(rounds, accuracies) if a >= target), None)


def interpolated_without_running_max(rounds, accuracies, target):
    for i, (t, a) in enumerate(zip(rounds, accuracies)):
        if a >= target:
            if i == 0:
                return float(t)
            before = accuracies[i - 1]
            return rounds[i - 1] + (target - before) / (a - before) * (t - rounds[i - 1])
    return None


def reports_n_when_never_reached(rounds, accuracies, target):
    result = ex.rounds_to_target(rounds, accuracies, target)
    return float(rounds[-1]) if result is None else result


def test_rounds_check_accepts_the_reference():
    assert checks.check_rounds_to_target(ex.rounds_to_target, seed=0) is True
    assert checks.check_rounds_to_target(ex.rounds_to_target) is True


def test_rounds_check_rejects_a_stub():
    with pytest.raises(AssertionError, match="not implemented yet"):
        checks.check_rounds_to_target(stub, seed=0)


@pytest.mark.parametrize("wrong, diagnosis", [
    (first_round_at_or_above, "without interpolating"),
    (interpolated_without_running_max, "running maximum"),
    (reports_n_when_never_reached, "return None"),
])
def test_rounds_check_diagnoses_common_mistakes(wrong, diagnosis):
    for seed in range(3):
        with pytest.raises(AssertionError, match=diagnosis):
            checks.check_rounds_to_target(wrong, seed=seed)


# ---------------------------------------------------------------------------------------
# check_local_updates
# ---------------------------------------------------------------------------------------


def local_updates(local_epochs, batch_size, num_examples, num_clients):
    if batch_size == math.inf:
        return float(local_epochs)
    return local_epochs * num_examples / (num_clients * batch_size)


def test_local_updates_check_accepts_a_correct_answer_and_rejects_a_stub():
    assert checks.check_local_updates(local_updates, seed=0) is True
    with pytest.raises(AssertionError, match="not implemented yet"):
        checks.check_local_updates(stub, seed=0)


@pytest.mark.parametrize("wrong, diagnosis", [
    (lambda L, B, n, K: L * n / B if B != math.inf else L, "divide by K"),
    (lambda L, B, n, K: n / (K * B) if B != math.inf else L, "multiply by the L"),
    (lambda L, B, n, K: L * math.ceil(n / K / B) if B != math.inf else L, "without rounding"),
    (lambda L, B, n, K: L * n / (K * B), "u = L, not"),
])
def test_local_updates_check_diagnoses_common_mistakes(wrong, diagnosis):
    with pytest.raises(AssertionError, match=diagnosis):
        checks.check_local_updates(wrong, seed=1)


# ---------------------------------------------------------------------------------------
# check_proximal_gradient
# ---------------------------------------------------------------------------------------


def test_proximal_check_accepts_the_reference_and_rejects_a_stub():
    assert checks.check_proximal_gradient(proximal_gradient, seed=0) is True
    assert checks.check_proximal_gradient(proximal_gradient) is True
    with pytest.raises(AssertionError, match="not implemented yet"):
        checks.check_proximal_gradient(stub, seed=0)


def overwrites_the_gradient(gradient, weights, global_weights, mu):
    gradient += mu * (weights - global_weights)
    return gradient


@pytest.mark.parametrize("wrong, diagnosis", [
    (lambda g, w, w_t, mu: g + mu * (w_t - w), "sign of the proximal term"),
    (lambda g, w, w_t, mu: g + mu / 2 * (w - w_t), "kept the 1/2"),
    (lambda g, w, w_t, mu: g + (w - w_t), "left out mu"),
    (lambda g, w, w_t, mu: mu * (w - w_t), "proximal term alone"),
    (lambda g, w, w_t, mu: g.clone(), "gradient unchanged"),
    (overwrites_the_gradient, "in place"),
    (lambda g, w, w_t, mu: (g + mu * (w - w_t)).tolist(), "torch.Tensor"),
])
def test_proximal_check_diagnoses_common_mistakes(wrong, diagnosis):
    with pytest.raises(AssertionError, match=diagnosis):
        checks.check_proximal_gradient(wrong, seed=2)


def test_proximal_gradient_is_the_gradient_of_the_proximal_objective():
    # autograd on (mu/2)||w - w_t||^2 + <g, w> gives g + mu (w - w_t).
    g, w_t = torch.randn(5, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    mu = 0.7
    objective = (g * w).sum() + mu / 2 * ((w - w_t) ** 2).sum()
    (autograd,) = torch.autograd.grad(objective, w)
    torch.testing.assert_close(proximal_gradient(g, w.detach(), w_t, mu), autograd, rtol=0, atol=1e-12)
