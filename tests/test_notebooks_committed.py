"""The notebooks are committed the way a student should first see them.

Each notebook in notebooks/ must be saved right after "Kernel > Restart Kernel
and Run All Cells": every code cell run once, in order, with no errors; and it
must follow the course layout (learning objectives first, a Summary and
Exercises section). These tests only read the files; running the notebooks is
nbval's job (see addopts in pyproject.toml).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(
    path for path in NOTEBOOK_DIR.glob("*.ipynb") if ".ipynb_checkpoints" not in path.parts
)

RERUN = (
    'Open it in JupyterLab, run "Kernel > Restart Kernel and Run All Cells", '
    "check that it finishes without errors, then save and commit it."
)
OBJECTIVE_PHRASES = ("you will be able to", "you'll be able to")
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*)$", re.MULTILINE)


def _ids(paths):
    return [path.name for path in paths]


def load(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def source(cell: dict) -> str:
    text = cell.get("source", "")
    return "".join(text) if isinstance(text, list) else text


def code_cells(notebook: dict) -> list[dict]:
    return [c for c in notebook.get("cells", []) if c.get("cell_type") == "code"]


def markdown_cells(notebook: dict) -> list[dict]:
    return [c for c in notebook.get("cells", []) if c.get("cell_type") == "markdown"]


def headings(notebook: dict) -> list[str]:
    return [h.strip() for cell in markdown_cells(notebook) for h in HEADING.findall(source(cell))]


def test_notebooks_found():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}; the course needs at least one .ipynb there"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_executed_top_to_bottom(path):
    cells = [c for c in code_cells(load(path)) if source(c).strip()]
    assert cells, f"{path.name} has no code cells"
    counts = [c.get("execution_count") for c in cells]
    expected = list(range(1, len(cells) + 1))
    if counts != expected:
        wrong = [
            f"cell {i} (starts {source(c).strip().splitlines()[0][:40]!r}) has execution_count {n}"
            for i, (c, n, want) in enumerate(zip(cells, counts, expected), start=1)
            if n != want
        ]
        pytest.fail(
            f"{path.name} was not saved straight after running every cell once, in order: "
            f"expected execution counts 1..{len(cells)}, but\n  "
            + "\n  ".join(wrong[:5])
            + (f"\n  ... and {len(wrong) - 5} more" if len(wrong) > 5 else "")
            + f"\n{RERUN}"
        )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_no_error_outputs(path):
    errors = []
    for i, cell in enumerate(code_cells(load(path)), start=1):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                errors.append(f"code cell {i}: {output.get('ename')}: {output.get('evalue')}")
    assert not errors, f"{path.name} was saved with errors in its outputs:\n  " + "\n  ".join(errors) + f"\n{RERUN}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_starts_with_learning_objectives(path):
    cells = markdown_cells(load(path))
    assert cells, f"{path.name} has no markdown cells"
    first = source(cells[0]).lower().replace("\u2019", "'")
    assert any(phrase in first for phrase in OBJECTIVE_PHRASES), (
        f"the first markdown cell of {path.name} should state the learning objectives, "
        f'with a phrase like "By the end of this notebook you will be able to ..."'
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_has_summary_and_exercises_sections(path):
    found = headings(load(path))
    missing = [
        word for word in ("Summary", "Exercise")
        if not any(word.lower() in heading.lower() for heading in found)
    ]
    assert not missing, (
        f"{path.name} needs markdown headings for: {', '.join(missing)} "
        f"(e.g. '## Summary', '## Exercises'); its headings are: {found}"
    )
