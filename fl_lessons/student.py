"""Build the student edition of the workbook: every worked solution replaced by a stub.

Used for all notebooks (01 onwards); teachers run it as described in the README and in
``docs/teaching.md``::

    python -m fl_lessons.student [--out student] [--notebooks notebooks]

The notebooks in ``notebooks/`` are the instructor edition: they hold the worked solutions
and run top to bottom under nbval. In a code cell a solution sits between two lines::

    ### BEGIN SOLUTION
    ...
    ### END SOLUTION

and the student edition replaces the whole region, markers included, by one line at the
indentation of ``### BEGIN SOLUTION``: ``raise NotImplementedError("Exercise: write your
solution here")``. The outputs and execution count of such a cell are cleared, so no
printed result gives the answer away. In a markdown cell a written answer sits between
``<!-- BEGIN SOLUTION -->`` and ``<!-- END SOLUTION -->`` lines and becomes
``*Your answer here.*``. Everything else, other cells' outputs included, is copied as it is.

The build is deterministic: the same notebooks always give byte-identical files. The
student edition is built, never committed (``student/`` is git-ignored). The automatic
checks the exercises call live in :mod:`fl_lessons.checks`, inside the installed package,
so the student edition needs nothing else.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import nbformat

CODE_BEGIN = "### BEGIN SOLUTION"
CODE_END = "### END SOLUTION"
CODE_STUB = 'raise NotImplementedError("Exercise: write your solution here")'
MARKDOWN_BEGIN = "<!-- BEGIN SOLUTION -->"
MARKDOWN_END = "<!-- END SOLUTION -->"
MARKDOWN_STUB = "*Your answer here.*"

DEFAULT_NOTEBOOKS = Path("notebooks")
DEFAULT_OUT = Path("student")


class SolutionMarkerError(ValueError):
    """A notebook's solution markers do not pair up, so its solutions cannot be removed safely."""


@dataclass(frozen=True)
class BuildReport:
    """What the build did to one notebook."""

    source: Path
    target: Path
    code_solutions: int
    markdown_solutions: int


def strip_solutions(text: str, begin: str, end: str, stub: str, where: str) -> tuple[str, int]:
    """Replace each region from a ``begin`` line to an ``end`` line by ``stub`` at its indentation.

    Parameters
    ----------
    text : a cell's source.
    begin, end : the marker lines (matched after stripping surrounding whitespace).
    stub : the line that replaces each region, indented like its ``begin`` line.
    where : names the notebook and cell in error messages.

    Returns the new source and the number of regions replaced. Raises
    :class:`SolutionMarkerError` if the markers do not pair up or share a line with
    other text.
    """
    lines = text.split("\n")
    kept: list[str] = []
    regions = 0
    open_line = None
    for number, line in enumerate(lines, start=1):
        marker = line.strip()
        for name in (begin, end):
            if name in line and marker != name:
                raise SolutionMarkerError(
                    f"{where}, line {number}: {name!r} must stand on a line of its own, "
                    f"got {line.strip()!r}."
                )
        if marker == begin:
            if open_line is not None:
                raise SolutionMarkerError(
                    f"{where}, line {number}: a second {begin!r} before the {end!r} that "
                    f"closes the one on line {open_line}."
                )
            open_line = number
            indentation = line[: len(line) - len(line.lstrip())]
            kept.append(indentation + stub)
        elif marker == end:
            if open_line is None:
                raise SolutionMarkerError(f"{where}, line {number}: {end!r} without a {begin!r} before it.")
            open_line = None
            regions += 1
        elif open_line is None:
            kept.append(line)
    if open_line is not None:
        raise SolutionMarkerError(f"{where}, line {open_line}: {begin!r} is never closed by {end!r}.")
    return "\n".join(kept), regions


def _stable_cell_ids(raw: dict, notebook_name: str) -> None:
    """Give cells without an id (or with a repeated one) an id derived from their position.

    nbformat would otherwise invent random ids when it reads such a notebook, and the
    build would no longer give the same bytes twice.
    """
    if raw.get("nbformat_minor", 0) < 5:
        return
    seen = set()
    for index, cell in enumerate(raw.get("cells", [])):
        cell_id = cell.get("id")
        if not cell_id or cell_id in seen:
            cell_id = hashlib.sha1(f"{notebook_name}:{index}".encode()).hexdigest()[:8]
            cell["id"] = cell_id
        seen.add(cell_id)


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """Read a version-4 notebook without letting nbformat add random cell ids."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("nbformat") != 4:
        raise ValueError(
            f"{path} is in notebook format {raw.get('nbformat')}; the builder needs format 4. "
            f"Open it in JupyterLab and save it to upgrade it."
        )
    _stable_cell_ids(raw, path.name)
    return nbformat.reads(json.dumps(raw), as_version=4)


def notebook_text(notebook: nbformat.NotebookNode) -> str:
    """The notebook as nbformat writes it (sorted keys, one-space indent), ending in a newline."""
    text = nbformat.writes(notebook)
    return text if text.endswith("\n") else text + "\n"


def student_notebook(notebook: nbformat.NotebookNode, name: str) -> tuple[nbformat.NotebookNode, int, int]:
    """A copy of ``notebook`` with its solutions stubbed out and those cells' outputs cleared.

    Parameters
    ----------
    notebook : the instructor's notebook (not modified).
    name : the notebook's file name, for error messages.

    Returns the student notebook and the numbers of code and markdown solutions replaced.
    """
    student = copy.deepcopy(notebook)
    code_solutions = markdown_solutions = 0
    for index, cell in enumerate(student.cells):
        where = f"{name}, cell {index + 1} of {len(student.cells)} ({cell.cell_type})"
        if cell.cell_type == "code":
            cell.source, count = strip_solutions(cell.source, CODE_BEGIN, CODE_END, CODE_STUB, where)
            if count:
                cell.outputs = []
                cell.execution_count = None
            code_solutions += count
        elif cell.cell_type == "markdown":
            cell.source, count = strip_solutions(cell.source, MARKDOWN_BEGIN, MARKDOWN_END,
                                                 MARKDOWN_STUB, where)
            markdown_solutions += count
    return student, code_solutions, markdown_solutions


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def build_student_edition(notebooks: Path = DEFAULT_NOTEBOOKS, out: Path = DEFAULT_OUT) -> list[BuildReport]:
    """Write the student edition of every ``*.ipynb`` in ``notebooks`` into ``out``.

    Parameters
    ----------
    notebooks : the instructor edition's folder.
    out : the folder to write into (created if needed; files of the same name are replaced).

    Every notebook is checked before anything is written, so a notebook with unpaired
    markers leaves ``out`` untouched.
    """
    notebooks, out = Path(notebooks), Path(out)
    if _inside(out, notebooks):
        raise ValueError(
            f"Refusing to write the student edition into {out}: it is inside the instructor's "
            f"notebooks folder {notebooks}, whose solutions it would overwrite (and the test "
            f"suite would run its stubs). Choose another folder, e.g. --out student."
        )
    sources = sorted(path for path in notebooks.glob("*.ipynb"))
    if not sources:
        raise FileNotFoundError(f"No notebooks (*.ipynb) found in {notebooks}.")
    built = []
    for source in sources:
        student, code_solutions, markdown_solutions = student_notebook(read_notebook(source), source.name)
        built.append((source, notebook_text(student), code_solutions, markdown_solutions))
    out.mkdir(parents=True, exist_ok=True)
    reports = []
    for source, text, code_solutions, markdown_solutions in built:
        target = out / source.name
        target.write_bytes(text.encode("utf-8"))
        reports.append(BuildReport(source, target, code_solutions, markdown_solutions))
    return reports


def main(argv: list[str] | None = None) -> int:
    """Command line: build the student edition and say what was built."""
    parser = argparse.ArgumentParser(
        prog="python -m fl_lessons.student",
        description="Build the student edition of the notebooks: solutions replaced by stubs.",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"folder to write the student edition into (default: {DEFAULT_OUT})")
    parser.add_argument("--notebooks", type=Path, default=DEFAULT_NOTEBOOKS,
                        help=f"folder of the instructor's notebooks (default: {DEFAULT_NOTEBOOKS})")
    arguments = parser.parse_args(argv)
    try:
        reports = build_student_edition(arguments.notebooks, arguments.out)
    except (ValueError, FileNotFoundError) as error:
        parser.exit(1, f"error: {error}\n")
    for report in reports:
        print(f"{report.target}: {report.code_solutions} code and "
              f"{report.markdown_solutions} written solutions replaced")
    print(f"Built the student edition of {len(reports)} notebooks in {arguments.out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
