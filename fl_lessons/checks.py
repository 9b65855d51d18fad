"""Automatic checks for the workbook's coding exercises: one call, one clear verdict.

Used by the exercises of notebook 01 (:func:`check_sensitivity_specificity`,
:func:`check_auc`), notebook 02 (:func:`check_weighted_average`,
:func:`check_fedsgd_step`, :func:`check_bytes_per_round`), notebook 03
(:func:`check_equivalence_for_model`) and notebook 04 (:func:`check_aggregate_reported`,
:func:`check_dirichlet_partition`).

Each check takes the learner's function, runs it on several *fresh* random cases (new ones
on every call unless a ``seed`` is passed, so an answer cannot be typed in), and compares
the result with the course package (the metrics of ``fl.evaluate``, ``fl.aggregate``,
``fl.gradient_step``, the byte accounting of ``fl.History``, ...). On success it prints one
line starting with "✅" and returns ``True``. On failure it raises ``AssertionError`` with a
diagnosis in the terms of the lesson: the wrong answers learners often give (swapping
sensitivity and specificity, ignoring ties in the AUC, an unweighted mean, dividing by the
number of clients, stepping uphill, counting the clients that dropped out, ...) are computed
inside the check, so the message can say which one the learner's result matches.
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
from .training import DEFAULT_BATCH_SIZE, classification_metrics, roc_auc

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
# Notebook 01: the metrics clinicians read, sensitivity, specificity and ROC AUC
# ---------------------------------------------------------------------------------------


def _draw_patients(rng: np.random.Generator, num_patients: int) -> tuple[np.ndarray, np.ndarray]:
    """0/1 labels and predicted probabilities on a coarse grid, so that ties really occur.

    Probabilities are whole multiples of 1 / steps (e.g. 0.35), as a model's rounded
    outputs would be; sick patients tend to score higher, as with a useful model.
    """
    steps = int(rng.choice([10, 20]))
    while True:
        labels = (rng.uniform(size=num_patients) < rng.uniform(0.3, 0.6)).astype(np.int64)
        if 3 <= labels.sum() <= num_patients - 3:
            break
    grid = np.where(labels == 1, rng.binomial(steps, 0.62, size=num_patients),
                    rng.binomial(steps, 0.38, size=num_patients))
    return labels, grid / steps


def _patients_case(labels: np.ndarray, probabilities: np.ndarray, extra: str = "") -> str:
    described = (f"{len(labels)} patients, {int(labels.sum())} with pneumonia (label 1) and "
                 f"{int(len(labels) - labels.sum())} normal (label 0){extra}")
    if len(labels) <= 16:
        described += (f"\n  labels        = {labels.tolist()}"
                      f"\n  probabilities = {[round(float(p), 2) for p in probabilities]}")
    return described


def _as_numbers(result, count: int) -> tuple[float, ...] | None:
    """``count`` real numbers as floats (one-number tensors and arrays allowed), else None."""
    if count == 1:
        values = [result]
    elif isinstance(result, (tuple, list)) and len(result) == count:
        values = list(result)
    else:
        return None
    found = []
    for value in values:
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        elif isinstance(value, np.ndarray) and value.size == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return None
        found.append(float(value))
    return tuple(found)


def _format_numbers(values: Sequence[float]) -> str:
    shown = ", ".join(f"{value:.4f}" for value in values)
    return f"({shown})" if len(values) > 1 else shown


def _check_numbers(fn: Callable, result: tuple[float, ...], expected: tuple[float, ...],
                   mistakes: Sequence[_Mistake], case: str, expected_name: str) -> None:
    """Fail with the most specific diagnosis unless ``result`` equals ``expected``."""
    def close(first, second) -> bool:
        return all(abs(a - b) <= 1e-9 for a, b in zip(first, second))

    if close(result, expected):
        return
    numbers_shown = (f"\n  case: {case}\n  you returned {_format_numbers(result)}"
                     f"\n  {expected_name} is {_format_numbers(expected)}")
    for mistake in mistakes:
        if close(result, mistake.value):
            raise AssertionError(mistake.diagnosis + numbers_shown)
    raise AssertionError(f"{_name(fn)} does not return {expected_name}.{numbers_shown}")


def _numbers_distinct(expected: tuple[float, ...], mistakes: Sequence[_Mistake]) -> bool:
    values = [expected] + [mistake.value for mistake in mistakes]
    return all(max(abs(a - b) for a, b in zip(first, second)) > 1e-3
               for index, first in enumerate(values) for second in values[index + 1:])


def _check_inputs_unchanged(fn: Callable, labels: np.ndarray, probabilities: np.ndarray,
                            given: tuple[np.ndarray, np.ndarray], case: str) -> None:
    for name, original, after in (("labels", labels, given[0]), ("probabilities", probabilities, given[1])):
        if not np.array_equal(original, after):
            raise AssertionError(
                f"{_name(fn)} changed `{name}` in place (sorted, thresholded or overwrote it). "
                f"Work on a copy or on new arrays: the hospital still needs its test set and its "
                f"model's outputs for the next metric.\n  case: {case}"
            )


def _rates(labels: np.ndarray, predicted_pneumonia: np.ndarray) -> tuple[float, float]:
    """(sensitivity, specificity) of 0/1 decisions, by the package's metric code."""
    metrics = classification_metrics(np.where(predicted_pneumonia, 1.0, -1.0), labels)
    return metrics.sensitivity, metrics.specificity


def _threshold_mistakes(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> list[_Mistake]:
    """Wrong (sensitivity, specificity) pairs learners often compute, with what each means."""
    sick, flagged = labels == 1, probabilities > threshold
    sensitivity, specificity = _rates(labels, flagged)
    true_positive, true_negative = int((flagged & sick).sum()), int((~flagged & ~sick).sum())
    num_flagged, num_cleared = int(flagged.sum()), int((~flagged).sum())
    return [
        _Mistake((specificity, sensitivity),
                 "You swapped the two classes: sensitivity is about the patients WITH pneumonia "
                 "(label 1), the fraction the model catches; specificity about the normal ones "
                 "(label 0), the fraction it clears."),
        _Mistake(_rates(labels, probabilities >= threshold),
                 f"You flagged the patients whose probability is exactly the threshold "
                 f"({threshold:g}) too. In the course a patient counts as pneumonia when the "
                 f"probability is *above* the threshold (logit above 0 means above 0.5)."),
        _Mistake((true_positive / len(labels), true_negative / len(labels)),
                 f"You divided by all {len(labels)} patients. Sensitivity divides the pneumonias "
                 f"caught by the patients who have pneumonia ({int(sick.sum())}); specificity "
                 f"divides the normals cleared by the normal patients ({int((~sick).sum())})."),
        _Mistake((true_positive / num_flagged if num_flagged else math.nan,
                  true_negative / num_cleared if num_cleared else math.nan),
                 "You divided by the patients the model flagged (and cleared): that is the "
                 "precision (and negative predictive value), what a positive result means for "
                 "a patient. Sensitivity asks the other way round: of the sick, how many were caught?"),
        _Mistake((1 - sensitivity, 1 - specificity),
                 "You returned the miss rate (1 - sensitivity) and the false-alarm rate "
                 "(1 - specificity): count the patients the model got right in each class."),
        _Mistake(_rates(labels, probabilities > 0.5),
                 f"Your result does not depend on `threshold`: it is the sensitivity and "
                 f"specificity at 0.5. Flag a patient when the probability is above the "
                 f"threshold you are given ({threshold:g})."),
        _Mistake(_rates(labels, probabilities < threshold),
                 "You flagged the patients *below* the threshold: a higher probability means "
                 "more likely pneumonia."),
    ]


def check_sensitivity_specificity(fn: Callable, seed: int | None = None) -> bool:
    """Check a learner's sensitivity and specificity at a threshold, against ``fl.evaluate``'s metrics.

    The learner writes::

        fn(labels: np.ndarray, probabilities: np.ndarray, threshold: float) -> tuple[float, float]

    ``labels`` holds 1 for pneumonia, 0 for normal; ``probabilities`` the model's predicted
    probability of pneumonia for each patient. A patient counts as pneumonia when the
    probability is above ``threshold`` (as a logit above 0 is a probability above 0.5). The
    result is ``(sensitivity, specificity)``: the fraction of the pneumonia patients flagged,
    and the fraction of the normal patients cleared. The inputs must not be changed.

    Parameters
    ----------
    fn : the learner's function.
    seed : seeds the random cases (default: fresh cases on every call).
    """
    rng = np.random.default_rng(seed)
    for case_index in range(NUM_CASES):
        while True:
            num_patients = int(rng.integers(10, 15)) if case_index == 0 else int(rng.integers(30, 200))
            labels, probabilities = _draw_patients(rng, num_patients)
            # A threshold some patients sit exactly on, so "above" and "at or above" differ.
            threshold = float(rng.choice(probabilities[(probabilities > 0) & (probabilities < 1)]))
            sensitivity, specificity = _rates(labels, probabilities > threshold)
            mistakes = _threshold_mistakes(labels, probabilities, threshold)
            if threshold != 0.5 and _numbers_distinct((sensitivity, specificity), mistakes):
                break
        case = _patients_case(labels, probabilities, f", threshold = {threshold:g}")
        given = (labels.copy(), probabilities.copy())
        result = _call(fn, (given[0], given[1], threshold), case)
        _check_inputs_unchanged(fn, labels, probabilities, given, case)
        answer = _as_numbers(result, 2)
        if answer is None:
            raise AssertionError(f"{_name(fn)} returned {result!r}; it should return two numbers, "
                                 f"(sensitivity, specificity).\n  case: {case}")
        _check_numbers(fn, answer, (sensitivity, specificity), mistakes, case,
                       "the right (sensitivity, specificity)")
    return _passed(f"{_name(fn)} computes sensitivity and specificity at a threshold on "
                   f"{NUM_CASES} fresh random cases.")


def _auc_mistakes(labels: np.ndarray, probabilities: np.ndarray) -> list[_Mistake]:
    """Wrong AUCs learners often compute, with what each means."""
    auc = roc_auc(probabilities, labels)
    # Ties broken against (or for) the sick patient: the grid's gap, 1 / steps, dwarfs the nudge.
    ties_lost = roc_auc(probabilities - 1e-6 * labels, labels)
    ties_won = roc_auc(probabilities + 1e-6 * labels, labels)
    num_patients, num_sick = len(labels), int(labels.sum())
    num_normal = num_patients - num_sick
    at_half = classification_metrics(probabilities - 0.5, labels)
    return [
        _Mistake((ties_lost,),
                 "You counted a tie (a sick and a normal patient with the same probability) as "
                 "a loss. A tie is a coin toss: it counts one half."),
        _Mistake((ties_won,),
                 "You counted a tie (a sick and a normal patient with the same probability) as "
                 "a win. A tie is a coin toss: it counts one half."),
        _Mistake((1 - auc,),
                 "You returned 1 - AUC: the chance that a *normal* patient scores above a sick "
                 "one. Count the pairs where the pneumonia patient scores higher."),
        _Mistake((at_half.accuracy,),
                 "You returned the accuracy at threshold 0.5. The AUC does not use a threshold: "
                 "it compares every pneumonia patient with every normal one."),
        _Mistake(((at_half.sensitivity + at_half.specificity) / 2,),
                 "You computed the AUC of the yes/no decisions at threshold 0.5, not of the "
                 "probabilities: the AUC ranks patients by their probability."),
        _Mistake((auc * num_sick * num_normal / (num_patients * (num_patients - 1) / 2),),
                 f"You divided by all {num_patients * (num_patients - 1) // 2} pairs of patients. "
                 f"Only pairs of one pneumonia and one normal patient count: "
                 f"{num_sick} x {num_normal} = {num_sick * num_normal} of them."),
        _Mistake((auc * num_sick * num_normal / num_patients ** 2,),
                 f"You divided by n^2 = {num_patients ** 2}. Only pairs of one pneumonia and one "
                 f"normal patient count: {num_sick} x {num_normal} = {num_sick * num_normal} of them."),
    ]


def check_auc(fn: Callable, seed: int | None = None) -> bool:
    """Check a learner's ROC AUC, computed by comparing patients, against ``fl.roc_auc``.

    The learner writes::

        fn(labels: np.ndarray, probabilities: np.ndarray) -> float

    returning the fraction of (pneumonia patient, normal patient) pairs in which the
    pneumonia patient has the higher probability, a tie counting one half. The cases hold
    many ties (probabilities such as 0.35 repeat), and the inputs must not be changed.

    Parameters
    ----------
    fn : the learner's function.
    seed : seeds the random cases (default: fresh cases on every call).
    """
    rng = np.random.default_rng(seed)
    for case_index in range(NUM_CASES):
        while True:
            num_patients = int(rng.integers(10, 15)) if case_index == 0 else int(rng.integers(30, 200))
            labels, probabilities = _draw_patients(rng, num_patients)
            expected = (roc_auc(probabilities, labels),)
            mistakes = _auc_mistakes(labels, probabilities)
            if _numbers_distinct(expected, mistakes):
                break
        case = _patients_case(labels, probabilities)
        given = (labels.copy(), probabilities.copy())
        result = _call(fn, given, case)
        _check_inputs_unchanged(fn, labels, probabilities, given, case)
        answer = _as_numbers(result, 1)
        if answer is None:
            raise AssertionError(f"{_name(fn)} returned {result!r}; it should return one number, "
                                 f"the AUC.\n  case: {case}")
        _check_numbers(fn, answer, expected, mistakes, case, "the AUC")
    return _passed(f"{_name(fn)} computes the ROC AUC, ties counting one half, on {NUM_CASES} "
                   f"fresh random cases.")


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


# --- Notebook 07: from simulation to deployment ---
# The two checks below need nothing from Flower: the first compares with fl.aggregate, the
# second with fl_lessons.flower.deploy.supernode_command (imported when the check runs, since
# that module needs the `flower` extra's psutil).

ARRAY_SHAPES = (("conv.weight", (2, 1, 3, 3)), ("conv.bias", (2,)), ("fc.weight", (1, 4)), ("fc.bias", (1,)))
"""Named arrays like those of a model's ``state_dict``, as Flower's ``ArrayRecord`` carries them."""


def _draw_named_arrays(rng: np.random.Generator, num_hospitals: int) -> list[dict[str, np.ndarray]]:
    names = [name for name, _ in ARRAY_SHAPES][: int(rng.integers(2, len(ARRAY_SHAPES) + 1))]
    shapes = dict(ARRAY_SHAPES)
    return [{name: rng.normal(size=shapes[name]).astype(np.float32) for name in names}
            for _ in range(num_hospitals)]


def _flatten_named(arrays: dict, names: Sequence[str]) -> torch.Tensor:
    return torch.cat([torch.as_tensor(np.asarray(arrays[name], dtype=np.float64)).reshape(-1)
                      for name in names])


def _arrays_case(rng: np.random.Generator):
    """Hospitals' named arrays and sizes on which every known averaging mistake is clearly wrong."""
    while True:
        num_hospitals = int(rng.integers(2, 6))
        arrays, num_examples = _draw_named_arrays(rng, num_hospitals), _draw_sizes(rng, num_hospitals)
        names = list(arrays[0])
        vectors = [_flatten_named(hospital, names).float() for hospital in arrays]
        mistakes = _averaging_mistakes(vectors, num_examples)
        expected = aggregate(_updates(vectors, num_examples))
        if _distinct(expected, mistakes):
            return arrays, num_examples, names, expected, mistakes


def check_average_arrays(fn: Callable, seed: int | None = None) -> bool:
    """Check a learner's FedAvg over named arrays (Flower's ``ArrayRecord``) against ``fl.aggregate``.

    The learner writes::

        fn(arrays: list[dict[str, np.ndarray]], num_examples: list[int]) -> dict[str, np.ndarray]

    one dict per hospital, array name -> array (as ``ArrayRecord.numpy()`` gives them),
    returning for every name the n_k-weighted average of the hospitals' arrays of that
    name, with the same names and shapes; the inputs must not be changed.

    Parameters
    ----------
    fn : the learner's function.
    seed : seeds the random cases (default: fresh cases on every call).
    """
    rng = np.random.default_rng(seed)
    for _ in range(NUM_CASES):
        arrays, num_examples, names, expected, mistakes = _arrays_case(rng)
        shapes = {name: tuple(array.shape) for name, array in arrays[0].items()}
        given = [{name: array.copy() for name, array in hospital.items()} for hospital in arrays]
        case = f"{len(arrays)} hospitals with n_k = {num_examples}, each sending arrays {shapes}"
        result = _call(fn, (given, list(num_examples)), case)
        for index, (original, after) in enumerate(zip(arrays, given)):
            if set(after) != set(original) or any(not np.array_equal(original[n], after[n]) for n in original):
                raise AssertionError(
                    f"{_name(fn)} changed hospital {index}'s arrays in place. Build new arrays for "
                    f"the average and leave the inputs as they were: {SENT_BY_A_CLIENT}\n  case: {case}"
                )
        if not isinstance(result, dict):
            raise AssertionError(
                f"{_name(fn)} returned a {type(result).__name__}; it should return a dict with the "
                f"same array names as each hospital sent ({names}), like an ArrayRecord.\n  case: {case}"
            )
        if sorted(result) != sorted(names):
            raise AssertionError(
                f"{_name(fn)} returned the arrays {sorted(result)}; it should return one average for "
                f"each array name the hospitals sent, {sorted(names)}.\n  case: {case}"
            )
        for name in names:
            got = np.asarray(result[name])
            if got.shape != shapes[name]:
                raise AssertionError(
                    f"{_name(fn)} returned {name!r} shaped {got.shape}; it should keep the shape the "
                    f"hospitals sent, {shapes[name]}, so the model can load it.\n  case: {case}"
                )
        flat = _flatten_named(result, names).float()
        _check_vector(fn, flat, expected, mistakes, case,
                      "the n_k-weighted average (all arrays, one after another)")
    return _passed(f"{_name(fn)} averages every named array weighted by n_k, as Flower's FedAvg "
                   f"does, on {NUM_CASES} fresh random cases.")


def _parse_supernode_command(fn: Callable, result, case: str) -> tuple[str, dict[str, list[str]]]:
    """The program's name and each option with the values that follow it."""
    if not (isinstance(result, (list, tuple)) and result and all(isinstance(part, str) for part in result)):
        raise AssertionError(
            f"{_name(fn)} returned {result!r}; it should return the command as a list of strings, "
            f"e.g. ['flower-supernode', '--superlink', '127.0.0.1:9092', ...].\n  case: {case}"
        )
    options: dict[str, list[str]] = {}
    current = None
    for part in result[1:]:
        if part.startswith("--"):
            current = part
            options.setdefault(current, [])
        elif current is None:
            raise AssertionError(f"{_name(fn)}: {part!r} comes before any option.\n  case: {case}")
        else:
            options[current].append(part)
    return result[0].rsplit("/", 1)[-1], options


def _check_supernode_case(fn: Callable, hospital_id: int, superlink: str, root_certificates) -> None:
    from .flower.deploy import supernode_command  # needs the `flower` extra (psutil)

    case = (f"hospital_id={hospital_id}, superlink={superlink!r}, "
            f"root_certificates={root_certificates!r}")
    try:
        expected = supernode_command(hospital_id, superlink, root_certificates)
    except ValueError:
        try:
            result = fn(hospital_id, superlink, root_certificates)
        except NotImplementedError:
            raise AssertionError(NOT_IMPLEMENTED.format(name=_name(fn))) from None
        except ValueError:
            return
        except Exception as error:
            raise AssertionError(
                f"{_name(fn)} raised {type(error).__name__}: {error}; refuse with a ValueError that "
                f"says what to change.\n  case: {case}"
            ) from error
        raise AssertionError(
            f"{_name(fn)} returned {result!r}, a SuperNode that would send its hospital's model "
            f"weights unencrypted to {superlink}, another computer. Without root_certificates it "
            f"must refuse (raise ValueError) unless the SuperLink is on 127.0.0.1 or localhost."
            f"\n  case: {case}"
        )
    result = _call(fn, (hospital_id, superlink, root_certificates), case)
    program, options = _parse_supernode_command(fn, result, case)
    _, wanted = _parse_supernode_command(supernode_command, expected, case)
    shown = f"\n  case: {case}\n  you returned {list(result)}"
    if program != "flower-supernode":
        raise AssertionError(f"The command should start Flower's SuperNode, `flower-supernode`, not {program!r}.{shown}")
    if options.get("--superlink") != wanted["--superlink"]:
        raise AssertionError(f"Tell the SuperNode where the SuperLink is: `--superlink {superlink}`.{shown}")
    node_config = options.get("--node-config", [])
    if node_config != wanted["--node-config"]:
        hint = ""
        if any("hospital_id" in part for part in node_config):
            hint = " The ClientApp reads the key `hospital-id`, with a hyphen, not `hospital_id`."
        raise AssertionError(
            f"The SuperNode must be told its hospital in its node config, as one argument: "
            f"`--node-config {wanted['--node-config'][0]}`.{hint}{shown}"
        )
    if "--insecure" in options and root_certificates is not None:
        raise AssertionError(
            f"With root_certificates given, the SuperNode should verify the SuperLink with "
            f"`--root-certificates {root_certificates}`, and never add `--insecure`.{shown}"
        )
    if root_certificates is not None and options.get("--root-certificates") != [str(root_certificates)]:
        raise AssertionError(
            f"Pass the CA certificate so the SuperNode can verify the SuperLink's TLS certificate: "
            f"`--root-certificates {root_certificates}`.{shown}"
        )
    if root_certificates is None and "--insecure" not in options:
        raise AssertionError(
            f"Without certificates, a SuperNode expects TLS by default and would fail to connect to "
            f"a SuperLink started with --insecure. On loopback ({superlink}) add `--insecure`.{shown}"
        )
    extra = sorted(set(options) - set(wanted))
    if extra:
        raise AssertionError(f"The command has options the SuperNode does not need here: {extra}.{shown}")


def check_supernode_command(fn: Callable, seed: int | None = None) -> bool:
    """Check a learner's SuperNode command line against ``fl_lessons.flower.supernode_command``.

    The learner writes::

        fn(hospital_id: int, superlink: str, root_certificates: str | None) -> list[str]

    returning the arguments that start hospital k's SuperNode: ``flower-supernode``, the
    SuperLink's address, ``hospital-id=k`` in the node config, and either TLS
    (``--root-certificates``) or, only for a SuperLink on this computer, ``--insecure``;
    for a SuperLink elsewhere without certificates it raises ``ValueError``.

    Parameters
    ----------
    fn : the learner's function.
    seed : seeds the random cases (default: fresh cases on every call).
    """
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(2):
        hospital_id, port = int(rng.integers(0, 5)), int(rng.integers(9000, 9999))
        remote = f"superlink.hospital-network-{int(rng.integers(1, 99))}.example.org:{port}"
        certificates = f"certificates/ca-{int(rng.integers(1, 99))}.crt"
        cases += [(hospital_id, f"127.0.0.1:{port}", None), (hospital_id, f"localhost:{port}", None),
                  (hospital_id, remote, certificates), (hospital_id, remote, None),
                  ((hospital_id + 1) % 5, f"10.0.{int(rng.integers(0, 255))}.7:{port}", None)]
    for hospital_id, superlink, root_certificates in cases:
        _check_supernode_case(fn, hospital_id, superlink, root_certificates)
    return _passed(f"{_name(fn)} builds each hospital's SuperNode command: its node config, TLS when "
                   f"the SuperLink is elsewhere, --insecure only on loopback ({len(cases)} cases).")


# --- Notebooks 05 and 06: rounds to target, heterogeneity ---
# check_rounds_to_target and check_local_updates (notebook 05), check_proximal_gradient
# (notebook 06; its other exercise reuses check_dirichlet_partition).

ROUNDS_TOLERANCE = 1e-9
MIN_ROUNDS_GAP = 1e-3


def _rounds_mistakes(rounds: list[float], accuracies: list[float], target: float) -> list[_Mistake]:
    """Rounds-to-target answers computed the ways learners often get wrong."""
    mistakes = []
    first = next((i for i, a in enumerate(accuracies) if a >= target), None)
    if first is not None:
        mistakes.append(_Mistake(float(rounds[first]),
            "You returned the first evaluated round at or above the target, without interpolating: "
            "the target is crossed somewhere between the last round below it and that round. "
            "Interpolate linearly between the two."))
        if first > 0:
            before, after = accuracies[first - 1], accuracies[first]
            raw = rounds[first - 1] + (target - before) / (after - before) * (rounds[first] - rounds[first - 1])
            mistakes.append(_Mistake(float(raw),
                "You interpolated from the accuracy measured at the previous round, but the curve "
                "must first be made monotone: interpolate from the running maximum (the best "
                "accuracy so far), not from a dip."))
    return mistakes


def _rounds_case(rng: np.random.Generator) -> tuple[list[float], list[float], float]:
    """A noisy, non-monotone learning curve evaluated every few rounds, and a target it crosses."""
    every = int(rng.choice([1, 2, 5, 10]))
    count = int(rng.integers(6, 14))
    rounds = [every * t for t in range(count)]
    trend = 0.5 + 0.4 * (1 - np.exp(-np.arange(count) / rng.uniform(2, 5)))
    accuracies = np.clip(trend + rng.normal(0, 0.05, size=count), 0, 1).round(3)
    crossing = int(rng.integers(2, count))
    target = float(np.round(rng.uniform(accuracies[:crossing].max(), 1.0), 3))
    accuracies[crossing] = round(min(1.0, target + rng.uniform(0.005, 0.05)), 3)
    return rounds, [float(a) for a in accuracies], target


def _check_rounds_case(fn: Callable, rounds, accuracies, target, expected, mistakes) -> None:
    case = f"rounds = {rounds}, accuracies = {accuracies}, target = {target}"
    result = _call(fn, (list(rounds), list(accuracies), target), case)
    if expected is None:
        if result is not None:
            raise AssertionError(
                f"{_name(fn)} returned {result!r} for a curve that never reaches the target; return None, "
                f"so that 'not reached within N' can never be mistaken for a number of rounds.\n  case: {case}")
        return
    if result is None or isinstance(result, bool) or not isinstance(result, numbers.Real):
        raise AssertionError(f"{_name(fn)} returned {result!r}; it should return the round (a number) at "
                             f"which the target is reached, here {expected:.4f}.\n  case: {case}")
    if abs(float(result) - expected) <= ROUNDS_TOLERANCE * (1 + abs(expected)):
        return
    shown = f"\n  case: {case}\n  you returned {float(result):.4f}; the target is reached at round {expected:.4f}"
    for mistake in mistakes:
        if abs(float(result) - mistake.value) <= 1e-6 * (1 + abs(mistake.value)):
            raise AssertionError(mistake.diagnosis + shown)
    raise AssertionError(f"{_name(fn)} does not return the round at which the running best first reaches "
                         f"the target.{shown}")


def check_rounds_to_target(fn: Callable, seed: int | None = None) -> bool:
    """Check a learner's rounds-to-target: running maximum, linear interpolation, None if never.

    The learner writes::

        fn(rounds: list, accuracies: list, target: float) -> float | None

    returning the (fractional) round at which the running-best accuracy first reaches the
    target, interpolated linearly between evaluated rounds, as McMahan et al. 2017 count it;
    ``None`` when the target is never reached. Compared with
    :func:`fl_lessons.experiments.rounds_to_target` on fresh noisy curves.

    Parameters
    ----------
    fn : the learner's function.
    seed : seeds the random cases (default: fresh cases on every call).
    """
    from .experiments import rounds_to_target  # imported here: experiments is a heavier module

    rng = np.random.default_rng(seed)
    checked = 0
    for _ in range(200):
        rounds, accuracies, target = _rounds_case(rng)
        expected = rounds_to_target(rounds, accuracies, target)
        mistakes = _rounds_mistakes(rounds, accuracies, target)
        # Use only curves on which every known mistake gives a clearly different answer.
        if expected is None or any(abs(m.value - expected) < MIN_ROUNDS_GAP for m in mistakes) or len(mistakes) < 2:
            continue
        _check_rounds_case(fn, rounds, accuracies, target, expected, mistakes)
        checked += 1
        if checked == NUM_CASES:
            break
    # Fixed edge cases: reached at the first point, and never reached.
    _check_rounds_case(fn, [3, 4, 5], [0.9, 0.8, 0.95], 0.85, 3.0, [])
    _check_rounds_case(fn, [0, 1, 2, 3], [0.5, 0.7, 0.6, 0.79], 0.8, None, [])
    return _passed(f"{_name(fn)} counts rounds like the paper: running best, linear interpolation, "
                   f"None when never reached ({checked + 2} curves).")


def _local_updates_mistakes(local_epochs: int, batch_size: float, num_examples: int,
                            num_clients: int) -> list[_Mistake]:
    per_client = num_examples / num_clients
    mistakes = [
        _Mistake(float(local_epochs * num_examples / batch_size) if batch_size != math.inf else math.nan,
                 "You divided the whole data set n by B: a client holds only about n / K examples, so "
                 "divide by K too."),
        _Mistake(float(per_client / batch_size) if batch_size != math.inf else 1.0,
                 "You counted the steps of one epoch only: multiply by the L local epochs."),
        _Mistake(float(local_epochs * math.ceil(per_client / batch_size)) if batch_size != math.inf else math.nan,
                 "You rounded the steps per epoch up to a whole number: u is the paper's *expected* "
                 "number of updates, L n / (K B), without rounding."),
    ]
    if batch_size == math.inf:
        mistakes.append(_Mistake(0.0, "B = inf means one full-batch step per epoch, so u = L, not "
                                      "L n / (K inf) = 0."))
    return mistakes


def check_local_updates(fn: Callable, seed: int | None = None) -> bool:
    """Check a learner's u = L n / (K B), the expected local updates per client per round.

    The learner writes::

        fn(local_epochs: int, batch_size: float, num_examples: int, num_clients: int) -> float

    with ``batch_size = math.inf`` meaning full batch (u = L). Compared with
    :meth:`fl_lessons.experiments.Setting.local_updates`.

    Parameters
    ----------
    fn : the learner's function.
    seed : seeds the random cases (default: fresh cases on every call).
    """
    from .experiments import Setting

    rng = np.random.default_rng(seed)
    cases = [(int(rng.integers(1, 21)), float(rng.choice([10, 20, 50])), int(rng.integers(1000, 60001)),
              int(rng.integers(10, 101))) for _ in range(NUM_CASES)]
    cases.append((int(rng.integers(2, 21)), math.inf, int(rng.integers(1000, 60001)), int(rng.integers(10, 101))))
    for local_epochs, batch_size, num_examples, num_clients in cases:
        case = f"L = {local_epochs}, B = {batch_size:g}, n = {num_examples}, K = {num_clients}"
        expected = Setting("FedAvg", local_epochs, batch_size).local_updates(num_examples, num_clients)
        result = _call(fn, (local_epochs, batch_size, num_examples, num_clients), case)
        if isinstance(result, bool) or not isinstance(result, numbers.Real):
            raise AssertionError(f"{_name(fn)} returned {result!r}; it should return one number, u.\n  case: {case}")
        if abs(float(result) - expected) <= 1e-9 * (1 + expected):
            continue
        shown = f"\n  case: {case}\n  you returned {float(result):.4g}; u = {expected:.4g}"
        for mistake in _local_updates_mistakes(local_epochs, batch_size, num_examples, num_clients):
            if not math.isnan(mistake.value) and abs(float(result) - mistake.value) <= 1e-9 * (1 + abs(mistake.value)) \
                    and abs(mistake.value - expected) > 1e-6:
                raise AssertionError(mistake.diagnosis + shown)
        raise AssertionError(f"{_name(fn)} does not return u = L n / (K B).{shown}")
    return _passed(f"{_name(fn)} computes u = L n / (K B), and u = L for B = inf ({len(cases)} cases).")


def _proximal_mistakes(gradient: torch.Tensor, weights: torch.Tensor, anchor: torch.Tensor,
                       mu: float) -> list[_Mistake]:
    return [
        _Mistake(gradient + mu * (anchor - weights),
                 "The sign of the proximal term is flipped: the gradient of (mu/2)||w - w_t||^2 is "
                 "mu (w - w_t), so that the step (against the gradient) pulls w back towards w_t."),
        _Mistake(gradient + mu / 2 * (weights - anchor),
                 "You kept the 1/2: the derivative of (mu/2)||w - w_t||^2 is mu (w - w_t), the 2 of "
                 "the square cancels it."),
        _Mistake(gradient + (weights - anchor),
                 "You left out mu: the pull towards w_t is mu (w - w_t)."),
        _Mistake(mu * (weights - anchor),
                 "You returned the proximal term alone: add it to the gradient of the client's own loss."),
        _Mistake(gradient.clone(),
                 "You returned the gradient unchanged: FedProx adds mu (w - w_t) to it."),
    ]


def check_proximal_gradient(fn: Callable, seed: int | None = None) -> bool:
    """Check a learner's FedProx gradient: ``gradient + mu (weights - global_weights)``.

    The learner writes::

        fn(gradient: Tensor, weights: Tensor, global_weights: Tensor, mu: float) -> Tensor

    the gradient of F_k(w) + (mu / 2) ||w - w_t||^2 (Li et al. 2020). Compared with
    :func:`fl_lessons.fedprox.proximal_gradient`.

    Parameters
    ----------
    fn : the learner's function.
    seed : seeds the random cases (default: fresh cases on every call).
    """
    from .fedprox import proximal_gradient

    rng = np.random.default_rng(seed)
    checked = 0
    while checked < NUM_CASES:
        length = int(rng.integers(3, 7))
        gradient, weights, anchor = (torch.from_numpy(rng.normal(0, 1, size=length)) for _ in range(3))
        mu = float(np.round(rng.uniform(0.1, 3.0), 2))
        expected = proximal_gradient(gradient, weights, anchor, mu)
        mistakes = _proximal_mistakes(gradient, weights, anchor, mu)
        if abs(mu - 1.0) < 0.05 or abs(mu - 2.0) < 0.05 or not _distinct(expected, mistakes):
            continue
        case = (f"gradient = {_format_vector(gradient)}, weights = {_format_vector(weights)}, "
                f"global_weights = {_format_vector(anchor)}, mu = {mu}")
        originals = [t.clone() for t in (gradient, weights, anchor)]
        result = _call(fn, (gradient, weights, anchor, mu), case)
        _check_unchanged(fn, originals, [gradient, weights, anchor], "input {index}",
                         "the round still needs w and w_t after this step.", case)
        _check_vector(fn, result, expected, mistakes, case, "gradient + mu (weights - global_weights)")
        checked += 1
    return _passed(f"{_name(fn)} adds FedProx's pull mu (w - w_t) to the gradient ({checked} cases).")
