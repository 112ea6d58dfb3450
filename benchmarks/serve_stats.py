"""The serving benchmark's statistics, apart from the measuring: paired ratios pooled
over independent runs, per-run medians and their spread, the open-loop arrival schedule,
latency percentiles and throughput per core.

A *pair* is one arm's and another arm's throughput in the same round at the same point
(input, batch size, clients) of the same run. Every figure a comparison cites comes from
all its pairs: the minimum over pairs is the lowest single pair (not the lowest of
per-point medians, which hides the worst rounds), and no run is preferred to another
(no best-of): each run's own median is reported, with their range across runs.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping, Sequence

# run -> point -> arm -> per-round requests/s
Runs = Sequence[Mapping[tuple, Mapping[str, Sequence[float]]]]


def run_pairs(run: Mapping[tuple, Mapping[str, Sequence[float]]], num: str, den: str) -> list:
    """Every (point, round, ratio) of one run where both arms were measured."""
    out = []
    for point, by_arm in run.items():
        a, b = by_arm.get(num), by_arm.get(den)
        if not a or not b:
            continue
        if len(a) != len(b):
            raise ValueError(f"{point}: {num} has {len(a)} rounds, {den} {len(b)}: not paired")
        out += [(point, r, x / y) for r, (x, y) in enumerate(zip(a, b, strict=True))]
    return out


def best_other_pairs(
    run: Mapping[tuple, Mapping[str, Sequence[float]]], num: str, others: Sequence[str]
) -> list:
    """(point, round, ratio) of ``num`` against the fastest of ``others`` in that very
    round: the comparison with whatever a user would have picked instead."""
    out = []
    for point, by_arm in run.items():
        present = [o for o in others if by_arm.get(o)]
        if not by_arm.get(num) or not present:
            continue
        for r, x in enumerate(by_arm[num]):
            out.append((point, r, x / max(by_arm[o][r] for o in present)))
    return out


def pooled(per_run: Sequence[Sequence[tuple]], digits: int = 3) -> dict:
    """The comparison over every pair of every run: the true minimum over pairs (with
    where it lies), the median over pairs, each run's median and their spread."""
    flat = [(i, p, r, x) for i, pairs in enumerate(per_run) for p, r, x in pairs]
    if not flat:
        return {"n_pairs": 0}
    low = min(flat, key=lambda t: t[3])
    run_medians = [round(statistics.median(x for _, _, x in pairs), digits) for pairs in per_run]
    return {
        "min_over_pairs": round(low[3], digits),
        "min_at": {"run": low[0] + 1, "point": _point_name(low[1]), "round": low[2] + 1},
        "median_over_pairs": round(statistics.median(x for *_, x in flat), digits),
        "n_pairs": len(flat),
        "pairs_above_1": sum(x > 1 for *_, x in flat),
        "per_run_medians": run_medians,
        "runs": len(per_run),
        "spread_across_runs": {
            "min": min(run_medians),
            "max": max(run_medians),
            "range": round(max(run_medians) - min(run_medians), digits),
        },
    }


def compare(runs: Runs, num: str, den: str) -> dict:
    """``pooled`` over ``num / den`` pairs of every run."""
    return pooled([run_pairs(run, num, den) for run in runs])


def _point_name(point: tuple) -> str:
    name, bs, c = point
    return f"{name}_b{bs}_c{c}"


def per_run_point_medians(runs: Runs, arm: str) -> dict[str, list[float]]:
    """point -> the arm's median requests/s in each run (its spread across runs)."""
    out: dict[str, list[float]] = {}
    for run in runs:
        for point, by_arm in run.items():
            if by_arm.get(arm):
                out.setdefault(_point_name(point), []).append(
                    round(statistics.median(by_arm[arm]), 2)
                )
    return out


# --------------------------------------------------------------------------- open loop
def poisson_schedule(rate: float, n: int, rng: random.Random) -> list[float]:
    """Send times (s from the start) of ``n`` requests arriving as a Poisson process at
    ``rate`` per second: exponential gaps, so bursts come as they do from many users."""
    if rate <= 0 or n <= 0:
        raise ValueError(f"an arrival schedule needs a positive rate and count ({rate}, {n})")
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


def fixed_schedule(rate: float, n: int) -> list[float]:
    """Send times of ``n`` requests at a fixed interval of ``1 / rate`` seconds."""
    if rate <= 0 or n <= 0:
        raise ValueError(f"an arrival schedule needs a positive rate and count ({rate}, {n})")
    return [i / rate for i in range(n)]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation between order statistics (numpy's
    default), so p50 of an even count is the mean of the two middle values."""
    if not values:
        raise ValueError("a percentile of no values")
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def latency_summary(ms: Sequence[float]) -> dict:
    """p50 always; p90 / p99 only where at least 10 requests lie beyond them."""
    n = len(ms)
    out: dict = {"n": n, "p50_ms": round(percentile(ms, 0.5), 1)}
    for name, q in (("p90_ms", 0.9), ("p99_ms", 0.99)):
        out[name] = round(percentile(ms, q), 1) if round(n * (1 - q), 9) >= 10 else None
    out["max_ms"] = round(max(ms), 1)
    return out


def capacity(run: Mapping[tuple, Mapping[str, Sequence[float]]], arm: str, name: str) -> float:
    """An arm's closed-loop capacity in one run: the highest of its per-point medians
    (over rounds) at input ``name``, i.e. at the client count that served the most."""
    medians = [
        statistics.median(by_arm[arm])
        for point, by_arm in run.items()
        if point[0] == name and by_arm.get(arm)
    ]
    if not medians:
        raise ValueError(f"no closed-loop measurement of {arm} on {name} to size the load")
    return max(medians)


def per_core(requests_per_s: float, cores: int) -> float:
    """Requests/s per core the server was given (all of the machine when unpinned)."""
    if cores <= 0:
        raise ValueError(f"per-core throughput needs a positive core count ({cores})")
    return round(requests_per_s / cores, 2)
