"""The pictures in ``benchmarks/README.md``, one per benchmark where a picture says more
than its numbers: serve throughput and latency per arm and client count, accuracy per
seed against the SVC, capture's per-round cost and its record count against the
sampling expectation, ingest memory against images, training overhead per round.

Built with matplotlib's object API (``Figure``), as ``visionline.evaluation.plots``
builds the evaluation's: no backend, no global state. A result that is not current
says so in the title, in red. PNGs are written without a timestamp, so an unchanged
result gives an unchanged file.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

Draw = Callable[[Figure, dict], bool]  # False: the result holds nothing to draw


def _rounds(d: Any) -> list[float]:
    return list(d.get("rounds") or []) if isinstance(d, dict) else []


def _ratio_rounds(
    ax: Axes, series: dict[str, list[float]], targets: dict[str, float | None]
) -> None:
    """Each series' rounds as dots, its median as a bar, its own goal as a red dash."""
    for i, (label, values) in enumerate(series.items()):
        ax.plot([i] * len(values), values, "o", alpha=0.6, label=label)
        if values:
            ax.hlines(statistics.median(values), i - 0.25, i + 0.25, color="k")
        goal = targets.get(label)
        if goal is not None:
            ax.hlines(goal, i - 0.4, i + 0.4, color="red", ls="--", lw=1, label=f"goal {goal}")
    ax.set_xticks(range(len(series)), list(series))
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_ylabel("ratio per round (bar: median)")
    ax.legend(fontsize=7)


def draw_serve(fig: Figure, r: dict) -> bool:
    points = [p for p in r.get("points") or [] if isinstance(p, dict)]
    if not points:
        return False
    tput, lat = fig.subplots(1, 2)
    keys = sorted({(p.get("input"), p.get("batch_size")) for p in points}, key=str)
    for n, arm in enumerate(sorted({p["arm"] for p in points})):
        for k, (inp, batch) in enumerate(keys):
            pts = sorted(
                (
                    p
                    for p in points
                    if p["arm"] == arm and (p.get("input"), p.get("batch_size")) == (inp, batch)
                ),
                key=lambda p: p["concurrency"],
            )
            if not pts:
                continue
            label = f"{arm} ({inp}, batch {batch})" if len(keys) > 1 else arm
            c = [p["concurrency"] for p in pts]
            y = [p["requests_per_s"] for p in pts]
            # the range of the per-run medians, where there were several runs
            runs = [p.get("per_run_medians") or [v] for p, v in zip(pts, y, strict=True)]
            err = [[max(0.0, v - min(m)) for v, m in zip(y, runs, strict=True)]]
            err.append([max(0.0, max(m) - v) for v, m in zip(y, runs, strict=True)])
            # one colour per arm in both panels, a line style per input and batch size
            style = {"color": f"C{n % 10}", "ls": ("-", "--", ":", "-.")[k % 4]}
            tput.errorbar(c, y, err, fmt="o", capsize=3, label=label, **style)
            tail = [p.get("p99_ms") or p.get("p90_ms") or p.get("p50_ms") for p in pts]
            if not arm.startswith("in_process") and any(t is not None for t in tail):
                lat.plot(c, tail, "o", label=label, **style)
    for ax in (tput, lat):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.legend(fontsize=7)
    tput.set_ylabel("requests / s (median; bars: per-run range)")
    lat.set_ylabel("p99 ms (p90 if too few for a p99)")
    return True


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson 95% interval of a proportion ``p`` of ``n``: honest at 0 or n errors."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def draw_accuracy(fig: Figure, r: dict) -> bool:
    seeds = r.get("cnn_seeds") or []
    fashion = r.get("fashion_mnist") or {}
    if fashion.get("models"):
        if not seeds:
            _draw_fashion(fig.subplots(), fashion)
            return True
        ax, fm = fig.subplots(1, 2)
        _draw_fashion(fm, fashion)
    elif seeds:
        ax = fig.subplots()
    else:
        return False
    ax.set_title("digits", fontsize=9)
    n = r.get("test_images")
    xs = list(range(len(seeds)))
    if isinstance(n, int) and n > 0:
        bounds = [wilson(a, n) for a in seeds]
        err = [
            [a - lo for a, (lo, _) in zip(seeds, bounds, strict=True)],
            [hi - a for a, (_, hi) in zip(seeds, bounds, strict=True)],
        ]
        ax.errorbar(xs, seeds, err, fmt="o", capsize=4, label="CNN per seed, Wilson 95%")
    else:
        ax.plot(xs, seeds, "o", label="CNN, per seed")
    if r.get("svc_accuracy") is not None:
        ax.axhline(r["svc_accuracy"], color="red", ls="--", label="CV-tuned SVC")
    ax.set_xticks(xs)
    ax.set_xlabel("seed")
    ax.set_ylabel(f"test accuracy ({n or '?'} images)")
    ax.legend(fontsize=7)
    return True


PUBLISHED_MARKS = {"SVC (paper)": 0.897, "ResNet-18": 0.949, "WRN-28-10": 0.963}


def _draw_fashion(ax: Axes, f: dict) -> None:
    """Each model's mean over seeds with its Wilson interval, its seeds as dots, against
    our SVC, the goal and the published table."""
    names = list(f["models"])
    for i, name in enumerate(names):
        m = f["models"][name]
        low, high = m["interval_95"]
        mean = m["mean_accuracy"]
        ax.errorbar([i], [mean], [[mean - low], [high - mean]], fmt="s", capsize=5, color="C0")
        ax.plot([i] * len(m["seeds"]), m["seeds"], ".", color="grey")
    ax.axhline(f["svc_accuracy"], color="red", ls="--", lw=1, label="our CV-tuned SVC")
    ax.axhline(f["goal"], color="green", ls=":", lw=1, label="goal")
    for label, value in PUBLISHED_MARKS.items():
        ax.axhline(value, color="grey", ls="-", lw=0.5)
        ax.text(len(names) - 0.5, value, f" {label}", fontsize=6, va="center")
    ax.axhspan(0.91, 0.93, color="grey", alpha=0.1, label="published small CNNs")
    ax.set_xticks(range(len(names)), names)
    ax.set_xlim(-0.5, len(names) - 0.5 + 0.6)
    ax.set_ylabel(f"test accuracy ({f['test_images']} images)")
    ax.set_title("fashion-mnist: mean of seeds, Wilson 95%; seeds as dots", fontsize=9)
    ax.legend(fontsize=6, loc="lower right")


def draw_active_learning(fig: Figure, r: dict) -> bool:
    """Test accuracy against labels per strategy: the mean over seeds as a line, the
    seeds' range as a band; random's final accuracy dotted."""
    al = r.get("active_learning")
    if not isinstance(al, dict) or not al.get("arms"):
        return False
    ax = fig.subplots()
    labels = al["labels"]
    for i, (arm, a) in enumerate(al["arms"].items()):
        colour = "k" if arm == "random" else f"C{i}"
        ax.plot(labels, a["accuracy_mean"], "o-", ms=3, color=colour, label=arm)
        ax.fill_between(labels, a["accuracy_min"], a["accuracy_max"], color=colour, alpha=0.15)
    ax.axhline(al["random_final_accuracy"], color="grey", ls=":", lw=1, label="random, final")
    seeds = (al.get("setup") or {}).get("seeds", "?")
    ax.set_xlabel("labelled images")
    ax.set_ylabel("test accuracy (10,000 images)")
    ax.set_title(f"active learning on Fashion-MNIST: mean of {seeds} seeds, band = range")
    ax.legend(fontsize=7)
    return True


def draw_capture(fig: Figure, r: dict) -> bool:
    rounds = _rounds(r.get("ratio_paired"))
    if not rounds:
        return False
    left, right = fig.subplots(1, 2)
    _ratio_rounds(left, {"capture on / off": rounds}, {"capture on / off": r.get("target")})
    check = r.get("capture_check")
    if isinstance(check, dict) and check.get("expected"):
        lo, hi = check.get("expected_95") or (check["expected"], check["expected"])
        right.bar([0], [check["expected"]], color="lightgrey", label="expected")
        right.errorbar(
            [0],
            [check["expected"]],
            [[check["expected"] - lo], [hi - check["expected"]]],
            color="k",
            capsize=6,
            label="95% of binomial draws",
        )
        right.plot([0], [check["captured"]], "ro", label="captured")
        right.set_xticks([0], ["records"])
        right.legend(fontsize=7)
    else:
        rate = (r.get("settings") or {}).get("sample_rate", 0.1)
        sent = r.get("requests_sent_per_arm", 0)
        right.bar([0, 1], [r.get("captured_records", 0), rate * sent])
        right.set_xticks([0, 1], ["captured", f"{rate:g} x {sent} requests"])
    return True


def _ingest_sizes(r: dict) -> list[tuple[int, float]]:
    """(images, peak RSS MB): ``peak_rss_mb`` by size, or an older result's
    ``peak_rss_mb_<N>k`` keys."""
    by_size = r.get("peak_rss_mb")
    if isinstance(by_size, dict):
        return sorted((int(n), v) for n, v in by_size.items() if isinstance(v, (int, float)))
    return sorted(
        (int(k.removeprefix("peak_rss_mb_").removesuffix("k")) * 1000, v)
        for k, v in r.items()
        if k.startswith("peak_rss_mb_") and k.endswith("k") and isinstance(v, (int, float))
    )


def draw_ingest(fig: Figure, r: dict) -> bool:
    sizes = _ingest_sizes(r)
    if not sizes:
        return False
    mem, s3 = fig.subplots(1, 2)
    xs, ys = [n for n, _ in sizes], [v for _, v in sizes]
    mem.plot(xs, ys, "o", label="peak RSS")
    fit = r.get("memory_fit") or {}
    if fit.get("growth_kb_per_image") is not None and fit.get("intercept_mb") is not None:
        ends = [0, max(xs)]
        slope = fit["growth_kb_per_image"] / 1024
        mem.plot(
            ends,
            [fit["intercept_mb"] + slope * x for x in ends],
            "-",
            label=f"fit: {fit['growth_kb_per_image']:.3g} KB/image (R^2 {fit.get('r2')})",
        )
        goal = r.get("growth_goal_kb_per_image")
        if goal:
            mem.plot(
                ends,
                [fit["intercept_mb"] + goal / 1024 * x for x in ends],
                ":",
                label=f"goal: {goal:g} KB/image",
            )
    base = r.get("import_only_rss_mb")
    if base is not None:
        mem.axhline(base, color="grey", lw=0.8, ls="--", label="imports only")
    mem.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k"))
    mem.set_xlabel("images ingested")
    mem.set_ylabel("peak RSS (MB)")
    mem.set_ylim(bottom=0)
    mem.legend(fontsize=7)
    for lat in sorted({p["latency_ms"] for p in r.get("s3_sweep") or []}):
        pts = sorted(
            (p for p in r["s3_sweep"] if p["latency_ms"] == lat), key=lambda p: p["workers"]
        )
        s3.plot(
            [p["workers"] for p in pts],
            [p["objects_per_s"]["median"] for p in pts],
            "o-",
            label=f"{lat} ms",
        )
    direct = r.get("moto_direct_objects_per_s") or {}
    pts = [(w, (direct.get(f"workers_{w}") or {}).get("median")) for w in (1, 16)]
    pts = [(w, v) for w, v in pts if v is not None]
    if pts:
        s3.plot(*zip(*pts, strict=True), "kx", label="moto alone (no proxy)")
    s3.set_xlabel("workers")
    s3.set_ylabel("objects / s to the S3 emulator")
    if r.get("s3_sweep"):
        s3.legend(fontsize=7, title="added latency")
    return True


def draw_train_overhead(fig: Figure, r: dict) -> bool:
    t = r.get("targets") or {}
    series = {
        "loop / plain loop": _rounds(r.get("loop_paired")),
        "fit / plain script": _rounds(r.get("fit_paired")),
    }
    series = {k: v for k, v in series.items() if v}
    if not series:
        return False
    goals = {
        "loop / plain loop": t.get("ratio_vs_plain_loop"),
        "fit / plain script": t.get("fit_ratio_vs_plain_script"),
    }
    _ratio_rounds(fig.subplots(), series, goals)
    return True


PLOTS: dict[str, Draw] = {
    "serve": draw_serve,
    "accuracy": draw_accuracy,
    "capture": draw_capture,
    "estimate": draw_active_learning,
    "ingest": draw_ingest,
    "train_overhead": draw_train_overhead,
}


def save(draw: Draw, result: dict, status: str, path: Path) -> Path | None:
    """Draw ``result`` into ``path``; None (and no file) when there is nothing to draw."""
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    try:
        if not draw(fig, result):
            return None
    except (KeyError, TypeError, ValueError) as e:  # a result of another shape: no picture
        print(f"no plot for {path.stem}: {type(e).__name__}: {e}")
        return None
    revision = str(result.get("git_revision") or "unknown")[:10]
    title = f"{path.stem} at {revision}"
    if status != "current":
        fig.suptitle(f"{title}: {status.upper()}, not a figure to cite", color="red")
    else:
        fig.suptitle(title)
    fig.savefig(path, format="png", dpi=90, metadata={"Software": None})
    return path
