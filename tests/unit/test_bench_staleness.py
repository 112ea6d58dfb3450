"""Staleness that cannot lie: in a temporary copy of the repository, a result measured at
one commit is current until a file its benchmark imports (however deep) changes, and then
the report, the headline table and ``make bench`` all treat it as stale."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.deps import dependencies
from tests.unit.test_bench_report import commit, git, result

REPO = Path(__file__).resolve().parents[2]
# what the benchmarks import or load, and what `make bench` needs to print its commands
COPIED = ("benchmarks", "src", "handlers", "flows", "configs", "tests/__init__.py")
COPIED += ("tests/support", "Makefile", "pyproject.toml", "constraints.txt", "setup.py")


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> tuple[Path, str]:
    """The tracked files the benchmarks need, committed in a repository of their own."""
    root = tmp_path_factory.mktemp("copy") / "repo"
    files = git(REPO, "ls-files", "--", *COPIED).splitlines()
    files += git(REPO, "ls-files", "--others", "--exclude-standard", "--", *COPIED).splitlines()
    for f in files:
        if (REPO / f).is_file() and not f.startswith("benchmarks/results/"):
            (root / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, root / f)
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "copy")
    return root, git(root, "rev-parse", "HEAD")


def report(repo: Path, *args: str, results: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.report",
            "--repo",
            str(repo),
            "--results-dir",
            str(results),
            *args,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def headline_status(readme: str, name: str) -> set[str]:
    head = readme.split("## Headline figures", 1)[1].split("\n## ", 1)[0]
    return {
        line.strip("|").split("|")[-1].strip().strip("*")
        for line in head.splitlines()
        if line.startswith(f"| {name} |")
    }


def test_a_change_to_an_imported_file_flips_the_mark(copy, tmp_path):
    repo, rev = copy
    results = tmp_path / "results"
    results.mkdir()
    rounds = {"median": 1.0, "min": 0.98, "max": 1.02, "n": 2, "rounds": [0.98, 1.02]}
    for name in ("capture", "serve", "ingest"):
        result(results, name, rev, ratio_capture_on_vs_off=1.0, ratio_paired=rounds)

    before = report(repo, "--stale", "capture", "serve", "ingest", results=results)
    assert before.returncode == 0, before.stderr
    assert before.stdout.split() == []  # all three current
    assert "capture: current" in before.stderr

    # the CPU inference plan: the handler imports it, the capture benchmark does not name it
    plan = "src/visionline/serving/inference.py"
    assert plan in dependencies(repo, "benchmarks/capture.py")
    assert plan not in dependencies(repo, "benchmarks/ingest.py")
    changed = commit(repo, plan, (repo / plan).read_text() + "\nCHANGED = 1\n", "change the plan")

    out = tmp_path / "README.md"
    after = report(repo, "--out", str(out), results=results)
    assert after.returncode == 0, after.stderr
    readme = out.read_text()
    assert headline_status(readme, "capture") == {"stale"}
    assert headline_status(readme, "serve") == {"stale"}
    assert headline_status(readme, "ingest") == {"current"}
    assert f"stale (changed since: `{plan}`)" in readme
    # the plot of a stale result says so beside it (and in its title)
    assert "**capture** (stale): ![capture](plots/capture.png)" in readme
    assert (tmp_path / "plots" / "capture.png").stat().st_size > 1000

    stale = report(repo, "--stale", "capture", "serve", "ingest", results=results)
    assert stale.stdout.split() == ["capture", "serve"]

    # a result measured at the new commit is current again; an uncommitted edit to a
    # file deep in the handler's imports makes it stale, as make bench then sees
    result(results, "capture", changed)
    sink = repo / "src/visionline/monitoring/capture_sink.py"
    assert report(repo, "--stale", "capture", results=results).stdout.split() == []
    sink.write_text(sink.read_text() + "\nEDITED = 1  # not committed\n")
    try:
        assert report(repo, "--stale", "capture", results=results).stdout.split() == ["capture"]
        lines = make_bench(repo, results)
        ran = [ln.split("benchmarks/")[1].split(".py")[0] for ln in lines if ".py" in ln]
        # capture and serve are stale, ingest current, the others have no result at all
        assert "capture" in ran and "serve" in ran and "ingest" not in ran
        assert "accuracy" in ran and "tune" in ran
        assert lines[-1].endswith("-m benchmarks.report")
    finally:
        git(repo, "checkout", "--", str(sink.relative_to(repo)))


def make_bench(repo: Path, results: Path) -> list[str]:
    """The commands ``make bench`` would run in ``repo``, as make prints them."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    env["VISIONLINE_BENCH_RESULTS"] = str(results)
    proc = subprocess.run(
        ["make", "--no-print-directory", "-n", "bench", f"PY={sys.executable}"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return [ln for ln in proc.stdout.splitlines() if "benchmarks" in ln]


def test_smoke_and_missing_results_are_never_current(copy, tmp_path):
    repo, rev = copy
    results = tmp_path / "results"
    results.mkdir()
    result(results, "tune", rev, smoke=True, best_val_accuracy=0.99)
    out = tmp_path / "README.md"
    proc = report(repo, "--out", str(out), results=results)
    assert proc.returncode == 0, proc.stderr
    readme = out.read_text()
    assert headline_status(readme, "tune") == {"smoke"}
    assert headline_status(readme, "serve") == {"missing"}


def test_dependencies_follow_imports_strings_and_package_data():
    deps = dependencies(REPO, "benchmarks/capture.py")
    # the handler TorchServe loads from the archive (importlib.resources.files)...
    assert "handlers/image_classifier.py" in deps
    # ...and what it imports, down to the capture sink
    assert "src/visionline/monitoring/capture_sink.py" in deps
    assert "src/visionline/serving/inference.py" in deps
    # python -m visionline.training: the package's __main__
    assert "src/visionline/training/__main__.py" in dependencies(REPO, "benchmarks/tune.py")
    # REPO / "configs" / "digits.yaml"
    assert "configs/digits.yaml" in dependencies(REPO, "benchmarks/accuracy.py")
    assert "handlers/image_classifier.py" not in dependencies(REPO, "benchmarks/ingest.py")


def test_the_alias_matches_setup_py():
    """deps resolves visionline_handlers to handlers/ as setup.py installs it."""
    from benchmarks.deps import ALIASES

    setup = (REPO / "setup.py").read_text()
    for alias, folder in ALIASES.items():
        assert f'"{alias}": "{folder}"' in setup


def test_the_documented_commands_run_as_typed():
    """docs/benchmarks.md: `python -m benchmarks.deps capture`, `python -m benchmarks.report --stale`."""
    deps = subprocess.run(
        [sys.executable, "-m", "benchmarks.deps", "capture"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert deps.returncode == 0, deps.stderr
    assert "handlers/image_classifier.py" in deps.stdout.splitlines()
    stale = subprocess.run(
        [sys.executable, "-m", "benchmarks.report", "--stale"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stale.returncode == 0, stale.stderr
    named = {line.split(":")[0] for line in stale.stderr.splitlines()}
    assert set(stale.stdout.split()) <= named and "capture" in named
    unknown = subprocess.run(
        [sys.executable, "-m", "benchmarks.report", "--stale", "nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unknown.returncode == 2 and "no benchmark named nope" in unknown.stderr


def test_only_a_current_result_meets_or_misses_its_goal(copy, tmp_path):
    repo, rev = copy
    results = tmp_path / "results"
    results.mkdir()
    result(results, "pipeline", rev, overhead_s_excl_cold_start=1.0)
    result(results, "capture", rev, smoke=True, ratio_capture_on_vs_off=1.0, target=0.95)
    out = tmp_path / "README.md"
    assert report(repo, "--out", str(out), results=results).returncode == 0
    head = out.read_text().split("## Headline figures", 1)[1].split("\n## ", 1)[0]
    capture = next(ln for ln in head.splitlines() if ln.startswith("| capture | throughput"))
    assert ">= 0.95 |" in capture and "(met)" not in capture


def test_a_result_is_as_current_as_its_least_current_section(copy, tmp_path):
    """accuracy.py measures Fashion-MNIST on its own: a section carries its revision,
    and an old section makes the whole result stale however new the rest is."""
    repo, rev = copy
    results = tmp_path / "results"
    results.mkdir()
    config = "configs/fashion-mnist.yaml"
    assert config in dependencies(repo, "benchmarks/accuracy.py")
    changed = commit(repo, config, (repo / config).read_text() + "\n# tuned\n", "tune it")
    section = {"models": {}, "smoke": False, "git_revision": rev, "measured_at": "x"}
    result(results, "accuracy", changed, cnn_seeds=[0.99], fashion_mnist=section)
    proc = report(repo, "--stale", "accuracy", results=results)
    assert proc.stdout.split() == ["accuracy"]
    assert f"section fashion_mnist: changed since: `{config}`" in proc.stderr
    # measured again at the new revision, the section is current, and so is the result
    result(results, "accuracy", changed, fashion_mnist=section | {"git_revision": changed})
    assert report(repo, "--stale", "accuracy", results=results).stdout.split() == []


def test_a_formatter_or_a_comment_leaves_a_result_current_and_code_does_not(copy, tmp_path):
    """A Python dependency whose syntax tree is unchanged (layout, comments) changed
    nothing that runs; a changed statement, or a changed docstring, is a change."""
    repo, _ = copy
    rev = git(repo, "rev-parse", "HEAD")  # other tests commit changes to the copy
    results = tmp_path / "results"
    results.mkdir()
    dep = "src/visionline/evaluation/gate.py"
    assert dep in dependencies(repo, "benchmarks/accuracy.py")
    result(results, "accuracy", rev, cnn_seeds=[0.99])
    original = (repo / dep).read_text()
    layout = original.replace("\n\n\n", "\n\n\n# a comment, as a formatter or a reader adds\n", 1)
    assert layout != original
    try:
        (repo / dep).write_text(layout)
        assert report(repo, "--stale", "accuracy", results=results).stdout.split() == []
        (repo / dep).write_text(layout + "\nCHANGED = True\n")
        assert report(repo, "--stale", "accuracy", results=results).stdout.split() == ["accuracy"]
    finally:
        git(repo, "checkout", "--", dep)
