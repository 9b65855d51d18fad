"""The slider panels of notebooks 03 and 04, proven end to end in a real browser.

A learner meets :class:`fl_lessons.widgets.FedAvgPanel` and
:class:`fl_lessons.widgets.EquivalencePanel` in JupyterLab, not in pytest. This test does
what the learner does: it starts JupyterLab, opens every notebook that builds a panel in
headless Chromium, runs all cells, moves the sliders by keyboard and by mouse, and checks
that the figure and the printed lines change to what the package computes for the new
setting. A screenshot of each panel after the moves is saved to
``test-artifacts/browser/`` (git-ignored) for a person to look at.

Run it alone with ``.venv/bin/python -m pytest -m browser tests/test_browser.py``.
It needs Debian's Chromium (``/usr/bin/chromium``) and the ``playwright`` Python package;
never ``playwright install``, which downloads a browser. Without them the test is skipped,
except under CI (``CI=true``), where a missing browser is a failure.

Nothing it starts outlives it: JupyterLab (and with it the kernels), Chromium and the
worker processes that compute the expected values are stopped by their process ids, and
checked to be gone.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pytest

from fl_lessons.widgets import PanelSettings

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = Path("/usr/bin/chromium")
# Measured on this course's Debian machines: no sandbox as root, no GPU, and no
# background traffic, since the test must run offline.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 1000}  # a laptop screen, JupyterLab's file browser open
HOW_TO_ENABLE = ("the browser test needs Debian's chromium and the playwright package: "
                 "sudo apt-get install chromium && .venv/bin/pip install playwright "
                 "(never `playwright install`, which downloads another browser)")

# The notebooks' settings cell (see the course's notebook style).
DATA_SOURCE, SEED = "synthetic", 0

SCROLL_PIXELS, SCROLL_ATTEMPTS = 600, 300  # enough for the longest notebook
SERVER_START_TIMEOUT = 90      # s, until /api/status answers
NOTEBOOK_TIMEOUT = 480         # s, to run all cells of one notebook (they run side by side)
MOVE_TIMEOUT = 180             # s, for the kernel to answer one slider move
MIN_TRACK_WIDTH = 100          # px; a shorter slider cannot be set by mouse with any precision

PANEL_CLASSES = ("FedAvgPanel", "EquivalencePanel", "LabelSkewPanel")
# Each panel is found by the description of one of its sliders.
PANEL_ANCHOR = {"FedAvgPanel": "rounds N", "EquivalencePanel": "local steps L",
                "LabelSkewPanel": "Dirichlet alpha"}
FEDAVG_SLIDERS = {"N": "rounds N", "L": "local epochs L", "K": "clients K",
                  "C": "fraction C", "B": "batch B"}
FEDAVG_FIELDS = {"N": "num_rounds", "L": "local_epochs", "K": "num_clients"}
EQUIVALENCE_SLIDERS = {"L": "local steps L", "alpha": "alpha"}
# EquivalencePanel's alpha slider is a FloatLogSlider: alpha = 10 ** position, in steps of 0.25;
# the panel starts at L = 3, alpha = 1 (position 0).
ALPHA_BASE, ALPHA_STEP = 10.0, 0.25
EQUIVALENCE_START = (3, 0.0)
# LabelSkewPanel (notebook 06): a SelectionSlider over heterogeneity.ALPHAS; its position is
# the index of alpha. Notebook 06 builds it with these settings, starting at alpha = 0.1.
LABEL_SKEW_SLIDERS = {"alpha": "Dirichlet alpha"}
LABEL_SKEW_SETTINGS_CODE = "het.SkewSettings(local_epochs=2)"
LABEL_SKEW_START_ALPHA = 0.1

# The moves, in order: (slider, how, steps). Every slider goes once by keyboard and once by
# mouse; a move to the right is flipped to the left where the slider has no room.
# L and K each visit one new setting (a new training run) and then come back.
FEDAVG_MOVES = (("N", "keyboard", +1), ("N", "mouse", +4), ("L", "mouse", +1),
                ("L", "keyboard", -1), ("K", "keyboard", +1), ("K", "mouse", -1))
EQUIVALENCE_MOVES = (("L", "keyboard", +1), ("alpha", "mouse", +1),
                     ("L", "mouse", -1), ("alpha", "keyboard", -1))
LABEL_SKEW_MOVES = (("alpha", "keyboard", +1), ("alpha", "mouse", -1))

STDOUT = '.jp-RenderedText[data-mime-type="application/vnd.jupyter.stdout"]'
STDERR = '.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]'


def panel_notebooks() -> dict[str, list[str]]:
    """The course's notebooks that build a slider panel, and which panel classes each builds."""
    found = {}
    for path in sorted(NOTEBOOK_DIR.glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        code = "\n".join("".join(cell["source"]) for cell in cells if cell["cell_type"] == "code")
        classes = [name for name in PANEL_CLASSES if f"{name}(" in code]
        if classes:
            found[path.name] = classes
    return found


PANEL_NOTEBOOKS = panel_notebooks()


# --- what the package computes (run in a worker process, while the notebooks run) -------

def planned_moves(moves, start: dict, ranges: dict, steps_of: dict) -> list[tuple[str, str, float, dict]]:
    """Each move as (slider, how, signed steps, positions after it), kept inside the ranges.

    Parameters
    ----------
    moves : (slider, how, steps) in order.
    start : the sliders' starting positions.
    ranges : (lowest, highest) position of each slider that moves.
    steps_of : the size of one step of each slider that moves.
    """
    plan, positions = [], dict(start)
    for name, how, steps in moves:
        low, high = ranges[name]
        if not low <= positions[name] + steps * steps_of[name] <= high:
            steps = -steps
        positions = {**positions, name: positions[name] + steps * steps_of[name]}
        plan.append((name, how, steps, positions))
    return plan


def fedavg_settings(start: PanelSettings, positions: dict) -> PanelSettings:
    return replace(start, **{FEDAVG_FIELDS[name]: int(positions[name]) for name in FEDAVG_FIELDS})


def expected_fedavg_summaries(settings_list: list[PanelSettings]) -> list[str]:
    """FedAvgPanel's printed lines for each setting, from panel_experiment and summarize.

    Parameters
    ----------
    settings_list : the settings, as the panel shows them one after the other.
    """
    import torch

    import fl_lessons as fl
    from fl_lessons import widgets

    torch.set_num_threads(1)
    data = widgets.panel_data(fl.load_hospitals(DATA_SOURCE, seed=SEED))
    runs = {}

    def history(settings, algorithm):
        # A run of the slider's largest N holds every shorter one as its first rounds (the
        # panel continues runs instead of restarting them), and FedSGD ignores L and B.
        key = replace(settings, num_rounds=widgets.PanelLimits().max_rounds)
        if algorithm == "FedSGD":
            key = replace(key, local_epochs=1, batch_size=math.inf)
        if (algorithm, key) not in runs:
            runs[algorithm, key] = widgets.panel_experiment(data, key, algorithm=algorithm)
        return runs[algorithm, key]

    return [widgets.summarize(history(settings, "FedAvg"), history(settings, "FedSGD"),
                              settings.num_rounds)
            for settings in settings_list]


def expected_equivalence_summaries(points: list[tuple[int, float]]) -> list[str]:
    """EquivalencePanel's printed line at each (L, slider position), from gap_curve.

    Parameters
    ----------
    points : (local steps L, alpha slider position) pairs; alpha = 10 ** position.
    """
    import matplotlib
    import torch

    import fl_lessons as fl
    from fl_lessons import widgets

    matplotlib.use("Agg")
    torch.set_num_threads(1)
    panel = widgets.EquivalencePanel(fl.load_hospitals(DATA_SOURCE, seed=SEED))
    summaries = []
    for local_steps, position in points:
        alpha = ALPHA_BASE ** position
        gaps = panel.gap_curve(alpha)
        summaries.append(f"alpha={alpha:.2g}, L={local_steps}: relative gap {gaps[local_steps - 1]:.3f}")
    return summaries


def label_skew_settings():
    """The settings notebook 06 gives its LabelSkewPanel (the test fails if the notebook changes them)."""
    from fl_lessons import heterogeneity as het

    return het.SkewSettings(local_epochs=2)


def expected_label_skew_summaries(points: list[tuple[int]]) -> list[str]:
    """LabelSkewPanel's printed line at each slider position, from label_skew_experiment.

    Parameters
    ----------
    points : (position,) tuples; alpha = heterogeneity.ALPHAS[position].
    """
    import math

    import torch

    import fl_lessons as fl
    from fl_lessons import heterogeneity as het

    torch.set_num_threads(1)
    settings = label_skew_settings()
    small = settings.small_copy(fl.load_hospitals(DATA_SOURCE, seed=SEED))
    iid_history = het.label_skew_experiment(small, math.inf, settings)[1]
    runs = {}
    summaries = []
    for (position,) in points:
        alpha = het.ALPHAS[int(position)]
        if alpha not in runs:
            runs[alpha] = het.label_skew_experiment(small, alpha, settings)
        counts, history = runs[alpha]
        summaries.append(het.summarize_skew(alpha, counts, history, iid_history))
    return summaries


def default_label_skew_points() -> list[tuple[int]]:
    from fl_lessons.heterogeneity import ALPHAS

    start = ALPHAS.index(LABEL_SKEW_START_ALPHA)
    plan = planned_moves(LABEL_SKEW_MOVES, {"alpha": start}, {"alpha": (0, len(ALPHAS) - 1)}, {"alpha": 1})
    return [(start,)] + [(after["alpha"],) for *_, after in plan]


def default_fedavg_settings_list() -> list[PanelSettings]:
    from fl_lessons.widgets import PanelLimits

    start, limits = PanelSettings(), PanelLimits()
    ranges = {"N": (1, limits.max_rounds), "L": (1, limits.max_local_epochs),
              "K": (limits.min_clients, limits.max_clients)}
    positions = {name: getattr(start, field) for name, field in FEDAVG_FIELDS.items()}
    plan = planned_moves(FEDAVG_MOVES, positions, ranges, dict.fromkeys(FEDAVG_FIELDS, 1))
    return [start] + [fedavg_settings(start, after) for *_, after in plan]


def default_equivalence_points() -> list[tuple[int, float]]:
    local_steps, position = EQUIVALENCE_START
    plan = planned_moves(EQUIVALENCE_MOVES, {"L": local_steps, "alpha": position},
                         {"L": (1, 10), "alpha": (-2.0, 2.0)}, {"L": 1, "alpha": ALPHA_STEP})
    return [EQUIVALENCE_START] + [(after["L"], after["alpha"]) for *_, after in plan]


# --- processes: requirements, expected values, JupyterLab, Chromium ---------------------

@pytest.fixture(scope="module")
def playwright_api():
    """Playwright's sync API, or a skip (a failure under CI) saying how to get it."""
    missing = []
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("the Python package playwright is not installed")
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} does not exist")
    if missing:
        message = f"{'; '.join(missing)}: {HOW_TO_ENABLE}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    return sync_playwright


def descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def reap(processes: list, timeout: float) -> list[str]:
    """Wait for processes to end, kill the ones that don't; describe those that had to be killed."""
    import psutil

    _, alive = psutil.wait_procs(processes, timeout=timeout)
    described = []
    for process in alive:
        try:
            described.append(f"{process.pid} {' '.join(process.cmdline())[:200]}")
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    return described


class ExpectedLines:
    """One worker process computing a panel's expected lines: started now, read later.

    A separate process (not a thread) so the training runs don't hold up the browser;
    one thread, like the kernel (see the jupyter fixture), for the same arithmetic.
    """

    def __init__(self, panel_class: str, points: list):
        self.panel_class, self.points = panel_class, points
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                "import test_browser; test_browser.worker_main(sys.argv[1:])")
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, panel_class, json.dumps([encode(point) for point in points])],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            env=dict(os.environ, OMP_NUM_THREADS="1"), cwd=ROOT)

    def lines(self) -> list[str]:
        started = time.monotonic()
        output, errors = self.process.communicate(timeout=NOTEBOOK_TIMEOUT)
        print(f"expected lines of {self.panel_class}: waited {time.monotonic() - started:.0f} s for them")
        assert self.process.returncode == 0, f"computing the expected lines failed:\n{errors[-3000:]}"
        return json.loads(output.splitlines()[-1])  # the last line: anything printed before is chatter

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate()


def encode(point) -> list | dict:
    return asdict(point) if isinstance(point, PanelSettings) else list(point)


def worker_main(arguments: list[str]) -> None:
    """Entry point of an ExpectedLines process: print the expected lines as JSON."""
    panel_class, points = arguments[0], json.loads(arguments[1])
    if panel_class == "FedAvgPanel":
        lines = expected_fedavg_summaries([PanelSettings(**point) for point in points])
    elif panel_class == "LabelSkewPanel":
        lines = expected_label_skew_summaries([tuple(point) for point in points])
    else:
        lines = expected_equivalence_summaries([tuple(point) for point in points])
    print(json.dumps(lines))


@pytest.fixture(scope="module")
def expectations(playwright_api):
    """The expected lines for the panels' default settings (the notebooks' settings).

    They are computed while the notebooks run; a panel that starts elsewhere asks again.
    """
    jobs = {"EquivalencePanel": ExpectedLines("EquivalencePanel", default_equivalence_points()),
            "FedAvgPanel": ExpectedLines("FedAvgPanel", default_fedavg_settings_list()),
            "LabelSkewPanel": ExpectedLines("LabelSkewPanel", default_label_skew_points())}
    extra = []
    yield jobs, extra
    for job in list(jobs.values()) + extra:
        job.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def jupyter(tmp_path_factory, playwright_api):
    """JupyterLab on 127.0.0.1 with no token, serving a copy of the notebooks; its URL.

    HOME and every Jupyter, IPython and Matplotlib folder are private and new, so the
    learner's settings neither leak in nor get written to. The server is stopped by its
    process id afterwards, and its kernels are checked to be gone.
    """
    scratch = tmp_path_factory.mktemp("jupyterlab")
    shutil.copytree(NOTEBOOK_DIR, scratch / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    home = scratch / "home"
    env = dict(os.environ, HOME=str(home), JUPYTER_CONFIG_DIR=str(home / "jupyter-config"),
               JUPYTER_DATA_DIR=str(home / "jupyter-data"), JUPYTER_RUNTIME_DIR=str(home / "jupyter-runtime"),
               IPYTHONDIR=str(home / "ipython"), MPLCONFIGDIR=str(home / "matplotlib"),
               PYTHONHASHSEED="0",
               # torch's thread pool spins when cores are shared (here: kernels, the
               # worker and the browser on few cores); measured 20x slower with 2 threads.
               OMP_NUM_THREADS="1")
    # No "Jupyter news?" toast over the panels, and no request to the internet for it.
    notification = home / "jupyter-config/lab/user-settings/@jupyterlab/apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    # Every cell in the page, laid out: JupyterLab's windowed notebooks take cells far outside
    # the window out of the page, where neither a person nor this test could see an error.
    tracker = home / "jupyter-config/lab/user-settings/@jupyterlab/notebook-extension"
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')

    port = free_port()
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
               "--ServerApp.port_retries=0", "--ServerApp.ip=127.0.0.1",
               "--ServerApp.token=", "--ServerApp.password=", "--allow-root",
               f"--ServerApp.root_dir={scratch / 'notebooks'}",
               # A safety net should this process be killed before its cleanup runs:
               # idle kernels are culled, then the idle server stops itself.
               "--MappingKernelManager.cull_idle_timeout=900", "--MappingKernelManager.cull_interval=60",
               "--ServerApp.shutdown_no_activity_timeout=900"]
    log_path = scratch / "jupyterlab.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, cwd=scratch)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(server, url, log_path)
        yield url, server.pid
    finally:
        family = descendants(server.pid)
        server.terminate()  # jupyter_server shuts its kernels down on SIGTERM
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        survivors = reap(family, timeout=15)
        assert server.returncode is not None
        assert not survivors, f"processes of JupyterLab outlived it: {survivors}"


def wait_for_server(server: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited with status {server.returncode}:\n"
                        f"{log_path.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status", timeout=5) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer {url}/api/status within {SERVER_START_TIMEOUT} s:\n"
                f"{log_path.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def browser(playwright_api):
    """Headless Debian Chromium driven by Playwright; stopped and checked gone afterwards."""
    before = {process.pid for process in descendants(os.getpid())}
    playwright = playwright_api().start()
    try:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                              headless=True)
    except Exception:
        playwright.stop()
        raise
    started = [process for process in descendants(os.getpid()) if process.pid not in before]
    try:
        yield chromium
    finally:
        # Playwright's driver, Chromium and every process Chromium started since (renderers).
        family = started + [child for process in started for child in descendants(process.pid)]
        chromium.close()
        playwright.stop()
        survivors = reap(family, timeout=15)
        assert not survivors, f"browser processes outlived the test: {survivors}"


@dataclass
class OpenNotebook:
    name: str
    page: object = None
    problem: str = ""  # why it could not be started, reported by its own test
    started: float = 0.0  # time.monotonic() at Run All


@pytest.fixture(scope="module")
def running_notebooks(expectations, jupyter, browser):
    """Every panel notebook opened in its own window, all cells started at once.

    The kernels then run side by side (one thread each) while the tests check one
    panel after the other.
    """
    url, _ = jupyter
    opened = {}
    for name in PANEL_NOTEBOOKS:
        context = browser.new_context(viewport=VIEWPORT)
        notebook = OpenNotebook(name, context.new_page())
        try:
            start_all_cells(notebook.page, f"{url}/lab/workspaces/{Path(name).stem}/tree/{name}?reset")
            notebook.started = time.monotonic()
        except Exception as error:  # reported by this notebook's test; the others go on
            notebook.problem = f"{type(error).__name__}: {error}"
        opened[name] = notebook
    yield opened
    for notebook in opened.values():
        notebook.page.context.close()


def start_all_cells(page, address: str) -> None:
    """Open a notebook and choose Run > Run All Cells once its kernel is idle."""
    page.goto(address)
    status = page.locator("#jp-main-statusbar")
    deadline = time.monotonic() + 120
    while not re.search(r"\|\s*Idle", status.inner_text()):
        dialog = page.locator(".jp-Dialog")
        if dialog.count():  # "Select Kernel": take the notebook's own, Python 3
            dialog.locator(".jp-mod-accept").click()
        if time.monotonic() > deadline:
            raise TimeoutError(f"the kernel did not become idle; status bar: {status.inner_text()!r}")
        time.sleep(0.25)
    running = page.locator(".jp-Notebook .jp-InputPrompt", has_text="[*]")
    executed = page.locator(".jp-Notebook .jp-InputPrompt", has_text=re.compile(r"\[\d+\]"))
    for _ in range(3):  # a click in the first moments after loading may not take
        page.locator(".jp-Notebook").click(position={"x": 5, "y": 5})  # the notebook takes the focus
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if running.count() or executed.count():
                return
            time.sleep(0.25)
    raise TimeoutError("Run > Run All Cells did not start any cell")


# --- reading and moving the panel --------------------------------------------------------

def page_problems(page) -> list[str]:
    """Widget errors and Python tracebacks anywhere on the page."""
    problems = []
    if page.get_by_text("Error displaying widget").count():
        problems.append("a widget shows 'Error displaying widget'")
    for text in page.locator(STDERR).all_inner_texts():
        if "Traceback" in text:
            problems.append(f"a traceback:\n{text[-3000:]}")
    for text in page.locator(".widget-output").all_inner_texts():
        if "Error" in text:
            problems.append(f"an Output widget shows an error:\n{text[-3000:]}")
    return problems


def wait_until_finished(page, panel_anchor: str) -> None:
    """Wait until every cell has run and the panel shows its figure; fail on any error."""
    running = page.locator(".jp-Notebook .jp-InputPrompt", has_text="[*]")
    status = page.locator("#jp-main-statusbar")
    deadline = time.monotonic() + NOTEBOOK_TIMEOUT
    idle_polls = 0
    while idle_polls < 2:  # idle twice in a row: not just between two cells
        problems = page_problems(page)
        assert not problems, "\n".join(problems)
        idle = not running.count() and re.search(r"\|\s*Idle", status.inner_text())
        idle_polls = idle_polls + 1 if idle else 0
        assert time.monotonic() < deadline, (
            f"the notebook did not finish within {NOTEBOOK_TIMEOUT} s ({running.count()} cells still running)")
        time.sleep(1)
    picture = find_panel(page, panel_anchor).locator(".widget-output img")
    picture.first.wait_for(timeout=30_000)
    problems = page_problems(page)
    assert not problems, "\n".join(problems)


def find_panel(page, anchor: str):
    """The panel whose slider is labelled ``anchor``, scrolled to as a person would.

    JupyterLab takes cells far outside the window out of the page (windowed notebooks), and
    "Run All" leaves the window at the notebook's end, so we scroll up with the mouse wheel
    until the panel is there, then bring it to the top of the window.
    """
    slider = page.locator(".widget-slider", has=page.locator("label.widget-label", has_text=anchor)).first
    notebook = page.locator(".jp-NotebookPanel-notebook:visible").first
    box = notebook.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(SCROLL_ATTEMPTS):
        if slider.count():
            break
        page.mouse.wheel(0, -SCROLL_PIXELS)
        page.wait_for_timeout(100)
    panel = slider.locator(
        "xpath=ancestor::div[contains(@class, 'widget-vbox')][.//div[contains(@class, 'widget-output')]][1]")
    # scrollIntoView from the page's side: Playwright's own scrolling first waits for the
    # element to be visible, which a cell that is not laid out yet never is.
    panel.evaluate("element => element.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)
    return panel


def slider_of(panel, description: str):
    return panel.locator(".widget-slider", has=panel.page.locator("label.widget-label", has_text=description))


def readout(panel, description: str) -> str:
    return slider_of(panel, description).locator(".widget-readout").inner_text().strip()


def slider_ranges(panel, descriptions: dict[str, str]) -> dict[str, tuple[float, float]]:
    """Each slider's lowest and highest position (for a log slider: of the exponent)."""
    ranges = {}
    for name, description in descriptions.items():
        handle = slider_of(panel, description).locator(".noUi-handle")
        ranges[name] = (float(handle.get_attribute("aria-valuemin")), float(handle.get_attribute("aria-valuemax")))
    return ranges


def assert_long_enough(panel, descriptions: list[str]) -> None:
    """A learner must be able to drag each slider: its track must not be squeezed away."""
    widths = {description: slider_of(panel, description).locator(".noUi-base").bounding_box()["width"]
              for description in descriptions}
    short = {description: width for description, width in widths.items() if width < MIN_TRACK_WIDTH}
    assert not short, (
        f"in JupyterLab {VIEWPORT['width']} px wide, these sliders are too short to set by mouse "
        f"(track length in px; at least {MIN_TRACK_WIDTH} wanted): "
        + ", ".join(f"{description!r}: {width:.0f}" for description, width in short.items())
        + ". A long description eats the slider's width; give the slider a wider layout "
        "or a shorter description.")


def shown(panel) -> tuple[str, str]:
    """The panel's printed lines and its figure (the image's data URL)."""
    output = panel.locator(".widget-output")
    text = "\n".join(output.locator(STDOUT).all_inner_texts()).strip("\n")
    images = output.locator("img")
    return text, images.first.get_attribute("src") if images.count() else ""


def move(page, panel, description: str, how: str, steps: int, target: float) -> None:
    """Move a slider: by keyboard (arrow keys on the focused handle), or by mouse (drag to target).

    Parameters
    ----------
    steps : how many steps, for the keyboard (negative: to the left).
    target : the position to drag the handle to, for the mouse.
    """
    handle = slider_of(panel, description).locator(".noUi-handle")
    handle.scroll_into_view_if_needed()
    if how == "keyboard":
        handle.focus()
        for _ in range(abs(steps)):
            page.keyboard.press("ArrowRight" if steps > 0 else "ArrowLeft")
        return
    # Grab the handle in its middle; drop it where the target lies on the track.
    low, high = float(handle.get_attribute("aria-valuemin")), float(handle.get_attribute("aria-valuemax"))
    track = slider_of(panel, description).locator(".noUi-base").bounding_box()
    box = handle.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(track["x"] + track["width"] * (target - low) / (high - low), y, steps=10)
    page.mouse.up()


def wait_for_summary(page, panel, expected: str, before_picture: str, what: str) -> None:
    """Wait until the panel prints the expected lines; then its figure must have changed too."""
    deadline = time.monotonic() + MOVE_TIMEOUT
    text, picture = shown(panel)
    while text != expected:
        problems = page_problems(page)
        assert not problems, f"after {what}: " + "\n".join(problems)
        assert time.monotonic() < deadline, (
            f"after {what}, the panel still prints\n{text}\ninstead of what the package computes:\n{expected}")
        time.sleep(0.25)
        text, picture = shown(panel)
    assert picture and picture != before_picture, f"after {what}, the figure did not change"


def expected_lines(expectations, panel_class: str, points: list) -> list[str]:
    """The expected lines at these settings: the early job's, or a new job's if they differ."""
    jobs, extra = expectations
    if points == jobs[panel_class].points:
        return jobs[panel_class].lines()
    extra.append(ExpectedLines(panel_class, points))
    return extra[-1].lines()


def check_start(panel, expected: str, where: str) -> None:
    text, _ = shown(panel)
    assert text == expected, (
        f"the panel starts at {where} and prints\n{text}\nbut the package computes\n{expected}\n"
        f"(this test assumes the notebook's data: load_hospitals({DATA_SOURCE!r}, seed={SEED}))")


def make_moves(page, panel, start: dict, plan, expected, descriptions, reads_as, screenshot: Path) -> None:
    """Make the planned moves; after each, the panel must print the expected lines and redraw.

    Parameters
    ----------
    start : the sliders' positions before the first move.
    plan : (slider, how, steps, positions after) for each move, from planned_moves.
    expected : the lines the package computes after each move.
    descriptions : each slider's description, by short name.
    reads_as : (slider, position) -> the value its readout must show.
    screenshot : where the panel's picture at the last new setting goes.
    """
    picture = shown(panel)[1]
    seen = [start]
    for (name, how, steps, after), lines in zip(plan, expected, strict=True):
        description = descriptions[name]
        what = f"moving {description!r} {steps:+d} step(s) by {how}"
        move(page, panel, description, how, steps, target=after[name])
        wanted, reading = reads_as(name, after[name]), readout(panel, description)
        assert math.isclose(float(reading), wanted, rel_tol=5e-3), (
            f"after {what}, the slider reads {reading}, not {wanted:.3g}")
        wait_for_summary(page, panel, lines, picture, what)
        picture = shown(panel)[1]
        if after not in seen:  # the panel moved somewhere new: keep its picture for a person
            seen.append(after)
            panel.screenshot(path=screenshot)


def check_fedavg_panel(page, expectations, screenshot: Path) -> None:
    """FedAvgPanel: N, L and K, each moved by keyboard and by mouse."""
    panel = find_panel(page, PANEL_ANCHOR["FedAvgPanel"])
    values = {name: readout(panel, description) for name, description in FEDAVG_SLIDERS.items()}
    start = PanelSettings(
        num_rounds=int(values["N"]), local_epochs=int(values["L"]), num_clients=int(values["K"]),
        client_fraction=round(float(values["C"]), 2),
        batch_size=math.inf if values["B"] == "inf" else int(values["B"]),
        partition=panel.locator(".widget-toggle-button.mod-active").inner_text().strip())
    descriptions = {name: FEDAVG_SLIDERS[name] for name in FEDAVG_FIELDS}
    steps_of = dict.fromkeys(FEDAVG_FIELDS, 1)
    positions = {name: getattr(start, field) for name, field in FEDAVG_FIELDS.items()}
    plan = planned_moves(FEDAVG_MOVES, positions, slider_ranges(panel, descriptions), steps_of)
    settings_list = [start] + [fedavg_settings(start, after) for *_, after in plan]
    expected = expected_lines(expectations, "FedAvgPanel", settings_list)

    check_start(panel, expected[0], str(start))
    assert_long_enough(panel, list(descriptions.values()))
    make_moves(page, panel, positions, plan, expected[1:], descriptions,
               reads_as=lambda name, position: position, screenshot=screenshot)


def check_equivalence_panel(page, expectations, screenshot: Path) -> None:
    """EquivalencePanel: L and alpha, each moved by keyboard and by mouse."""
    panel = find_panel(page, PANEL_ANCHOR["EquivalencePanel"])
    local_steps = int(readout(panel, EQUIVALENCE_SLIDERS["L"]))
    # The readout shows alpha to 3 digits; the slider's position is on the 0.25 grid.
    alpha = float(readout(panel, EQUIVALENCE_SLIDERS["alpha"]))
    position = round(math.log(alpha, ALPHA_BASE) / ALPHA_STEP) * ALPHA_STEP
    steps_of = {"L": 1, "alpha": ALPHA_STEP}
    positions = {"L": local_steps, "alpha": position}
    plan = planned_moves(EQUIVALENCE_MOVES, positions, slider_ranges(panel, EQUIVALENCE_SLIDERS), steps_of)
    points = [(local_steps, position)] + [(int(after["L"]), after["alpha"]) for *_, after in plan]
    expected = expected_lines(expectations, "EquivalencePanel", points)

    check_start(panel, expected[0], f"L={local_steps}, alpha={alpha:g}")
    assert_long_enough(panel, list(EQUIVALENCE_SLIDERS.values()))
    make_moves(page, panel, positions, plan, expected[1:], EQUIVALENCE_SLIDERS,
               reads_as=lambda name, position: position if name == "L" else ALPHA_BASE ** position,
               screenshot=screenshot)


def check_label_skew_panel(page, expectations, screenshot: Path) -> None:
    """LabelSkewPanel: alpha moved by keyboard and by mouse (its stops are heterogeneity.ALPHAS)."""
    from fl_lessons.heterogeneity import ALPHAS

    notebook_code = "\n".join(
        "".join(cell["source"]) for cell in json.loads((NOTEBOOK_DIR / "06_when_hospitals_differ.ipynb")
                                                     .read_text(encoding="utf-8"))["cells"])
    assert LABEL_SKEW_SETTINGS_CODE in notebook_code, (
        f"notebook 06 no longer builds its panel with {LABEL_SKEW_SETTINGS_CODE}: "
        "update label_skew_settings() in this test to match")
    panel = find_panel(page, PANEL_ANCHOR["LabelSkewPanel"])
    alpha = float(readout(panel, LABEL_SKEW_SLIDERS["alpha"]))
    position = ALPHAS.index(alpha)
    positions = {"alpha": position}
    plan = planned_moves(LABEL_SKEW_MOVES, positions, slider_ranges(panel, LABEL_SKEW_SLIDERS), {"alpha": 1})
    points = [(position,)] + [(int(after["alpha"]),) for *_, after in plan]
    expected = expected_lines(expectations, "LabelSkewPanel", points)

    check_start(panel, expected[0], f"alpha={alpha:g}")
    assert_long_enough(panel, list(LABEL_SKEW_SLIDERS.values()))
    make_moves(page, panel, positions, plan, expected[1:], LABEL_SKEW_SLIDERS,
               reads_as=lambda name, position: ALPHAS[int(position)], screenshot=screenshot)


CHECKS = {"FedAvgPanel": check_fedavg_panel, "EquivalencePanel": check_equivalence_panel,
          "LabelSkewPanel": check_label_skew_panel}


def kernel_of(jupyter, notebook: str):
    """The notebook's kernel process (psutil), found through the server's sessions."""
    import psutil

    url, server_pid = jupyter
    with urllib.request.urlopen(f"{url}/api/sessions", timeout=10) as reply:
        sessions = json.load(reply)
    files = [f"kernel-{session['kernel']['id']}.json" for session in sessions
             if session["path"].endswith(notebook)]
    for process in descendants(server_pid):
        try:
            if any(file in " ".join(process.cmdline()) for file in files):
                return process
        except psutil.NoSuchProcess:
            pass
    pytest.fail(f"JupyterLab runs no kernel for {notebook}")


def cpu_seconds(process) -> float:
    """CPU time used so far: it tells a slow machine from a slow notebook."""
    return sum(process.cpu_times()[:2])


@pytest.mark.parametrize("notebook", list(PANEL_NOTEBOOKS) or ["(none)"])
def test_panel_in_jupyterlab(notebook, running_notebooks, expectations, jupyter):
    """Run the notebook in JupyterLab; its panels answer keyboard and mouse with the package's numbers."""
    assert PANEL_NOTEBOOKS, f"no notebook in {NOTEBOOK_DIR} builds a {' or '.join(PANEL_CLASSES)}"
    opened = running_notebooks[notebook]
    assert not opened.problem, f"{notebook} could not be started in JupyterLab: {opened.problem}"
    page = opened.page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    stem = Path(notebook).stem
    for old_picture in ARTIFACTS.glob(f"{stem}-*.png"):
        old_picture.unlink()
    try:
        for panel_class in PANEL_NOTEBOOKS[notebook]:
            wait_until_finished(page, PANEL_ANCHOR[panel_class])
            kernel = kernel_of(jupyter, notebook)
            assert Path(kernel.cmdline()[0]).parent == Path(sys.executable).parent, (
                f"the kernel runs {kernel.cmdline()[0]}, not this environment's Python {sys.executable}")
            print(f"{notebook}: all cells run {time.monotonic() - opened.started:.0f} s after Run All "
                  f"(kernel CPU {cpu_seconds(kernel):.0f} s)")
            suffix = "" if len(PANEL_NOTEBOOKS[notebook]) == 1 else f"-{panel_class}"
            CHECKS[panel_class](page, expectations, ARTIFACTS / f"{stem}{suffix}-after-move.png")
            print(f"{notebook}: {panel_class} checked {time.monotonic() - opened.started:.0f} s after Run All "
                  f"(kernel CPU {cpu_seconds(kernel):.0f} s)")
    except BaseException:
        page.screenshot(path=ARTIFACTS / f"{stem}-failure.png", full_page=True)
        raise

