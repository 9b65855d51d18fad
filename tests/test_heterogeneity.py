"""Tests for fl_lessons.heterogeneity (notebook 06): equal weighting, per-hospital accuracy,
client drift and the smaller copies of the hospitals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import fl_lessons as fl
from fl_lessons import HospitalSpec
from fl_lessons import heterogeneity as het


@pytest.fixture(scope="module")
def tiny_data() -> fl.HospitalData:
    specs = [HospitalSpec("A", 60, 12, 0.4), HospitalSpec("B", 24, 10, 0.3), HospitalSpec("C", 12, 8, 0.6)]
    return fl.make_hospitals(0, specs=specs, common_test_per_hospital=10)


def test_equal_weight_clients_make_the_server_average_a_plain_mean(tiny_data):
    model = fl.make_model("cnn", seed=0)
    w0 = fl.get_flat_weights(model)
    config = fl.FedConfig(num_rounds=1, local_epochs=1, batch_size=8, lr=0.1, client_fraction=1.0, seed=3)
    plain = [fl.Client(h.train_x, h.train_y, model, h.name) for h in tiny_data.hospitals]
    equal = [het.EqualWeightClient(h.train_x, h.train_y, model, h.name) for h in tiny_data.hospitals]
    # The local models of round 1, computed by the same clients the run uses.
    local = torch.stack([c.train(w0, 1, 8, 0.1, fl.federated._client_generator(3, 1, k)).values
                         for k, c in enumerate(plain)])
    sizes = torch.tensor([h.num_examples for h in tiny_data.hospitals], dtype=local.dtype)
    weighted = fl.run_fedavg(plain, model, tiny_data.test_x, tiny_data.test_y, config, initial_weights=w0,
                             progress=False).final_weights
    unweighted = fl.run_fedavg(equal, model, tiny_data.test_x, tiny_data.test_y, config, initial_weights=w0,
                               progress=False).final_weights
    torch.testing.assert_close(unweighted, local.mean(dim=0), rtol=0, atol=1e-6)
    torch.testing.assert_close(weighted, (sizes[:, None] * local).sum(0) / sizes.sum(), rtol=0, atol=1e-6)
    assert not torch.allclose(weighted, unweighted, atol=1e-4)
    assert [c.num_examples for c in equal] == [1, 1, 1]


def test_per_hospital_accuracy_scores_each_hospitals_own_test_set(tiny_data):
    model = fl.make_model("cnn", seed=1)
    weights = fl.get_flat_weights(model) * 1.5
    scores = het.per_hospital_accuracy(model, weights, tiny_data)
    fl.set_flat_weights(model, weights)
    expected = [fl.evaluate(model, h.test_x, h.test_y).accuracy for h in tiny_data.hospitals]
    np.testing.assert_array_equal(scores, expected)
    carved = fl.hospitals_from_partition(*tiny_data.pooled(), fl.partition_iid(96, 3), tiny_data.test_x,
                                         tiny_data.test_y)
    with pytest.raises(ValueError, match="no test set of their own"):
        het.per_hospital_accuracy(model, weights, carved)


def test_drift_grows_with_local_epochs_and_a_proximal_term_holds_it_back(tiny_data):
    settings = het.SkewSettings(num_clients=3, batch_size=8, lr=0.1)
    free = het.drift_table(tiny_data, (math.inf, 0.1), (1, 4), settings)
    pulled = het.drift_table(tiny_data, (0.1,), (4,), settings, mu=5.0)
    assert set(free) == {(math.inf, 1), (math.inf, 4), (0.1, 1), (0.1, 4)}
    for alpha in (math.inf, 0.1):
        assert free[alpha, 4][0] > free[alpha, 1][0] > 0
        assert free[alpha, 1][1] > 0
    assert pulled[0.1, 4][0] < free[0.1, 4][0]
    # Each row comes from its own L, whatever the order we ask for them in.
    assert het.drift_table(tiny_data, (0.1,), (4, 1), settings) == {key: free[key] for key in [(0.1, 4), (0.1, 1)]}


def test_scaled_copy_keeps_the_size_ratios_and_leaves_the_original_alone(tiny_data):
    before = [h.num_examples for h in tiny_data.hospitals]
    half = het.scaled_copy(tiny_data, 0.5, test_size=20)
    assert [h.num_examples for h in half.hospitals] == [30, 12, 6]
    assert [h.num_examples for h in tiny_data.hospitals] == before
    assert half.test_y.shape[0] == 20
    assert torch.equal(half.hospitals[0].train_x, tiny_data.hospitals[0].train_x[:30])
    with pytest.raises(ValueError, match="fraction"):
        het.scaled_copy(tiny_data, 0.0)


def test_the_alpha_slider_redraws_from_package_functions_and_caches(tiny_data, monkeypatch):
    settings = het.SkewSettings(num_clients=3, num_rounds=2, batch_size=8, train_per_hospital=12, test_size=20)
    panel = het.LabelSkewPanel(tiny_data, settings, alpha=0.1)
    first_summary, first_figure = panel.summary, panel.figure
    assert first_summary.startswith("alpha=0.1:") and len(panel.output.outputs) == 2
    calls = []
    original = het.label_skew_experiment
    monkeypatch.setattr(het, "label_skew_experiment", lambda *args: calls.append(args[1]) or original(*args))
    panel.slider.value = 1.0
    assert calls == [1.0] and panel.summary.startswith("alpha=1:") and panel.figure is not first_figure
    counts, history = panel.result(1.0)
    assert counts.sum() == sum(h.num_examples for h in panel.data.hospitals)
    assert f"{history.test_accuracy[-1]:.3f}" in panel.summary
    panel.slider.value = 0.1  # seen before: answered from the cache, no new run
    assert calls == [1.0] and panel.summary == first_summary
