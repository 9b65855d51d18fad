"""Tests for fl_lessons.student: building the student edition of the notebooks.

Most tests build from small notebooks written here into a temporary folder, with
distinctive solution lines that must not survive. The last test builds the real
notebooks/ (into a temporary folder) once they hold solution markers.
"""

from __future__ import annotations

import json
import runpy
import sys
import warnings
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from fl_lessons import student
from fl_lessons.student import (
    CODE_BEGIN,
    CODE_END,
    CODE_STUB,
    MARKDOWN_BEGIN,
    MARKDOWN_END,
    MARKDOWN_STUB,
    SolutionMarkerError,
    build_student_edition,
)

ROOT = Path(__file__).resolve().parents[1]
REAL_NOTEBOOKS = ROOT / "notebooks"
SECRETS = ("SECRET_TOTAL", "SECRET_RETURN", "SECRET_INNER", "SECRET_PRINTED", "SECRET_PROSE")


def executed_code_cell(source: str, count: int, text: str) -> nbformat.NotebookNode:
    cell = new_code_cell(source, execution_count=count)
    cell.outputs = [new_output("stream", name="stdout", text=text)]
    return cell


def workbook() -> nbformat.NotebookNode:
    """A small executed notebook with solutions in code (two indentations) and markdown."""
    plain = executed_code_cell("x = 1\nprint(x)", 1, "1\n")
    exercise = executed_code_cell(
        "def weighted_average(vectors, num_examples):\n"
        f"    {CODE_BEGIN}\n"
        "    total = sum(num_examples)  # SECRET_TOTAL\n"
        "    return sum(n / total * v for v, n in zip(vectors, num_examples))  # SECRET_RETURN\n"
        f"    {CODE_END}\n"
        "\n"
        "print(weighted_average([1.0, 3.0], [1, 1]))",
        2, "2.0 SECRET_PRINTED\n",
    )
    two_regions = executed_code_cell(
        f"{CODE_BEGIN}\n"
        "answer = 42  # SECRET_INNER\n"
        f"{CODE_END}\n"
        "for k in range(2):\n"
        f"        {CODE_BEGIN}\n"
        "        pass  # SECRET_INNER\n"
        f"        {CODE_END}\n"
        "print('done')",
        3, "done\n",
    )
    figure = new_code_cell("show_figure()", execution_count=4)
    figure.outputs = [new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})]
    question = new_markdown_cell(
        "**Question.** Why weight by n_k?\n"
        f"{MARKDOWN_BEGIN}\n"
        "Because SECRET_PROSE: a hospital with more patients should count more.\n"
        f"{MARKDOWN_END}\n"
        "Discuss with a neighbour."
    )
    notebook = new_notebook(cells=[new_markdown_cell("# A workbook"), plain, exercise, two_regions,
                                   figure, question])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


def write(notebook: nbformat.NotebookNode, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return path


@pytest.fixture
def course(tmp_path) -> Path:
    """A notebooks folder with the workbook and a notebook without any exercise."""
    folder = tmp_path / "notebooks"
    write(workbook(), folder / "01_workbook.ipynb")
    write(new_notebook(cells=[executed_code_cell("print('hello')", 1, "hello\n")]), folder / "02_plain.ipynb")
    return folder


def cells_of(path: Path) -> list[dict]:
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def test_building_twice_gives_identical_bytes(course, tmp_path):
    build_student_edition(course, tmp_path / "first")
    build_student_edition(course, tmp_path / "second")
    build_student_edition(course, tmp_path / "second")  # rebuilding in place, too
    names = sorted(path.name for path in (tmp_path / "first").iterdir())
    assert names == ["01_workbook.ipynb", "02_plain.ipynb"]
    for name in names:
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes()


def test_no_solution_text_survives(course, tmp_path):
    build_student_edition(course, tmp_path / "student")
    text = (tmp_path / "student" / "01_workbook.ipynb").read_text(encoding="utf-8")
    for secret in SECRETS + (CODE_BEGIN, CODE_END, MARKDOWN_BEGIN, MARKDOWN_END):
        assert secret not in text
    original = (course / "01_workbook.ipynb").read_text(encoding="utf-8")
    assert all(secret in original for secret in SECRETS)  # the test has teeth


def test_stubs_replace_solutions_at_their_indentation(course, tmp_path):
    build_student_edition(course, tmp_path / "student")
    cells = cells_of(tmp_path / "student" / "01_workbook.ipynb")
    assert source(cells[2]) == (
        "def weighted_average(vectors, num_examples):\n"
        f"    {CODE_STUB}\n"
        "\n"
        "print(weighted_average([1.0, 3.0], [1, 1]))"
    )
    assert source(cells[3]) == f"{CODE_STUB}\nfor k in range(2):\n        {CODE_STUB}\nprint('done')"
    assert source(cells[5]) == f"**Question.** Why weight by n_k?\n{MARKDOWN_STUB}\nDiscuss with a neighbour."
    assert CODE_STUB == 'raise NotImplementedError("Exercise: write your solution here")'


def test_only_solution_cells_lose_their_outputs(course, tmp_path):
    build_student_edition(course, tmp_path / "student")
    before = cells_of(course / "01_workbook.ipynb")
    after = cells_of(tmp_path / "student" / "01_workbook.ipynb")
    assert len(after) == len(before)
    for index in (2, 3):
        assert before[index]["outputs"] and after[index]["outputs"] == []
        assert after[index]["execution_count"] is None
    for index in (0, 1, 4, 5):
        untouched = {key: value for key, value in before[index].items() if key != "source"}
        assert {key: value for key, value in after[index].items() if key != "source"} == untouched
    for index in (0, 1, 4):
        assert after[index] == before[index]


def test_a_notebook_without_solutions_is_copied_byte_for_byte(course, tmp_path):
    build_student_edition(course, tmp_path / "student")
    assert (tmp_path / "student" / "02_plain.ipynb").read_bytes() == (course / "02_plain.ipynb").read_bytes()


def test_cells_without_ids_still_build_deterministically(tmp_path):
    """nbformat would invent random ids for such cells (with a warning); the builder must not."""
    raw = json.loads(nbformat.writes(workbook()))
    for cell in raw["cells"]:
        del cell["id"]
    folder = tmp_path / "notebooks"
    folder.mkdir()
    (folder / "no_ids.ipynb").write_text(json.dumps(raw), encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_student_edition(folder, tmp_path / "a")
    build_student_edition(folder, tmp_path / "b")
    assert (tmp_path / "a" / "no_ids.ipynb").read_bytes() == (tmp_path / "b" / "no_ids.ipynb").read_bytes()
    ids = [cell["id"] for cell in cells_of(tmp_path / "a" / "no_ids.ipynb")]
    assert len(set(ids)) == len(ids) == len(raw["cells"])


BROKEN_CELLS = {
    "never closed": (f"x = 1\n{CODE_BEGIN}\ny = 2", r"line 2: '### BEGIN SOLUTION' is never closed"),
    "end without begin": (f"y = 2\n{CODE_END}", r"line 2: '### END SOLUTION' without a '### BEGIN SOLUTION'"),
    "nested": (f"{CODE_BEGIN}\n{CODE_BEGIN}\n{CODE_END}", r"line 2: a second '### BEGIN SOLUTION' before"),
    "shares a line": (f"y = 2  {CODE_BEGIN}\n{CODE_END}", r"line 1: '### BEGIN SOLUTION' must stand on a line"),
}


@pytest.mark.parametrize("broken, pattern", BROKEN_CELLS.values(), ids=list(BROKEN_CELLS))
def test_unbalanced_code_markers_name_the_notebook_and_cell(course, tmp_path, broken, pattern):
    write(new_notebook(cells=[new_markdown_cell("# Broken"), new_code_cell(broken)]), course / "03_broken.ipynb")
    with pytest.raises(SolutionMarkerError, match=r"03_broken\.ipynb, cell 2 of 2 \(code\), " + pattern):
        build_student_edition(course, tmp_path / "student")
    assert not (tmp_path / "student").exists(), "nothing may be written when a notebook is broken"


def test_unbalanced_markdown_markers_raise(course, tmp_path):
    broken = new_markdown_cell(f"Answer:\n{MARKDOWN_BEGIN}\nhalf an answer")
    write(new_notebook(cells=[broken]), course / "03_broken.ipynb")
    with pytest.raises(SolutionMarkerError, match=r"03_broken\.ipynb, cell 1 of 1 \(markdown\), line 2: "
                                                  r"'<!-- BEGIN SOLUTION -->' is never closed"):
        build_student_edition(course, tmp_path / "student")


@pytest.mark.parametrize("inside", [".", "student"])
def test_refuses_to_write_into_the_notebooks_folder(course, inside):
    before = {path.name: path.read_bytes() for path in course.iterdir()}
    with pytest.raises(ValueError, match="Refusing to write the student edition into"):
        build_student_edition(course, course / inside)
    assert {path.name: path.read_bytes() for path in course.iterdir()} == before


def test_no_notebooks_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"No notebooks \(\*\.ipynb\) found in"):
        build_student_edition(tmp_path / "empty", tmp_path / "student")


def test_command_line_builds_and_says_what_it_built(course, tmp_path, capsys, monkeypatch):
    out = tmp_path / "handout"
    monkeypatch.setattr(sys, "argv", ["student", "--notebooks", str(course), "--out", str(out)])
    monkeypatch.delitem(sys.modules, "fl_lessons.student")  # run it afresh, as `python -m` does
    with pytest.raises(SystemExit) as finished:
        runpy.run_module("fl_lessons.student", run_name="__main__")
    assert finished.value.code == 0
    printed = capsys.readouterr().out
    assert f"{out / '01_workbook.ipynb'}: 3 code and 1 written solutions replaced" in printed
    assert f"Built the student edition of 2 notebooks in {out}" in printed
    assert sorted(path.name for path in out.iterdir()) == ["01_workbook.ipynb", "02_plain.ipynb"]


def test_command_line_refusal_is_a_clear_error(course, capsys):
    with pytest.raises(SystemExit) as finished:
        student.main(["--notebooks", str(course), "--out", str(course)])
    assert finished.value.code == 1
    assert "error: Refusing to write the student edition into" in capsys.readouterr().err


def solution_lines(notebook_path: Path) -> list[str]:
    """The substantial lines between solution markers in a notebook."""
    lines, inside = [], False
    for cell in nbformat.read(notebook_path, as_version=4).cells:
        begin, end = (CODE_BEGIN, CODE_END) if cell.cell_type == "code" else (MARKDOWN_BEGIN, MARKDOWN_END)
        for line in cell.source.split("\n"):
            if line.strip() in (begin, end):
                inside = line.strip() == begin
            elif inside and len(line.strip()) > 25:
                lines.append(line.strip())
    return lines


def test_the_real_notebooks_build(tmp_path):
    notebooks = sorted(REAL_NOTEBOOKS.glob("*.ipynb"))
    marked = [path for path in notebooks if solution_lines(path) or CODE_BEGIN in path.read_text(encoding="utf-8")]
    if not marked:
        pytest.skip("no notebook in notebooks/ holds solution markers yet")
    build_student_edition(REAL_NOTEBOOKS, tmp_path / "first")
    build_student_edition(REAL_NOTEBOOKS, tmp_path / "second")
    for path in notebooks:
        built = (tmp_path / "first" / path.name).read_bytes()
        assert built == (tmp_path / "second" / path.name).read_bytes()
        text = built.decode("utf-8")
        for marker in (CODE_BEGIN, CODE_END, MARKDOWN_BEGIN, MARKDOWN_END):
            assert marker not in text, f"{path.name}: {marker!r} survived"
        student_sources = "\n".join(cell.source for cell in nbformat.reads(text, as_version=4).cells)
        original_elsewhere = "\n".join(
            cell.source for cell in nbformat.read(path, as_version=4).cells
            if CODE_BEGIN not in cell.source and MARKDOWN_BEGIN not in cell.source)
        for line in solution_lines(path):
            if line not in original_elsewhere:  # a line the notebook also shows outside a solution may stay
                assert line not in student_sources, f"{path.name}: solution line {line!r} survived"
