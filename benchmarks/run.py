"""How fast is the course's federated simulator? Figures measured side by side in one run.

Run from the repository root (about 7 minutes on a quiet 2-core laptop; ``--quick``: about 1):

    .venv/bin/python benchmarks/run.py            # prints the tables, writes benchmarks/results.md
    .venv/bin/python benchmarks/run.py --quick    # fewer repeats, no notebooks: a smoke run

What is measured (every figure is the median of several repeats, taken in turn so that a
change in the machine's load hits every contender alike):

1. Round overhead ratio, FedAvg: the time of one ``fl.run_fedavg`` round divided by the time
   of a plain centralized PyTorch loop doing the same SGD steps (same model, same batch sizes,
   the clients' partial last batches included) on the pooled data, in the same process.
2. Round overhead ratio, FedSGD: one ``fl.run_fedsgd`` round divided by one full-batch
   gradient step on the pooled data.
3. The speed-up over the usual reimplementation pattern (``reference_fedavg.py``: deep copy
   of the model per client, a DataLoader per client, state dicts averaged key by key).
4. What a learner feels: the FedAvg slider panel's answer to a new and to a seen setting,
   and each notebook's execution time (kernel start included).

A timed federated run is ``N = 1`` round with evaluation only at w_0 and w_1 on
``TEST_IMAGES`` images (``eval_every = N``), so it includes everything a round costs:
sampling, loading weights into the workspace module, the local steps, aggregation,
bookkeeping and that evaluation.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import fl_lessons as fl  # noqa: E402
from reference_fedavg import reference_fedavg  # noqa: E402

# (label, K, n_k): each client holds n_k images; L = 1, B = 32 (FedAvg) in every setting.
SETTINGS = (("10 hospitals", 10, 300), ("100 clients", 100, 50), ("1000 small clients", 1000, 20))
BATCH_SIZE = 32
LOCAL_EPOCHS = 1
LR = 0.1
TEST_IMAGES = 64
CHUNK_SIZE = 512  # the pooled full-batch gradient is summed over chunks of this many images
TARGETS = {"ratio_k10": 1.15, "ratio_k1000": 1.5, "speedup_k100": 3.0, "new_setting_s": 2.0,
           "cached_setting_s": 0.2, "notebooks_s": 300.0}


def median_seconds(timings: list[float]) -> float:
    return statistics.median(timings)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def timed(function) -> float:
    started = clock()
    function()
    return clock() - started


def make_pool(num_images: int, seed: int = 0) -> fl.HospitalData:
    """``num_images`` synthetic chest X-rays from the course's five scanners, and a small test set."""
    per_hospital = math.ceil(num_images / len(fl.DEFAULT_HOSPITALS))
    specs = [dataclasses.replace(spec, num_train=per_hospital, num_test=0) for spec in fl.DEFAULT_HOSPITALS]
    return fl.make_hospitals(seed, specs=specs, common_test_per_hospital=math.ceil(TEST_IMAGES / len(specs)))


def batch_sizes_of_round(client_sizes: list[int], local_epochs: int, batch_size: float) -> list[int]:
    """The batch size of every SGD step one FedAvg round takes, over all clients."""
    sizes = []
    for num_examples in client_sizes:
        step = int(min(batch_size, num_examples))
        for _ in range(local_epochs):
            sizes.extend(min(step, num_examples - start) for start in range(0, num_examples, step))
    return sizes


# ---------------------------------------------------------------------------------------
# The floor: plain centralized PyTorch on the pooled data, written the obvious way.
# ---------------------------------------------------------------------------------------


def centralized_sgd_steps(model, optimizer, features, labels, batch_sizes, generator) -> None:
    """SGD steps over the pooled data with exactly these batch sizes (a shuffled pass)."""
    order = torch.randperm(labels.shape[0], generator=generator)
    start = 0
    for size in batch_sizes:
        if start + size > labels.shape[0]:
            order, start = torch.randperm(labels.shape[0], generator=generator), 0
        batch = order[start:start + size]
        start += size
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(features[batch]), labels[batch])
        loss.backward()
        optimizer.step()


def centralized_full_batch_step(model, optimizer, features, labels, chunk_size) -> None:
    """One gradient step on the mean loss over all the pooled data (summed over chunks)."""
    optimizer.zero_grad()
    num_examples = labels.shape[0]
    for start in range(0, num_examples, chunk_size):
        loss = F.binary_cross_entropy_with_logits(
            model(features[start:start + chunk_size]), labels[start:start + chunk_size], reduction="sum")
        (loss / num_examples).backward()
    optimizer.step()


# ---------------------------------------------------------------------------------------
# 1-3: overhead ratios and the speed-up over the usual pattern
# ---------------------------------------------------------------------------------------


def measure_setting(pool: fl.HospitalData, num_clients: int, num_examples: int, repeats: int,
                    warm_up: bool) -> dict:
    """Median seconds per round of every contender, for K clients of n_k images each.

    ``warm_up`` runs every contender once untimed first (one-off costs: lazy imports,
    first calls into torch.func); the code is the same in every setting, so once suffices.
    """
    features, labels = pool.pooled()
    total = num_clients * num_examples
    features, labels = features[:total], labels[:total]
    parts = fl.partition_iid(total, num_clients, seed=0)
    clients_data = fl.hospitals_from_partition(features, labels, parts, pool.test_x, pool.test_y)
    client_pairs = [(h.train_x, h.train_y) for h in clients_data.hospitals]
    model = fl.make_model("cnn", seed=0)
    clients = fl.make_clients(clients_data, model)
    initial = fl.get_flat_weights(model)
    fedavg = fl.FedConfig(num_rounds=1, local_epochs=LOCAL_EPOCHS, batch_size=BATCH_SIZE, lr=LR, eval_every=1)
    fedsgd = fl.FedConfig(num_rounds=1, lr=LR, eval_every=1)
    batch_sizes = batch_sizes_of_round([num_examples] * num_clients, LOCAL_EPOCHS, BATCH_SIZE)
    central_model = fl.make_model("cnn", seed=0)
    central_optimizer = torch.optim.SGD(central_model.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(0)
    reference_model = fl.make_model("cnn", seed=0)

    def run(function, config):
        return lambda: function(clients, model, clients_data.test_x, clients_data.test_y, config,
                                initial, progress=False)

    contenders = {
        "central_sgd": lambda: centralized_sgd_steps(central_model, central_optimizer, features, labels,
                                                     batch_sizes, generator),
        "fedavg_loop": run(fl.run_fedavg, dataclasses.replace(fedavg, engine="loop")),
        "fedavg_vectorized": run(fl.run_fedavg, dataclasses.replace(fedavg, engine="vectorized")),
        "reference": lambda: reference_fedavg(reference_model, client_pairs, 1, LOCAL_EPOCHS, BATCH_SIZE, LR),
        "central_full_batch": lambda: centralized_full_batch_step(central_model, central_optimizer, features,
                                                                  labels, CHUNK_SIZE),
        "fedsgd_loop": run(fl.run_fedsgd, dataclasses.replace(fedsgd, engine="loop")),
        "fedsgd_vectorized": run(fl.run_fedsgd, dataclasses.replace(fedsgd, engine="vectorized")),
    }
    for function in contenders.values() if warm_up else ():
        function()
    timings = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, function in contenders.items():
            timings[name].append(timed(function))
    result = {name: median_seconds(values) for name, values in timings.items()}
    result.update(K=num_clients, n_k=num_examples, steps=len(batch_sizes), n=total)
    return result


def overhead_tables(results: list[dict], threads: int) -> list[str]:
    fedavg = [
        f"**FedAvg, {threads} thread(s)** (L = {LOCAL_EPOCHS}, B = {BATCH_SIZE}; ms per round; "
        "ratio = federated / centralized, 1.00 = no overhead)",
        "",
        "| K | n_k | SGD steps | centralized | loop engine | ratio | vectorized | ratio "
        "| usual pattern | speed-up (loop) | ceiling |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    fedsgd = [
        f"**FedSGD, {threads} thread(s)** (ms per round; centralized = one full-batch gradient step "
        f"on the pooled data, in chunks of {CHUNK_SIZE})",
        "",
        "| K | n | centralized | loop engine | ratio | vectorized | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        fedavg.append(
            f"| {r['K']} | {r['n_k']} | {r['steps']} | {1e3 * r['central_sgd']:.0f} "
            f"| {1e3 * r['fedavg_loop']:.0f} | **{r['fedavg_loop'] / r['central_sgd']:.2f}** "
            f"| {1e3 * r['fedavg_vectorized']:.0f} | {r['fedavg_vectorized'] / r['central_sgd']:.2f} "
            f"| {1e3 * r['reference']:.0f} | **{r['reference'] / r['fedavg_loop']:.2f}x** "
            f"| {r['reference'] / r['central_sgd']:.2f}x |")
        fedsgd.append(
            f"| {r['K']} | {r['n']} | {1e3 * r['central_full_batch']:.0f} | {1e3 * r['fedsgd_loop']:.0f} "
            f"| **{r['fedsgd_loop'] / r['central_full_batch']:.2f}** | {1e3 * r['fedsgd_vectorized']:.0f} "
            f"| {r['fedsgd_vectorized'] / r['central_full_batch']:.2f} |")
    fedavg += ["", "speed-up = usual pattern / loop engine; ceiling = usual pattern / centralized, the "
                   "speed-up an engine with zero overhead would reach (the steps' arithmetic is the same)."]
    return fedavg + [""] + fedsgd


# ---------------------------------------------------------------------------------------
# 4: what a learner feels
# ---------------------------------------------------------------------------------------


def measure_panel(repeats: int) -> dict:
    # Panel and notebooks always use the wall clock: a learner waits in wall-clock time.
    """Seconds for the FedAvg panel to answer a slider move, new and seen settings."""
    from fl_lessons.widgets import FedAvgPanel

    data = fl.load_hospitals("synthetic", 0)
    started = time.perf_counter()
    panel = FedAvgPanel(data)
    result = {"first draw (pooled reference, FedAvg and FedSGD at the defaults)": time.perf_counter() - started}
    moves = {"new setting: L 1 -> 2 (FedAvg retrains)": ("L", 2),
             "new setting: K 5 -> 10 (both retrain)": ("K", 10),
             "new setting: N 10 -> 15 (both runs go on for 5 rounds)": ("N", 15)}
    for label, (name, value) in moves.items():
        slider = panel.sliders[name]
        default = slider.value
        timings = []
        for _ in range(repeats):
            known = dict(panel._cache)
            started = time.perf_counter()
            slider.value = value
            timings.append(time.perf_counter() - started)
            slider.value = default
            # Forget what the move computed, so the next repeat is new again.
            panel._cache.clear()
            panel._cache.update(known)
        result[label] = median_seconds(timings)
    slider = panel.sliders["L"]
    slider.value = 2
    slider.value = 1
    timings = []
    for _ in range(repeats):
        for value in (2, 1):
            started = time.perf_counter()
            slider.value = value
            timings.append(time.perf_counter() - started)
    result["seen setting: L 2 <-> 1 (from the cache)"] = median_seconds(timings)
    return result


def measure_notebooks() -> dict[str, float | str]:
    """Seconds to execute each notebook (a fresh kernel each), on a copy, never in place.

    A notebook that fails is reported as failed (with the error's name), not timed.
    """
    import nbformat
    from nbclient import NotebookClient

    times = {}
    with tempfile.TemporaryDirectory() as scratch:
        for notebook_path in sorted((ROOT / "notebooks").glob("*.ipynb")):
            copy = Path(scratch) / notebook_path.name
            shutil.copy(notebook_path, copy)
            notebook = nbformat.read(copy, as_version=4)
            client = NotebookClient(notebook, timeout=900, kernel_name="python3",
                                    resources={"metadata": {"path": scratch}})
            started = time.perf_counter()
            try:
                client.execute()
            except Exception as error:  # report and go on: the other notebooks still count
                reason = f"{getattr(error, 'ename', type(error).__name__)}: {getattr(error, 'evalue', '')}"
                times[notebook_path.name] = f"failed ({reason.strip()[:80].replace('|', '/')})"
                continue
            times[notebook_path.name] = time.perf_counter() - started
            print(f"  executed {notebook_path.name}", flush=True)
    return times


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def verdict(value: float, limit: float, smaller_is_better: bool = True) -> str:
    met = value <= limit if smaller_is_better else value >= limit
    return "met" if met else "**missed**"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, 1 thread count, no notebooks: a smoke run")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per timing (default 3, quick 1)")
    parser.add_argument("--threads", type=str, default=None,
                        help="comma-separated torch thread counts for the ratio tables "
                             "(default: 1 and torch's default; quick: torch's default)")
    parser.add_argument("--learner-threads", type=int, default=None,
                        help="torch threads for the slider panel and the notebook kernels (default: torch's default)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="clock for the ratio tables: wall (default) or cpu (process time; on a busy "
                             "machine with 1 thread it is steadier)")
    parser.add_argument("--skip-notebooks", action="store_true", help="do not execute the notebooks")
    parser.add_argument("--output", type=Path, default=None,
                        help="where to write the tables (default benchmarks/results.md; --quick writes none)")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    repeats = args.repeats or (1 if args.quick else 3)
    default_threads = torch.get_num_threads()
    learner_threads = args.learner_threads or default_threads
    if args.threads:
        thread_counts = [int(count) for count in args.threads.split(",")]
    else:
        thread_counts = [default_threads] if args.quick else sorted({1, default_threads})
    load_before = os.getloadavg()
    started = time.perf_counter()
    gpu = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
           else "none (no GPU is lent to this machine: the vectorized engine runs on the CPU here)")
    header = [
        f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}; torch threads by default: "
        f"{default_threads}.",
        f"GPU: {gpu}.",
        f"Load average (1/5/15 min) at start: {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f}.",
        f"Each figure: median of {repeats} repeat(s), taken in turn, after one warm-up; {args.clock} clock for "
        f"the ratio tables, wall clock for the learner's figures; synthetic chest X-rays; "
        f"SmallCNN ({fl.num_parameters(fl.make_model('cnn'))} weights).",
    ]
    print("\n".join(header), flush=True)
    pool = make_pool(max(k * n_k for _, k, n_k in SETTINGS))
    lines = []
    by_threads = {}
    for threads in thread_counts:
        torch.set_num_threads(threads)
        results = []
        for index, (label, num_clients, num_examples) in enumerate(SETTINGS):
            results.append(measure_setting(pool, num_clients, num_examples, repeats, warm_up=index == 0))
            print(f"  measured {label} on {threads} thread(s)", flush=True)
        by_threads[threads] = results
        lines += overhead_tables(results, threads) + [""]
        print("\n".join(overhead_tables(results, threads)), flush=True)
    torch.set_num_threads(learner_threads)
    os.environ["OMP_NUM_THREADS"] = str(learner_threads)  # read by torch in the notebook kernels

    panel = measure_panel(repeats)
    learner = ["**What a learner feels** (seconds, wall clock; slider panel at the default ranges, "
               f"{learner_threads} thread(s))", "", "| what | seconds |", "|---|---:|"]
    learner += [f"| panel: {label.replace('_', ' ')} | {seconds:.2f} |" for label, seconds in panel.items()]
    notebooks = {} if (args.quick or args.skip_notebooks) else measure_notebooks()
    learner += [f"| notebook {name} (one run, kernel start included) | "
                f"{seconds if isinstance(seconds, str) else f'{seconds:.1f}'} |" for name, seconds in notebooks.items()]
    notebook_seconds = [seconds for seconds in notebooks.values() if not isinstance(seconds, str)]
    if notebooks:
        learner.append(f"| **all {len(notebook_seconds)} notebooks that ran** | **{sum(notebook_seconds):.1f}** |")
    lines += learner + [""]
    print("\n".join(learner) + "\n", flush=True)

    target_threads = default_threads if default_threads in by_threads else thread_counts[-1]
    at = {r["K"]: r for r in by_threads[target_threads]}

    def ratio(num_clients: int, numerator: str, denominator: str) -> float:
        return at[num_clients][numerator] / at[num_clients][denominator]

    new_setting = max(seconds for label, seconds in panel.items() if label.startswith("new"))
    cached = panel["seen setting: L 2 <-> 1 (from the cache)"]
    checks = [  # (what, measured, limit, smaller is better, format)
        ("FedAvg round overhead ratio at K = 10", ratio(10, "fedavg_loop", "central_sgd"),
         TARGETS["ratio_k10"], True, "{:.2f}"),
        ("FedAvg round overhead ratio at K = 1000", ratio(1000, "fedavg_loop", "central_sgd"),
         TARGETS["ratio_k1000"], True, "{:.2f}"),
        ("FedSGD round overhead ratio at K = 10", ratio(10, "fedsgd_loop", "central_full_batch"),
         TARGETS["ratio_k10"], True, "{:.2f}"),
        ("FedSGD round overhead ratio at K = 1000", ratio(1000, "fedsgd_loop", "central_full_batch"),
         TARGETS["ratio_k1000"], True, "{:.2f}"),
        ("speed-up over the usual pattern at K = 100", ratio(100, "reference", "fedavg_loop"),
         TARGETS["speedup_k100"], False, "{:.2f}x"),
        ("slider panel, slowest new setting measured (s)", new_setting, TARGETS["new_setting_s"], True, "{:.2f}"),
        ("slider panel, seen setting (s)", cached, TARGETS["cached_setting_s"], True, "{:.3f}"),
    ]
    if notebooks:
        failed = len(notebooks) - len(notebook_seconds)
        label = "all notebooks (s)" if not failed else f"the notebooks that ran (s); {failed} failed, not counted"
        checks.append((label, sum(notebook_seconds), TARGETS["notebooks_s"], True, "{:.0f}"))
    target_lines = [f"**Targets** (ratios at {target_threads} thread(s))", "",
                    "| target | measured | limit | |", "|---|---:|---:|---|"]
    for label, value, limit, smaller, fmt in checks:
        limit_text = f"<= {limit:g}" if smaller else f">= {limit:g}x"
        target_lines.append(f"| {label} | {fmt.format(value)} | {limit_text} | {verdict(value, limit, smaller)} |")
    lines += target_lines + [""]
    print("\n".join(target_lines) + "\n", flush=True)

    load_after = os.getloadavg()
    footer = (f"Load average at the end: {load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f}; "
              f"the whole benchmark took {time.perf_counter() - started:.0f} s.")
    print(footer)
    command = "python benchmarks/run.py" + (" --quick" if args.quick else "")
    text = "\n".join(["# Benchmark results", "", f"Produced by `{command}`.", ""]
                     + [f"- {line}" for line in header] + [""] + lines + [footer, ""])
    output = args.output or (None if args.quick else ROOT / "benchmarks" / "results.md")
    if output is not None:
        output.write_text(text)
        print(f"Wrote {output}")


if __name__ == "__main__":
    main()
