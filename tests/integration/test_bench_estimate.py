"""benchmarks/estimate.py as a user types it, with --smoke (a tiny model, windows of 100
images) into a temp results dir: it reports what the issue asks for. The figures of a
smoke run mean nothing; the committed result is checked for the same shape."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.test_benchmarks import REPO, bench
from tests.support.fashion import npm_tarball

KINDS = {"clean", "corruption", "prior", "subpopulation"}
ESTIMATORS = {"atc_negative_entropy", "atc_max_softmax", "average_confidence", "doc"}


def assert_shape(r: dict) -> None:
    rows = r["windows"]
    assert {row["kind"] for row in rows} == KINDS
    corruptions = [row for row in rows if row["kind"] == "corruption"]
    assert len(corruptions) == 21  # seven corruptions, three severities
    for row in rows:
        assert 0 <= row["true_accuracy"] <= 1 and set(row["estimates"]) == ESTIMATORS
        assert 0 <= row["domain_auc"] <= 1 and row["disagreement"] >= 0
    for part in ("with_config_rule", "without_rule"):
        s = r[part]
        assert 0 <= s["declined_share"] <= 1 and set(s["estimators"]) == ESTIMATORS
        for e in s["estimators"].values():
            assert {"mae_answered", "mae_answered_corruptions", "worst_answered_error"} <= set(e)
    assert r["without_rule"]["declined_share"] == 0
    assert set(r["rules_measured"]) == ESTIMATORS


@pytest.mark.slow
def test_estimate_smoke(tmp_path):
    # a small source in the npm layout (random images: the figures mean nothing)
    data, digests = npm_tarball(tmp_path, test=20, train=120)
    checksums = tmp_path / "sha256.json"
    checksums.write_text(json.dumps(digests))
    r = bench("estimate", tmp_path / "out", "--data", str(data), "--checksums", str(checksums))
    assert_shape(r)
    assert r["window_size"] == 100
    # scoring an earlier result again, under the current config, needs no training
    again = subprocess.run(
        [
            sys.executable,
            "benchmarks/estimate.py",
            "--rescore",
            str(tmp_path / "out" / "estimate.json"),
            "--results-dir",
            str(tmp_path / "again"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    rescored = json.loads((tmp_path / "again" / "estimate.json").read_text())
    assert rescored["windows"] == r["windows"] and rescored["smoke"] is True


def test_the_committed_result_is_a_full_run():
    r = json.loads((REPO / "benchmarks" / "results" / "estimate.json").read_text())
    assert r["smoke"] is False and r["window_size"] == 2000
    assert_shape(r)
