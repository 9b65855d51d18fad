"""The tolerant comparison of trained figures in notebooks (see the repository's conftest.py).

It may forgive only what differs between CPUs: decimal numbers by at most the cell's stated
tolerance. A changed word, a changed count or a larger difference must still fail.
"""

from __future__ import annotations

import pytest

import conftest
from conftest import cell_tolerance, texts_match_within

TABLE = (
    "model                        accuracy    AUC   loss\n"
    "pooled CNN                      0.893  0.949  0.273\n"
    "Highland Rural Clinic alone     0.546  0.560  0.684\n"
    "trained on 4600 images in 10 epochs\n"
)


def test_the_patch_is_installed():
    assert conftest.IPyNbCell is not None, "nbval must be installed for the notebook tests"
    assert conftest.IPyNbCell.compare_outputs is conftest.compare_outputs


def test_cell_tolerance_reads_the_marker_line():
    source = "# NBVAL_CHECK_OUTPUT\n# NBVAL_TOLERANCE 0.03 (figures from SGD training)\nprint(1)"
    assert cell_tolerance(source) == 0.03
    assert cell_tolerance("# NBVAL_TOLERANCE 1e-3\n") == 1e-3
    assert cell_tolerance("# NBVAL_CHECK_OUTPUT\nprint('NBVAL_TOLERANCE 0.5')") is None
    assert cell_tolerance("# NBVAL_CHECK_OUTPUT\nprint(1)") is None


def test_identical_text_matches():
    assert texts_match_within(TABLE, TABLE, 0.0)


def test_decimals_within_the_tolerance_match_and_beyond_it_fail():
    other_cpu = TABLE.replace("0.893", "0.886").replace("0.273", "0.294")
    assert texts_match_within(TABLE, other_cpu, 0.03)
    assert not texts_match_within(TABLE, other_cpu, 0.01)
    assert not texts_match_within(TABLE, TABLE.replace("0.546", "0.600"), 0.03)


def test_white_space_from_alignment_is_ignored():
    assert texts_match_within("rounds  9.98 |", "rounds 10.01 |", 0.05)


@pytest.mark.parametrize("changed", [
    TABLE.replace("4600", "4601"),              # a count must be exact
    TABLE.replace("10 epochs", "11 epochs"),
    TABLE.replace("pooled CNN", "pooled MLP"),  # so must every word
    TABLE.replace("Highland", "Lowland"),
    TABLE + "one more line\n",
    TABLE.replace("0.546", "0.546 0.1"),        # an extra number
])
def test_words_counts_and_structure_must_match_exactly(changed):
    assert not texts_match_within(TABLE, changed, 1.0)


def test_true_false_claims_must_match():
    assert not texts_match_within("FedAvg beats FedSGD: True", "FedAvg beats FedSGD: False", 1.0)


def test_a_decimal_never_matches_an_integer():
    assert not texts_match_within("n = 5", "n = 5.0", 1.0)
