"""What ``serve.json`` holds, from the runs ``benchmarks/serve.py`` measured: each arm at
each point, every comparison over all its pairs of all runs (``serve_stats``), the
ceilings, throughput per core, load times one worker at a time, and the open loop."""

from __future__ import annotations

import argparse
import statistics
from typing import Any

from benchmarks.serve_arms import Pinning
from benchmarks.serve_stats import (
    best_other_pairs,
    compare,
    per_core,
    per_run_point_medians,
    pooled,
    run_pairs,
)
from benchmarks.serve_stats import latency_summary as _lat

OURS = "visionline"
OTHERS = ("stock_eager", "stock_compiled", "litserve")  # what a user would run instead
TARGETS = {"paired_min_over_pairs": 1.0, "served_vs_in_process_full_path": 0.85}


def _key(point: tuple) -> str:
    name, bs, c = point
    return f"{name}_b{bs}_c{c}"


def points(runs: list[Any], cores: int) -> list[dict]:
    """Each arm at each point: the median over every round of every run, each run's
    median, requests/s per server core, and latency percentiles over every request."""
    out = []
    for point in runs[0].rates:
        name, bs, c = point
        for arm in runs[0].rates[point]:
            values = [v for run in runs for v in run.rates.get(point, {}).get(arm, [])]
            if not values:
                continue
            lat = [x for run in runs for x in run.lat.get(point, {}).get(arm, [])]
            median = statistics.median(values)
            out.append(
                {
                    "input": name,
                    "batch_size": bs,
                    "concurrency": c,
                    "arm": arm,
                    "requests_per_s": round(median, 2),
                    "requests_per_s_per_core": per_core(median, cores),
                    "per_run_medians": per_run_point_medians([r.rates for r in runs], arm).get(
                        _key(point), []
                    ),
                    "rounds_requests_per_s": [round(v, 2) for v in values],
                    **(_lat(lat) if lat else {}),
                }
            )
    return out


def comparisons(rates: list[dict]) -> dict[str, dict]:
    """Every comparison, pooled over all pairs of all runs."""
    out = {f"{OURS}_vs_{o}": compare(rates, OURS, o) for o in OTHERS}
    out[f"{OURS}_vs_best_other"] = pooled([best_other_pairs(r, OURS, OTHERS) for r in rates])
    out["handler_alone_vs_stock_eager"] = compare(rates, "visionline_eager", "stock_eager")
    out["plan_vs_eager"] = compare(rates, OURS, "visionline_eager")
    out["stock_compiled_vs_stock_eager"] = compare(rates, "stock_compiled", "stock_eager")
    out["litserve_vs_stock_eager"] = compare(rates, "litserve", "stock_eager")
    return out


def ceiling(rates: list[dict], point: tuple, arm: str) -> dict:
    """Ours against an in-process arm, over the pairs at one point."""
    return pooled([[p for p in run_pairs(r, OURS, arm) if p[0] == point] for r in rates])


def headline_point(rates: list[dict]) -> tuple:
    """The ceiling's point: photo (else the first input) at the largest batch size and
    the most clients, where the server is busiest."""
    keys = list(rates[0])
    name = "photo" if any(k[0] == "photo" for k in keys) else keys[0][0]
    return max((k for k in keys if k[0] == name), key=lambda k: (k[1], k[2]))


def load_times(runs: list[Any]) -> dict:
    """Per batch size and archive: TorchServe's WorkerLoadTime with the worker loading
    alone, one value per run; and the start-up figures, where all load at once."""
    solo: dict[str, dict[str, list]] = {}
    at_start: dict[str, dict[str, list]] = {}
    for run in runs:
        for bs, by_model in run.solo_load.items():
            for model, v in by_model.items():
                solo.setdefault(str(bs), {}).setdefault(model, []).append(v["worker_load_s"])
        for bs, by_model in run.startup_load_s.items():
            for model, v in by_model.items():
                at_start.setdefault(str(bs), {}).setdefault(model, []).append(v)
    return {
        "one_at_a_time_per_run": solo,
        "all_at_once_at_start_per_run": at_start,
        "litserve_start_to_ready_s_per_run": [
            v for run in runs for v in run.litserve_start_to_ready_s.values()
        ],
        "stock_compiled_warmup_s_per_run": [
            v for run in runs for v in run.compile_warmup_s.values()
        ],
    }


def per_core_capacity(pts: list[dict]) -> dict[str, float]:
    """Each arm's best per-point median requests/s per server core (its capacity)."""
    out: dict[str, float] = {}
    for p in pts:
        out[p["arm"]] = max(out.get(p["arm"], 0.0), p["requests_per_s_per_core"])
    return out


def figures(
    args: argparse.Namespace,
    inputs: dict[str, list[bytes]],
    pin: Pinning,
    preprocess_ms: dict,
    runs: list[Any],
    open_loop: dict | None,
    batch_delay_ms: int,
) -> dict:
    rates = [r.rates for r in runs]
    cores = len(pin.server) if pin.on else len(pin.all)
    pts = points(runs, cores)
    comp = comparisons(rates)
    main = comp[f"{OURS}_vs_stock_eager"]
    at = headline_point(rates)
    full = ceiling(rates, at, "in_process_full")
    forward = ceiling(rates, at, "in_process_forward_only")
    sizes_kb = {k: round(statistics.median(len(b) for b in v) / 1024, 1) for k, v in inputs.items()}
    return {
        "paired_min_over_pairs": main.get("min_over_pairs"),
        "paired_median_over_pairs": main.get("median_over_pairs"),
        "paired_vs": "stock_eager (others in comparisons)",
        "per_run_medians_vs_stock_eager": main.get("per_run_medians"),
        "paired_min_over_pairs_vs_best_other": comp[f"{OURS}_vs_best_other"].get("min_over_pairs"),
        "comparisons": comp,
        "served_vs_in_process_full_path": full.get("median_over_pairs"),
        "served_vs_in_process_forward_only": forward.get("median_over_pairs"),
        "served_vs_in_process_point": _key(at),
        "ceilings": {"full_path": full, "forward_only": forward},
        "open_loop": open_loop,
        "throughput_per_core": per_core_capacity(pts),
        "server_cores": cores,
        "worker_load": load_times(runs),
        "worker_inference_plan": [r.worker_plans for r in runs],
        "in_process_plan": [r.in_process_plans for r in runs],
        "stock_compiled_setting": "pt2.compile: enable, backend inductor, options.freezing",
        "model": "resnet18 224x224, 10 classes",
        "workers_per_arm": 1,
        "batch_delay_ms": batch_delay_ms,
        "runs": args.runs,
        "rounds_per_run": args.rounds,
        "min_requests_per_round": args.min_requests_per_round,
        "inputs": {k: {"images": len(v), "median_kb": sizes_kb[k]} for k, v in inputs.items()},
        "pinning": (
            {"client_cores": sorted(pin.client), "server_cores": sorted(pin.server)}
            if pin.on
            else f"none ({pin.unpinned()})"
        ),
        "preprocess_ms_per_image": preprocess_ms,
        "points": pts,
        "targets": TARGETS,
    }
