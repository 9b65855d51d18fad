"""Notebook 02 builds FedSGD live; these tests check the notebook's functions against the package.

The code cells of notebooks/02_fedsgd.ipynb that define ``weighted_average`` and
``fedsgd_round`` are executed on their own (nothing else in the notebook runs), and the
functions they define must agree with :func:`fl_lessons.aggregate`, with NumPy's weighted
average and with :func:`fl_lessons.run_fedsgd`.
"""

from __future__ import annotations

import math
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

import fl_lessons as fl

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "02_fedsgd.ipynb"
DEFINITIONS = ("def weighted_average(", "def fedsgd_round(")


def notebook_functions(path: Path = NOTEBOOK) -> dict:
    """Execute only the notebook's cells that define the live functions; return their namespace."""
    notebook = nbformat.read(path, as_version=4)
    namespace = {"torch": torch, "math": math, "np": np, "fl": fl}
    for definition in DEFINITIONS:
        cells = [cell.source for cell in notebook.cells
                 if cell.cell_type == "code" and definition in cell.source]
        assert len(cells) == 1, (
            f"{path.name} should define {definition.removeprefix('def ').rstrip('(')} in exactly one "
            f"code cell; found {len(cells)}."
        )
        exec(compile(cells[0], f"{path.name}: {definition}", "exec"), namespace)
    return namespace


@pytest.fixture(scope="module")
def live():
    return notebook_functions()


def test_weighted_average_matches_package_and_numpy(live):
    generator = torch.Generator().manual_seed(0)
    num_examples = [2000, 50, 700, 5]  # clearly unequal n_k
    vectors = [torch.randn(13, generator=generator, dtype=torch.float64) for _ in num_examples]
    updates = [fl.ClientUpdate(vector, n_k, math.nan) for vector, n_k in zip(vectors, num_examples)]

    ours = live["weighted_average"](vectors, num_examples)
    expected = np.average(torch.stack(vectors).numpy(), axis=0, weights=num_examples)

    torch.testing.assert_close(ours, fl.aggregate(updates), rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-12)
    unweighted = torch.stack(vectors).mean(dim=0)
    assert (ours - unweighted).abs().max() > 0.1, "the weighted average must not be the plain mean"


def _small_float64_clients():
    specs = [fl.HospitalSpec("big", 40, 0, 0.5), fl.HospitalSpec("mid", 15, 0, 0.3),
             fl.HospitalSpec("tiny", 4, 0, 0.75)]
    data = fl.make_hospitals(seed=3, specs=specs, common_test_per_hospital=4)
    model = fl.make_model("cnn", seed=1, dtype=torch.float64)
    clients = [fl.Client(hospital.train_x.double(), hospital.train_y.double(), model, hospital.name)
               for hospital in data.hospitals]
    return clients, model, data


def test_fedsgd_round_matches_run_fedsgd(live):
    clients, model, data = _small_float64_clients()
    w0 = fl.get_flat_weights(model)
    lr = 0.3

    ours = live["fedsgd_round"](clients, w0, lr)
    history = fl.run_fedsgd(clients, model, data.test_x.double(), data.test_y.double(),
                            fl.FedConfig(num_rounds=1, lr=lr),
                            initial_weights=w0, progress=False)

    assert not torch.equal(ours, w0), "one FedSGD round must move the weights"
    torch.testing.assert_close(ours, history.final_weights, rtol=0, atol=1e-12)


def test_fedsgd_round_is_a_pooled_gradient_step(live):
    clients, model, data = _small_float64_clients()
    w0 = fl.get_flat_weights(model)
    lr = 0.3
    features, labels = data.pooled()
    pooled = fl.make_model("cnn", seed=1, dtype=torch.float64)
    fl.train(pooled, features.double(), labels.double(), epochs=1, batch_size=math.inf, lr=lr,
             progress=False)

    ours = live["fedsgd_round"](clients, w0, lr)

    torch.testing.assert_close(ours, fl.get_flat_weights(pooled), rtol=0, atol=1e-12)
