"""Timing helpers shared by the benchmarks: interleaved runs, bootstrap ratios, medians.

Variants run in alternating order (A B C, C B A, ...), so that drift (thermal, allocator, other
load on the machine) hits all of them alike; every call is timed on its own with
``time.perf_counter``.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections.abc import Callable

__all__ = ["bootstrap_ratio", "interleave", "median_time", "ratio_row"]


def interleave(
    calls: dict[str, Callable[[], object]], warmup: int, rounds: int, block: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each variant: ``warmup`` untimed calls each, then ``rounds`` blocks of
    ``block`` consecutive calls per variant in alternating order."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    gc.collect()
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            call, out = calls[name], times[name]
            for _ in range(block):
                start = time.perf_counter()
                call()
                out.append(time.perf_counter() - start)
    return times


def median_time(call: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` calls after one warm-up call."""
    return statistics.median(interleave({"call": call}, 1, repeat)["call"])


def bootstrap_ratio(a: list[float], b: list[float], draws: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of median(b) / median(a), resampling calls with replacement."""
    rng = random.Random(seed)
    ratios = sorted(
        statistics.median(rng.choices(b, k=len(b))) / statistics.median(rng.choices(a, k=len(a))) for _ in range(draws)
    )
    return ratios[int(0.025 * draws)], ratios[int(0.975 * draws) - 1]


def ratio_row(a: list[float], b: list[float], draws: int, seed: int) -> str:
    """``median a ms | median b ms | ratio | 95% CI | min ratio`` as Markdown table cells."""
    ma, mb = statistics.median(a), statistics.median(b)
    ci = "-"
    if draws:
        lo, hi = bootstrap_ratio(a, b, draws, seed)
        ci = f"{lo:.3f}-{hi:.3f}"
    return f"{1e3 * ma:.2f} | {1e3 * mb:.2f} | {mb / ma:.3f} | {ci} | {min(b) / min(a):.3f}"
