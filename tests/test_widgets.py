"""The slider panels of notebooks 03 and 04, driven from pytest as a learner drives them."""

import math

import matplotlib
import numpy as np
import pytest
import torch

import fl_lessons as fl
from fl_lessons import widgets
from fl_lessons.data import HospitalSpec

matplotlib.use("Agg")

SMALL_LIMITS = widgets.PanelLimits(max_rounds=4, max_local_epochs=3, max_clients=6,
                                   train_per_hospital=40, test_size=60)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models on a busy 2-core machine run faster without intra-op threads.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def small_data():
    specs = [HospitalSpec("A", 60, 10, 0.4), HospitalSpec("B", 45, 10, 0.5), HospitalSpec("C", 30, 10, 0.3)]
    return fl.make_hospitals(seed=1, specs=specs, common_test_per_hospital=20)


@pytest.fixture(scope="module")
def panel(small_data):
    return widgets.FedAvgPanel(small_data, widgets.PanelSettings(num_rounds=2, num_clients=3),
                               SMALL_LIMITS)


def plotted_lines(figure):
    """The (x, y) data of every solid line on the panel's axes (the dashed pooled line excluded)."""
    return [(tuple(line.get_xdata()), tuple(line.get_ydata()))
            for line in figure.axes[0].get_lines() if line.get_linestyle() == "-"]


def test_the_panel_shows_a_figure_and_the_summary_of_its_settings(panel):
    assert panel.figure is not None
    assert "N= 2" in panel.summary and "FedAvg" in panel.summary and "FedSGD" in panel.summary
    assert len(panel.output.outputs) >= 1


def test_moving_n_right_continues_the_run_and_left_shows_less_of_it(panel, monkeypatch):
    panel.sliders["N"].value = 2
    panel._cache.clear()  # whatever earlier tests left, the runs now have exactly 2 rounds
    panel.update()
    lines_before = plotted_lines(panel.figure)
    keys_before = set(panel._cache)
    runs = []  # (algorithm, N asked for, rounds the run was continued from)

    def record(run):
        def recorded(*args, resume_from=None, **kwargs):
            rounds_done = None if resume_from is None else len(resume_from.rounds)
            runs.append((run.__name__, args[4].num_rounds, rounds_done))  # args[4] is the FedConfig
            return run(*args, resume_from=resume_from, **kwargs)
        return recorded

    monkeypatch.setattr(widgets, "run_fedavg", record(widgets.run_fedavg))
    monkeypatch.setattr(widgets, "run_fedsgd", record(widgets.run_fedsgd))
    panel.sliders["N"].value = 4
    lines_after = plotted_lines(panel.figure)
    assert set(panel._cache) == keys_before, "moving N must not make a new setting"
    assert sorted(runs) == [("run_fedavg", 4, 2), ("run_fedsgd", 4, 2)], "only rounds 3 and 4 may train"
    assert all(max(x) == 4 for x, _ in lines_after)
    assert "N= 4" in panel.summary
    # The first three points are the same run, only more of it is shown.
    for (x_before, y_before), (x_after, y_after) in zip(lines_before, lines_after):
        assert y_after[: len(y_before)] == y_before
    # ... and the continued run is the run a fresh start at N = 4 would have made.
    fedavg, fedsgd = panel.results(panel.settings)
    for continued, algorithm in [(fedavg, "FedAvg"), (fedsgd, "FedSGD")]:
        fresh = widgets.panel_experiment(panel.data, panel.settings, SMALL_LIMITS, algorithm)
        assert continued.test_accuracy == fresh.test_accuracy
        assert torch.equal(continued.final_weights, fresh.final_weights)

    runs.clear()
    panel.sliders["N"].value = 3
    assert runs == [], "moving N left must not train"
    assert panel.results(panel.settings)[0] is fedavg
    assert all(max(x) == 3 for x, _ in plotted_lines(panel.figure))
    assert "N= 3" in panel.summary
    panel.sliders["N"].value = 2


@pytest.mark.parametrize("name, value", [("L", 2), ("K", 4), ("C", 0.5), ("B", math.inf), ("partition", "label skew")])
def test_each_slider_redraws_with_the_numbers_of_the_new_setting(panel, name, value):
    original = panel.sliders[name].value
    panel.sliders[name].value = value
    settings = panel.settings
    fedavg, fedsgd = panel.results(settings)
    # What the panel shows is exactly the package's computation for that setting.
    expected_fedavg = widgets.panel_experiment(panel.data, settings, SMALL_LIMITS, "FedAvg")
    assert fedavg.test_accuracy[: settings.num_rounds] == expected_fedavg.test_accuracy
    assert panel.summary == widgets.summarize(fedavg, fedsgd, settings.num_rounds)
    curve_shown = plotted_lines(panel.figure)[0][1]
    assert list(curve_shown) == fedavg.accuracy_curve()[1][: settings.num_rounds + 1]
    assert settings != widgets.PanelSettings(num_rounds=settings.num_rounds, num_clients=3)
    panel.sliders[name].value = original


def test_l_and_b_leave_fedsgd_alone_but_change_fedavg(panel):
    panel.sliders["L"].value = 1
    fedavg_1, fedsgd_1 = panel.results(panel.settings)
    panel.sliders["L"].value = 3
    fedavg_3, fedsgd_3 = panel.results(panel.settings)
    assert fedsgd_3 is fedsgd_1, "FedSGD does not use L: it must come from the cache"
    assert not torch.equal(fedavg_1.final_weights, fedavg_3.final_weights)
    panel.sliders["L"].value = 1


def test_a_setting_seen_before_comes_from_the_cache(panel):
    panel.sliders["K"].value = 5
    first = panel.results(panel.settings)
    panel.sliders["K"].value = 3
    panel.sliders["K"].value = 5
    assert panel.results(panel.settings)[0] is first[0]


def test_k_repartitions_the_pooled_data_into_k_clients(small_data):
    for partition in widgets.PARTITIONS:
        split = widgets.repartition(small_data, 4, partition)
        assert len(split.hospitals) == 4
        assert sum(h.num_examples for h in split.hospitals) == sum(h.num_examples for h in small_data.hospitals)
    with pytest.raises(ValueError, match="partition"):
        widgets.repartition(small_data, 4, "shards")


def test_equivalence_panel_redraws_for_l_and_alpha(small_data):
    panel = widgets.EquivalencePanel(small_data, num_clients=3, num_examples=90, max_local_steps=4)
    gaps_start = panel.gap_curve(panel.sliders["alpha"].value)
    assert gaps_start[0] < 1e-5, "one local step is FedSGD: the gap must be float noise"
    summary_start = panel.summary
    panel.sliders["L"].value = 4
    assert "L=4" in panel.summary and panel.summary != summary_start
    highlighted = panel.figure.axes[0].get_lines()[1]
    assert tuple(highlighted.get_xdata()) == (4,)
    assert highlighted.get_ydata()[0] == pytest.approx(gaps_start[3])
    panel.sliders["alpha"].value = 0.01
    gaps_skewed = panel.gap_curve(0.01)
    assert not np.allclose(gaps_skewed, gaps_start)
    assert tuple(panel.figure.axes[0].get_lines()[0].get_ydata()) == tuple(gaps_skewed)
