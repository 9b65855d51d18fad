"""Settings the whole test suite shares: one torch thread, and how trained figures are compared.

Every unit-test module runs on one torch thread (the ``one_torch_thread`` fixture). The
course's models are tiny: a second thread gains nothing, and on a busy 2-core machine threads
spin-waiting for each other make them many times slower. The notebooks' committed outputs
were computed with one thread too.

nbval re-runs every notebook and compares the cells marked ``# NBVAL_CHECK_OUTPUT`` with
the committed outputs, character for character. That is right for everything exact (sizes,
counts, bytes, float64 equivalence gaps printed as powers of ten), but not for figures that
come out of many steps of float32 SGD: the CPU's vector instructions (AVX2 or AVX-512, Intel
or AMD) change the order of float additions, SGD amplifies the last-bit differences, and the
trained model ends up slightly different. Measured on the course's own pooled CNN
(notebook 01, 10 epochs, one thread): test accuracy 0.893 on an Intel Xeon, 0.886 on an
AMD EPYC, 0.893 / 0.883 / 0.888 on the AMD when torch, oneDNN or MKL is limited to AVX2.

A checked cell that prints such figures says so with a second marker line, e.g.::

    # NBVAL_CHECK_OUTPUT
    # NBVAL_TOLERANCE 0.03 (figures from SGD training vary slightly between CPUs)

and its output is then compared token by token: the words and the integers exactly, each
decimal number to within the stated absolute tolerance (white space is ignored, since a
right-aligned column shifts when a number gains a digit). Every other checked cell must
still match exactly, and the notebooks' ``assert`` statements, which state their claims with
margins, hold on every CPU.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

try:
    from nbval.plugin import IPyNbCell, transform_streams_for_comparison
except ImportError:  # nbval is in the test extra; without it there are no notebook tests
    IPyNbCell = None


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread in every test module, restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


TOLERANCE_MARKER = re.compile(r"^\s*#\s*NBVAL_TOLERANCE\s+([0-9.]+(?:[eE][-+]?\d+)?)\b", re.MULTILINE)
# A number (integer, decimal or scientific) or a run of other non-space characters.
TOKEN = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?|[^\s\d.+-]+|[.+-]")
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def cell_tolerance(source: str) -> float | None:
    """The absolute tolerance a cell's ``# NBVAL_TOLERANCE x`` line states, or None.

    Parameters
    ----------
    source : the code cell's source.
    """
    match = TOLERANCE_MARKER.search(source)
    return None if match is None else float(match.group(1))


def _is_decimal(token: str) -> bool:
    return any(mark in token for mark in ".eE")


def texts_match_within(reference: str, test: str, tolerance: float) -> bool:
    """Whether two printed texts agree: words and integers exactly, decimals within ``tolerance``.

    Parameters
    ----------
    reference : the committed output.
    test : the output of the fresh run.
    tolerance : the largest absolute difference allowed between two decimal numbers.
    """
    reference_tokens, test_tokens = TOKEN.findall(reference), TOKEN.findall(test)
    if len(reference_tokens) != len(test_tokens):
        return False
    for expected, actual in zip(reference_tokens, test_tokens):
        if expected == actual:
            continue
        both_numbers = NUMBER.fullmatch(expected) and NUMBER.fullmatch(actual)
        if not (both_numbers and _is_decimal(expected) and _is_decimal(actual)):
            return False  # different words, or different integers (counts must be exact)
        difference = abs(float(expected) - float(actual))
        if math.isnan(difference) or difference > tolerance:
            return False
    return True


def _flatten(cell, outputs) -> dict[str, list]:
    """Outputs keyed by field or MIME type, as nbval compares them (sanitized, skips left out)."""
    skip = cell.parent.skip_compare
    flat: dict[str, list] = {}
    for output in transform_streams_for_comparison(outputs):
        for key, value in output.items():
            if key in skip:
                continue
            if key == "data":
                for mime, data in value.items():
                    if mime not in skip:
                        flat.setdefault(mime, []).append(cell.sanitize(data))
            else:
                flat.setdefault(key, []).append(cell.sanitize(value))
    return flat


def _outputs_match_within(cell, test, reference, tolerance: float) -> bool:
    test_outputs, reference_outputs = _flatten(cell, test), _flatten(cell, reference)
    if test_outputs.keys() != reference_outputs.keys():
        return False
    for key, expected_values in reference_outputs.items():
        actual_values = test_outputs[key]
        if len(actual_values) != len(expected_values):
            return False
        for expected, actual in zip(expected_values, actual_values):
            if expected == actual:
                continue
            if not (isinstance(expected, str) and isinstance(actual, str)):
                return False
            if not texts_match_within(expected, actual, tolerance):
                return False
    return True


if IPyNbCell is not None:
    _exact_compare = IPyNbCell.compare_outputs

    def compare_outputs(self, test, ref, skip_compare=None):
        """nbval's exact comparison, then, for a cell with a tolerance line, the tolerant one."""
        if _exact_compare(self, test, ref, skip_compare):
            return True
        tolerance = cell_tolerance(self.cell.source)
        if tolerance is None or not _outputs_match_within(self, test, ref, tolerance):
            return False
        self.comparison_traceback = []
        return True

    IPyNbCell.compare_outputs = compare_outputs
