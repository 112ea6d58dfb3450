"""`python -m benchmarks.report`, as a user runs it, against a git history made here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def commit(repo: Path, path: str, text: str, message: str) -> str:
    f = repo / path
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(text)
    git(repo, "add", path)
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD")


def result(results: Path, name: str, revision: str, smoke: bool = False, **figures) -> None:
    payload = {
        **figures,
        "smoke": smoke,
        "machine": {"cpus": 2, "load_avg_1m": 0.3},
        "git_revision": revision,
        "measured_at": "2026-11-30T10:00:00+00:00",
    }
    (results / f"{name}.json").write_text(json.dumps(payload))


def rows(readme: str, name: str) -> list[list[str]]:
    """The rows of ``name`` in the full dump (after the headline table and the plots)."""
    dump = readme.split("## Every figure", 1)[1]
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in dump.splitlines()
        if line.startswith(f"| {name} |")
    ]


def test_report_marks_current_stale_dirty_smoke_and_unknown(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    for name in ("pipeline", "accuracy", "train_gpu", "ingest", "train_overhead"):
        commit(repo, f"benchmarks/{name}.py", "x = 1\n", f"{name} benchmark")
    commit(repo, "src/visionline/__init__.py", "", "a package")
    old = commit(repo, "benchmarks/serve.py", "import visionline.serving.x\n", "serve benchmark")
    served = commit(repo, "src/visionline/serving/x.py", "v = 1\n", "the code serve imports")
    head = commit(repo, "README.md", "unrelated", "an unrelated change")
    results = tmp_path / "results"
    results.mkdir()
    result(results, "serve", old, paired_min_ratio_vs_stock=1.02)  # code changed after
    result(results, "pipeline", head, overhead_s_excl_cold_start=2.5, per_task={"a": 1})
    result(results, "accuracy", head + "+dirty", cnn_mean_accuracy=0.99)
    result(results, "train_gpu", head, smoke=True, images_per_s=3.0)
    result(results, "ingest", "0" * 40, s3_sweep={"w1": 1})
    result(
        results,
        "train_overhead",
        served,
        fit_ratio_vs_plain_script=0.93,
        fit_paired={"rounds": list(range(40))},
    )
    out = tmp_path / "README.md"

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.report",
            "--results-dir",
            str(results),
            "--out",
            str(out),
            "--repo",
            str(repo),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    readme = out.read_text()

    summary = {r[0]: r for r in (rows(readme, n)[0] for n in ("serve", "pipeline", "accuracy"))}
    assert summary["serve"][2] == "stale (changed since: `src/visionline/serving/x.py`)"
    assert summary["pipeline"][2] == "current"
    assert summary["accuracy"][2] == "dirty (uncommitted changes when measured)"
    assert summary["accuracy"][1] == f"`{head[:10]}+dirty`"
    assert rows(readme, "train_gpu")[0][2] == "smoke (not a figure)"
    assert rows(readme, "ingest")[0][2] == "unknown revision"
    # the unrelated README commit after train_overhead's revision does not make it stale
    assert rows(readme, "train_overhead")[0][2] == "current"

    figures = {(r[0], r[1]): r for r in rows(readme, "serve")[1:] + rows(readme, "pipeline")[1:]}
    assert figures[("serve", "`paired_min_ratio_vs_stock`")][2:] == [
        "1.02",
        f"`{old[:10]}`",
        "stale",
    ]
    assert figures[("pipeline", "`per_task`")][2] == '{"a": 1}'
    long = next(r for r in rows(readme, "train_overhead") if r[1] == "`fit_paired`")
    assert long[2] == "(1 entries: `results/train_overhead.json` `fit_paired`)"
    # the bookkeeping keys are columns, not figures
    assert not [r for r in rows(readme, "serve") if r[1] in ("`machine`", "`git_revision`")]


def test_report_without_results(tmp_path):
    out = tmp_path / "README.md"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.report",
            "--results-dir",
            str(tmp_path / "none"),
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "No results yet: run `make bench`." in out.read_text()


def test_the_accuracy_plot_interval_is_honest_at_zero_errors():
    """284 of 284 right still leaves a 95% lower bound near 0.987 (issue #21)."""
    from benchmarks.report_plots import wilson

    lo, hi = wilson(1.0, 284)
    assert 0.986 < lo < 0.988 and hi == pytest.approx(1.0)
    lo, hi = wilson(0.5, 100)
    assert lo == pytest.approx(0.404, abs=1e-3) and hi == pytest.approx(0.596, abs=1e-3)
