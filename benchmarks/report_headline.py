"""The head of ``benchmarks/README.md``: one table of the figures a reader cites (each
with its goal, its spread, what it is compared with, and whether it may be cited), and
a plot per benchmark where a picture says more than the numbers.

Which figures lead is an editorial choice made here, per benchmark; a figure a result
does not hold (an older result, a benchmark that changed) shows as ``-``. A plot of a
result that is not current says so in its title: a picture is cited as readily as a
number.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

Row = tuple[str, str, str, str]  # figure, goal, measured (spread), anchor
NONE = "-"


def _num(x: Any, digits: int = 3) -> str:
    if isinstance(x, bool) or x is None:
        return NONE if x is None else str(x)
    if isinstance(x, (int, float)):
        return f"{x:.{digits}g}"
    return str(x)


def _spread(d: Any) -> str:
    """``median (min-max, n rounds)`` of a spread dict, as ``_common.spread`` writes it."""
    if not isinstance(d, dict) or "median" not in d:
        return _num(d)
    extra = f", n={d['n']}" if "n" in d else ""
    return f"{_num(d['median'])} (range {_num(d.get('min'))}-{_num(d.get('max'))}{extra})"


def _goal(value: Any, op: str, target: Any) -> str:
    if not isinstance(target, (int, float)):
        return NONE
    met = ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        ok = {">=": value >= target, "<=": value <= target}.get(op, value < target)
        met = " (met)" if ok else " (missed)"
    return f"{op} {_num(target)}{met}"


def _accuracy(r: dict) -> list[Row]:
    seeds = r.get("cnn_seeds") or []
    digits = [
        (
            "digits: CNN test accuracy",
            "not below the SVC",
            f"{_num(r.get('cnn_mean_accuracy'), 4)} +- {_num(r.get('cnn_std'), 2)}"
            f" ({len(seeds)} seeds, min {_num(r.get('cnn_min_accuracy'), 4)};"
            f" {r.get('test_images', '?')} test images)",
            f"CV-tuned SVC {_num(r.get('svc_accuracy'), 4)}; McNemar p {_num(r.get('mcnemar_p'))}",
        )
    ]
    return digits + _fashion(r.get("fashion_mnist") or {})


def _planned(f: dict) -> str:
    done, planned = f.get("seeds_done"), f.get("seeds_planned")
    return f" (of {planned} planned: a run stopped early)" if done != planned else ""


def _fashion(f: dict) -> list[Row]:
    """#21 item 2: each model on Fashion-MNIST against the goal, the SVC and the paper."""
    rows = []
    for arch, m in (f.get("models") or {}).items():
        low, high = m.get("interval_95") or (None, None)
        seconds = m.get("train_seconds_per_seed") or []
        rows.append(
            (
                f"fashion-mnist: {arch} test accuracy",
                _goal(m.get("mean_accuracy"), ">=", f.get("goal"))
                + (" (the best model)" if arch == f.get("best_model") else ""),
                f"{_num(m.get('mean_accuracy'), 4)} +- {_num(m.get('seed_std'), 2)} over"
                f" {len(m.get('seeds') or [])}{_planned(f)} seeds,"
                f" 95% [{_num(low, 4)}, {_num(high, 4)}];"
                f" {_num(max(seconds, default=None))} s training per seed at most",
                f"CV-tuned SVC {_num(f.get('svc_accuracy'), 4)} (McNemar p"
                f" {_num(m.get('mcnemar_vs_svc_p'))}); published: SVC 0.897, small CNNs"
                " 0.91-0.93, ResNet-18 0.949",
            )
        )
    return rows


def _capture(r: dict) -> list[Row]:
    interval = r.get("ratio_interval") or {}
    measured = _spread(r.get("ratio_paired"))
    if "interval_95" in interval:
        lo, hi = interval["interval_95"]
        reached = "" if r.get("interval_reached") else ", wider than asked"
        measured += f"; geometric mean {_num(interval['geometric_mean'])} [{lo}, {hi}]{reached}"
    rows = [
        (
            "throughput with capture on / off",
            _goal(r.get("ratio_capture_on_vs_off"), ">=", r.get("target")),
            measured,
            "same handler, capture off",
        )
    ]
    check = r.get("capture_check")
    if isinstance(check, dict) and "expected" in check:
        rows.append(
            (
                "records captured / expected",
                "binomial p >= 0.01, nothing lost",
                f"{check['captured']} / {_num(check['expected'], 4)}"
                f" (95% of draws {check.get('expected_95')}; p {_num(check.get('binomial_p'), 2)};"
                f" lost in failed writes {check.get('failed_writes', '?')},"
                f" dropped {check.get('dropped', '?')})",
                f"sample rate {check.get('sample_rate')} x {check.get('requests')} requests",
            )
        )
    else:
        rows.append(
            (
                "records captured / expected",
                "binomial p >= 0.01, nothing lost",
                f"{r.get('captured_records', NONE)} of {r.get('requests_sent_per_arm', NONE)}"
                " requests (no binomial check or failed writes recorded)",
                "sample rate x requests",
            )
        )
    return rows


def _ingest(r: dict) -> list[Row]:
    fit = r.get("memory_fit") or {}
    sizes = r.get("memory_sizes") or []
    if fit:
        memory = (
            f"{_num(fit.get('growth_kb_per_image'))} KB/image (least squares over "
            f"{', '.join(f'{n:,}' for n in sizes)} images; R^2 {_num(fit.get('r2'))}, "
            f"max residual {_num(fit.get('max_abs_residual_mb'))} MB)"
        )
    else:  # a result from before the fit: the growth between its two sizes
        memory = f"{_num(r.get('peak_rss_growth_mb'))} MB from 5k to 40k images"
    direct = r.get("moto_direct_objects_per_s") or {}
    emulator = "sequential client, same emulator"
    if direct:
        emulator += (
            f"; moto alone, no latency: {_num((direct.get('workers_1') or {}).get('median'))}"
            f" objects/s at 1 worker, {_num((direct.get('workers_16') or {}).get('median'))}"
            " at 16"
        )
    return [
        (
            "ingest: peak RSS growth per image",
            _goal(r.get("growth_kb_per_image"), "<", r.get("growth_goal_kb_per_image")),
            memory,
            f"import-only RSS {_num(r.get('import_only_rss_mb'))} MB",
        ),
        (
            "S3 ingest, 16 workers / 1, 20 ms latency",
            _goal(r.get("s3_parallel_vs_sequential_20ms"), ">=", 4),
            _spread(r.get("s3_parallel_vs_sequential_20ms_spread"))
            if r.get("s3_parallel_vs_sequential_20ms_spread")
            else _num(r.get("s3_parallel_vs_sequential_20ms")),
            emulator,
        ),
    ]


def _pipeline(r: dict) -> list[Row]:
    return [
        (
            "Prefect overhead of the pipeline (s)",
            "< 5",
            f"{_num(r.get('overhead_s_excl_cold_start'))} (cold start {_num(r.get('cold_start_s'))})",
            f"task bodies {_num(r.get('task_bodies_s'))} s",
        )
    ]


def _serve(r: dict) -> list[Row]:
    if "comparisons" not in r:  # a result from before #21's three runs and three baselines
        return _serve_old(r)
    t = r.get("targets") or {}
    comp = r.get("comparisons") or {}
    rows = []
    anchors = {
        "stock_eager": "stock TorchServe image_classifier, eager, same model",
        "stock_compiled": "stock handler, model-config pt2 compile (inductor, freezing)",
        "litserve": "LitServe with batching, same model and work",
        "best_other": "the fastest of the three in each round",
    }
    for other, anchor in anchors.items():
        c = comp.get(f"visionline_vs_{other}") or {}
        rows.append(
            (
                f"served throughput / {other.replace('_', ' ')} (min over pairs)",
                _goal(c.get("min_over_pairs"), ">=", t.get("paired_min_over_pairs")),
                _pooled(c),
                anchor,
            )
        )
    ceilings = r.get("ceilings") or {}
    rows.append(
        (
            f"served / in-process full path ({r.get('served_vs_in_process_point', '?')})",
            _goal(
                r.get("served_vs_in_process_full_path"),
                ">=",
                t.get("served_vs_in_process_full_path"),
            ),
            _pooled(ceilings.get("full_path") or {}, "median"),
            "decode, preprocessing, forward, softmax in process; forward-only:"
            f" {_num(r.get('served_vs_in_process_forward_only'))}",
        )
    )
    return rows + _serve_open_loop(r) + _serve_costs(r)


def _pooled(c: dict, lead: str = "min") -> str:
    """A pooled comparison: its minimum (or median) over pairs, the other, per-run medians."""
    if not c.get("n_pairs"):
        return NONE
    runs = ", ".join(_num(x) for x in c.get("per_run_medians") or [])
    first, second = ("min_over_pairs", "median_over_pairs")
    if lead == "median":
        first, second = second, first
    return (
        f"{_num(c.get(first))} ({second.split('_')[0]} {_num(c.get(second))};"
        f" per-run medians {runs}; {c['n_pairs']} pairs)"
    )


def _serve_open_loop(r: dict) -> list[Row]:
    ol = r.get("open_loop") or {}
    rows = []
    for arm, v in ol.items():
        if not isinstance(v, dict) or "capacity_per_s" not in v:
            continue
        parts = [
            f"{pct}%: p50 {_num(p.get('p50_ms'))}, p99 {_num(p.get('p99_ms'))} ms"
            f" ({p.get('n')} requests, {p.get('failed', 0)} failed)"
            for pct in (50, 80)
            if isinstance(p := v.get(f"at_{pct}pct"), dict)
        ]
        rows.append(
            (
                f"open loop {arm}: latency at 50% / 80% of capacity",
                NONE,
                "; ".join(parts) or NONE,
                f"Poisson arrivals; capacity {_num(v.get('capacity_per_s'))}/s (closed loop)",
            )
        )
    return rows


def _serve_costs(r: dict) -> list[Row]:
    per_core = r.get("throughput_per_core") or {}
    load = (r.get("worker_load") or {}).get("one_at_a_time_per_run") or {}
    loads = "; ".join(
        f"batch {bs}: " + ", ".join(f"{m} {'/'.join(_num(x) for x in v)}" for m, v in by.items())
        for bs, by in load.items()
    )
    return [
        (
            f"requests/s per server core (server on {r.get('server_cores', '?')} of the cores)",
            NONE,
            ", ".join(f"{a} {_num(v)}" for a, v in per_core.items()) or NONE,
            "each arm's best point (median over rounds)",
        ),
        (
            "worker load s, one worker at a time (per run)",
            NONE,
            loads or NONE,
            "TorchServe's WorkerLoadTime; ours includes timing its forward plan",
        ),
    ]


def _serve_old(r: dict) -> list[Row]:
    t = r.get("targets") or {}
    minimum = r.get("paired_min_over_pairs", r.get("paired_min_ratio_vs_stock"))
    return [
        (
            "served throughput / stock TorchServe (min of point medians)",
            _goal(minimum, ">=", t.get("paired_min_ratio_vs_stock")),
            f"{_num(minimum)} (median {_num(r.get('paired_median_ratio_vs_stock'))})",
            "stock TorchServe image handler, same model",
        ),
        (
            "served / in-process (batch 8, 32 clients)",
            _goal(r.get("served_vs_in_process_b8_c32"), ">=", t.get("served_vs_in_process_b8_c32")),
            _num(r.get("served_vs_in_process_b8_c32")),
            "in-process forward pass only (no decode or preprocessing)",
        ),
    ]


def _train_overhead(r: dict) -> list[Row]:
    t = r.get("targets") or {}
    return [
        (
            "training loop / plain PyTorch loop",
            _goal(r.get("ratio_vs_plain_loop"), ">=", t.get("ratio_vs_plain_loop")),
            _spread(r.get("loop_paired")),
            "a plain PyTorch loop, same model and data",
        ),
        (
            "fit() / plain script",
            _goal(r.get("fit_ratio_vs_plain_script"), ">=", t.get("fit_ratio_vs_plain_script")),
            _spread(r.get("fit_paired")),
            "a plain training script",
        ),
    ]


def _train_gpu(r: dict) -> list[Row]:
    return [
        (
            "GPU training images/s",
            str(r.get("target", NONE)),
            f"{_num(r.get('images_per_s'))}; vs plain {_spread(r.get('ratio_vs_plain_paired'))}",
            "a plain PyTorch loop on the same GPU",
        )
    ]


def _test_acc(t: Any) -> str:
    """``acc [low, high]`` of a test figure as tune.py writes it."""
    if not isinstance(t, dict) or "accuracy" not in t:
        return NONE
    low, high = t.get("interval_95") or (None, None)
    return f"{_num(t.get('accuracy'), 4)} [{_num(low, 4)}, {_num(high, 4)}]"


def _tune(r: dict) -> list[Row]:
    data = f"{r.get('dataset', 'digits')}, {r.get('train_per_class', 'all')} per class"
    best = r.get("best_test") or {}
    versus = best.get("vs_default") or {}
    orders = r.get("pruning_speedup_per_order")
    return [
        (
            f"search ({data}): best trial / default, test accuracy",
            "best above default",
            f"{_test_acc(best)} / {_test_acc(r.get('default_test'))}",
            f"the default config's own run (val {_num(r.get('best_val_accuracy'), 4)} / "
            f"{_num(r.get('default_val_accuracy'), 4)}; McNemar p {_num(versus.get('p'))})",
        ),
        (
            "pruning speed-up (same trials)",
            "> 1",
            _num(r.get("pruning_speedup"))
            + (f" (the lowest; per order {', '.join(map(_num, orders))})" if orders else ""),
            "the same trials without pruning",
        ),
    ]


def _estimate(r: dict) -> list[Row]:
    """#19: accuracy estimated without labels, over shifted Fashion-MNIST windows."""
    ruled = r.get("with_config_rule") or {}
    est = ruled.get("estimators") or {}
    raw = (r.get("without_rule") or {}).get("estimators") or {}
    method = (r.get("config") or {}).get("method", "doc")
    atc = (raw.get("atc_max_softmax") or {}).get("mae_all_corruptions")
    avg = (raw.get("average_confidence") or {}).get("mae_all_corruptions")
    chosen = est.get(method) or {}
    return [
        (
            "ATC (max-softmax) MAE on corruptions, no refusals",
            _goal(atc, "<=", 0.03),
            _num(atc),
            f"average confidence {_num(avg)}",
        ),
        (
            f"{method}: worst error on an answered window",
            _goal(chosen.get("worst_answered_error"), "<=", 0.10),
            _num(chosen.get("worst_answered_error")),
            f"declined {_num(ruled.get('declined_share'))} of windows",
        ),
    ]


def _active_learning(r: dict) -> list[Row]:
    """#19 item 6: labels each queue strategy needs to reach random's final accuracy."""
    al = r.get("active_learning")
    if not isinstance(al, dict):
        return []
    final = al.get("random_final_accuracy")
    budget = (al.get("labels") or [None])[-1]
    rows = []
    for arm in ("least-confidence", "margin", "entropy"):
        a = (al.get("arms") or {}).get(arm) or {}
        seeds = ", ".join(_num(n, 4) for n in a.get("labels_to_random_final_per_seed") or [])
        diffs = ", ".join(f"{d:+.3f}" for d in a.get("final_minus_random_per_seed") or [])
        need = a.get("labels_to_random_final")
        goal = NONE if budget is None else f"< {budget}"
        if isinstance(need, (int, float)) and budget is not None:
            goal += " (met)" if need < budget else " (missed)"
        elif budget is not None:
            goal += " (missed)"
        rows.append(
            (
                f"active learning, {arm}: labels to random's final accuracy {_num(final, 4)}",
                goal,
                f"{_num(a.get('labels_to_random_final'), 4)} (per seed {seeds})",
                f"random: {_num(budget, 4)} labels; final accuracy vs random per seed {diffs}",
            )
        )
    return rows


def _estimate_all(r: dict) -> list[Row]:
    return _estimate(r) + _active_learning(r)


HEADLINES: dict[str, Callable[[dict], list[Row]]] = {
    "estimate": _estimate_all,
    "accuracy": _accuracy,
    "capture": _capture,
    "ingest": _ingest,
    "pipeline": _pipeline,
    "serve": _serve,
    "train_overhead": _train_overhead,
    "train_gpu": _train_gpu,
    "tune": _tune,
}


def headline(loaded: dict[str, Any], marks: dict) -> list[str]:
    """The headline table: a row per cited figure, its status that of its result."""
    lines = [
        "## Headline figures",
        "",
        "| benchmark | figure | goal | measured (spread) | compared with | status |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, st in marks.items():
        result = loaded.get(name)
        label = f"**{st.label}**" if st.label != "current" else st.label
        if not isinstance(result, dict):
            lines.append(f"| {name} | | | | | {label} |")
            continue
        rows = HEADLINES.get(name, lambda r: [("(no headline chosen)", NONE, NONE, NONE)])(result)
        for figure, goal, measured, anchor in rows:
            if st.label != "current":  # a figure that may not be cited meets no goal
                goal = goal.replace(" (met)", "").replace(" (missed)", "")
            cells = [name, figure, goal, measured, anchor, label]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    stale = [n for n, st in marks.items() if st.label != "current"]
    if stale:
        lines += [
            "",
            f"Not citable as they stand ({len(stale)} of {len(marks)}): "
            + ", ".join(f"{n} ({marks[n]})" for n in stale)
            + ". `make bench` measures them again.",
        ]
    return lines


def plots(loaded: dict[str, Any], marks: dict, out: Path) -> list[str]:
    """A PNG per benchmark that has a picture in ``report_plots``; the README lines."""
    from benchmarks.report_plots import PLOTS, save

    lines = ["## Plots", ""]
    out.mkdir(parents=True, exist_ok=True)
    for name, draw in PLOTS.items():
        result = loaded.get(name)
        if not isinstance(result, dict):
            continue
        st = marks[name]
        path = save(draw, result, st.label, out / f"{name}.png")
        if path is None:
            continue
        rel = f"{out.name}/{path.name}"
        lines += [f"**{name}** ({st.label}): ![{name}]({rel})", ""]
    return lines
