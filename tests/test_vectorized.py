"""Tests for the vectorized engine (fl_lessons.vectorized) and the benchmark's baseline.

The vectorized engine must compute what the loop engine computes, to float64 rounding:
the same minibatch order, the same local steps, the same ClientUpdates, the same History.
The loop engine is itself checked against independent computations in test_federated.py,
so equality with it is a check against those. Speed is measured in benchmarks/, never here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import fl_lessons as fl
from fl_lessons import HospitalSpec
from fl_lessons.federated import _client_generator, resolve_engine
from fl_lessons.vectorized import VectorizedEngine, minibatch_schedule

ROOT = Path(__file__).resolve().parents[1]
# n_k clearly unequal, one client (5) smaller than the batch size 8 and one not a multiple of it.
SIZES = (23, 12, 5, 9)
TIGHT = dict(rtol=0.0, atol=1e-10)


@pytest.fixture(scope="module")
def data() -> fl.HospitalData:
    specs = [HospitalSpec(name, size, 0, 0.4) for name, size in zip("ABCD", SIZES)]
    return fl.make_hospitals(0, specs=specs, common_test_per_hospital=4)


def float64_setup(data: fl.HospitalData):
    """A float64 CNN with seeded w_0, float64 clients sharing it, and the float64 test set."""
    model = fl.make_model("cnn", 0, dtype=torch.float64)
    clients = [fl.Client(h.train_x.double(), h.train_y.double(), model, h.name) for h in data.hospitals]
    return model, clients, data.test_x.double(), data.test_y.double()


def run_both(data, run, config: fl.FedConfig) -> tuple[fl.History, fl.History]:
    """The same run with the loop engine and with the vectorized engine."""
    histories = []
    for engine in ("loop", "vectorized"):
        model, clients, test_x, test_y = float64_setup(data)
        histories.append(run(clients, model, test_x, test_y, dataclasses.replace(config, engine=engine),
                             progress=False))
    return histories[0], histories[1]


def assert_same_history(loop: fl.History, vectorized: fl.History) -> None:
    assert vectorized.selected == loop.selected
    assert vectorized.reported == loop.reported
    assert vectorized.skipped == loop.skipped
    torch.testing.assert_close(vectorized.final_weights, loop.final_weights, **TIGHT)
    np.testing.assert_allclose(vectorized.train_loss, loop.train_loss, rtol=0, atol=1e-12)
    np.testing.assert_allclose(vectorized.test_loss, loop.test_loss, rtol=0, atol=1e-12)
    np.testing.assert_allclose(vectorized.test_accuracy, loop.test_accuracy)


@pytest.mark.parametrize("batch_size", [8, math.inf])
def test_fedavg_vectorized_equals_loop(data, batch_size):
    config = fl.FedConfig(num_rounds=3, local_epochs=2, batch_size=batch_size, lr=0.2,
                          client_fraction=0.75, dropout_prob=0.3, seed=4)
    loop, vectorized = run_both(data, fl.run_fedavg, config)
    assert_same_history(loop, vectorized)
    # The run must have trained (weights moved) and dropout must have removed someone.
    assert not torch.allclose(loop.final_weights, fl.get_flat_weights(fl.make_model("cnn", 0, torch.float64)))
    assert any(len(r) < len(s) for r, s in zip(loop.reported, loop.selected))


def test_fedsgd_vectorized_equals_loop(data):
    config = fl.FedConfig(num_rounds=3, lr=0.5, client_fraction=0.5, seed=2)
    loop, vectorized = run_both(data, fl.run_fedsgd, config)
    assert_same_history(loop, vectorized)


def test_each_client_update_equals_client_train(data):
    """Round by round the engine sends exactly what each Client.train would send."""
    model, clients, _, _ = float64_setup(data)
    weights = fl.get_flat_weights(model) + 0.01 * torch.randn(fl.num_parameters(model), dtype=torch.float64,
                                                              generator=torch.Generator().manual_seed(1))
    reported = [0, 2, 3]
    # A tiny per-call limit splits the clients into groups: the grouping must not matter.
    for limit in (None, 16):
        engine = VectorizedEngine(clients, model, max_examples_per_call=limit)
        updates = engine.fedavg_round(weights, reported, 2, 8, 0.1,
                                      [_client_generator(7, 3, k) for k in reported])
        for update, k in zip(updates, reported):
            expected = clients[k].train(weights, 2, 8, 0.1, _client_generator(7, 3, k))
            assert update.num_examples == expected.num_examples == SIZES[k]
            torch.testing.assert_close(update.values, expected.values, **TIGHT)
            assert update.loss == pytest.approx(expected.loss, abs=1e-12)
        gradients = engine.fedsgd_round(weights, reported)
        for update, k in zip(gradients, reported):
            expected = clients[k].gradient(weights)
            torch.testing.assert_close(update.values, expected.values, **TIGHT)
            assert update.loss == pytest.approx(expected.loss, abs=1e-12)


def test_minibatch_schedule_matches_sgd_epochs_draws():
    """One randperm per epoch from the client's generator; none when B >= n_k."""
    generator, replay = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    batches = minibatch_schedule(10, 2, 4, generator)
    first, second = torch.randperm(10, generator=replay), torch.randperm(10, generator=replay)
    assert [b.tolist() for b in batches] == [first[:4].tolist(), first[4:8].tolist(), first[8:].tolist(),
                                             second[:4].tolist(), second[4:8].tolist(), second[8:].tolist()]
    untouched = torch.Generator().manual_seed(3)
    full = minibatch_schedule(10, 2, math.inf, untouched)
    assert [b.tolist() for b in full] == [list(range(10))] * 2
    assert torch.equal(untouched.get_state(), torch.Generator().manual_seed(3).get_state())


def test_float32_vectorized_close_to_loop(data):
    """In float32 the two engines agree to float32 rounding over a few rounds."""
    histories = []
    for engine in ("loop", "vectorized"):
        model = fl.make_model("cnn", 0)
        clients = fl.make_clients(data, model)
        config = fl.FedConfig(num_rounds=2, batch_size=8, engine=engine)
        histories.append(fl.run_fedavg(clients, model, data.test_x, data.test_y, config, progress=False))
    torch.testing.assert_close(histories[1].final_weights, histories[0].final_weights, rtol=0, atol=1e-5)


def test_engine_setting_is_validated():
    with pytest.raises(ValueError, match="engine must be one of .*'auto', 'loop', 'vectorized'.*got 'gpu'"):
        fl.FedConfig(engine="gpu")


def test_auto_engine_is_the_loop_on_cpu_and_explicit_choices_stand():
    model = fl.make_model("cnn", 0)
    assert resolve_engine(fl.FedConfig(), model) == "loop"
    assert resolve_engine(fl.FedConfig(engine="vectorized"), model) == "vectorized"
    assert resolve_engine(fl.FedConfig(engine="loop"), model) == "loop"


def test_clients_that_compute_their_own_updates_never_run_vectorized(data):
    from fl_lessons.heterogeneity import EqualWeightClient

    model, clients, test_x, test_y = float64_setup(data)
    equal = [EqualWeightClient(c._features, c._labels, model, c.name) for c in clients]
    # The vectorized engine would train each on n_k = 1 image: refuse, and let "auto" loop.
    with pytest.raises(ValueError, match="EqualWeightClient.*engine='loop'"):
        fl.run_fedavg(equal, model, test_x, test_y, fl.FedConfig(num_rounds=1, engine="vectorized"),
                      progress=False)
    assert resolve_engine(fl.FedConfig(), model, equal) == "loop"
    assert resolve_engine(fl.FedConfig(engine="vectorized"), model, clients) == "vectorized"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_vectorized_on_cuda_equals_loop_on_cpu(data):
    model, clients, _, _ = float64_setup(data)
    weights = fl.get_flat_weights(model)
    cuda_model = fl.make_model("cnn", 0, dtype=torch.float64).cuda()
    cuda_clients = [fl.Client(c._features.cuda(), c._labels.cuda(), cuda_model) for c in clients]
    assert resolve_engine(fl.FedConfig(), cuda_model) == "vectorized"
    engine = VectorizedEngine(cuda_clients, cuda_model)
    updates = engine.fedavg_round(weights.cuda(), [0, 1, 2, 3], 1, 8, 0.1,
                                  [_client_generator(0, 1, k) for k in range(4)])
    for update, client, k in zip(updates, clients, range(4)):
        expected = client.train(weights, 1, 8, 0.1, _client_generator(0, 1, k))
        torch.testing.assert_close(update.values.cpu(), expected.values, rtol=0, atol=1e-9)


def load_reference():
    """benchmarks/reference_fedavg.py, imported by path (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("reference_fedavg", ROOT / "benchmarks" / "reference_fedavg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("batch_size", [8, math.inf])
def test_benchmark_baseline_computes_the_same_fedavg(data, batch_size):
    """The usual pattern (deep copies, DataLoaders, state dicts) lands on our weights.

    With L = 1 and the same per-client generators, its DataLoader shuffles exactly as our
    clients do, so the benchmark's speed-up compares the same computation.
    """
    reference = load_reference()
    config = fl.FedConfig(num_rounds=2, batch_size=batch_size, lr=0.2, seed=5)
    model, clients, test_x, test_y = float64_setup(data)
    ours = fl.run_fedavg(clients, model, test_x, test_y, config, progress=False)
    baseline_model = fl.make_model("cnn", 0, dtype=torch.float64)
    reference.reference_fedavg(baseline_model, [(h.train_x.double(), h.train_y.double()) for h in data.hospitals],
                               num_rounds=2, local_epochs=1, batch_size=batch_size, lr=0.2,
                               make_generator=lambda round_index, k: _client_generator(5, round_index, k))
    torch.testing.assert_close(fl.get_flat_weights(baseline_model), ours.final_weights, **TIGHT)
    # Not trivially equal: both moved away from w_0.
    assert not torch.allclose(ours.final_weights, fl.get_flat_weights(fl.make_model("cnn", 0, torch.float64)))
