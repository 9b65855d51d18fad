"""Automatic checks for the workbook's coding exercises: one call, one clear verdict.

Used by the exercises of notebook 02 (:func:`check_weighted_average`,
:func:`check_fedsgd_step`, :func:`check_bytes_per_round`), notebook 03
(:func:`check_equivalence_for_model`) and notebook 04 (:func:`check_aggregate_reported`,
:func:`check_dirichlet_partition`).

Each check takes the learner's function, runs it on several *fresh* random cases (new ones
on every call unless a ``seed`` is passed, so an answer cannot be typed in), and compares
the result with the course package (``fl.aggregate``, ``fl.gradient_step``, the byte
accounting of ``fl.History``, ...). On success it prints one line starting with "✅" and
returns ``True``. On failure it raises ``AssertionError`` with a diagnosis in the terms of
the lesson: the wrong answers learners often give (an unweighted mean, dividing by the
number of clients, stepping uphill, counting the clients that dropped out, ...) are
computed inside the check, so the message can say which one the learner's result matches.
Messages show inputs and numbers, never the package's code. A function that still raises
``NotImplementedError`` gets a friendly "not implemented yet".

The checks themselves leave the global random state alone (Python, NumPy and PyTorch), so
calling one in the middle of a notebook does not change the notebook's later results
(beyond whatever the learner's own function does).
"""

from __future__ import annotations

import functools
import math
import numbers
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .federated import Client, ClientUpdate, aggregate, gradient_step
from .models import make_model, model_size_bytes, num_parameters
from .training import DEFAULT_BATCH_SIZE

NUM_CASES = 5
"""How many random cases each check runs."""

# Tolerances relative to a vector's scale, 1 + its largest absolute entry. A learner's
# float32 answer summed in another order differs in the last bits: ACCEPT. A known mistake
# computed in float32 by the learner and in float64 here, with cancellation: MATCH. A case
# is only used if the right answer and all the known mistakes lie at least MIN_GAP_RTOL apart,
# so a mistake can never pass, or be taken for another, by coincidence.
ACCEPT_RTOL = 1e-5
MATCH_RTOL = 1e-4
MIN_GAP_RTOL = 1e-2
# FedSGD and one step of weight averaging agree to about 1e-16 in float64.
EQUIVALENCE_TOLERANCE = 1e-10
BYTES_TO_DTYPE = {2: torch.float16, 4: torch.float32, 8: torch.float64}
SKEWED_ALPHA = 0.1
NEAR_IID_ALPHA = 100.0
# The skew of a client's label mix (see _label_skew): on 1,500 fresh seeds the package's
# partitioner averaged at least 0.17 over every group of 6 seeds at alpha = 0.1 and at
# most 0.07 on any single seed at alpha = 100; an IID split scores about 0.02 at both.
SKEW_SEEDS = 6
MIN_SKEW_DIFFERENCE = 0.08

NOT_IMPLEMENTED = (
    "{name} is not implemented yet: replace the line `raise NotImplementedError(...)` "
    "with your code, run that cell, then run this check again."
)


# ---------------------------------------------------------------------------------------
# Shared machinery
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mistake:
    """A wrong answer learners often give, computed on the current case, and what it means."""

    value: object
    diagnosis: str


def _name(fn: Callable) -> str:
    return f"`{getattr(fn, '__name__', 'your function')}`"


def _call(fn: Callable, args: tuple, case: str):
    """Call the learner's function; turn its exceptions into messages that name the case."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise AssertionError(NOT_IMPLEMENTED.format(name=_name(fn))) from None
    except Exception as error:
        raise AssertionError(
            f"{_name(fn)} raised {type(error).__name__}: {error}\n  on the case {case}"
        ) from error


def _passed(message: str) -> bool:
    print(f"✅ {message}")
    return True


def _fresh_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def _format_vector(vector: torch.Tensor) -> str:
    return "[" + ", ".join(f"{value:.4f}" for value in vector.double().tolist()) + "]"


def _largest_gap(value: torch.Tensor, other: torch.Tensor) -> float:
    return float((value.double() - other.double()).abs().max())


def _near(value: torch.Tensor, other: torch.Tensor, rtol: float) -> bool:
    scale = 1.0 + max(float(value.double().abs().max()), float(other.double().abs().max()))
    return _largest_gap(value, other) <= rtol * scale


def _distinct(expected: torch.Tensor, mistakes: Sequence[_Mistake]) -> bool:
    """True if the right answer and every known mistake are all clearly apart on this case."""
    values = [expected] + [mistake.value for mistake in mistakes]
    return not any(_near(first, second, MIN_GAP_RTOL)
                   for index, first in enumerate(values) for second in values[index + 1:])


def _check_vector(fn: Callable, result, expected: torch.Tensor, mistakes: Sequence[_Mistake],
                  case: str, expected_name: str) -> None:
    """Fail with the most specific diagnosis unless ``result`` is the expected vector."""
    if not isinstance(result, torch.Tensor):
        raise AssertionError(
            f"{_name(fn)} returned a {type(result).__name__}; it should return one torch.Tensor "
            f"shaped like each client's vector, {tuple(expected.shape)}.\n  case: {case}"
        )
    if result.shape != expected.shape:
        raise AssertionError(
            f"{_name(fn)} returned a tensor shaped {tuple(result.shape)}; it should be shaped "
            f"like each client's vector, {tuple(expected.shape)}.\n  case: {case}"
        )
    result = result.detach().cpu()
    if _near(result, expected, ACCEPT_RTOL):
        return
    numbers_shown = (
        f"\n  case: {case}\n  you returned {_format_vector(result)}"
        f"\n  {expected_name} is {_format_vector(expected)}"
    )
    for mistake in mistakes:
        if _near(result, mistake.value, MATCH_RTOL):
            raise AssertionError(mistake.diagnosis + numbers_shown)
    raise AssertionError(
        f"{_name(fn)} does not return {expected_name} (largest difference "
        f"{_largest_gap(result, expected):.2g}).{numbers_shown}"
    )


SENT_BY_A_CLIENT = "the server must never overwrite what a client sent."


def _check_unchanged(fn: Callable, originals: Sequence[torch.Tensor], given: Sequence[torch.Tensor],
                     what: str, why: str, case: str) -> None:
    """Fail if the learner's function overwrote the tensors it was given."""
    for index, (original, after) in enumerate(zip(originals, given)):
        if not torch.equal(original, after):
            raise AssertionError(
                f"{_name(fn)} changed {what.format(index=index)} in place. Compute the result "
                f"in a new tensor and leave the inputs as they were: {why}\n  case: {case}"
            )


def _updates(vectors: Sequence[torch.Tensor], num_examples: Sequence[int]) -> list[ClientUpdate]:
    return [ClientUpdate(vector, n_k, math.nan) for vector, n_k in zip(vectors, num_examples)]


def _draw_sizes(rng: np.random.Generator, num_clients: int) -> list[int]:
    """Clearly unequal n_k, as in the course's hospitals (the largest at least 3x the smallest)."""
    while True:
        sizes = [int(size) for size in rng.integers(5, 400, size=num_clients)]
        if max(sizes) >= 3 * min(sizes):
            return sizes


def _draw_vectors(rng: np.random.Generator, num_clients: int, length: int) -> list[torch.Tensor]:
    return [torch.from_numpy(rng.normal(size=length).astype(np.float32)) for _ in range(num_clients)]


def _weighted_sum(vectors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    total = torch.zeros_like(vectors[0], dtype=torch.float64)
    for vector, weight in zip(vectors, weights):
        total += weight * vector.double()
    return total


# ---------------------------------------------------------------------------------------
# Notebook 02: the weighted average, the FedSGD step, bytes per round
# ---------------------------------------------------------------------------------------


def _averaging_mistakes(vectors: list[torch.Tensor], num_examples: list[int]) -> list[_Mistake]:
    """Wrong averages learners often compute, each with what it means in the lesson."""
    num_clients, total = len(vectors), sum(num_examples)
    smallest, largest = min(num_examples), max(num_examples)
    batches = [math.ceil(n_k / DEFAULT_BATCH_SIZE) for n_k in num_examples]
    return [
        _Mistake(_weighted_sum(vectors, [1 / num_clients] * num_clients),
                 f"Your average ignores n_k: you returned the plain mean of the vectors, so the "
                 f"client with {smallest} examples pulls as hard as the one with {largest}. "
                 f"Each client's share must be its fraction of all the examples, n_k / n."),
        _Mistake(_weighted_sum(vectors, num_examples),
                 f"Your weights do not sum to one: you weighted each vector by n_k but never "
                 f"divided by n = sum of the n_k = {total}. An average uses the shares n_k / n."),
        _Mistake(_weighted_sum(vectors, [n_k / num_clients for n_k in num_examples]),
                 f"You divided by the number of clients K = {num_clients} instead of by the "
                 f"number of examples n = {total}: the weights n_k / K do not sum to one."),
        _Mistake(_weighted_sum(vectors, [1.0] * num_clients),
                 f"You added the vectors up without weighting or dividing: that is a sum, not "
                 f"an average (its weights, all 1, sum to K = {num_clients})."),
        _Mistake(_weighted_sum(vectors, [n_k / total / num_clients for n_k in num_examples]),
                 f"You divided twice: the shares n_k / n already sum to one, and you divided "
                 f"the result by K = {num_clients} once more."),
        _Mistake(_weighted_sum(vectors, [b / sum(batches) for b in batches]),
                 f"You weighted each client by its number of minibatches (n_k / B rounded up, "
                 f"B = {DEFAULT_BATCH_SIZE}) instead of its number of examples n_k."),
    ]


def _average_case(rng: np.random.Generator) -> tuple[list[torch.Tensor], list[int], list[_Mistake]]:
    """Vectors and client sizes on which every known mistake is clearly wrong."""
    while True:
        num_clients, length = int(rng.integers(2, 6)), int(rng.integers(2, 6))
        vectors, num_examples = _draw_vectors(rng, num_clients, length), _draw_sizes(rng, num_clients)
        mistakes = _averaging_mistakes(vectors, num_examples)
        if _distinct(aggregate(_updates(vectors, num_examples)), mistakes):
            return vectors, num_examples, mistakes


def check_weighted_average(fn: Callable, seed: int | None = None) -> bool:
    """Check a learner's n_k-weighted average of the clients' vectors against ``fl.aggregate``.

    The learner writes::

        fn(vectors: list[torch.Tensor], num_examples: list[int]) -> torch.Tensor

    returning sum_k (n_k / n) v_k with n = sum_k n_k, a new tensor shaped like each v_k
    (the inputs must not be changed).

    Parameters
    ----------
    fn : the learner's function.
    seed : seeds the random cases (default: fresh cases on every call).
    """
    rng = np.random.default_rng(seed)
    for _ in range(NUM_CASES):
        vectors, num_examples, mistakes = _average_case(rng)
        expected = aggregate(_updates(vectors, num_examples))
        given = [vector.clone() for vector in vectors]
        case = f"{len(vectors)} client vectors with client sizes n_k = {num_examples}"
        result = _call(fn, (given, list(num_examples)), case)
        _check_unchanged(fn, vectors, given, "vectors[{index}] (a client's vector)", SENT_BY_A_CLIENT, case)
        _check_vector(fn, result, expected, mistakes, case, "the n_k-weighted average")
    return _passed(f"{_name(fn)} computes the n_k-weighted average on {NUM_CASES} fresh random cases.")


def _fedsgd_mistakes(weights: torch.Tensor, gradients: list[torch.Tensor], num_examples: list[int],
                     lr: float) -> list[_Mistake]:
    """Wrong FedSGD updates learners often compute, each with what it means in the lesson."""
    num_clients, total = len(gradients), sum(num_examples)
    average = _weighted_sum(gradients, [n_k / total for n_k in num_examples])
    plain_mean = _weighted_sum(gradients, [1 / num_clients] * num_clients)
    start = weights.double()
    return [
        _Mistake(start - lr * plain_mean,
                 "Your step ignores n_k: you averaged the gradients with equal shares 1/K, so a "
                 "small hospital pulls the model as hard as a large one. Weight each gradient "
                 "by n_k / n."),
        _Mistake(start + lr * average,
                 "You stepped uphill: you added the learning rate times the average gradient. "
                 "The gradient points where the loss grows, so gradient descent subtracts it."),
        _Mistake(start - average,
                 f"Your step has the right direction but the wrong length: it moves by the "
                 f"whole average gradient. Scale the step by the learning rate (lr = {lr})."),
        _Mistake(average,
                 "You returned the averaged gradient, not the new global weights w_{t+1}: the "
                 "server still has to take the step from w_t."),
        _Mistake(-lr * average,
                 "You returned only the step (minus lr times the average gradient), not the new "
                 "global weights w_{t+1}: add the step to w_t."),
        _Mistake(start - lr * _weighted_sum(gradients, [n_k / num_clients for n_k in num_examples]),
                 f"You divided by the number of clients K = {num_clients} instead of by the "
                 f"number of examples n = {total}: the gradients' weights do not sum to one."),
        _Mistake(start - lr * _weighted_sum(gradients, num_examples),
                 f"Your gradient weights do not sum to one: you weighted each gradient by n_k "
                 f"but never divided by n = {total}."),
        _Mistake(start - lr * _weighted_sum(gradients, [1.0] * num_clients),
                 "You added the gradients up instead of averaging them: the step is about K "
                 "times too long."),
    ]


def check_fedsgd_step(fn: Callable, seed: int | None = None) -> bool:
    """Check a learner's FedSGD server update against ``fl.gradient_step(w, fl.aggregate(...), lr)``.

    The learner writes::

        fn(global_weights: torch.Tensor, gradients: list[torch.Tensor],
           num_examples: list[int], lr: float) -> torch.Tensor

    returning w_{t+1} = w_t - lr * sum_k (n_k / n) g_k as a new tensor.

    Parameters
    ----------
    fn : the learner's function.
    seed : seeds the random cases (default: fresh cases on every call).
    """
    rng = np.random.default_rng(seed)
    for _ in range(NUM_CASES):
        while True:
            num_clients, length = int(rng.integers(2, 6)), int(rng.integers(2, 6))
            weights = torch.from_numpy(rng.normal(size=length).astype(np.float32))
            gradients, num_examples = _draw_vectors(rng, num_clients, length), _draw_sizes(rng, num_clients)
            lr = round(float(rng.uniform(0.05, 0.9)), 2)
            expected = gradient_step(weights, aggregate(_updates(gradients, num_examples)), lr)
            mistakes = _fedsgd_mistakes(weights, gradients, num_examples, lr)
            if _distinct(expected, mistakes):
                break
        given_weights, given_gradients = weights.clone(), [gradient.clone() for gradient in gradients]
        case = (f"w_t = {_format_vector(weights)}, {num_clients} client gradients, "
                f"client sizes n_k = {num_examples}, lr = {lr}")
        result = _call(fn, (given_weights, given_gradients, list(num_examples), lr), case)
        _check_unchanged(fn, [weights], [given_weights], "global_weights (w_t)",
                         "the server still needs w_t after the step, e.g. to compare it with w_{t+1}.", case)
        _check_unchanged(fn, gradients, given_gradients, "gradients[{index}] (a client's gradient)",
                         SENT_BY_A_CLIENT, case)
        _check_vector(fn, result, expected, mistakes, case, "the FedSGD update w_{t+1}")
    return _passed(f"{_name(fn)} takes the FedSGD step with the n_k-weighted average gradient "
                   f"on {NUM_CASES} fresh random cases.")


def _flat_model(count: int, bytes_per_number: int) -> nn.Module:
    """A stand-in model of ``count`` numbers, on the meta device so nothing is allocated."""
    module = nn.Module()
    module.weights = nn.Parameter(torch.empty(count, dtype=BYTES_TO_DTYPE[bytes_per_number], device="meta"))
    return module


def _reference_bytes(count: int, bytes_per_number: int, selected: int, reported: int) -> tuple[int, int]:
    """The accounting of ``fl.History``: w_t down to each selected client, one message up per report."""
    message = model_size_bytes(_flat_model(count, bytes_per_number))
    return selected * message, reported * message


@functools.lru_cache(maxsize=None)
def _course_model_size(model_name: str) -> int:
    # Building a model draws its initial weights; fork_rng keeps the learner's torch seed intact.
    with torch.random.fork_rng(devices=[]):
        return num_parameters(make_model(model_name, seed=None))


def _as_byte_counts(result) -> tuple[int, int] | None:
    """(bytes_down, bytes_up) as two ints, or None if ``result`` is not two whole numbers."""
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        return None
    counts = []
    for value in result:
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value).is_integer():
            return None
        counts.append(int(value))
    return counts[0], counts[1]


def _bytes_mistakes(count: int, bytes_per_number: int, selected: int, reported: int) -> list[_Mistake]:
    message = count * bytes_per_number
    dropped = selected - reported
    return [
        _Mistake((selected * message, selected * message),
                 f"You counted an upload from every selected client, but {dropped} of the {selected} "
                 f"dropped out and sent nothing: bytes_up counts only the clients that reported."),
        _Mistake((reported * message, reported * message),
                 "You counted the download only for the clients that reported. The server sends "
                 "w_t to every selected client at the start of the round, before it can know who "
                 "will drop out."),
        _Mistake((reported * message, selected * message),
                 "You swapped the two directions: 'down' is server to clients (w_t to each selected "
                 "client), 'up' is clients to server (one update from each client that reported)."),
        _Mistake((selected * count, reported * count),
                 f"You counted numbers, not bytes: each number takes bytes_per_number = "
                 f"{bytes_per_number} bytes."),
        _Mistake((8 * selected * message, 8 * reported * message),
                 "You counted bits, not bytes (a byte is 8 bits)."),
        _Mistake((message, reported * message),
                 "You counted the download once, as if w_t were broadcast to all at once; the "
                 "server sends it to each selected client: one model-sized message per client."),
        _Mistake((0, reported * message),
                 "bytes_down is 0, but each round starts with every selected client downloading "
                 "the current global weights w_t."),
    ]


def check_bytes_per_round(fn: Callable, seed: int | None = None) -> bool:
    """Check a learner's count of the bytes one round sends, against ``fl.History``'s accounting.

    The learner writes::

        fn(num_parameters: int, bytes_per_number: int, num_selected: int,
           num_reported: int, algorithm: str) -> tuple[int, int]

    returning ``(bytes_down, bytes_up)``: the server sends w_t to each of the
    ``num_selected`` clients; each of the ``num_reported`` clients that report sends one
    vector of ``num_parameters`` numbers back. ``algorithm`` is ``"FedSGD"`` (a gradient)
    or ``"FedAvg"`` (new weights).

    Parameters
    ----------
    fn : the learner's function.
    seed : seeds the random cases (default: fresh cases on every call).
    """
    rng = np.random.default_rng(seed)
    model_sizes = [("logistic regression", _course_model_size("logreg")),
                   ("the small CNN", _course_model_size("cnn"))]
    for case_index in range(NUM_CASES):
        if case_index < len(model_sizes):
            model_name, count = model_sizes[case_index]
        else:
            model_name, count = "a model", int(rng.integers(1_000, 2_000_000))
        bytes_per_number = int(rng.choice(sorted(BYTES_TO_DTYPE)))
        # At least 3 selected and 2 reported, so every mistake below gives a different answer.
        selected = int(rng.integers(3, 11))
        reported = int(rng.integers(2, selected))
        expected = _reference_bytes(count, bytes_per_number, selected, reported)
        answers = {}
        for algorithm in ("FedAvg", "FedSGD"):
            case = (f"{model_name}, num_parameters = {count:,}, bytes_per_number = {bytes_per_number}, "
                    f"num_selected = {selected}, num_reported = {reported}, algorithm = {algorithm!r}")
            result = _call(fn, (count, bytes_per_number, selected, reported, algorithm), case)
            answers[algorithm] = _as_byte_counts(result)
            if answers[algorithm] is None:
                raise AssertionError(
                    f"{_name(fn)} returned {result!r}; it should return two whole numbers, "
                    f"(bytes_down, bytes_up).\n  case: {case}"
                )
        if answers["FedAvg"] != answers["FedSGD"]:
            raise AssertionError(
                f"Your byte count depends on the algorithm: FedAvg {answers['FedAvg']}, FedSGD "
                f"{answers['FedSGD']}. A gradient has exactly one number per weight, so a FedSGD "
                f"update is as large as a FedAvg one, and both download w_t.\n  case: {case}"
            )
        answer = answers["FedAvg"]
        if answer == expected:
            continue
        numbers_shown = f"\n  case: {case}\n  you returned {answer}, expected (bytes_down, bytes_up) = {expected}"
        for mistake in _bytes_mistakes(count, bytes_per_number, selected, reported):
            if answer == mistake.value:
                raise AssertionError(mistake.diagnosis + numbers_shown)
        raise AssertionError(f"{_name(fn)} does not count the bytes of one round right.{numbers_shown}")
    return _passed(f"{_name(fn)} counts the bytes sent down and up in a round, as fl.History "
                   f"does, on {NUM_CASES} fresh random cases.")


# ---------------------------------------------------------------------------------------
# Notebook 03: FedSGD equals one step of weight averaging, measured
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _GradientCall:
    dtype: torch.dtype
    num_weights: int


@contextmanager
def _recording_client_gradients():
    """Record every call of ``fl.Client.gradient`` made inside the block."""
    original = Client.gradient
    calls: list[_GradientCall] = []

    @functools.wraps(original)
    def recording_gradient(client, global_weights, *args, **kwargs):
        calls.append(_GradientCall(global_weights.dtype, int(global_weights.numel())))
        return original(client, global_weights, *args, **kwargs)

    Client.gradient = recording_gradient
    try:
        yield calls
    finally:
        Client.gradient = original


def check_equivalence_for_model(fn: Callable, seed: int | None = None) -> bool:
    """Check a learner's float64 measurement that FedSGD equals one step of weight averaging.

    The learner writes::

        fn(model_name: str, seed: int) -> float

    which builds the model ``model_name`` (``"logreg"`` or ``"cnn"``) in float64 from
    ``seed``, asks float64 clients (``fl.Client``) for their gradients at the same w_t,
    computes the FedSGD update and the n_k-weighted average of the clients' one-step
    weights, and returns the largest absolute difference between the two as a float. The
    check runs it for both models with fresh seeds and requires real gradients of the
    right model, in float64, and a difference below 1e-10 (float noise).

    Parameters
    ----------
    fn : the learner's function.
    seed : seeds the model seeds passed to ``fn`` (default: fresh on every call).
    """
    rng = np.random.default_rng(seed)
    measured = {}
    for model_name in ("logreg", "cnn"):
        model_seed = _fresh_seed(rng)
        case = f"{_name(fn)}({model_name!r}, seed={model_seed})"
        with _recording_client_gradients() as calls:
            value = _call(fn, (model_name, model_seed), case)
        if isinstance(value, torch.Tensor):
            raise AssertionError(
                f"{case} returned a tensor; return the largest absolute difference as a Python "
                f"float (float() turns a one-number tensor into one)."
            )
        if isinstance(value, (bool, numbers.Integral)) or not isinstance(value, numbers.Real):
            raise AssertionError(f"{case} returned {value!r}; it should return a float, the "
                                 f"largest absolute difference you measured.")
        if not calls:
            raise AssertionError(
                f"{case} never asked a client for its gradient (fl.Client.gradient was not "
                f"called). Measure the difference on real clients' gradients; a number typed "
                f"in is not a measurement."
            )
        expected_size = _course_model_size(model_name)
        wrong_sizes = sorted({call.num_weights for call in calls if call.num_weights != expected_size})
        if wrong_sizes:
            raise AssertionError(
                f"{case}: the clients computed gradients of a model with {wrong_sizes[0]:,} weights, "
                f"but {model_name!r} has {expected_size:,}. Build the model that model_name names."
            )
        if any(call.dtype != torch.float64 for call in calls):
            found = sorted({str(call.dtype) for call in calls})
            raise AssertionError(
                f"{case}: the clients computed in {', '.join(found)}, not float64. In float32 the "
                f"two updates differ by rounding error around 1e-8, hiding the exact equality. Build "
                f"the model with dtype=torch.float64 and give the clients float64 data (.double())."
            )
        value = float(value)
        if not math.isfinite(value):
            raise AssertionError(f"{case} returned {value}; a measured difference must be a finite number.")
        if value < 0:
            raise AssertionError(
                f"{case} returned {value:.3g}, a negative number; the largest *absolute* "
                f"difference is never negative."
            )
        if value >= EQUIVALENCE_TOLERANCE:
            raise AssertionError(
                f"{case} measured a difference of {value:.3g}, far above float64 noise (about "
                f"1e-16): your two updates are not the same computation. Both must start from "
                f"the same w_t, use the same lr and the same gradients, and both averages must "
                f"weight client k by n_k / n."
            )
        measured[model_name] = value
    shown = ", ".join(f"{value:.1e} for {name}" for name, value in measured.items())
    return _passed(f"{_name(fn)} measures FedSGD and one step of weight averaging agreeing to "
                   f"float noise ({shown}).")


# ---------------------------------------------------------------------------------------
# Notebook 04: clients that drop out, label-skewed hospitals
# ---------------------------------------------------------------------------------------


def _reported_mistakes(vectors: list[torch.Tensor], num_examples: list[int],
                       reported: list[int]) -> list[_Mistake]:
    """Wrong averages over a round where some selected clients dropped out."""
    selected = len(vectors)
    dropped = [k for k in range(selected) if k not in reported]
    total_all, total_reported = sum(num_examples), sum(num_examples[k] for k in reported)

    def weighted_over(clients: list[int]) -> list[float]:
        total = sum(num_examples[k] for k in clients)
        return [num_examples[k] / total if k in clients else 0.0 for k in range(selected)]

    def equal_over(clients: list[int]) -> list[float]:
        return [1 / len(clients) if k in clients else 0.0 for k in range(selected)]

    everyone = list(range(selected))
    return [
        _Mistake(_weighted_sum(vectors, weighted_over(everyone)),
                 f"You averaged over all {selected} selected clients, including the "
                 f"{len(dropped)} that dropped out (positions {dropped}). A client that did not "
                 f"report sent nothing this round: only the clients in `reported` may count."),
        _Mistake(_weighted_sum(vectors, [w * total_reported / total_all for w in weighted_over(reported)]),
                 f"Your weights do not sum to one: you summed n_k v_k over the clients that "
                 f"reported, but divided by the examples of all selected clients ({total_all}) "
                 f"instead of those that reported ({total_reported}). The paper's erratum "
                 f"divides by m_t, the examples of the clients that reported."),
        _Mistake(_weighted_sum(vectors, equal_over(reported)),
                 "Your average ignores n_k: you gave each client that reported the same share. "
                 "Weight them by n_k over the examples of the clients that reported."),
        _Mistake(_weighted_sum(vectors, equal_over(everyone)),
                 "You took the plain mean over all selected clients: it ignores n_k and counts "
                 "the clients that dropped out."),
        _Mistake(_weighted_sum(vectors, weighted_over(dropped)),
                 "You averaged the clients that dropped out, not those that reported: "
                 "`reported` lists the positions in `updates` of the clients whose update arrived."),
    ]


def check_aggregate_reported(fn: Callable, seed: int | None = None) -> bool:
    """Check a learner's server average over only the clients that reported, against ``fl.aggregate``.

    The learner writes::

        fn(updates: list[fl.ClientUpdate], reported: list[int]) -> torch.Tensor

    ``updates`` holds one :class:`fl.ClientUpdate` (``values``, ``num_examples``, ``loss``)
    per selected client; ``reported`` lists, in increasing order, the positions in
    ``updates`` of the clients whose update arrived (never empty). The result is the
    n_k-weighted average of those clients' ``values``, with n the sum of their n_k.

    Parameters
    ----------
    fn : the learner's function.
    seed : seeds the random cases (default: fresh cases on every call).
    """
    rng = np.random.default_rng(seed)
    for _ in range(NUM_CASES):
        while True:
            selected, length = int(rng.integers(3, 7)), int(rng.integers(2, 6))
            vectors, num_examples = _draw_vectors(rng, selected, length), _draw_sizes(rng, selected)
            count = int(rng.integers(2, selected))
            reported = sorted(int(k) for k in rng.choice(selected, size=count, replace=False))
            updates = _updates(vectors, num_examples)
            expected = aggregate([updates[k] for k in reported])
            mistakes = _reported_mistakes(vectors, num_examples, reported)
            if _distinct(expected, mistakes):
                break
        given = [ClientUpdate(vector.clone(), n_k, float(rng.uniform(0.2, 0.7)))
                 for vector, n_k in zip(vectors, num_examples)]
        case = f"{selected} selected clients with n_k = {num_examples}, reported = {reported}"
        result = _call(fn, (given, list(reported)), case)
        _check_unchanged(fn, vectors, [update.values for update in given],
                         "updates[{index}].values (what a client sent)", SENT_BY_A_CLIENT, case)
        _check_vector(fn, result, expected, mistakes, case,
                      "the n_k-weighted average over the clients that reported")
    return _passed(f"{_name(fn)} averages only the clients that reported, weighted by n_k, on "
                   f"{NUM_CASES} fresh random cases.")


def _label_skew(labels: np.ndarray, parts: Sequence[np.ndarray]) -> float:
    """How far the clients' label mixes are from the overall mix.

    The total variation distance between each client's label distribution and the overall
    one, averaged over clients weighted by n_k: 0 for a perfectly even (IID) split, near
    1 - (largest class share) when every client holds a single class.
    """
    classes = np.unique(labels)
    overall = np.array([np.mean(labels == label) for label in classes])
    distance, total = 0.0, 0
    for part in parts:
        if len(part) == 0:
            continue
        mix = np.array([np.mean(labels[part] == label) for label in classes])
        distance += len(part) * 0.5 * np.abs(mix - overall).sum()
        total += len(part)
    return distance / total


def _as_index_parts(fn: Callable, result, num_examples: int, num_clients: int, case: str) -> list[np.ndarray]:
    """The learner's parts as integer arrays, or a message saying what is wrong with them."""
    if not isinstance(result, (list, tuple)):
        raise AssertionError(
            f"{_name(fn)} returned a {type(result).__name__}; it should return a list of "
            f"K = {num_clients} index arrays, one per client.\n  case: {case}"
        )
    if len(result) != num_clients:
        raise AssertionError(
            f"{_name(fn)} returned {len(result)} parts for K = {num_clients} clients; return "
            f"one index array per client.\n  case: {case}"
        )
    parts = []
    for k, part in enumerate(result):
        array = np.asarray(part.numpy() if isinstance(part, torch.Tensor) else part)
        if array.ndim != 1:
            raise AssertionError(
                f"Client {k}'s part has shape {array.shape}; each part must be a flat array of "
                f"example indices.\n  case: {case}"
            )
        if array.size and not np.issubdtype(array.dtype, np.integer):
            if not (np.issubdtype(array.dtype, np.number) and np.all(np.mod(array, 1) == 0)):
                raise AssertionError(
                    f"Client {k}'s part holds {array[:5]}, not whole numbers; each part must "
                    f"hold example indices 0 .. n-1.\n  case: {case}"
                )
        parts.append(array.astype(np.int64))
    everything = np.concatenate(parts) if parts else np.array([], dtype=np.int64)
    if num_examples > 3 and len(everything) == num_examples and set(np.unique(everything)) <= {0, 1}:
        raise AssertionError(
            f"{_name(fn)}'s parts hold only 0s and 1s: those look like labels. Return the "
            f"*indices* of each client's examples (positions 0 .. n-1 in `labels`).\n  case: {case}"
        )
    outside = everything[(everything < 0) | (everything >= num_examples)]
    if outside.size:
        raise AssertionError(
            f"Your parts hold index {int(outside[0])}, outside 0 .. {num_examples - 1}: each part "
            f"must hold positions in `labels`.\n  case: {case}"
        )
    counts = np.bincount(everything, minlength=num_examples)
    problems = []
    if np.any(counts > 1):
        twice = np.flatnonzero(counts > 1)
        problems.append(f"{len(twice)} examples were given out more than once (e.g. example {int(twice[0])})")
    if np.any(counts == 0):
        missing = np.flatnonzero(counts == 0)
        problems.append(f"{len(missing)} of the {num_examples} examples went to no client "
                        f"(e.g. examples {missing[:5].tolist()})")
    if problems:
        raise AssertionError(
            f"Your parts are not an exact cover: {'; '.join(problems)}. Every example must go "
            f"to exactly one client.\n  case: {case}"
        )
    return parts


def _same_parts(first: Sequence[np.ndarray], second: Sequence[np.ndarray]) -> bool:
    return all(np.array_equal(np.sort(a), np.sort(b)) for a, b in zip(first, second))


def _labels_case(rng: np.random.Generator, num_examples: int) -> np.ndarray:
    prevalence = rng.uniform(0.3, 0.6)
    return (rng.uniform(size=num_examples) < prevalence).astype(np.int64)


def check_dirichlet_partition(fn: Callable, seed: int | None = None) -> bool:
    """Check a learner's Dirichlet label-skew partitioner: exact cover, seed, and skew that follows alpha.

    The learner writes::

        fn(labels: np.ndarray, num_clients: int, alpha: float, seed: int) -> list[np.ndarray]

    returning K index arrays that together hold every example exactly once, the same ones
    for the same seed, with label mixes that differ between clients more for small alpha
    (0.1: clients hold mostly one class) than for large alpha (100: almost IID). The skew
    is a statistical property, measured over several fresh seeds.

    Parameters
    ----------
    fn : the learner's function.
    seed : seeds the random cases (default: fresh cases on every call).
    """
    rng = np.random.default_rng(seed)
    for case_index in range(3):
        num_examples, num_clients = int(rng.integers(200, 500)), int(rng.integers(3, 8))
        labels = _labels_case(rng, num_examples)
        alpha = float(rng.choice([0.3, 1.0, 10.0]))
        split_seed = _fresh_seed(rng)
        case = (f"{num_examples} labels ({int(labels.sum())} pneumonia), K = {num_clients}, "
                f"alpha = {alpha}, seed = {split_seed}")
        given = labels.copy()
        result = _call(fn, (given, num_clients, alpha, split_seed), case)
        if not np.array_equal(given, labels):
            raise AssertionError(
                f"{_name(fn)} changed `labels` in place (shuffled or overwrote it); shuffle "
                f"indices, or a copy, never the data you were given.\n  case: {case}"
            )
        parts = _as_index_parts(fn, result, num_examples, num_clients, case)
        again = _as_index_parts(fn, _call(fn, (labels.copy(), num_clients, alpha, split_seed), case),
                                num_examples, num_clients, case)
        if not _same_parts(parts, again):
            raise AssertionError(
                f"Your partition is not reproducible: two calls with the same seed "
                f"({split_seed}) gave different splits. Draw every random number from one "
                f"generator made from the seed, not from NumPy's global random state.\n  case: {case}"
            )
        if case_index == 0:
            other_seed = split_seed + 1
            other = _as_index_parts(fn, _call(fn, (labels.copy(), num_clients, alpha, other_seed), case),
                                    num_examples, num_clients, case)
            if _same_parts(parts, other):
                raise AssertionError(
                    f"Seeds {split_seed} and {other_seed} gave exactly the same split: your "
                    f"partition ignores `seed`.\n  case: {case}"
                )
    skews = {SKEWED_ALPHA: [], NEAR_IID_ALPHA: []}
    num_examples, num_clients = 600, 5
    for _ in range(SKEW_SEEDS):
        labels = _labels_case(rng, num_examples)
        split_seed = _fresh_seed(rng)
        for alpha in skews:
            case = f"{num_examples} labels, K = {num_clients}, alpha = {alpha}, seed = {split_seed}"
            result = _call(fn, (labels.copy(), num_clients, alpha, split_seed), case)
            skews[alpha].append(_label_skew(labels, _as_index_parts(fn, result, num_examples, num_clients, case)))
    skewed, near_iid = float(np.mean(skews[SKEWED_ALPHA])), float(np.mean(skews[NEAR_IID_ALPHA]))
    measured = (f"(average distance of a client's label mix from the overall mix, over {SKEW_SEEDS} fresh "
                f"seeds, K = {num_clients}: {skewed:.2f} at alpha = {SKEWED_ALPHA:g}, "
                f"{near_iid:.2f} at alpha = {NEAR_IID_ALPHA:g})")
    if near_iid > skewed + 0.05:
        raise AssertionError(
            f"Your split is backwards: alpha = {NEAR_IID_ALPHA:g} gave more different clients "
            f"than alpha = {SKEWED_ALPHA:g} {measured}. Small alpha means more skew."
        )
    if not (skewed > 2 * near_iid and skewed - near_iid > MIN_SKEW_DIFFERENCE):
        raise AssertionError(
            f"Your split does not follow alpha {measured}. With small alpha the clients' label "
            f"mixes must be very different (some almost all pneumonia, some almost all normal); "
            f"with large alpha close to the overall mix. Each class's shares across the clients "
            f"come from a Dirichlet(alpha) distribution."
        )
    return _passed(f"{_name(fn)} gives every example to exactly one client, reproducibly, with "
                   f"label skew {skewed:.2f} at alpha = {SKEWED_ALPHA:g} and {near_iid:.2f} at "
                   f"alpha = {NEAR_IID_ALPHA:g}.")
