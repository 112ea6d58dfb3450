"""benchmarks/estimate.py --active-learning-only as a user types it, with --smoke (a tiny
pool, two rounds) merged into a copy of the committed result: the windows stay as they
were measured and the active-learning section has every arm's curve. The committed
result is checked for the full run the issue asks for."""

from __future__ import annotations

import json
import shutil

from benchmarks.active_learning import ARMS
from tests.integration.test_benchmarks import REPO, bench
from tests.support.fashion import npm_tarball

COMMITTED = REPO / "benchmarks" / "results" / "estimate.json"


def assert_curves(al: dict, rounds: int, seeds: int) -> None:
    assert set(al["arms"]) == set(ARMS) and len(al["labels"]) == rounds + 1
    assert al["best_strategy"] in ("least-confidence", "margin", "entropy")
    for arm in al["arms"].values():
        assert len(arm["accuracy_per_seed"]) == seeds
        assert all(
            len(c) == rounds + 1 and all(0 <= a <= 1 for a in c) for c in arm["accuracy_per_seed"]
        )
        assert arm["accuracy_min"] <= arm["accuracy_mean"] <= arm["accuracy_max"] or seeds == 1
    # random reaches its own final accuracy with every label it had, not before
    assert al["arms"]["random"]["labels_to_random_final"] == al["labels"][-1] or (
        al["arms"]["random"]["labels_to_random_final"] <= al["labels"][-1]
    )
    # every arm starts from the same labelled images and weights within a seed
    firsts = {tuple(c[0] for c in arm["accuracy_per_seed"]) for arm in al["arms"].values()}
    assert len(firsts) == 1


def test_active_learning_smoke_merges_into_the_result(tmp_path):
    data, digests = npm_tarball(tmp_path, test=2, train=12)
    checksums = tmp_path / "sha256.json"
    checksums.write_text(json.dumps(digests))
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(COMMITTED, out / "estimate.json")
    r = bench(
        "estimate",
        out,
        "--active-learning-only",
        "--data",
        str(data),
        "--checksums",
        str(checksums),
        timeout=120,
    )
    committed = json.loads(COMMITTED.read_text())
    assert r["windows"] == committed["windows"]
    assert (
        r["windows_measured"]["git_revision"]
        == (committed.get("windows_measured") or committed)["git_revision"]
    )
    al = r["active_learning"]
    assert al["setup"]["rounds"] == 2 and al["setup"]["seeds"] == 2
    assert_curves(al, 2, 2)


def test_the_committed_active_learning_is_a_full_run():
    al = json.loads(COMMITTED.read_text())["active_learning"]
    s = al["setup"]
    assert (s["start"], s["step"], s["rounds"], s["test_images"]) == (1000, 500, 6, 10_000)
    assert s["seeds"] >= 2
    assert al["labels"] == [1000, 1500, 2000, 2500, 3000, 3500, 4000]
    assert_curves(al, 6, s["seeds"])
