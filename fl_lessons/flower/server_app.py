"""The Flower ServerApp: Flower's own FedAvg strategy, started from our w_0, evaluated as we do.

Taught in notebook 07 (from simulation to deployment).

The server builds w_0 exactly as ``fl_lessons`` does (``make_model(model, seed)``), hands it
to ``flwr.serverapp.strategy.FedAvg``, and lets Flower run the rounds on the SuperLink:
sample every connected hospital, send w_t, collect the replies, average them weighted by
``num-examples``. After each round it evaluates w_t on the common test set with
``fl_lessons.evaluate`` and, when the run config names an ``output-dir``, writes:

- ``rounds.jsonl``: one line per round t = 0..N with the test metrics of w_t, as it happens;
- ``final_weights.npy``: w_N as a flat float vector;
- ``summary.json``: the training loss and number of reporting hospitals per round, written
  last, so its presence means the run finished.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fl_lessons.flower.common import (
    FINAL_WEIGHTS_FILE,
    HOSPITAL_ID_KEY,
    HOSPITAL_RECORD_KEY,
    ROUNDS_FILE,
    SUMMARY_FILE,
    TRAIN_LOSS_KEY,
    FlowerSettings,
    flat_from_arrays,
)
from fl_lessons.flower.hospital_data import load_common_test_set
from fl_lessons.models import get_flat_weights, make_model
from fl_lessons.training import evaluate

app = ServerApp()


class EveryHospitalFedAvg(FedAvg):
    """Flower's FedAvg with two guards: every hospital must report, and replies sum in hospital order.

    - Plain FedAvg logs a failed reply and averages the others; with full participation
      that would quietly become a different algorithm, so here it is an error that names
      the hospital's reason (e.g. a SuperNode started with a hospital id that does not exist).
    - Replies arrive in whatever order the network delivers them, and float addition is not
      associative: summed in arrival order, two runs with the same seeds could differ in the
      last bit, and SGD can grow such a bit into a visibly different model over many rounds.
      Sorting the replies by hospital id makes every run sum in the same order, hospital 0
      first, as ``fl_lessons.aggregate`` does. The averaging itself is Flower's.
    """

    def __init__(self, num_hospitals: int):
        # Full participation: every round waits for all K hospitals and trains on all of
        # them. weighted_by_key keeps Flower's default, "num-examples" (NUM_EXAMPLES_KEY).
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=num_hospitals,
                         min_available_nodes=num_hospitals)
        self.num_hospitals = num_hospitals
        self.reported: list[int] = []

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        failed = [reply for reply in replies if reply.has_error()]
        if failed:
            reasons = "; ".join(reply.error.reason for reply in failed)
            raise RuntimeError(
                f"Round {server_round}: {len(failed)} of {len(replies)} hospitals failed, so this "
                f"would no longer be FedAvg over every hospital. Their ClientApps said: {reasons}"
            )
        ids = sorted(int(reply.content[HOSPITAL_RECORD_KEY][HOSPITAL_ID_KEY]) for reply in replies)
        if ids != list(range(self.num_hospitals)):
            # Flower hands over the replies that arrived in time; a missing or a doubled hospital
            # would quietly make this another average than FedAvg over every hospital.
            raise RuntimeError(
                f"Round {server_round}: replies came from hospitals {ids}, not from each of "
                f"0..{self.num_hospitals - 1} exactly once, so this would no longer be FedAvg over "
                "every hospital. Check that every SuperNode runs and has its own hospital-id.")
        self.reported.append(len(replies))
        in_hospital_order = sorted(
            replies, key=lambda reply: int(reply.content[HOSPITAL_RECORD_KEY][HOSPITAL_ID_KEY]))
        return super().aggregate_train(server_round, in_hospital_order)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run N rounds of Flower's FedAvg from our w_0 and record what happened."""
    settings = FlowerSettings.from_run_config(context.run_config)
    model = make_model(settings.model, seed=settings.model_seed)
    initial_arrays = ArrayRecord(model.state_dict())
    test_x, test_y = load_common_test_set(settings.specs(), settings.data_seed,
                                          settings.common_test_per_hospital())
    output_dir = Path(settings.output_dir) if settings.output_dir else None
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / ROUNDS_FILE).write_text("")

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        flat_from_arrays(model, arrays)
        metrics = evaluate(model, test_x, test_y)
        if output_dir is not None:
            with open(output_dir / ROUNDS_FILE, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"round": server_round, **metrics.as_dict()}) + "\n")
        return MetricRecord({key: float(value) for key, value in metrics.as_dict().items()})

    strategy = EveryHospitalFedAvg(settings.num_hospitals)
    result = strategy.start(grid=grid, initial_arrays=initial_arrays, num_rounds=settings.num_rounds,
                            evaluate_fn=evaluate_global)
    if output_dir is not None:
        final_weights = flat_from_arrays(model, result.arrays)
        _write_atomically(output_dir / FINAL_WEIGHTS_FILE, lambda path: np.save(path, final_weights.numpy()))
        train_loss = [float(result.train_metrics_clientapp[t][TRAIN_LOSS_KEY])
                      for t in range(1, settings.num_rounds + 1)]
        summary = {"num_rounds": settings.num_rounds, "train_loss": train_loss,
                   "reported": strategy.reported, "num_parameters": int(get_flat_weights(model).numel())}
        _write_atomically(output_dir / SUMMARY_FILE,
                          lambda path: path.write_text(json.dumps(summary), encoding="utf-8"))


def _write_atomically(target: Path, write) -> None:
    """Write to a temporary name, then rename: a reader never sees half a file."""
    temporary = target.with_name(target.stem + ".partial" + target.suffix)
    write(temporary)
    os.replace(temporary, target)

