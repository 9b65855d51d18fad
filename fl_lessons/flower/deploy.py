"""A Flower deployment on this computer: a SuperLink and one SuperNode per hospital, as processes.

Taught in notebook 07 (from simulation to deployment).

:class:`LoopbackFederation` starts, on 127.0.0.1 only,

- one ``flower-superlink`` (the coordinator; Fleet, Control and Runtime API on one port),
- one ``flower-supernode`` per hospital, each told its hospital id in its node config,

waits until they listen, submits the app in this folder with ``flwr run``, follows the
rounds as the ServerApp records them, and always stops every process it started, by
process id, on success, on error and on Ctrl-C alike.

The processes talk without TLS (``--insecure``). That is acceptable here only because
nothing leaves 127.0.0.1. A real deployment adds TLS certificates (``--ssl-certfile``,
``--ssl-keyfile``, ``--ssl-ca-certfile`` on the SuperLink, ``--root-certificates`` on each
SuperNode) and SuperNode authentication (``--enable-supernode-auth``); see
https://flower.ai/docs/framework/how-to-enable-tls-connections.html and
https://flower.ai/docs/framework/how-to-authenticate-supernodes.html.

Flower runs in a private folder (``FLWR_HOME``), sends no telemetry, checks for no updates
and installs nothing at run time (``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1``): the
apps run in this Python environment, where ``fl_lessons`` is installed.

Run ``python -m fl_lessons.flower --help`` for the same from a terminal.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import numbers
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import psutil
import torch
from tqdm.auto import tqdm

from ..data import DEFAULT_HOSPITALS
from .common import FINAL_WEIGHTS_FILE, HOSPITAL_ID_KEY, ROUNDS_FILE, SUMMARY_FILE, FlowerSettings

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: Flower depends on tomli, the same parser
    import tomli as tomllib

APP_DIR = Path(__file__).resolve().parent
"""The Flower App of the course: ``pyproject.toml``, ``server_app.py``, ``client_app.py``."""

HOST = "127.0.0.1"
CONNECTION_NAME = "loopback"
FLOWER_ENVIRONMENT = {
    # One torch thread, as in run_fedavg's tests and notebooks: the same float sums, and no
    # spin-waiting threads when a dozen processes share a few cores.
    "OMP_NUM_THREADS": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "PYTHONUNBUFFERED": "1",
}
MEMORY_SAMPLE_SECONDS = 2.0
"""Reading one process's PSS costs tens of milliseconds on a busy 2-core machine; a dozen
processes every second would slow the run we measure. A ClientApp lives for several
seconds per round, so a 2 s interval still sees it."""
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_LIVE_FEDERATIONS: weakref.WeakSet = weakref.WeakSet()


class DeploymentError(RuntimeError):
    """A process of the deployment failed or a port was taken; the message says what to change."""


@dataclass
class FlowerRunResult:
    """What a Flower run produced, in the same terms as ``fl_lessons.History``.

    ``rounds`` are 0..N and the test metrics are those of w_0..w_N on the common test set;
    ``train_loss`` has one entry per round 1..N (Flower's n_k-weighted average).
    """

    rounds: list[int]
    test_accuracy: list[float]
    test_auc: list[float]
    test_loss: list[float]
    train_loss: list[float]
    reported: list[int]
    final_weights: torch.Tensor
    startup_seconds: float
    run_seconds: float
    peak_memory_bytes: int
    peak_processes: int
    log: str = field(repr=False, default="")

    @property
    def wall_seconds(self) -> float:
        """Start-up of the SuperLink and SuperNodes plus the run itself."""
        return self.startup_seconds + self.run_seconds

    def accuracy_curve(self) -> tuple[list[int], list[float]]:
        """Rounds 0..N and the test accuracy of w_0..w_N, like ``History.accuracy_curve``."""
        return list(self.rounds), list(self.test_accuracy)


def process_memory_bytes(process: psutil.Process) -> int:
    """A process's share of physical memory: PSS where the system reports it, else RSS.

    PSS splits each shared page (Python, PyTorch, Flower's libraries) among the processes
    that map it, so summing it over many processes does not count those pages many times.

    Parameters
    ----------
    process : the process to measure.
    """
    try:
        info = process.memory_full_info()
        return int(getattr(info, "pss", info.rss))
    except psutil.AccessDenied:
        return int(process.memory_info().rss)


class PeakMemory:
    """Sample the summed memory of some processes in a background thread; keep the peak.

    Parameters
    ----------
    processes : called at every sample; returns the processes to add up.
    interval : seconds between samples.

    Use as ``with PeakMemory(lambda: [psutil.Process()]) as peak: ...``, then read
    ``peak.bytes`` and ``peak.processes`` (the most processes seen at once).
    """

    def __init__(self, processes: Callable[[], Iterable[psutil.Process]], interval: float = 1.0):
        self._processes = processes
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.bytes = 0
        self.processes = 0

    def sample(self) -> int:
        """Add up the memory of the processes now, update the peak, return the sum."""
        total, count = 0, 0
        for process in list(self._processes()):
            try:
                total += process_memory_bytes(process)
                count += 1
            except psutil.Error:  # it exited between listing and reading: nothing to add
                continue
        self.bytes = max(self.bytes, total)
        self.processes = max(self.processes, count)
        return total

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def __enter__(self) -> PeakMemory:
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="PeakMemory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()


@dataclass
class _Started:
    """A process this module started: its label for messages, handle and log file."""

    label: str
    popen: subprocess.Popen
    log_path: Path
    log_handle: object


class LoopbackFederation:
    """A SuperLink and one SuperNode per hospital on 127.0.0.1, started and always stopped.

    Parameters
    ----------
    hospital_ids : one SuperNode per entry, given ``hospital-id=<id>`` in its node config;
        ids are 0..K-1 for a run with K hospitals (the course has 5: ids 0..4).
    superlink_port : the SuperLink's port (Fleet, Control and Runtime API); default: a free one.
    supernode_ports : each SuperNode's own port (its ClientApp runtime API); default: free ones.
    startup_timeout : seconds to wait for every process to listen.

    Use it as a context manager::

        with LoopbackFederation(hospital_ids=range(3)) as federation:
            result = federation.run({"num-rounds": 2, "num-hospitals": 3})

    Leaving the ``with`` block, normally or by an exception, stops every process it started.
    """

    def __init__(
        self,
        hospital_ids: Iterable[int],
        superlink_port: int | None = None,
        supernode_ports: Iterable[int] | None = None,
        startup_timeout: float = 120.0,
    ):
        self.hospital_ids = _check_hospital_ids(list(hospital_ids))
        self.superlink_port = superlink_port
        self.supernode_ports = list(supernode_ports) if supernode_ports is not None else None
        if self.supernode_ports is not None and len(self.supernode_ports) != len(self.hospital_ids):
            raise ValueError(
                f"Give one SuperNode port per hospital: {len(self.hospital_ids)} hospitals, "
                f"{len(self.supernode_ports)} ports."
            )
        self.startup_timeout = startup_timeout
        self.startup_seconds = math.nan
        self.home: Path | None = None
        self._servers: list[_Started] = []  # the SuperLink, then one SuperNode per hospital
        self._submitters: list[_Started] = []  # one `flwr run` per run
        self._seen: dict[int, psutil.Process] = {}
        self._seen_lock = threading.Lock()
        self._memory: PeakMemory | None = None
        self._runs = 0

    # -- starting -------------------------------------------------------------------------

    def __enter__(self) -> LoopbackFederation:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        """Start the SuperLink, then the SuperNodes; wait until each listens on its port."""
        if self._servers:
            raise RuntimeError("This federation is already running; stop() it first.")
        _flower_command("flower-superlink")  # fail before starting anything if Flower is missing
        began = time.perf_counter()
        try:
            self._choose_ports()
            self.home = Path(tempfile.mkdtemp(prefix="fl-lessons-flower-"))
            self._write_flower_config()
            self._memory = PeakMemory(self.processes, interval=MEMORY_SAMPLE_SECONDS)
            self._memory.__enter__()
            _LIVE_FEDERATIONS.add(self)
            superlink = self._launch("SuperLink", [
                _flower_command("flower-superlink"), "--insecure", "--host", HOST,
                "--port", str(self.superlink_port), "--disable-runtime-dependency-installation",
            ], into=self._servers)
            self._wait_until_listening(superlink, self.superlink_port)
            for hospital_id, port in zip(self.hospital_ids, self.supernode_ports):
                command = supernode_command(hospital_id, f"{HOST}:{self.superlink_port}", runtime_port=port)
                command[0] = _flower_command(command[0])
                self._launch(f"SuperNode of hospital {hospital_id}", command, into=self._servers)
            for supernode, port in zip(self._servers[1:], self.supernode_ports):
                self._wait_until_listening(supernode, port)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.perf_counter() - began

    def _choose_ports(self) -> None:
        """Use the ports asked for, or free ones; refuse clearly if one is taken."""
        wanted = [self.superlink_port] + (self.supernode_ports or [None] * len(self.hospital_ids))
        given = [port for port in wanted if port is not None]
        if len(set(given)) != len(given):
            raise ValueError(f"Every process needs its own port; the ports {given} repeat one.")
        for port in given:
            if not _port_is_free(port):
                raise DeploymentError(
                    f"Port {port} on {HOST} is already in use (another program, or a SuperLink "
                    f"or SuperNode still running from before). Choose another port, or leave "
                    f"the port out to let the deployment pick a free one."
                )
        chosen: list[int] = []
        for port in wanted:
            chosen.append(port if port is not None else _free_port(exclude=given + chosen))
        self.superlink_port, self.supernode_ports = chosen[0], chosen[1:]

    def _write_flower_config(self) -> None:
        """The Flower configuration `flwr run` reads: where the SuperLink is, and no TLS."""
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION_NAME}"\n\n'
            f"[superlink.{CONNECTION_NAME}]\n"
            f'address = "{HOST}:{self.superlink_port}"\n'
            "insecure = true  # loopback only: a real SuperLink uses TLS (root-certificates = ...)\n",
            encoding="utf-8",
        )

    def _environment(self) -> dict[str, str]:
        environment = dict(os.environ, FLWR_HOME=str(self.home), **FLOWER_ENVIRONMENT)
        # Flower starts its helpers (flower-superexec, flwr-clientapp, ...) by name, so the
        # folder of this Python's scripts must come first even in an unactivated venv.
        environment["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environment.get("PATH", "")])
        return environment

    def _launch(self, label: str, command: list[str], into: list[_Started]) -> _Started:
        """Start one process, its output going to a log file; record it in ``into`` at once."""
        log_path = self.home / f"{label.lower().replace(' ', '-')}.log"
        log_handle = open(log_path, "wb")
        try:
            popen = subprocess.Popen(command, stdout=log_handle, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self._environment(), cwd=self.home)
        except BaseException:
            log_handle.close()
            raise
        started = _Started(label, popen, log_path, log_handle)
        into.append(started)  # from here on, stop() knows this process, whatever happens next
        try:
            self._remember(psutil.Process(popen.pid))
        except psutil.NoSuchProcess:  # it already exited; the caller reports why
            pass
        return started

    def _wait_until_listening(self, started: _Started, port: int) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while not _listens_on(started.popen.pid, port):
            if started.popen.poll() is not None:
                tail = _log_tail(started.log_path)
                hint = (f" Port {port} on {HOST} was taken by another program in the meantime; "
                        f"try again, or choose another port." if "address already in use" in tail else "")
                raise DeploymentError(
                    f"The {started.label} (pid {started.popen.pid}) exited during start-up with "
                    f"code {started.popen.returncode}.{hint}\n{tail}"
                )
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"The {started.label} (pid {started.popen.pid}) did not listen on "
                    f"{HOST}:{port} within {self.startup_timeout:.0f} s.\n{_log_tail(started.log_path)}"
                )
            time.sleep(0.1)

    # -- running --------------------------------------------------------------------------

    def run(
        self,
        run_config: Mapping | None = None,
        app_dir: str | Path = APP_DIR,
        progress: bool = True,
        timeout: float = 600.0,
    ) -> FlowerRunResult:
        """Submit the app with ``flwr run`` and wait for its results.

        Parameters
        ----------
        run_config : overrides of the app's ``[tool.flwr.app.config]`` (``num-rounds``,
            ``local-epochs``, ``batch-size``, ``lr``, ``seed``, ``num-hospitals``, ...).
            ``num-hospitals`` defaults to this federation's number of SuperNodes.
        app_dir : the Flower App to run.
        progress : show a progress bar over the rounds.
        timeout : seconds to wait for the whole run.
        """
        if not self._servers:
            raise RuntimeError("Start the federation first: use it in a `with` block, or call start().")
        run_config = self._checked_run_config(dict(run_config or {}), Path(app_dir))
        self._runs += 1
        output_dir = self.home / f"run-{self._runs}"
        run_config["output-dir"] = str(output_dir)
        overrides_path = self.home / f"run-{self._runs}.toml"
        overrides_path.write_text(_to_toml(run_config), encoding="utf-8")
        began = time.perf_counter()
        submitter = self._launch(f"flwr run {self._runs}", [
            _flower_command("flwr"), "run", str(Path(app_dir).resolve()), CONNECTION_NAME,
            "--run-config", str(overrides_path), "--stream",
        ], into=self._submitters)
        try:
            self._follow(submitter, output_dir, run_config["num-rounds"], progress, timeout)
        except BaseException:
            _stop_processes(_process_list(submitter.popen.pid))
            raise
        run_seconds = time.perf_counter() - began
        rounds = _read_rounds(output_dir)
        summary = json.loads((output_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
        final_weights = torch.from_numpy(np.load(output_dir / FINAL_WEIGHTS_FILE, allow_pickle=False))
        self._finish(submitter)
        self._memory.sample()
        return FlowerRunResult(
            rounds=[entry["round"] for entry in rounds],
            test_accuracy=[entry["accuracy"] for entry in rounds],
            test_auc=[entry["auc"] for entry in rounds],
            test_loss=[entry["loss"] for entry in rounds],
            train_loss=summary["train_loss"],
            reported=summary["reported"],
            final_weights=final_weights,
            startup_seconds=self.startup_seconds,
            run_seconds=run_seconds,
            peak_memory_bytes=self._memory.bytes,
            peak_processes=self._memory.processes,
            log=_ANSI_ESCAPE.sub("", submitter.log_path.read_text(encoding="utf-8", errors="replace")),
        )

    def _checked_run_config(self, run_config: dict, app_dir: Path) -> dict:
        """The app's defaults with the overrides, checked here so mistakes fail before any run."""
        with open(app_dir / "pyproject.toml", "rb") as handle:
            defaults = tomllib.load(handle)["tool"]["flwr"]["app"]["config"]
        unknown = sorted(set(run_config) - set(defaults))
        if unknown:
            raise ValueError(f"Unknown run config keys {unknown}; the app's keys are {sorted(defaults)}.")
        run_config.setdefault("num-hospitals", len(self.hospital_ids))
        settings = FlowerSettings.from_run_config({**defaults, **run_config})
        _check_supernodes_hold_the_run(self.hospital_ids, settings.num_hospitals)
        return {**defaults, **run_config}

    def _follow(self, submitter: _Started, output_dir: Path, num_rounds: int, progress: bool,
                timeout: float) -> None:
        """Show the rounds as the ServerApp records them; raise if anything fails or hangs."""
        deadline = time.monotonic() + timeout
        with tqdm(total=num_rounds, desc="Flower rounds", disable=not progress, leave=False) as bar:
            while not (output_dir / SUMMARY_FILE).exists():
                rounds = _read_rounds(output_dir)
                finished_rounds = max(0, len(rounds) - 1)  # round 0 is w_0, before training
                if finished_rounds > bar.n:
                    bar.update(finished_rounds - bar.n)
                    bar.set_postfix(accuracy=f"{rounds[-1]['accuracy']:.3f}")
                self._raise_if_any_exited(submitter, output_dir)
                if time.monotonic() > deadline:
                    raise DeploymentError(
                        f"The Flower run did not finish within {timeout:.0f} s.\n"
                        f"{_log_tail(submitter.log_path)}"
                    )
                time.sleep(0.2)
            bar.update(num_rounds - bar.n)

    def _raise_if_any_exited(self, submitter: _Started, output_dir: Path) -> None:
        for started in self._servers:
            if started.popen.poll() is None:
                continue
            raise DeploymentError(
                f"The {started.label} (pid {started.popen.pid}) exited during the run with code "
                f"{started.popen.returncode}.\n{_log_tail(started.log_path)}"
            )
        if submitter.popen.poll() is not None and not (output_dir / SUMMARY_FILE).exists():
            time.sleep(0.5)  # the ServerApp writes the summary before its logs end: look once more
            if not (output_dir / SUMMARY_FILE).exists():
                tail = _log_tail(submitter.log_path)
                errors = re.findall(r"^\w*(?:Error|Exception): .*$", tail, flags=re.MULTILINE)
                reason = f": {errors[-1]}" if errors else " without results"
                raise DeploymentError(f"The Flower run failed{reason}\n{tail}")

    def _finish(self, submitter: _Started) -> None:
        """Let `flwr run --stream` print the last logs and exit; stop it if it lingers."""
        try:
            submitter.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _stop_processes(_process_list(submitter.popen.pid))
        submitter.log_handle.close()

    # -- stopping -------------------------------------------------------------------------

    def processes(self) -> list[psutil.Process]:
        """Every live process this federation started, and their children (Flower's helpers)."""
        found = []
        for started in list(self._servers) + list(self._submitters):
            try:
                root = psutil.Process(started.popen.pid)
                found += [root] + root.children(recursive=True)
            except psutil.Error:
                continue
        for process in found:
            self._remember(process)
        return [process for process in found if _is_alive(process)]

    def _remember(self, process: psutil.Process) -> None:
        with self._seen_lock:
            self._seen.setdefault(process.pid, process)

    def stop(self) -> None:
        """Stop every process started here and every child seen; remove the private folder."""
        if self._memory is not None:
            self._memory.__exit__(None, None, None)
        self.processes()  # remember the children still attached to their parents
        with self._seen_lock:
            remembered = list(self._seen.values())
        _stop_processes(remembered)
        for started in self._servers + self._submitters:
            if started.popen.returncode is None:
                started.popen.wait()
            started.log_handle.close()
        self._servers.clear()
        self._submitters.clear()
        _LIVE_FEDERATIONS.discard(self)
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None

    @property
    def pids(self) -> list[int]:
        """Process ids of every process started or seen, alive or not (for checks and tests)."""
        with self._seen_lock:
            return sorted(self._seen)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def supernode_command(
    hospital_id: int,
    superlink: str,
    root_certificates: str | Path | None = None,
    runtime_port: int | None = None,
) -> list[str]:
    """The command a hospital runs to start its SuperNode, as a list of arguments.

    Parameters
    ----------
    hospital_id : k, passed in the node config as ``hospital-id=k`` (read by the ClientApp).
    superlink : the SuperLink's Fleet API address, ``host:port``.
    root_certificates : the CA certificate (PEM) that signed the SuperLink's TLS certificate;
        ``None`` means no TLS, which is refused unless the SuperLink is on this computer.
    runtime_port : the port of the SuperNode's own ClientApp API on 127.0.0.1 (default: Flower's).
    """
    if not (isinstance(hospital_id, numbers.Integral) and not isinstance(hospital_id, bool)
            and hospital_id >= 0):
        raise ValueError(f"hospital_id must be a whole number >= 0, got {hospital_id!r}.")
    host = superlink.rsplit(":", 1)[0].strip("[]")
    command = ["flower-supernode", "--superlink", superlink,
               "--node-config", f"{HOSPITAL_ID_KEY}={int(hospital_id)}"]
    if root_certificates is not None:
        command += ["--root-certificates", str(root_certificates)]
    elif host in LOOPBACK_HOSTS:
        # Unencrypted is acceptable only when the traffic never leaves this computer.
        command.append("--insecure")
    else:
        raise ValueError(
            f"The SuperLink {superlink} is on another computer, so the weights would cross the "
            f"network unencrypted. Give root_certificates (the CA certificate that signed the "
            f"SuperLink's TLS certificate); --insecure is only for 127.0.0.1."
        )
    if runtime_port is not None:
        command += ["--host", HOST, "--port", str(runtime_port)]
    return command


def run_loopback(
    num_hospitals: int = 3,
    run_config: Mapping | None = None,
    progress: bool = True,
    timeout: float = 600.0,
) -> FlowerRunResult:
    """Start a loopback federation of K hospitals, run the app once, stop everything.

    Parameters
    ----------
    num_hospitals : K, the first K course hospitals, one SuperNode each.
    run_config : overrides of the app's run config (``num-rounds``, ``local-epochs``, ...).
    progress : show a progress bar over the rounds.
    timeout : seconds to wait for the run.
    """
    run_config = {"num-hospitals": num_hospitals, **(run_config or {})}
    with LoopbackFederation(range(num_hospitals)) as federation:
        return federation.run(run_config, progress=progress, timeout=timeout)


# -- helpers --------------------------------------------------------------------------------


def _check_hospital_ids(hospital_ids: list) -> list[int]:
    known = len(DEFAULT_HOSPITALS)
    if not hospital_ids:
        raise ValueError("A federation needs at least one hospital: give hospital_ids, e.g. range(3).")
    for hospital_id in hospital_ids:
        if not (isinstance(hospital_id, numbers.Integral) and not isinstance(hospital_id, bool)
                and 0 <= hospital_id < known):
            raise ValueError(
                f"hospital-id={hospital_id!r} does not exist: the course has {known} hospitals, "
                f"ids 0..{known - 1}. Give each SuperNode one of them."
            )
    repeated = sorted({h for h in hospital_ids if hospital_ids.count(h) > 1})
    if repeated:
        raise ValueError(f"Each hospital runs exactly one SuperNode; hospital ids {repeated} repeat.")
    return [int(hospital_id) for hospital_id in hospital_ids]


def _check_supernodes_hold_the_run(hospital_ids: list[int], num_hospitals: int) -> None:
    """A run of K hospitals needs exactly one SuperNode for each of the ids 0..K-1."""
    if sorted(hospital_ids) == list(range(num_hospitals)):
        return
    missing = sorted(set(range(num_hospitals)) - set(hospital_ids))
    extra = sorted(set(hospital_ids) - set(range(num_hospitals)))
    raise ValueError(
        f"The run asks for num-hospitals={num_hospitals} (hospital ids 0..{num_hospitals - 1}), "
        f"but this federation's SuperNodes hold hospitals {sorted(hospital_ids)}"
        + (f"; hospital ids {extra} do not exist in such a run" if extra else "")
        + (f"; no SuperNode holds {missing}" if missing else "")
        + ". Give every hospital of the run exactly one SuperNode."
    )


def _flower_command(name: str) -> str:
    """The full path of one of Flower's commands, from this Python's environment first."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        raise DeploymentError(
            f"Flower's `{name}` command was not found. Install the course's Flower extra: "
            f"pip install -e \".[flower]\" (from the repository's folder)."
        )
    return found


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # The same option servers set, so a port in TIME_WAIT counts as free, as it is for them.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port(exclude: Iterable[int] = ()) -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((HOST, 0))
            port = probe.getsockname()[1]
        if port not in exclude:
            return port


def _listens_on(pid: int, port: int) -> bool:
    """True once process ``pid`` itself listens on ``port`` (not merely someone else)."""
    try:
        process = psutil.Process(pid)
        connections = process.net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(connection.status == psutil.CONN_LISTEN and connection.laddr.port == port
               for connection in connections)


def _process_list(pid: int) -> list[psutil.Process]:
    """``[psutil.Process(pid)]``, or ``[]`` if it has already gone."""
    try:
        return [psutil.Process(pid)]
    except psutil.NoSuchProcess:
        return []


def _is_alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _stop_processes(processes: list[psutil.Process], grace: float = 10.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL whatever is left; by process id."""
    alive = [process for process in processes if _is_alive(process)]
    for process in alive:
        try:
            process.terminate()
        except psutil.Error:
            continue
    _, survivors = psutil.wait_procs(alive, timeout=grace)
    for process in survivors:
        try:
            process.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(survivors, timeout=grace)


def _read_rounds(output_dir: Path) -> list[dict]:
    path = output_dir / ROUNDS_FILE
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    rounds = []
    for line in lines:
        try:
            rounds.append(json.loads(line))
        except json.JSONDecodeError:  # the last line, caught half-written
            break
    return rounds


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = _ANSI_ESCAPE.sub("", path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return f"(no log at {path})"
    useful = [line for line in text.splitlines() if "uvicorn.access" not in line]
    return f"Last lines of its log ({path.name}):\n" + "\n".join(useful[-lines:])


def _to_toml(values: Mapping) -> str:
    """A flat TOML table of strings, whole numbers, floats (inf included) and booleans."""
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, numbers.Integral):
            text = str(int(value))
        elif isinstance(value, numbers.Real):
            text = "inf" if value == math.inf else repr(float(value))
        elif isinstance(value, str):
            text = json.dumps(value)  # a JSON string is a valid TOML basic string
        else:
            raise ValueError(f"Run config value {key}={value!r} must be a string, number or boolean.")
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


@atexit.register
def _stop_all_at_exit() -> None:
    """If Python exits with a federation still running, stop its processes too."""
    for federation in list(_LIVE_FEDERATIONS):
        federation.stop()


def main(argv: list[str] | None = None) -> None:
    """Command line: run the course's Flower app on a loopback federation and print the curve."""
    parser = argparse.ArgumentParser(prog="python -m fl_lessons.flower", description=__doc__.splitlines()[0])
    parser.add_argument("--hospitals", type=int, default=3, help="K, hospitals (SuperNodes), 1..5")
    parser.add_argument("--rounds", type=int, default=3, help="N, rounds")
    parser.add_argument("--local-epochs", type=int, default=1, help="L, local epochs")
    parser.add_argument("--data-scale", type=float, default=1.0, help="fraction of each hospital's images")
    args = parser.parse_args(argv)
    result = run_loopback(args.hospitals, {"num-rounds": args.rounds, "local-epochs": args.local_epochs,
                                           "data-scale": args.data_scale})
    for t, accuracy in zip(*result.accuracy_curve()):
        print(f"round {t}: test accuracy {accuracy:.3f}")
    print(f"wall time {result.wall_seconds:.1f} s (start-up {result.startup_seconds:.1f} s), "
          f"peak memory {result.peak_memory_bytes / 2**20:.0f} MiB over {result.peak_processes} processes")

