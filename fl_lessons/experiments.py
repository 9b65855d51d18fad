"""Counting rounds: how many communication rounds a run needs to reach a target accuracy.

Taught in notebook 05 (our version of Table 2 of McMahan et al. 2017, arXiv 1602.05629).
The paper makes each curve monotone (the best accuracy so far) and interpolates linearly
between the two rounds where it crosses the target; we do the same.
"""

from __future__ import annotations

import math
from typing import Sequence


def rounds_to_target(
    rounds: Sequence[float], accuracies: Sequence[float], target: float
) -> float | None:
    """The (fractional) round at which the running-best accuracy first reaches ``target``.

    Parameters
    ----------
    rounds : the rounds at which the curve was measured, increasing (e.g. 0, 1, ..., N).
    accuracies : the test accuracy at each of those rounds (NaN = not evaluated, skipped).
    target : the accuracy to reach.

    Returns ``None`` when the target is not reached within the rounds given, so "not reached
    within N" is reported as such and never mistaken for a number.
    """
    if len(rounds) != len(accuracies):
        raise ValueError(f"rounds and accuracies differ in length: {len(rounds)} vs {len(accuracies)}.")
    points = [(float(t), float(a)) for t, a in zip(rounds, accuracies) if not math.isnan(a)]
    if any(later <= earlier for (earlier, _), (later, _) in zip(points, points[1:])):
        raise ValueError("rounds must be strictly increasing.")
    best_so_far = -math.inf
    previous_round = None
    for round_index, accuracy in points:
        if accuracy >= target and best_so_far < target:
            if previous_round is None:
                return round_index
            # Linear interpolation between the last point below and the first at or above.
            fraction = (target - best_so_far) / (accuracy - best_so_far)
            return previous_round + fraction * (round_index - previous_round)
        best_so_far = max(best_so_far, accuracy)
        previous_round = round_index
    return None
