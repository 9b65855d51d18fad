"""pyproject.toml (pip) and environment.yml (conda) must install the same things.

The helpers below return a list of human-readable problems; the tests at the
bottom run them on the real files and, to make sure they have teeth, on
deliberately drifted copies in a temporary folder.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

try:
    import tomllib  # Python >= 3.11
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

try:
    import yaml
except ModuleNotFoundError:  # pragma: no cover - PyYAML normally comes with Jupyter
    yaml = None

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
ENVIRONMENT = ROOT / "environment.yml"

# conda-forge name -> pip name, for packages whose names differ.
CONDA_TO_PIP = {"pytorch": "torch"}
# Entries of environment.yml that are not course dependencies.
CONDA_IGNORED = {"python", "pip"}

_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(.*?)\s*$")


def normalise(name: str) -> str:
    """Compare names case-insensitively, with -, _ and . alike (PEP 503), pytorch == torch."""
    name = re.sub(r"[-_.]+", "-", name.strip()).lower()
    return CONDA_TO_PIP.get(name, name)


def split_requirement(text: str) -> tuple[str, str]:
    """'torch >= 2.2, <3 ; python_version>"3"' -> ('torch', '>=2.2,<3')."""
    text = text.split(";", 1)[0].split("#", 1)[0]
    match = _REQUIREMENT.match(text)
    if not match:
        raise ValueError(f"cannot read the requirement {text!r}")
    name, spec = match.groups()
    return normalise(name), re.sub(r"\s+", "", spec)


def load_toml(path: Path) -> dict:
    if tomllib is None:
        pytest.skip("reading pyproject.toml needs Python >= 3.11 (tomllib) or the tomli package")
    with open(path, "rb") as f:
        return tomllib.load(f)


def parse_simple_environment_yml(text: str) -> dict:
    """A small reader for environment.yml files shaped like ours, for when PyYAML is missing.

    It understands top-level ``key: value`` lines, top-level lists (``- item``),
    and one nested ``- pip:`` list, written either as indented ``- item`` lines
    or inline as ``["a", "b"]``. Comments and blank lines are ignored.
    """
    data: dict = {}
    key = None
    pip_list = None
    pip_indent = -1
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        stripped = line.strip()
        if indent == 0:
            pip_list = None
            key, _, value = stripped.partition(":")
            key, value = key.strip(), value.strip()
            data[key] = value.strip("'\"") if value else []
            continue
        if key is None or not stripped.startswith("-"):
            raise ValueError(f"unexpected line in environment.yml: {raw!r}")
        item = stripped[1:].strip()
        if pip_list is not None and indent > pip_indent:
            pip_list.append(item.strip("'\""))
            continue
        pip_list = None
        if item.startswith("pip:"):
            rest = item[len("pip:"):].strip()
            pip_list = []
            pip_indent = indent
            if rest:  # inline form: - pip: ["-e ."]
                if not (rest.startswith("[") and rest.endswith("]")):
                    raise ValueError(f"unexpected pip section in environment.yml: {raw!r}")
                pip_list.extend(
                    part.strip().strip("'\"") for part in rest[1:-1].split(",") if part.strip()
                )
            data[key].append({"pip": pip_list})
        else:
            data[key].append(item.strip("'\""))
    return data


def load_environment(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    if yaml is not None:
        return yaml.safe_load(text)
    return parse_simple_environment_yml(text)


def pyproject_requirements(pyproject: dict) -> dict[str, str]:
    """Runtime dependencies plus the "test" extra, as {name: specifier}."""
    project = pyproject["project"]
    entries = list(project.get("dependencies", []))
    entries += project.get("optional-dependencies", {}).get("test", [])
    return dict(split_requirement(entry) for entry in entries)


def environment_requirements(environment: dict) -> dict[str, str]:
    """Conda dependencies (not python, pip, nor the pip section), as {pip name: specifier}."""
    found = {}
    for entry in environment.get("dependencies", []):
        if isinstance(entry, dict):  # the "- pip:" section installs the course itself
            continue
        name, spec = split_requirement(str(entry))
        if name in CONDA_IGNORED:
            continue
        found[name] = spec
    return found


def dependency_drift(pyproject_path: Path, environment_path: Path) -> list[str]:
    """Every way the two files disagree, as sentences; an empty list means they agree."""
    pip_side = pyproject_requirements(load_toml(pyproject_path))
    conda_side = environment_requirements(load_environment(environment_path))
    problems = []
    missing_in_env = sorted(set(pip_side) - set(conda_side))
    missing_in_pyproject = sorted(set(conda_side) - set(pip_side))
    if missing_in_env:
        problems.append(
            f"in {pyproject_path.name} but missing from {environment_path.name}: "
            + ", ".join(missing_in_env)
        )
    if missing_in_pyproject:
        problems.append(
            f"in {environment_path.name} but missing from {pyproject_path.name}: "
            + ", ".join(missing_in_pyproject)
        )
    for name in sorted(set(pip_side) & set(conda_side)):
        if pip_side[name] != conda_side[name]:
            problems.append(
                f"version bounds differ for {name}: {pyproject_path.name} says "
                f"{pip_side[name] or '(none)'!r}, {environment_path.name} says "
                f"{conda_side[name] or '(none)'!r}"
            )
    return problems


def pip_section(environment: dict) -> list[str]:
    for entry in environment.get("dependencies", []):
        if isinstance(entry, dict) and "pip" in entry:
            return [str(item).strip() for item in entry["pip"]]
    return []


# --- the real files -----------------------------------------------------------


def test_pyproject_and_environment_yml_agree():
    problems = dependency_drift(PYPROJECT, ENVIRONMENT)
    assert not problems, (
        "pyproject.toml and environment.yml list different dependencies; "
        "edit both together:\n  " + "\n  ".join(problems)
    )


def test_environment_yml_installs_the_course_package():
    environment = load_environment(ENVIRONMENT)
    assert environment.get("name") == "fl-lessons"
    assert "conda-forge" in environment.get("channels", [])
    conda_names = [split_requirement(str(e))[0] for e in environment["dependencies"]
                   if not isinstance(e, dict)]
    assert "python" in conda_names and "pip" in conda_names
    assert pip_section(environment) == ["-e ."], (
        "environment.yml's pip section should install the course package itself: - pip: ['-e .']"
    )


def test_fl_lessons_is_the_only_package():
    find = load_toml(PYPROJECT)["tool"]["setuptools"]["packages"]["find"]
    assert find.get("include") == ["fl_lessons*"], find
    setuptools = pytest.importorskip("setuptools")
    packages = setuptools.find_packages(
        where=str(ROOT / find.get("where", ["."])[0]),
        include=find.get("include", ["*"]),
        exclude=find.get("exclude", []),
    )
    assert "fl_lessons" in packages, packages
    strays = [p for p in packages if p != "fl_lessons" and not p.startswith("fl_lessons.")]
    assert not strays, f"setuptools would also ship these packages: {strays}"


@pytest.mark.skipif(yaml is None, reason="PyYAML not installed; nothing to compare the fallback with")
def test_fallback_yaml_reader_matches_pyyaml():
    text = ENVIRONMENT.read_text(encoding="utf-8")
    assert parse_simple_environment_yml(text) == yaml.safe_load(text)


# --- the checks have teeth ------------------------------------------------------


@pytest.fixture
def copies(tmp_path):
    shutil.copy(PYPROJECT, tmp_path / "pyproject.toml")
    shutil.copy(ENVIRONMENT, tmp_path / "environment.yml")
    return tmp_path / "pyproject.toml", tmp_path / "environment.yml"


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"test setup: {old!r} not found in {path.name}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_copies_agree_before_editing(copies):
    assert dependency_drift(*copies) == []


def test_detects_package_missing_from_environment_yml(copies):
    pyproject, environment = copies
    _edit(environment, "  - tqdm>=4.66\n", "")
    problems = dependency_drift(pyproject, environment)
    assert len(problems) == 1
    assert "missing from environment.yml" in problems[0] and "tqdm" in problems[0]


def test_detects_package_missing_from_pyproject(copies):
    pyproject, environment = copies
    _edit(pyproject, '"nbval>=0.11"', "")
    _edit(environment, "  - pytorch>=2.2,<3\n", "  - pytorch>=2.2,<3\n  - scipy>=1.10\n")
    problems = dependency_drift(pyproject, environment)
    assert len(problems) == 1
    assert "missing from pyproject.toml" in problems[0]
    assert "nbval" in problems[0] and "scipy" in problems[0]


def test_detects_different_version_bounds(copies):
    pyproject, environment = copies
    _edit(pyproject, '"numpy>=1.24"', '"numpy>=2.0"')
    _edit(environment, "pytorch>=2.2,<3", "pytorch >=2.2, <2.5")
    problems = dependency_drift(pyproject, environment)
    assert len(problems) == 2, problems
    assert any("numpy" in p and ">=2.0" in p and ">=1.24" in p for p in problems)
    assert any("torch" in p and "<2.5" in p for p in problems)


def test_names_compare_loosely(copies):
    pyproject, environment = copies
    _edit(environment, "pytorch>=2.2,<3", "PyTorch >= 2.2, < 3")
    _edit(environment, "ipywidgets>=", "IPyWidgets>=")
    _edit(pyproject, '"jupyterlab>=4.0,<5"', '"JupyterLab >=4.0, <5"')
    assert dependency_drift(pyproject, environment) == []


def test_fallback_reader_handles_inline_pip_section():
    text = "name: x\nchannels:\n  - conda-forge\ndependencies:\n  - python=3.11 # pinned\n  - pip\n  - pip: [\"-e .\"]\n"
    assert parse_simple_environment_yml(text) == {
        "name": "x",
        "channels": ["conda-forge"],
        "dependencies": ["python=3.11", "pip", {"pip": ["-e ."]}],
    }
