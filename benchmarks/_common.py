"""Shared bits for benchmarks: machine description, git revision, result writing, and the
paired-comparison helpers every benchmark reports with.

Results go to ``benchmarks/results/NAME.json``, or to ``--results-dir`` /
``$VISIONLINE_BENCH_RESULTS`` when given (the tests run every benchmark into a temp dir).
A ``--smoke`` run (tiny sizes, to check that the script works) is marked ``"smoke": true``
and is never a figure to cite.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
RESULTS_ENV = "VISIONLINE_BENCH_RESULTS"


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    with contextlib.suppress(OSError):  # a busy machine shows here
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return info


def git_revision() -> str:
    """HEAD, with ``+dirty`` when tracked code (not results) differs from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, timeout=5, cwd=REPO
        ).stdout.strip()

    try:
        changed = git(
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!benchmarks/results",
            ":!benchmarks/README.md",
        )
        return git("rev-parse", "HEAD") + ("+dirty" if changed else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--results-dir",
        default=None,
        help=f"where NAME.json goes (default ${RESULTS_ENV} or benchmarks/results)",
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes: checks the script runs; the result is marked smoke, not a figure",
    )


def results_dir(override: str | Path | None = None) -> Path:
    return Path(override or os.environ.get(RESULTS_ENV) or RESULTS)


def measurement_meta(smoke: bool = False) -> dict:
    """What every result (or a section measured on its own) records about its run."""
    return {
        "smoke": smoke,
        "machine": machine(),
        "git_revision": git_revision(),
        "measured_at": datetime.now(UTC).isoformat(),
    }


def read_result(name: str, results_dir_: str | Path | None = None) -> dict:
    """The stored ``NAME.json`` ({} when there is none yet)."""
    path = results_dir(results_dir_) / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def write_result(
    name: str,
    figures: dict,
    results_dir_: str | Path | None = None,
    smoke: bool = False,
    keep_meta: bool = False,
) -> Path:
    """Write ``NAME.json``: the figures and this run's machine, revision and time, or
    with ``keep_meta`` the ones ``figures`` already carry (a script that re-measured
    only one section of a result; that section carries its own)."""
    out_dir = results_dir(results_dir_)
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.json"
    meta = measurement_meta(smoke)
    if keep_meta:
        meta = {k: figures[k] for k in meta if k in figures} | {
            k: v for k, v in meta.items() if k not in figures
        }
    payload = {**figures, **meta}
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(out)  # a reader never sees half a result
    for k, v in figures.items():
        if k in meta:
            continue
        if not isinstance(v, (list, dict)) or len(json.dumps(v)) < 200:
            print(f"{k}: {v}")
    print(f"-> {out}")
    return out


# --------------------------------------------------------------------------- pairing
def arm_order(arms: Sequence[str], rng: random.Random) -> list[str]:
    """The arms of one round in random order: drift within a round (a neighbour's job,
    thermal state, caches) then favours no arm systematically."""
    order = list(arms)
    rng.shuffle(order)
    return order


def spread(values: Sequence[float], digits: int = 3) -> dict:
    """Median, quartiles and range of per-round values; quartiles need at least 4."""
    v = sorted(values)
    out = {
        "median": round(statistics.median(v), digits),
        "min": round(v[0], digits),
        "max": round(v[-1], digits),
        "n": len(v),
    }
    if len(v) >= 4:
        q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive")
        out["q1"], out["q3"] = round(q1, digits), round(q3, digits)
    return out


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Round-by-round ratios of two arms measured in the same rounds."""
    if len(numerator) != len(denominator):
        raise ValueError("paired ratios need one value per round from each arm")
    return [a / b for a, b in zip(numerator, denominator, strict=True)]


def paired(numerator: Sequence[float], denominator: Sequence[float], digits: int = 3) -> dict:
    """The paired comparison of two arms: per-round ratios with their spread, plus how
    many rounds the numerator won."""
    r = paired_ratios(numerator, denominator)
    return {
        **spread(r, digits),
        "rounds": [round(x, digits) for x in r],
        "rounds_above_1": sum(x > 1 for x in r),
    }


def write_digits_sample(out_dir: Path, per_class: int | None = None) -> Path:
    """scikit-learn's digits as an ImageFolder; with ``per_class``, only the first N images
    of each class (smoke runs train in seconds on them)."""
    from visionline.data.samples import write_digits

    write_digits(out_dir)
    if per_class is not None:
        for cls in sorted(p for p in out_dir.iterdir() if p.is_dir()):
            for extra in sorted(cls.iterdir())[per_class:]:
                extra.unlink()
    return out_dir


def sig(x: float, digits: int = 3) -> float:
    """``x`` to ``digits`` significant figures (p-values: 2.4e-07 must not print as 0.0)."""
    return float(f"{x:.{digits}g}")
