"""What the capture benchmark checks besides throughput: whether every sampled request
became a record, and whether enough rounds were run for the cost figure to mean anything.

- ``record_check``: records captured against ``sample_rate x requests`` with an exact
  binomial test, and what the worker itself says it lost (records dropped on a full
  queue, records lost in batch writes the store refused, batches the handler could not
  describe, worker restarts), read from its log;
- ``ratio_interval``: the per-round throughput ratios summarised as a geometric mean
  with a 95% t-interval on the log scale; the benchmark keeps adding rounds until that
  interval is narrower than asked (or it reaches its round limit, and says so).
"""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path

from scipy import stats

_DROPPED = re.compile(
    r"capture: (\d+) records dropped so far \((\d+) queue full, (\d+) store errors\) of (\d+) offered"
)
_NOT_CAPTURED = re.compile(r"capture: (\d+) batches not captured")


def worker_log_counts(log: Path) -> dict[str, int]:
    """What one capturing worker's log says it lost. The sink logs its cumulative counts
    at most once a minute (the first store failure at once), so these are lower bounds:
    the binomial check is what catches a loss the log does not show."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    dropped = _DROPPED.findall(text)
    full, store = (int(dropped[-1][1]), int(dropped[-1][2])) if dropped else (0, 0)
    not_captured = [int(n) for n in _NOT_CAPTURED.findall(text)]
    return {
        "dropped_queue_full": full,
        "lost_in_failed_writes": store,
        "failed_write_warnings": text.count("store errors) of"),
        "batches_not_captured": max(not_captured, default=0),
        "worker_starts": text.count("capture on: "),
        "capture_off": text.count("capture off"),
    }


def add_counts(total: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    return {k: total.get(k, 0) + v for k, v in more.items()}


def record_check(captured: int, requests: int, rate: float, worker: dict[str, int]) -> dict:
    """Captured records against the binomial expectation of ``rate`` x ``requests``."""
    expected = rate * requests
    if requests == 0 or not 0 < rate <= 1:
        return {"captured": captured, "requests": requests, "sample_rate": rate}
    lo, hi = stats.binom.ppf([0.025, 0.975], requests, rate)
    p = (
        stats.binomtest(captured, requests, rate).pvalue
        if rate < 1
        else float(captured == requests)
    )
    return {
        "captured": captured,
        "requests": requests,
        "sample_rate": rate,
        "expected": round(expected, 1),
        "expected_95": [int(lo), int(hi)],
        "captured_vs_expected": round(captured / expected, 3),
        "binomial_p": float(f"{p:.3g}"),
        "consistent": bool(p >= 0.01),
        "failed_writes": worker.get("lost_in_failed_writes", 0),
        "dropped": worker.get("dropped_queue_full", 0),
        **worker,
    }


def ratio_interval(ratios: list[float]) -> dict:
    """Geometric mean of the per-round ratios and its 95% t-interval (log scale)."""
    logs = [math.log(r) for r in ratios if r > 0]
    n = len(logs)
    if n < 2:
        return {"n": n, "geometric_mean": round(ratios[0], 3) if ratios else None}
    m, s = statistics.fmean(logs), statistics.stdev(logs)
    half = stats.t.ppf(0.975, n - 1) * s / math.sqrt(n)
    lo, hi = math.exp(m - half), math.exp(m + half)
    return {
        "n": n,
        "geometric_mean": round(math.exp(m), 3),
        "interval_95": [round(lo, 3), round(hi, 3)],
        "width": round(hi - lo, 4),
    }


def rounds_for_width(interval: dict, width: float) -> int | None:
    """About how many rounds give an interval ``width`` wide, from the spread so far."""
    if "width" not in interval or interval["width"] <= 0 or interval["n"] < 3:
        return None  # two rounds say nothing of the spread
    return math.ceil(interval["n"] * (interval["width"] / width) ** 2)
