"""Tests for fl_lessons.federated: aggregation, client sampling, FedSGD, FedAvg, History.

Every expected value is recomputed here independently (numpy, fractions, torch.autograd on
the pooled data), never copied from a previous run. Exactness checks use float64 models.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import fl_lessons as fl
import fl_lessons.federated as federated
from fl_lessons import HospitalSpec

# n_k clearly unequal, so a weighted and an unweighted average are far apart.
SIZES = (40, 25, 15)
EXACT = dict(rtol=0.0, atol=1e-12)


@pytest.fixture(scope="module")
def data() -> fl.HospitalData:
    specs = [
        HospitalSpec("A", SIZES[0], 10, 0.4),
        HospitalSpec("B", SIZES[1], 10, 0.3),
        HospitalSpec("C", SIZES[2], 10, 0.5),
    ]
    return fl.make_hospitals(0, specs=specs, common_test_per_hospital=10)


def double_setup(data: fl.HospitalData, seed: int = 0):
    """A float64 CNN, float64 clients sharing it, and the float64 common test set."""
    model = fl.make_model("cnn", seed, dtype=torch.float64)
    clients = [fl.Client(h.train_x.double(), h.train_y.double(), model, h.name) for h in data.hospitals]
    return model, clients, data.test_x.double(), data.test_y.double()


def mean_loss_gradient(model: torch.nn.Module, weights: torch.Tensor, features, labels) -> torch.Tensor:
    """The flat gradient of the mean BCE loss at ``weights``, on a fresh copy of ``model``."""
    fresh = copy.deepcopy(model)
    fl.set_flat_weights(fresh, weights)
    parameters = list(fresh.parameters())
    loss = F.binary_cross_entropy_with_logits(fresh(features).reshape(-1), labels.to(features.dtype))
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, parameters)])


def logits_at(model, weights, features) -> torch.Tensor:
    """The logits of ``model`` with ``weights`` on ``features``, from a fresh copy of the model."""
    fresh = copy.deepcopy(model)
    fl.set_flat_weights(fresh, weights)
    with torch.no_grad():
        return fresh(features).reshape(-1)


def fedsgd_weights(clients, model, test_x, test_y, config, initial_weights) -> torch.Tensor:
    """w_N of a FedSGD run from ``initial_weights``."""
    return fl.run_fedsgd(clients, model, test_x, test_y, config, initial_weights.clone(),
                         progress=False).final_weights


def make_update(values, num_examples: int, loss: float = 0.0) -> fl.ClientUpdate:
    """A float64 ClientUpdate from any array-like."""
    return fl.ClientUpdate(torch.as_tensor(values, dtype=torch.float64), num_examples, loss)


# ---------------------------------------------------------------------------------------
# 1. aggregate
# ---------------------------------------------------------------------------------------


def test_aggregate_is_the_n_k_weighted_average():
    rng = np.random.default_rng(7)
    values = rng.normal(size=(3, 50))
    sizes = [10, 90, 3]
    result = fl.aggregate([make_update(v, n) for v, n in zip(values, sizes)])
    expected = np.average(values, axis=0, weights=sizes)
    np.testing.assert_allclose(result.numpy(), expected, rtol=0, atol=1e-12)
    assert not np.allclose(result.numpy(), values.mean(axis=0), atol=1e-3), "weights n_k were ignored"


def test_aggregate_of_one_update_is_that_update():
    values = torch.from_numpy(np.random.default_rng(1).normal(size=20))
    result = fl.aggregate([fl.ClientUpdate(values.clone(), 17, 0.5)])
    assert torch.equal(result, values)


def test_aggregate_of_nothing_raises():
    with pytest.raises(ValueError, match="at least one client update"):
        fl.aggregate([])


@pytest.mark.parametrize("num_updates", [1, 3])
def test_aggregate_neither_aliases_nor_mutates_its_inputs(num_updates):
    rng = np.random.default_rng(2)
    updates = [make_update(rng.normal(size=10), n) for n in [5, 9, 2][:num_updates]]
    originals = [client_update.values.clone() for client_update in updates]
    result = fl.aggregate(updates)
    snapshot = result.clone()
    for client_update, original in zip(updates, originals):
        assert torch.equal(client_update.values, original), "aggregate changed an input"
        client_update.values.add_(100.0)
    assert torch.equal(result, snapshot), "the result shares memory with an input"


# ---------------------------------------------------------------------------------------
# 2. num_selected and sample_clients
# ---------------------------------------------------------------------------------------

# K = 7 with C = 0.3 (2.1) and K = 10 with C = 0.25 (2.5) tell ceil from round.
CLIENT_COUNTS = [1, 3, 7, 10, 100]
FRACTIONS = [0.01, 0.1, 0.25, 0.3, 0.5, 1.0]


@pytest.mark.parametrize("num_clients", CLIENT_COUNTS)
@pytest.mark.parametrize("client_fraction", FRACTIONS)
def test_clients_per_round_is_max_of_ceil_c_k_and_one(num_clients, client_fraction):
    exact_c = Fraction(str(client_fraction))  # 0.3 -> 3/10 exactly, no float error
    expected = max(math.ceil(exact_c * num_clients), 1)
    assert fl.num_selected(num_clients, client_fraction) == expected
    rng = np.random.default_rng(0)
    for _ in range(5):
        chosen = fl.sample_clients(num_clients, client_fraction, rng)
        assert len(chosen) == expected
        assert len(set(chosen.tolist())) == expected, "a client was selected twice"
        assert np.all(np.diff(chosen) > 0), "selection is not sorted"
        assert chosen.min() >= 0 and chosen.max() < num_clients


def test_float_error_does_not_add_a_client():
    assert fl.num_selected(10, 0.3) == 3  # 0.3 * 10 == 3.0000000000000004 in floats
    assert fl.num_selected(100, 0.07) == 7  # 0.07 * 100 == 7.000000000000001


def test_sampling_is_reproducible_and_varies_with_seed_and_round():
    def selections(seed):
        rng = np.random.default_rng(seed)
        return [fl.sample_clients(10, 0.3, rng).tolist() for _ in range(8)]

    assert selections(0) == selections(0)
    assert selections(0) != selections(1)
    assert len({tuple(s) for s in selections(0)}) > 1, "every round picked the same clients"


@pytest.mark.parametrize("client_fraction", [0.0, -0.1, 1.5, math.nan])
def test_sampling_rejects_fraction_outside_unit_interval(client_fraction):
    with pytest.raises(ValueError, match=r"client_fraction \(C\)"):
        fl.sample_clients(10, client_fraction, np.random.default_rng(0))


def test_sampling_rejects_no_clients():
    with pytest.raises(ValueError, match=r"num_clients \(K\) must be >= 1"):
        fl.sample_clients(0, 0.5, np.random.default_rng(0))


# ---------------------------------------------------------------------------------------
# 3. FedConfig validation
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, symbol",
    [
        (dict(num_rounds=0), r"\(N\)"),
        (dict(num_rounds=2.5), r"\(N\)"),
        (dict(local_epochs=0), r"\(L\)"),
        (dict(lr=0.0), r"\(eta\)"),
        (dict(lr=-0.1), r"\(eta\)"),
        (dict(client_fraction=0.0), r"\(C\)"),
        (dict(client_fraction=1.5), r"\(C\)"),
        (dict(batch_size=0), r"\(B\)"),
        (dict(dropout_prob=1.0), r"dropout_prob"),
        (dict(num_clients=0), r"\(K\)"),
        (dict(eval_every=0), r"eval_every"),
    ],
)
def test_fedconfig_rejects_bad_settings_naming_the_symbol(settings, symbol):
    with pytest.raises(ValueError, match=symbol):
        fl.FedConfig(**settings)


def test_fedconfig_accepts_full_batch():
    assert fl.FedConfig(batch_size=math.inf).batch_size == math.inf


def test_more_clients_requested_than_given_raises(data):
    model, clients, test_x, test_y = double_setup(data)
    config = fl.FedConfig(num_rounds=1, num_clients=len(clients) + 1)
    with pytest.raises(ValueError, match=rf"only {len(clients)} clients.*K <= {len(clients)}"):
        fl.run_fedavg(clients, model, test_x, test_y, config, progress=False)


def test_num_clients_uses_the_first_k(data):
    model, clients, test_x, test_y = double_setup(data)
    history = fl.run_fedsgd(clients, model, test_x, test_y, fl.FedConfig(num_rounds=1, num_clients=2),
                            progress=False)
    assert history.client_sizes == list(SIZES[:2])
    assert history.selected == [[0, 1]]


# ---------------------------------------------------------------------------------------
# 4. Equivalences: FedSGD = centralized GD; FedAvg(L=1, B=inf) = FedSGD
# ---------------------------------------------------------------------------------------


def test_one_fedsgd_round_is_one_full_batch_gradient_step_on_pooled_data(data):
    model, clients, test_x, test_y = double_setup(data)
    initial = fl.get_flat_weights(model)
    pooled_x, pooled_y = data.pooled()
    lr = 0.3
    expected = initial - lr * mean_loss_gradient(model, initial, pooled_x.double(), pooled_y.double())
    config = fl.FedConfig(num_rounds=1, lr=lr)
    history = fl.run_fedsgd(clients, model, test_x, test_y, config, progress=False)
    torch.testing.assert_close(history.final_weights, expected, **EXACT)
    assert (history.final_weights - initial).norm() > 1e-3, "the round did not move the weights"
    # FedSGD's reported training loss is the pooled mean loss at w_0.
    pooled_loss = F.binary_cross_entropy_with_logits(
        logits_at(model, initial, pooled_x.double()), pooled_y.double()).item()
    assert history.train_loss[0] == pytest.approx(pooled_loss, abs=1e-12)


@pytest.mark.parametrize("make_config", [
    lambda base: fl.fedsgd_config(base),
    lambda base: fl.FedConfig(num_rounds=base.num_rounds, lr=base.lr, local_epochs=1, batch_size=math.inf),
], ids=["fedsgd_config", "explicit"])
def test_fedavg_with_one_epoch_full_batch_equals_fedsgd(data, make_config):
    model, clients, test_x, test_y = double_setup(data)
    initial = fl.get_flat_weights(model)
    base = fl.FedConfig(num_rounds=3, lr=0.2, local_epochs=4, batch_size=8)
    config = make_config(base)
    assert (config.local_epochs, config.batch_size, config.num_rounds, config.lr) == (1, math.inf, 3, 0.2)
    sgd = fl.run_fedsgd(clients, model, test_x, test_y, config, initial.clone(), progress=False)
    avg = fl.run_fedavg(clients, model, test_x, test_y, config, initial.clone(), progress=False)
    assert (sgd.final_weights - initial).norm() > 1e-3
    torch.testing.assert_close(avg.final_weights, sgd.final_weights, **EXACT)
    np.testing.assert_allclose(avg.train_loss, sgd.train_loss, rtol=0, atol=1e-12)


@pytest.mark.parametrize("local_epochs, batch_size", [(2, math.inf), (1, 8)])
def test_fedavg_with_more_local_work_differs_from_fedsgd(data, local_epochs, batch_size):
    model, clients, test_x, test_y = double_setup(data)
    initial = fl.get_flat_weights(model)
    config = fl.FedConfig(num_rounds=1, lr=0.2, local_epochs=local_epochs, batch_size=batch_size)
    sgd = fl.run_fedsgd(clients, model, test_x, test_y, config, initial.clone(), progress=False)
    avg = fl.run_fedavg(clients, model, test_x, test_y, config, initial.clone(), progress=False)
    assert (avg.final_weights - sgd.final_weights).norm() > 1e-6


# ---------------------------------------------------------------------------------------
# 5. History
# ---------------------------------------------------------------------------------------


def test_history_records_every_round(data):
    model = fl.make_model("cnn", 0)  # float32: 4 bytes per parameter
    clients = fl.make_clients(data, model)
    config = fl.FedConfig(num_rounds=3, batch_size=16)
    history = fl.run_fedavg(clients, model, data.test_x, data.test_y, config, progress=False)
    n = config.num_rounds
    for name in ["test_accuracy", "test_auc", "test_loss", "train_loss", "bytes_down", "bytes_up",
                 "selected", "reported", "skipped"]:
        assert len(getattr(history, name)) == n, name
    assert history.rounds == [1, 2, 3]
    assert history.model_bytes == 4 * fl.num_parameters(model)
    assert history.client_sizes == list(SIZES)
    everyone = list(range(len(SIZES)))
    assert history.selected == [everyone] * n
    assert history.reported == [everyone] * n
    assert history.skipped == [False] * n
    assert history.bytes_down == [len(SIZES) * history.model_bytes] * n
    assert history.bytes_up == [len(SIZES) * history.model_bytes] * n
    assert history.total_bytes == 2 * n * len(SIZES) * history.model_bytes
    assert all(0.0 <= a <= 1.0 for a in history.test_accuracy)
    assert all(math.isfinite(loss) for loss in history.train_loss)
    assert torch.equal(history.final_weights, fl.get_flat_weights(model))
    # The last recorded accuracy is that of w_N, recomputed by hand.
    predicted = (logits_at(model, history.final_weights, data.test_x) > 0).float()
    assert history.test_accuracy[-1] == pytest.approx((predicted == data.test_y).float().mean().item())


def test_bytes_follow_selected_and_reported_under_partial_participation(data):
    model, clients, test_x, test_y = double_setup(data)
    config = fl.FedConfig(num_rounds=6, client_fraction=0.5, dropout_prob=0.4, seed=3)
    history = fl.run_fedsgd(clients, model, test_x, test_y, config, progress=False)
    assert history.model_bytes == 8 * fl.num_parameters(model)  # float64
    for selected, reported, down, up in zip(history.selected, history.reported,
                                            history.bytes_down, history.bytes_up):
        assert len(selected) == 2  # ceil(0.5 * 3)
        assert set(reported) <= set(selected)
        assert down == len(selected) * history.model_bytes
        assert up == len(reported) * history.model_bytes


def record_of(history) -> dict:
    """The per-round bookkeeping of a run, for comparing two runs."""
    return {name: getattr(history, name) for name in
            ["selected", "reported", "skipped", "bytes_down", "bytes_up"]}


def test_same_seed_same_history_and_other_seed_other_minibatches(data):
    config = fl.FedConfig(num_rounds=2, batch_size=8, client_fraction=0.7, seed=5)

    def run(seed):
        model, clients, test_x, test_y = double_setup(data)
        return fl.run_fedavg(clients, model, test_x, test_y, dataclasses.replace(config, seed=seed),
                             progress=False)

    first, second, other = run(5), run(5), run(6)
    assert torch.equal(first.final_weights, second.final_weights)
    assert record_of(first) == record_of(second)
    np.testing.assert_array_equal(first.train_loss, second.train_loss)
    np.testing.assert_array_equal(first.test_accuracy, second.test_accuracy)
    assert (first.final_weights - other.final_weights).norm() > 1e-6


def test_different_seed_changes_minibatch_order_even_with_every_client(data):
    def run(seed):
        model, clients, test_x, test_y = double_setup(data)
        config = fl.FedConfig(num_rounds=1, batch_size=8, seed=seed)
        return fl.run_fedavg(clients, model, test_x, test_y, config, progress=False)

    first, other = run(0), run(1)
    assert first.selected == other.selected  # C = 1: the same clients, only the order differs
    assert (first.final_weights - other.final_weights).norm() > 1e-6


def test_eval_every_leaves_nan_but_evaluates_the_last_round(data):
    model, clients, test_x, test_y = double_setup(data)
    config = fl.FedConfig(num_rounds=7, eval_every=3, lr=0.05)
    history = fl.run_fedsgd(clients, model, test_x, test_y, config, progress=False)
    evaluated = [3, 6, 7]
    for t in range(1, 8):
        for metric in (history.test_accuracy, history.test_loss):
            assert math.isnan(metric[t - 1]) == (t not in evaluated), (t, metric[t - 1])
    rounds, accuracies = history.accuracy_curve()
    assert rounds == [0] + evaluated
    assert accuracies[0] == history.initial.accuracy
    assert accuracies[1:] == [history.test_accuracy[t - 1] for t in evaluated]
    initial_model = fl.make_model("cnn", 0, dtype=torch.float64)
    predicted = (logits_at(initial_model, fl.get_flat_weights(initial_model), test_x) > 0).double()
    assert history.initial.accuracy == pytest.approx((predicted == test_y).double().mean().item())


# ---------------------------------------------------------------------------------------
# 6. Dropout
# ---------------------------------------------------------------------------------------


def first_run_where(data, config, condition, seeds=range(30)):
    """The first seed whose FedSGD run satisfies ``condition(history)``, with that history."""
    for seed in seeds:
        model, clients, test_x, test_y = double_setup(data)
        history = fl.run_fedsgd(clients, model, test_x, test_y, dataclasses.replace(config, seed=seed),
                                progress=False)
        if condition(history):
            return seed, history
    raise AssertionError("no seed produced the round this test needs")


def test_partial_report_averages_over_reported_clients_only(data):
    config = fl.FedConfig(num_rounds=4, dropout_prob=0.5, lr=0.3)

    def has_partial_round(history):
        return any(0 < len(r) < len(s) for s, r in zip(history.selected, history.reported))

    seed, history = first_run_where(data, config, has_partial_round)
    t = next(i + 1 for i, (s, r) in enumerate(zip(history.selected, history.reported)) if 0 < len(r) < len(s))
    model, clients, test_x, test_y = double_setup(data)
    initial = fl.get_flat_weights(model)
    config = dataclasses.replace(config, seed=seed)
    before = initial if t == 1 else fedsgd_weights(clients, model, test_x, test_y,
                                                   dataclasses.replace(config, num_rounds=t - 1), initial)
    after = fedsgd_weights(clients, model, test_x, test_y, dataclasses.replace(config, num_rounds=t), initial)

    def step(members):
        sizes = [data.hospitals[k].num_examples for k in members]
        gradients = [mean_loss_gradient(model, before, data.hospitals[k].train_x.double(),
                                        data.hospitals[k].train_y.double()) for k in members]
        average = sum(n * g for n, g in zip(sizes, gradients)) / sum(sizes)
        return before - config.lr * average, sizes, gradients

    reported = history.reported[t - 1]
    expected, sizes, gradients = step(reported)
    torch.testing.assert_close(after, expected, **EXACT)
    # Teeth: dividing by the selected clients' n_k instead would give a different step.
    selected_total = sum(data.hospitals[k].num_examples for k in history.selected[t - 1])
    wrong = before - config.lr * sum(n * g for n, g in zip(sizes, gradients)) / selected_total
    assert (after - wrong).norm() > 1e-6


def test_round_where_nobody_reports_is_skipped_and_keeps_the_weights(data):
    config = fl.FedConfig(num_rounds=12, dropout_prob=0.9, lr=0.3)

    def skipped_after_progress(history):
        # A skipped round t >= 2 that follows at least one round that did update w.
        return any(history.skipped[t] and not all(history.skipped[:t]) for t in range(1, len(history.skipped)))

    seed, history = first_run_where(data, config, skipped_after_progress)
    t = next(t + 1 for t in range(1, len(history.skipped))
             if history.skipped[t] and not all(history.skipped[:t]))
    assert history.reported[t - 1] == []
    assert math.isnan(history.train_loss[t - 1])
    assert history.bytes_up[t - 1] == 0
    assert history.bytes_down[t - 1] == len(history.selected[t - 1]) * history.model_bytes > 0
    for skipped, reported, loss in zip(history.skipped, history.reported, history.train_loss):
        assert skipped == (reported == []) == math.isnan(loss)
    # The global weights are the same after round t-1 and after round t.
    model, clients, test_x, test_y = double_setup(data)
    initial = fl.get_flat_weights(model)
    config = dataclasses.replace(config, seed=seed)
    before = fedsgd_weights(clients, model, test_x, test_y, dataclasses.replace(config, num_rounds=t - 1), initial)
    after = fedsgd_weights(clients, model, test_x, test_y, dataclasses.replace(config, num_rounds=t), initial)
    assert (before - initial).norm() > 1e-3, "no earlier round updated the weights"
    assert torch.equal(after, before)
    assert history.test_accuracy[t - 1] == history.test_accuracy[t - 2]


def test_dropout_does_not_change_later_selections(data):
    def run(dropout_prob):
        model, clients, test_x, test_y = double_setup(data)
        config = fl.FedConfig(num_rounds=8, client_fraction=0.5, dropout_prob=dropout_prob, seed=4,
                              eval_every=100)
        return fl.run_fedsgd(clients, model, test_x, test_y, config, progress=False)

    without, with_dropout = run(0.0), run(0.5)
    assert without.selected == with_dropout.selected
    assert len({tuple(s) for s in without.selected}) > 1, "selection never varied: test has no teeth"
    assert without.reported != with_dropout.reported, "dropout 0.5 dropped nobody: test has no teeth"


# ---------------------------------------------------------------------------------------
# 6b. Continuing a run (resume_from): more rounds equal one longer run
# ---------------------------------------------------------------------------------------

RUNNERS = {"FedAvg": fl.run_fedavg, "FedSGD": fl.run_fedsgd}
# C < 1 and dropout, so the server's generator decides who takes part: continuing must
# pick up its state, not restart it.
RESUME_CONFIG = fl.FedConfig(num_rounds=7, batch_size=8, lr=0.05, client_fraction=0.5,
                             dropout_prob=0.3, seed=3, eval_every=1)


def whole_and_resumed(data, run, config, first_rounds):
    """One run of config.num_rounds rounds, and the same run made of two parts."""
    model, clients, test_x, test_y = double_setup(data)
    whole = run(clients, model, test_x, test_y, config, progress=False)
    model, clients, test_x, test_y = double_setup(data)
    first_part = run(clients, model, test_x, test_y, dataclasses.replace(config, num_rounds=first_rounds),
                     progress=False)
    resumed = run(clients, model, test_x, test_y, config, progress=False, resume_from=first_part)
    return whole, first_part, resumed


def assert_same_run(resumed, whole):
    assert torch.equal(resumed.final_weights, whole.final_weights)
    assert record_of(resumed) == record_of(whole)
    for name in ["train_loss", "test_accuracy", "test_auc", "test_loss"]:
        np.testing.assert_array_equal(getattr(resumed, name), getattr(whole, name))  # NaN == NaN here
    assert resumed.config == whole.config
    assert resumed.server_rng_state == whole.server_rng_state


@pytest.mark.parametrize("engine", ["loop", "vectorized"])
@pytest.mark.parametrize("algorithm", RUNNERS)
def test_resumed_run_equals_one_longer_run(data, algorithm, engine):
    run = RUNNERS[algorithm]
    config = dataclasses.replace(RESUME_CONFIG, engine=engine)
    whole, first_part, resumed = whole_and_resumed(data, run, config, first_rounds=3)
    assert_same_run(resumed, whole)

    # Teeth: starting a fresh 4-round run from w_3 restarts the server's generator (and, for
    # FedAvg, the rounds' minibatch streams), so it is not the same as going on.
    model, clients, test_x, test_y = double_setup(data)
    restarted = run(clients, model, test_x, test_y, dataclasses.replace(config, num_rounds=4),
                    initial_weights=first_part.final_weights, progress=False)
    assert restarted.reported != whole.reported[3:], "same clients either way: test has no teeth"
    assert not torch.equal(restarted.final_weights, whole.final_weights)


def test_resuming_between_evaluations_keeps_the_longer_runs_schedule(data):
    config = dataclasses.replace(RESUME_CONFIG, num_rounds=6, eval_every=2)
    whole, first_part, resumed = whole_and_resumed(data, fl.run_fedavg, config, first_rounds=3)
    # The 3-round run evaluated its last round; the 6-round run evaluates rounds 2, 4 and 6 only.
    assert not math.isnan(first_part.test_accuracy[2])
    assert math.isnan(whole.test_accuracy[2])
    assert_same_run(resumed, whole)


def test_resuming_to_the_same_n_changes_nothing(data):
    model, clients, test_x, test_y = double_setup(data)
    earlier = fl.run_fedavg(clients, model, test_x, test_y, RESUME_CONFIG, progress=False)
    again = fl.run_fedavg(clients, model, test_x, test_y, RESUME_CONFIG, progress=False, resume_from=earlier)
    assert_same_run(again, earlier)


def test_resuming_leaves_the_earlier_history_as_it_was(data):
    model, clients, test_x, test_y = double_setup(data)
    earlier = fl.run_fedavg(clients, model, test_x, test_y, dataclasses.replace(RESUME_CONFIG, num_rounds=2),
                            progress=False)
    weights_before, state_before = earlier.final_weights.clone(), copy.deepcopy(earlier.server_rng_state)
    later = fl.run_fedavg(clients, model, test_x, test_y, RESUME_CONFIG, progress=False, resume_from=earlier)
    assert len(earlier.rounds) == 2 and len(later.rounds) == RESUME_CONFIG.num_rounds
    assert earlier.config.num_rounds == 2
    assert torch.equal(earlier.final_weights, weights_before)
    assert earlier.server_rng_state == state_before


@pytest.mark.parametrize("change, message", [
    (dict(config=dataclasses.replace(RESUME_CONFIG, lr=0.1)), "changes lr 0.05 -> 0.1"),
    (dict(config=dataclasses.replace(RESUME_CONFIG, num_rounds=2)), "already has 3 rounds"),
    (dict(runner=fl.run_fedsgd), "is a FedAvg run"),
    (dict(initial_weights=True), "not both"),
    (dict(first_clients=2), "ran with 3 clients"),
    (dict(reversed_clients=True), "client 0 had n_k = 40"),
    (dict(not_from_a_run=True), "returned by run_fedsgd or run_fedavg"),
])
def test_resuming_with_anything_changed_but_n_is_refused(data, change, message):
    model, clients, test_x, test_y = double_setup(data)
    earlier = fl.run_fedavg(clients, model, test_x, test_y, dataclasses.replace(RESUME_CONFIG, num_rounds=3),
                            progress=False)
    if change.get("not_from_a_run"):
        earlier.server_rng_state = None
    runner = change.get("runner", fl.run_fedavg)
    config = change.get("config", RESUME_CONFIG)
    initial_weights = earlier.final_weights if change.get("initial_weights") else None
    later_clients = clients[: change.get("first_clients", len(clients))]
    if change.get("reversed_clients"):
        later_clients = later_clients[::-1]
    with pytest.raises(ValueError, match=message):
        runner(later_clients, model, test_x, test_y, config, initial_weights=initial_weights,
               progress=False, resume_from=earlier)

# ---------------------------------------------------------------------------------------
# 7. Privacy boundary: only parameter-shaped vectors and counts reach the server
# ---------------------------------------------------------------------------------------


def contains_run(haystack: torch.Tensor, needle: torch.Tensor) -> bool:
    """Whether ``needle`` appears as a contiguous run inside the 1-D ``haystack``."""
    haystack, needle = haystack.reshape(-1).double(), needle.reshape(-1).double()
    if needle.numel() > haystack.numel():
        return False
    # Candidate starts must match the first few values (vectorized); only those are compared in full.
    last_start = haystack.numel() - needle.numel() + 1
    candidates = torch.ones(last_start, dtype=torch.bool)
    for offset in range(min(16, needle.numel())):
        candidates &= haystack[offset:offset + last_start] == needle[offset]
    starts = torch.nonzero(candidates).reshape(-1).tolist()
    return any(torch.equal(haystack[s:s + needle.numel()], needle) for s in starts)


def test_contains_run_finds_a_hidden_image():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(28, 28, generator=generator)
    noise_before, noise_after = torch.rand(100, generator=generator), torch.rand(50, generator=generator)
    haystack = torch.cat([noise_before, image.reshape(-1), noise_after])
    assert contains_run(haystack, image)
    assert not contains_run(torch.cat([haystack[:500], haystack[501:]]), image), "one value removed"


@pytest.mark.parametrize("algorithm", [fl.run_fedavg, fl.run_fedsgd], ids=["FedAvg", "FedSGD"])
def test_server_receives_only_vectors_counts_and_losses(data, algorithm, monkeypatch):
    received = []
    real_aggregate = federated.aggregate

    def recording_aggregate(updates):
        received.append(list(updates))
        return real_aggregate(updates)

    monkeypatch.setattr(federated, "aggregate", recording_aggregate)
    model = fl.make_model("cnn", 0)
    clients = fl.make_clients(data, model)
    config = fl.FedConfig(num_rounds=2, batch_size=16)
    history = algorithm(clients, model, data.test_x, data.test_y, config, progress=False)

    assert len(received) == config.num_rounds
    size = fl.num_parameters(model)
    images = [image for hospital in data.hospitals for image in hospital.train_x]
    for updates, reported in zip(received, history.reported):
        assert len(updates) == len(reported)
        for item, k in zip(updates, reported):
            assert type(item) is fl.ClientUpdate
            assert [f.name for f in dataclasses.fields(item)] == ["values", "num_examples", "loss"]
            assert set(vars(item)) == {"values", "num_examples", "loss"}, "extra data attached"
            assert isinstance(item.values, torch.Tensor)
            assert item.values.shape == (size,)
            assert type(item.num_examples) is int and item.num_examples == SIZES[k]
            assert type(item.loss) is float
            assert item.values.numel() != data.hospitals[k].train_x.numel()
            assert not any(contains_run(item.values, image) for image in images)


def test_client_exposes_no_public_data(data):
    model = fl.make_model("cnn", 0)
    client = fl.make_clients(data, model)[0]
    public = {name: getattr(client, name) for name in dir(client) if not name.startswith("_")}
    assert "name" in public and "num_examples" in public
    assert not any(isinstance(value, torch.Tensor) for value in public.values())


# ---------------------------------------------------------------------------------------
# 8. Client
# ---------------------------------------------------------------------------------------


def test_client_without_examples_raises():
    model = fl.make_model("cnn", 0)
    with pytest.raises(ValueError, match="no examples"):
        fl.Client(torch.empty(0, 1, 28, 28), torch.empty(0), model, "Empty")


@pytest.mark.parametrize("num_examples", [15, 600])  # 600 > CHUNK_SIZE: chunks must be weighted
def test_client_gradient_is_the_gradient_of_the_mean_loss(num_examples):
    generator = torch.Generator().manual_seed(num_examples)
    features = torch.rand(num_examples, 1, 28, 28, generator=generator, dtype=torch.float64)
    labels = (torch.rand(num_examples, generator=generator) < 0.4).double()
    model = fl.make_model("cnn", 0, dtype=torch.float64)
    other = fl.make_model("cnn", 1, dtype=torch.float64)
    weights = fl.get_flat_weights(other)  # not the model's current weights
    client = fl.Client(features, labels, model, "k")
    sent = client.gradient(weights)
    expected = mean_loss_gradient(model, weights, features, labels)
    torch.testing.assert_close(sent.values, expected, **EXACT)
    assert sent.num_examples == num_examples
    expected_loss = F.binary_cross_entropy_with_logits(logits_at(model, weights, features), labels).item()
    assert sent.loss == pytest.approx(expected_loss, abs=1e-12)


# ---------------------------------------------------------------------------------------
# gradient_step and averaging_gap_curve
# ---------------------------------------------------------------------------------------


def test_gradient_step_is_w_minus_eta_g_in_a_new_tensor():
    weights, gradient = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.5, 1.0, -4.0])
    stepped = fl.gradient_step(weights, gradient, 0.1)
    torch.testing.assert_close(stepped, torch.tensor([0.95, -2.1, 0.9]))
    stepped.add_(1.0)
    assert torch.equal(weights, torch.tensor([1.0, -2.0, 0.5])), "the step aliases w_t"


def test_averaging_gap_is_noise_at_one_step_and_matches_fedavg_against_fedsgd(data):
    model, clients, test_x, test_y = double_setup(data)
    initial = fl.get_flat_weights(model)
    lr = 0.3
    gaps = fl.averaging_gap_curve(clients, model, initial, max_local_steps=3, lr=lr)
    assert gaps.shape == (3,)
    assert gaps[0] < 1e-10
    for steps in (2, 3):
        fedavg = fl.run_fedavg(clients, model, test_x, test_y,
                               fl.FedConfig(num_rounds=1, local_epochs=steps, batch_size=math.inf, lr=lr),
                               initial.clone(), progress=False).final_weights
        fedsgd = fedsgd_weights(clients, model, test_x, test_y, fl.FedConfig(num_rounds=steps, lr=lr), initial)
        expected = ((fedavg - fedsgd).norm() / (fedsgd - initial).norm()).item()
        assert expected > 1e-6
        assert gaps[steps - 1] == pytest.approx(expected, rel=1e-9)


def test_averaging_gap_needs_a_step(data):
    model, clients, _, _ = double_setup(data)
    with pytest.raises(ValueError, match="max_local_steps must be >= 1"):
        fl.averaging_gap_curve(clients, model, fl.get_flat_weights(model), max_local_steps=0, lr=0.1)


# ---------------------------------------------------------------------------------------
# 9. A full FedSGD round weights clients by n_k
# ---------------------------------------------------------------------------------------


def test_fedsgd_round_weights_client_gradients_by_n_k(data):
    model, clients, test_x, test_y = double_setup(data)
    initial = fl.get_flat_weights(model)
    lr = 0.3
    after = fedsgd_weights(clients, model, test_x, test_y, fl.FedConfig(num_rounds=1, lr=lr), initial)
    gradients = [client.gradient(initial).values for client in clients]
    weighted = sum(n * g for n, g in zip(SIZES, gradients)) / sum(SIZES)
    unweighted = sum(gradients) / len(gradients)
    torch.testing.assert_close(after, initial - lr * weighted, **EXACT)
    assert (after - (initial - lr * unweighted)).norm() > 1e-6
