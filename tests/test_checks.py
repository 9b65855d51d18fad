"""Tests for fl_lessons.checks: the automatic checks of the workbook's coding exercises.

Every check must accept a reference solution written here with the package's own
functions, reject the student edition's stub with a friendly message, and reject each
common wrong answer with the diagnosis that names it, never showing the package's code.
Each check must also draw fresh cases on every call (unless given a seed).
"""

from __future__ import annotations

import inspect
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import fl_lessons as fl
from fl_lessons import checks
from fl_lessons.student import CODE_STUB


# ---------------------------------------------------------------------------------------
# Reference solutions, written with the package, as a teacher would
# ---------------------------------------------------------------------------------------


def sensitivity_specificity(labels, probabilities, threshold):
    # The package's rule: pneumonia when the logit, here probability - threshold, is above 0.
    metrics = fl.training.classification_metrics(probabilities - threshold, labels)
    return metrics.sensitivity, metrics.specificity


def rank_auc(labels, probabilities):
    return fl.roc_auc(probabilities, labels)


def weighted_average(vectors, num_examples):
    return fl.aggregate([fl.ClientUpdate(vector, n_k, math.nan) for vector, n_k in zip(vectors, num_examples)])


def fedsgd_step(global_weights, gradients, num_examples, lr):
    return fl.gradient_step(global_weights, weighted_average(gradients, num_examples), lr)


def aggregate_reported(updates, reported):
    return fl.aggregate([updates[k] for k in reported])


def bytes_per_round(num_parameters, bytes_per_number, num_selected, num_reported, algorithm):
    message = num_parameters * bytes_per_number
    return num_selected * message, num_reported * message


def dirichlet_partition(labels, num_clients, alpha, seed):
    return fl.partition_dirichlet(labels, num_clients, alpha, seed=seed)


SMALL_HOSPITALS = fl.make_hospitals(
    0,
    specs=[fl.HospitalSpec("A", 30, 1, 0.4), fl.HospitalSpec("B", 18, 1, 0.3), fl.HospitalSpec("C", 9, 1, 0.6)],
    common_test_per_hospital=0,
)


def one_step_updates(model_name, seed, dtype=torch.float64, weighted=True, lr=0.1):
    """FedSGD's w_{t+1} and one step of weight averaging, on float64 clients (or ``dtype``)."""
    model = fl.make_model(model_name, seed=seed, dtype=dtype)
    clients = [fl.Client(h.train_x.to(dtype), h.train_y.to(dtype), model, h.name) for h in SMALL_HOSPITALS.hospitals]
    start = fl.get_flat_weights(model)
    gradients = [client.gradient(start) for client in clients]
    fedsgd = fl.gradient_step(start, fl.aggregate(gradients), lr)
    stepped = [fl.ClientUpdate(fl.gradient_step(start, update.values, lr), update.num_examples if weighted else 1,
                               update.loss) for update in gradients]
    return fedsgd, fl.aggregate(stepped)


def equivalence_for_model(model_name, seed):
    fedsgd, averaged = one_step_updates(model_name, seed)
    return float((fedsgd - averaged).abs().max())


REFERENCES = {
    "check_sensitivity_specificity": sensitivity_specificity,
    "check_auc": rank_auc,
    "check_weighted_average": weighted_average,
    "check_fedsgd_step": fedsgd_step,
    "check_aggregate_reported": aggregate_reported,
    "check_bytes_per_round": bytes_per_round,
    "check_dirichlet_partition": dirichlet_partition,
    "check_equivalence_for_model": equivalence_for_model,
}
CHECK_NAMES = sorted(REFERENCES)


def stub(*args):
    exec(CODE_STUB)  # exactly the line the student edition puts in place of a solution


# ---------------------------------------------------------------------------------------
# Common wrong answers
# ---------------------------------------------------------------------------------------


def weighted_sum(vectors, weights):
    return sum(weight * vector for vector, weight in zip(vectors, weights))


def plain_mean(vectors, num_examples):
    return torch.stack(vectors).mean(dim=0)


def weighted_average_mistakes():
    def not_normalized(vectors, num_examples):
        return weighted_sum(vectors, num_examples)

    def divided_by_clients(vectors, num_examples):
        return weighted_sum(vectors, num_examples) / len(vectors)

    def plain_sum(vectors, num_examples):
        return torch.stack(vectors).sum(dim=0)

    def divided_twice(vectors, num_examples):
        return weighted_average(vectors, num_examples) / len(vectors)

    def by_batches(vectors, num_examples):
        batches = [math.ceil(n_k / 32) for n_k in num_examples]
        return weighted_sum(vectors, [b / sum(batches) for b in batches])

    def in_place(vectors, num_examples):
        total = sum(num_examples)
        average = vectors[0].mul_(num_examples[0] / total)
        for vector, n_k in zip(vectors[1:], num_examples[1:]):
            average += n_k / total * vector
        return average

    def returns_list(vectors, num_examples):
        return weighted_average(vectors, num_examples).tolist()

    def keeps_dimension(vectors, num_examples):
        return weighted_average(vectors, num_examples).unsqueeze(0)

    def median(vectors, num_examples):
        return torch.stack(vectors).median(dim=0).values

    def crashes(vectors, num_examples):
        return {}["n_k"]

    return [
        (plain_mean, r"Your average ignores n_k: you returned the plain mean(.|\n)*client sizes n_k = \["),
        (not_normalized, r"do not sum to one: you weighted each vector by n_k but never divided"),
        (divided_by_clients, r"divided by the number of clients K = \d instead of by the number of examples"),
        (plain_sum, r"that is a sum, not an average"),
        (divided_twice, r"You divided twice"),
        (by_batches, r"number of minibatches"),
        (in_place, r"changed vectors\[0\] \(a client's vector\) in place"),
        (returns_list, r"returned a list; it should return one torch.Tensor"),
        (keeps_dimension, r"returned a tensor shaped \(1, \d\)"),
        (median, r"does not return the n_k-weighted average \(largest difference"),
        (crashes, r"`crashes` raised KeyError: 'n_k'"),
    ]


def fedsgd_step_mistakes():
    def unweighted(w, gradients, num_examples, lr):
        return w - lr * plain_mean(gradients, num_examples)

    def uphill(w, gradients, num_examples, lr):
        return w + lr * weighted_average(gradients, num_examples)

    def lr_forgotten(w, gradients, num_examples, lr):
        return w - weighted_average(gradients, num_examples)

    def returns_gradient(w, gradients, num_examples, lr):
        return weighted_average(gradients, num_examples)

    def returns_step(w, gradients, num_examples, lr):
        return -lr * weighted_average(gradients, num_examples)

    def divided_by_clients(w, gradients, num_examples, lr):
        return w - lr * weighted_sum(gradients, num_examples) / len(gradients)

    def not_normalized(w, gradients, num_examples, lr):
        return w - lr * weighted_sum(gradients, num_examples)

    def summed_gradients(w, gradients, num_examples, lr):
        return w - lr * torch.stack(gradients).sum(dim=0)

    def in_place(w, gradients, num_examples, lr):
        w -= lr * weighted_average(gradients, num_examples)
        return w

    def half_step(w, gradients, num_examples, lr):
        return w - lr / 2 * weighted_average(gradients, num_examples)

    return [
        (unweighted, r"Your step ignores n_k"),
        (uphill, r"You stepped uphill"),
        (lr_forgotten, r"right direction but the wrong length(.|\n)*lr = 0\.\d"),
        (returns_gradient, r"You returned the averaged gradient, not the new global weights"),
        (returns_step, r"You returned only the step"),
        (divided_by_clients, r"divided by the number of clients K"),
        (not_normalized, r"never divided by n = \d+"),
        (summed_gradients, r"added the gradients up instead of averaging"),
        (in_place, r"changed global_weights \(w_t\) in place"),
        (half_step, r"does not return the FedSGD update"),
    ]


def aggregate_reported_mistakes():
    def all_selected(updates, reported):
        return fl.aggregate(updates)

    def denominator_of_all(updates, reported):
        total = sum(update.num_examples for update in updates)
        return sum(updates[k].num_examples / total * updates[k].values for k in reported)

    def unweighted_reported(updates, reported):
        return torch.stack([updates[k].values for k in reported]).mean(dim=0)

    def unweighted_all(updates, reported):
        return torch.stack([update.values for update in updates]).mean(dim=0)

    def dropped_ones(updates, reported):
        return fl.aggregate([update for k, update in enumerate(updates) if k not in reported])

    def overwrites_update(updates, reported):
        average = aggregate_reported(updates, reported)
        updates[reported[0]].values.copy_(average)
        return average

    def uses_loss(updates, reported):
        losses = [updates[k].loss for k in reported]
        return sum(loss / sum(losses) * updates[k].values for loss, k in zip(losses, reported))

    return [
        (all_selected, r"You averaged over all \d selected clients, including the \d that dropped out"),
        (denominator_of_all, r"divided by the examples of all selected clients(.|\n)*erratum"),
        (unweighted_reported, r"ignores n_k: you gave each client that reported the same share"),
        (unweighted_all, r"plain mean over all selected clients"),
        (dropped_ones, r"You averaged the clients that dropped out, not those that reported"),
        (overwrites_update, r"changed updates\[\d\]\.values \(what a client sent\) in place"),
        (uses_loss, r"does not return the n_k-weighted average over the clients that reported"),
    ]


def bytes_per_round_mistakes():
    def upload_from_selected(p, b, selected, reported, algorithm):
        return selected * p * b, selected * p * b

    def download_to_reported(p, b, selected, reported, algorithm):
        return reported * p * b, reported * p * b

    def swapped(p, b, selected, reported, algorithm):
        return reported * p * b, selected * p * b

    def numbers_not_bytes(p, b, selected, reported, algorithm):
        return selected * p, reported * p

    def bits(p, b, selected, reported, algorithm):
        return 8 * selected * p * b, 8 * reported * p * b

    def broadcast_once(p, b, selected, reported, algorithm):
        return p * b, reported * p * b

    def no_download(p, b, selected, reported, algorithm):
        return 0, reported * p * b

    def gradients_are_smaller(p, b, selected, reported, algorithm):
        down, up = bytes_per_round(p, b, selected, reported, algorithm)
        return (down, up // 2) if algorithm == "FedSGD" else (down, up)

    def total_only(p, b, selected, reported, algorithm):
        return sum(bytes_per_round(p, b, selected, reported, algorithm))

    def header_overhead(p, b, selected, reported, algorithm):
        return selected * (p * b + 64), reported * (p * b + 64)

    return [
        (upload_from_selected, r"counted an upload from every selected client, but \d of the \d+ dropped out"),
        (download_to_reported, r"counted the download only for the clients that reported"),
        (swapped, r"You swapped the two directions"),
        (numbers_not_bytes, r"You counted numbers, not bytes: each number takes bytes_per_number = \d"),
        (bits, r"You counted bits, not bytes"),
        (broadcast_once, r"You counted the download once"),
        (no_download, r"bytes_down is 0"),
        (gradients_are_smaller, r"Your byte count depends on the algorithm"),
        (total_only, r"it should return two whole numbers, \(bytes_down, bytes_up\)"),
        (header_overhead, r"does not count the bytes of one round right(.|\n)*expected \(bytes_down, bytes_up\)"),
    ]


def dirichlet_partition_mistakes():
    def iid(labels, num_clients, alpha, seed):
        return fl.partition_iid(len(labels), num_clients, seed=seed)

    def quantity_skew(labels, num_clients, alpha, seed):
        return fl.partition_quantity(len(labels), num_clients, alpha, seed=seed)

    def backwards(labels, num_clients, alpha, seed):
        return fl.partition_dirichlet(labels, num_clients, 10 / alpha, seed=seed)  # 0.1 <-> 100

    def loses_last_example(labels, num_clients, alpha, seed):
        parts = dirichlet_partition(labels, num_clients, alpha, seed)
        return [part[part != len(labels) - 1] for part in parts]

    def duplicates(labels, num_clients, alpha, seed):
        parts = dirichlet_partition(labels, num_clients, alpha, seed)
        return [np.concatenate([parts[0], parts[1][:1]])] + parts[1:]

    def one_part_short(labels, num_clients, alpha, seed):
        return dirichlet_partition(labels, num_clients - 1, alpha, seed)

    def global_random_state(labels, num_clients, alpha, seed):
        return dirichlet_partition(labels, num_clients, alpha, int(np.random.randint(0, 2**31 - 1)))

    def ignores_seed(labels, num_clients, alpha, seed):
        return dirichlet_partition(labels, num_clients, alpha, 0)

    def returns_labels(labels, num_clients, alpha, seed):
        return [labels[part] for part in dirichlet_partition(labels, num_clients, alpha, seed)]

    def shuffles_labels(labels, num_clients, alpha, seed):
        parts = dirichlet_partition(labels, num_clients, alpha, seed)
        np.random.default_rng(seed).shuffle(labels)
        return parts

    return [
        (iid, r"Your split does not follow alpha(.|\n)*Dirichlet\(alpha\)"),
        (quantity_skew, r"Your split does not follow alpha"),
        (backwards, r"Your split is backwards"),
        (loses_last_example, r"not an exact cover: 1 of the \d+ examples went to no client"),
        (duplicates, r"not an exact cover: 1 examples were given out more than once"),
        (one_part_short, r"returned \d parts for K = \d clients"),
        (global_random_state, r"Your partition is not reproducible"),
        (ignores_seed, r"your partition ignores `seed`"),
        (returns_labels, r"those look like labels"),
        (shuffles_labels, r"changed `labels` in place"),
    ]


def equivalence_for_model_mistakes():
    def typed_in(model_name, seed):
        return 0.0

    def in_float32(model_name, seed):
        fedsgd, averaged = one_step_updates(model_name, seed, dtype=torch.float32)
        return float((fedsgd - averaged).abs().max())

    def unweighted(model_name, seed):
        fedsgd, averaged = one_step_updates(model_name, seed, weighted=False)
        return float((fedsgd - averaged).abs().max())

    def returns_tensor(model_name, seed):
        fedsgd, averaged = one_step_updates(model_name, seed)
        return (fedsgd - averaged).abs().max()

    def always_logreg(model_name, seed):
        return equivalence_for_model("logreg", seed)

    def sign_error(model_name, seed):
        # e.g. the most negative signed difference instead of the largest absolute one
        return -(equivalence_for_model(model_name, seed) + 1e-18)

    def not_finite(model_name, seed):
        equivalence_for_model(model_name, seed)
        return math.nan

    def returns_int(model_name, seed):
        return int(equivalence_for_model(model_name, seed))

    return [
        (typed_in, r"never asked a client for its gradient"),
        (in_float32, r"computed in torch.float32, not float64"),
        (unweighted, r"far above float64 noise(.|\n)*n_k / n"),
        (returns_tensor, r"returned a tensor; return the largest absolute difference as a Python float"),
        (always_logreg, r"gradients of a model with 785 weights, but 'cnn' has"),
        (sign_error, r"a negative number; the largest \*absolute\* difference is never negative"),
        (not_finite, r"returned nan; a measured difference must be a finite number"),
        (returns_int, r"returned 0; it should return a float"),
    ]


def counts(labels, flagged):
    """(true positives, true negatives, number sick, number normal) of 0/1 decisions."""
    sick = labels == 1
    return int((flagged & sick).sum()), int((~flagged & ~sick).sum()), int(sick.sum()), int((~sick).sum())


def sensitivity_specificity_mistakes():
    def swapped(labels, probabilities, threshold):
        sensitivity, specificity = sensitivity_specificity(labels, probabilities, threshold)
        return specificity, sensitivity

    def at_or_above(labels, probabilities, threshold):
        tp, tn, sick, normal = counts(labels, probabilities >= threshold)
        return tp / sick, tn / normal

    def divided_by_all(labels, probabilities, threshold):
        tp, tn, _, _ = counts(labels, probabilities > threshold)
        return tp / len(labels), tn / len(labels)

    def precision(labels, probabilities, threshold):
        flagged = probabilities > threshold
        tp, tn, _, _ = counts(labels, flagged)
        return tp / flagged.sum(), tn / (~flagged).sum()

    def miss_rates(labels, probabilities, threshold):
        sensitivity, specificity = sensitivity_specificity(labels, probabilities, threshold)
        return 1 - sensitivity, 1 - specificity

    def always_half(labels, probabilities, threshold):
        return sensitivity_specificity(labels, probabilities, 0.5)

    def below(labels, probabilities, threshold):
        tp, tn, sick, normal = counts(labels, probabilities < threshold)
        return tp / sick, tn / normal

    def thresholds_in_place(labels, probabilities, threshold):
        probabilities[:] = probabilities > threshold
        tp, tn, sick, normal = counts(labels, probabilities > 0.5)
        return tp / sick, tn / normal

    def returns_accuracy(labels, probabilities, threshold):
        return float(np.mean((probabilities > threshold) == (labels == 1)))

    def slightly_off(labels, probabilities, threshold):
        sensitivity, specificity = sensitivity_specificity(labels, probabilities, threshold)
        return sensitivity + 0.001, specificity

    def torch_only(labels, probabilities, threshold):
        return labels.bool(), probabilities

    return [
        (swapped, r"You swapped the two classes: sensitivity is about the patients WITH pneumonia"),
        (at_or_above, r"exactly the threshold \(0\.\d+\) too(.|\n)*\*above\* the threshold"),
        (divided_by_all, r"You divided by all \d+ patients\. Sensitivity divides"),
        (precision, r"that is the precision"),
        (miss_rates, r"the miss rate \(1 - sensitivity\) and the false-alarm rate"),
        (always_half, r"does not depend on `threshold`: it is the sensitivity and specificity at 0\.5"),
        (below, r"flagged the patients \*below\* the threshold"),
        (thresholds_in_place, r"changed `probabilities` in place"),
        (returns_accuracy, r"it should return two numbers, \(sensitivity, specificity\)"),
        (slightly_off, r"does not return the right \(sensitivity, specificity\)(.|\n)*labels        = \["),
        (torch_only, r"`torch_only` raised AttributeError"),
    ]


def auc_mistakes():
    def pairs(labels, probabilities):
        return probabilities[labels == 1][:, None], probabilities[labels == 0][None, :]

    def ties_ignored(labels, probabilities):
        sick, normal = pairs(labels, probabilities)
        return float((sick > normal).mean())

    def ties_won(labels, probabilities):
        sick, normal = pairs(labels, probabilities)
        return float((sick >= normal).mean())

    def one_minus(labels, probabilities):
        return 1 - rank_auc(labels, probabilities)

    def accuracy_at_half(labels, probabilities):
        return float(np.mean((probabilities > 0.5) == (labels == 1)))

    def auc_of_decisions(labels, probabilities):
        return rank_auc(labels, (probabilities > 0.5).astype(float))

    def all_pairs(labels, probabilities):
        sick, normal = pairs(labels, probabilities)
        wins = (sick > normal).sum() + 0.5 * (sick == normal).sum()
        return float(wins / (len(labels) * (len(labels) - 1) / 2))

    def n_squared(labels, probabilities):
        sick, normal = pairs(labels, probabilities)
        return float(((sick > normal).sum() + 0.5 * (sick == normal).sum()) / len(labels) ** 2)

    def sorts_in_place(labels, probabilities):
        probabilities.sort()
        return rank_auc(labels, probabilities)

    def returns_pair(labels, probabilities):
        return rank_auc(labels, probabilities), 1 - rank_auc(labels, probabilities)

    def mean_gap(labels, probabilities):
        return float(probabilities[labels == 1].mean() - probabilities[labels == 0].mean() + 0.5)

    return [
        (ties_ignored, r"counted a tie \(a sick and a normal patient with the same probability\) as a loss"),
        (ties_won, r"counted a tie (.|\n)* as a win"),
        (one_minus, r"You returned 1 - AUC"),
        (accuracy_at_half, r"You returned the accuracy at threshold 0\.5"),
        (auc_of_decisions, r"AUC of the yes/no decisions at threshold 0\.5"),
        (all_pairs, r"You divided by all \d+ pairs of patients"),
        (n_squared, r"You divided by n\^2 = \d+"),
        (sorts_in_place, r"changed `probabilities` in place"),
        (returns_pair, r"it should return one number, the AUC"),
        (mean_gap, r"does not return the AUC\.(.|\n)*the AUC is 0\.\d{4}"),
    ]


MISTAKES = {
    "check_sensitivity_specificity": sensitivity_specificity_mistakes(),
    "check_auc": auc_mistakes(),
    "check_weighted_average": weighted_average_mistakes(),
    "check_fedsgd_step": fedsgd_step_mistakes(),
    "check_aggregate_reported": aggregate_reported_mistakes(),
    "check_bytes_per_round": bytes_per_round_mistakes(),
    "check_dirichlet_partition": dirichlet_partition_mistakes(),
    "check_equivalence_for_model": equivalence_for_model_mistakes(),
}
MISTAKE_CASES = [
    pytest.param(name, fn, pattern, id=f"{name}-{fn.__name__}")
    for name, mistakes in MISTAKES.items() for fn, pattern in mistakes
]

# Code the messages must never show: the package's implementations the checks compare with.
REFERENCE_CODE = [fl.training.classification_metrics, fl.roc_auc, fl.aggregate, fl.gradient_step, fl.partition_dirichlet, fl.Client.gradient,
                  checks._reference_bytes, checks._weighted_sum]


def code_lines(functions) -> list[str]:
    """The substantial lines of the functions' bodies (docstrings aside)."""
    lines = []
    for function in functions:
        source = inspect.getsource(function)
        lines += [line.strip() for line in source.splitlines()
                  if len(line.strip()) > 15 and not line.strip().startswith(('"', "'", "#"))]
    return lines


def assert_shows_no_code(message: str) -> None:
    for line in code_lines(REFERENCE_CODE):
        assert line not in message, f"the message shows package code {line!r}:\n{message}"
    assert not re.search(r"^\s*(def|return|for|import) ", message, re.MULTILINE), message


# ---------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------


def test_every_check_is_tested():
    """Every public check has its reference and mistakes here, or its own tests/test_checks_*.py."""
    public = sorted(name for name in dir(checks) if name.startswith("check_"))
    assert set(CHECK_NAMES) <= set(public), "a check tested here no longer exists"
    elsewhere = "\n".join(path.read_text(encoding="utf-8")
                          for path in Path(__file__).parent.glob("test_checks_*.py"))
    untested = [name for name in public if name not in REFERENCES and name not in elsewhere]
    assert not untested, f"checks without tests (add them here or to a tests/test_checks_*.py): {untested}"


@pytest.mark.parametrize("name", CHECK_NAMES)
def test_check_accepts_the_reference_with_one_line(name, capsys):
    assert getattr(checks, name)(REFERENCES[name]) is True
    printed = capsys.readouterr().out
    assert printed.startswith("✅ ") and printed.count("\n") == 1, printed


@pytest.mark.parametrize("name", CHECK_NAMES)
def test_check_rejects_the_stub_kindly(name):
    with pytest.raises(AssertionError, match=r"^`stub` is not implemented yet: replace the line "
                                             r"`raise NotImplementedError\(\.\.\.\)` with your code") as failure:
        getattr(checks, name)(stub)
    assert "Traceback" not in str(failure.value)


@pytest.mark.parametrize("name, wrong_answer, diagnosis", MISTAKE_CASES)
def test_check_names_the_mistake(name, wrong_answer, diagnosis, capsys):
    with pytest.raises(AssertionError, match=diagnosis) as failure:
        getattr(checks, name)(wrong_answer)
    assert_shows_no_code(str(failure.value))
    assert "✅" not in capsys.readouterr().out


@pytest.mark.parametrize("name", CHECK_NAMES)
def test_check_draws_fresh_cases_unless_seeded(name):
    def cases_given(seed) -> list[str]:
        received = []

        def recording(*args):
            received.append(repr(args))
            return REFERENCES[name](*args)

        getattr(checks, name)(recording, seed=seed)
        return received

    assert cases_given(None) != cases_given(None), "two unseeded calls gave the learner the same cases"
    assert cases_given(7) == cases_given(7), "the same seed should give the same cases"


def test_unweighted_message_shows_sizes_and_both_averages():
    with pytest.raises(AssertionError) as failure:
        checks.check_weighted_average(plain_mean, seed=3)
    message = str(failure.value)
    sizes = eval(message.split("client sizes n_k = ")[1].split("\n")[0])  # a list of ints
    returned = message.split("\n  you returned ")[1].split("\n")[0]
    expected = message.split("\n  the n_k-weighted average is ")[1].split("\n")[0]
    assert isinstance(sizes, list) and max(sizes) >= 3 * min(sizes)
    assert returned != expected and returned.startswith("[") and expected.startswith("[")


def test_bytes_reference_agrees_with_a_real_run():
    """The check's accounting is fl.History's: compare round by round, with dropouts."""
    model = fl.make_model("logreg", seed=0)
    clients = fl.make_clients(SMALL_HOSPITALS, model)
    test_x, test_y = SMALL_HOSPITALS.hospitals[0].train_x, SMALL_HOSPITALS.hospitals[0].train_y
    for run in (fl.run_fedavg, fl.run_fedsgd):
        config = fl.FedConfig(num_rounds=6, dropout_prob=0.4, seed=1, batch_size=math.inf)
        history = run(clients, model, test_x, test_y, config, progress=False)
        assert any(len(s) != len(r) for s, r in zip(history.selected, history.reported)), "no dropout"
        for t in range(6):
            counted = checks._reference_bytes(fl.num_parameters(model), 4, len(history.selected[t]),
                                              len(history.reported[t]))
            assert counted == (history.bytes_down[t], history.bytes_up[t])


@pytest.mark.parametrize("name", ["check_sensitivity_specificity", "check_auc", "check_weighted_average",
                                  "check_bytes_per_round", "check_dirichlet_partition"])
def test_check_leaves_global_random_state_alone(name):
    torch.manual_seed(123)
    np.random.seed(123)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    getattr(checks, name)(REFERENCES[name])
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)


def test_equivalence_check_restores_client_gradient():
    def far_off(model_name, seed):
        return equivalence_for_model(model_name, seed) + 1.0

    original = fl.Client.gradient
    with pytest.raises(AssertionError, match="far above float64 noise"):
        checks.check_equivalence_for_model(far_off)
    assert fl.Client.gradient is original
