"""Every benchmark script runs as a user types it, with --smoke (tiny sizes) into a temp
results dir. These check that the scripts work and report what they promise; the
figures of a smoke run mean nothing and nothing here asserts a timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fashion import npm_tarball

REPO = Path(__file__).resolve().parents[2]


def bench(name: str, results: Path, *args: str, timeout: int = 900) -> dict:
    proc = subprocess.run(
        [sys.executable, f"benchmarks/{name}.py", "--smoke", "--results-dir", str(results), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((results / f"{name}.json").read_text())
    assert result["smoke"] is True
    assert result["git_revision"] and result["machine"]["cpus"]
    return result


def test_train_gpu_smoke_on_cpu(tmp_path):
    r = bench("train_gpu", tmp_path)
    assert r["stem"] == "cifar" and r["arch"] == "resnet18" and r["image_size"] == 32
    assert r["images_per_s"] > 0 and r["plain_images_per_s"] > 0
    assert r["ratio_vs_plain"] == r["ratio_vs_plain_paired"]["median"]
    assert len(r["ratio_vs_plain_paired"]["rounds"]) == r["rounds"] == 2
    # ResNet-18, CIFAR stem, 32x32: 0.56 GMAC forward = 1.11 GFLOP; training counts 3x
    assert 3.2 < r["gflops_per_image_train"] < 3.5
    assert r["tflops"] == pytest.approx(
        r["images_per_s"] * r["gflops_per_image_train"] / 1e3, abs=0.01
    )
    if "gpu" not in r["machine"]:
        assert r["gpu"].startswith("none")


def test_train_gpu_refuses_a_cpu_without_a_flag(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    proc = subprocess.run(
        [sys.executable, "benchmarks/train_gpu.py", "--results-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "no GPU visible" in proc.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_accuracy_smoke(tmp_path):
    # a small source in the npm layout (random images: the figures mean nothing)
    data, digests = npm_tarball(tmp_path, test=20, train=120)
    checksums = tmp_path / "sha256.json"
    checksums.write_text(json.dumps(digests))
    out = tmp_path / "out"
    r = bench("accuracy", out, "--fashion-mnist", str(data), "--checksums", str(checksums))
    assert len(r["cnn_seeds"]) == 2 and all(0 <= a <= 1 for a in r["cnn_seeds"])
    assert r["cnn_mean_accuracy"] == pytest.approx(sum(r["cnn_seeds"]) / 2, abs=1e-4)
    assert r["cnn_std"] is not None and 0 <= r["svc_accuracy"] <= 1
    assert {"C", "gamma", "gamma_vs_scale", "cv_accuracy"} <= set(r["svc_params"])
    factors = r["svc_grid"]["gamma_vs_scale"]
    assert min(factors) < 1 < max(factors)  # gamma on both sides of 'scale'
    assert 0 <= r["mcnemar_p"] <= 1 and len(r["mcnemar_per_seed"]) == 2
    assert r["test_images"] > 0
    fm = r["fashion_mnist"]
    assert set(fm["models"]) == {"simple_cnn", "cnn3"} and fm["smoke"] is True
    for m in fm["models"].values():
        low, high = m["interval_95"]
        assert len(m["seeds"]) == 2 and low <= m["mean_accuracy"] <= high
        assert len(m["per_class_recall"]) == 10 and 0 <= m["mcnemar_vs_svc_p"] <= 1
    assert fm["svc_params"]["refit_on"] > fm["svc_params"]["cv_subset"] > 0
    assert fm["test_images"] == 10 * 12  # a smoke run keeps 60 / 5 test images per class

    # measuring one dataset again keeps the other's figures and the revision they carry
    stored = json.loads((out / "accuracy.json").read_text())
    stored["git_revision"] = "0" * 40
    (out / "accuracy.json").write_text(json.dumps(stored))
    again = bench(
        "accuracy",
        out,
        "--datasets",
        "fashion-mnist",
        "--fashion-mnist",
        str(data),
        "--checksums",
        str(checksums),
    )
    assert again["git_revision"] == "0" * 40 and again["cnn_seeds"] == r["cnn_seeds"]
    assert again["fashion_mnist"]["measured_at"] > fm["measured_at"]


@pytest.mark.slow
def test_train_overhead_smoke(tmp_path):
    r = bench("train_overhead", tmp_path)
    assert r["ratio_vs_plain_loop"] > 0 and r["fit_ratio_vs_plain_script"] > 0
    assert len(r["fit_paired"]["rounds"]) == r["rounds"] == 2
    assert r["fit_ratio_vs_plain_script"] == r["fit_paired"]["median"]


@pytest.mark.slow
@pytest.mark.torchserve
def test_pipeline_smoke(tmp_path):
    r = bench("pipeline", tmp_path)
    tasks = {"load", "ingest", "validate", "train", "evaluate", "gate", "package", "deploy"}
    assert tasks <= set(r["per_task_overhead_s"]) and not r["untimed_task_runs"]
    assert r["cold_start_s"] > 0 and r["wall_s"] > r["task_bodies_s"] > 0
    parts = sum(r["per_task_overhead_s"].values()) + r["after_last_task_s"]
    assert parts == pytest.approx(r["overhead_s_excl_cold_start"], abs=0.05)
    assert r["orchestration_share_incl_cold_start"] > r["orchestration_share"]


def test_ingest_smoke(tmp_path):
    r = bench("ingest", tmp_path)
    assert r["memory_sizes"] == [100, 200, 300] and set(r["peak_rss_mb"]) == {"100", "200", "300"}
    fit = r["memory_fit"]
    assert fit["points"] == 3 and fit["growth_kb_per_image"] == r["growth_kb_per_image"]
    assert r["growth_goal_kb_per_image"] == 0.3 and isinstance(r["growth_goal_met"], bool)
    assert r["import_only_rss_mb"] < min(r["peak_rss_mb"].values())
    assert set(r["moto_direct_objects_per_s"]) == {"workers_1", "workers_16"}
    assert len(r["s3_sweep"]) == 8 and (tmp_path / "ingest_s3_sweep.png").is_file()


@pytest.mark.slow
@pytest.mark.torchserve
def test_serve_smoke(tmp_path):
    """Every arm (ours, stock eager and compiled, LitServe from its own venv, both
    in-process ceilings) answers, pairs pool into the minimum over pairs, and the open
    loop runs; a smoke run is too small for a p99 and says so."""
    r = bench("serve", tmp_path, "--inputs", "photo")
    arms = {p["arm"] for p in r["points"]}
    assert arms == {
        "visionline",
        "visionline_eager",
        "stock_eager",
        "stock_compiled",
        "litserve",
        "in_process_full",
        "in_process_forward_only",
    }
    main = r["comparisons"]["visionline_vs_stock_eager"]
    assert main["n_pairs"] == 2 * 2  # two client counts x two rounds, one run
    assert r["paired_min_over_pairs"] == main["min_over_pairs"] <= main["median_over_pairs"]
    assert r["per_run_medians_vs_stock_eager"] == main["per_run_medians"] and r["runs"] == 1
    assert min(r["served_vs_in_process_full_path"], r["served_vs_in_process_forward_only"]) > 0
    assert set(r["throughput_per_core"]) == arms and r["server_cores"] >= 1
    for arm in ("visionline", "stock_eager"):
        for rate in ("at_50pct", "at_80pct"):
            point = r["open_loop"][arm][rate]
            assert point["failed"] == 0 and point["n"] == 50 and point["p99_ms"] is None
    solo = r["worker_load"]["one_at_a_time_per_run"]["2"]
    assert set(solo) == {"ours", "ours_eager", "stock", "stock_compiled"}
    assert r["inputs"]["photo"]["median_kb"] > 30  # photo-sized JPEGs, not thumbnails
    assert r["reduced_run"] is True


@pytest.mark.slow
@pytest.mark.torchserve
def test_capture_smoke(tmp_path):
    """At sample rate 1 every request must become a record: a record lost anywhere on the
    way (handler, queue, batch write, the flush before the server stops) fails this."""
    r = bench("capture", tmp_path, "--sample-rate", "1.0")
    assert r["settings"]["sample_rate"] == 1.0 and r["settings"]["embedding_dims"] == 32
    assert r["ratio_capture_on_vs_off"] == r["ratio_paired"]["median"]
    assert len(r["ratio_paired"]["rounds"]) == 2 == len(r["requests_per_s"]["on"])
    assert r["ratio_interval"]["n"] == 2 and len(r["ratio_interval"]["interval_95"]) == 2
    assert r["settings"]["cpu_inference"] in ("eager", "fused", "mkldnn")
    # every round's records were written before its server stopped, and checked
    check = r["capture_check"]
    assert r["captured_per_round"] == [64, 64] and check["requests"] == 2 * 64
    assert check["captured"] == check["requests"] == r["captured_records"]
    assert check["expected"] == 128 and check["consistent"]
    assert check["failed_writes"] == 0 and check["dropped"] == 0
    assert check["worker_starts"] == 2 and check["batches_not_captured"] == 0


def _make_n(target: str, results: Path) -> list[str]:
    """The commands ``make TARGET`` would run with results in ``results``, as make prints them."""
    # under `make test` the parent make's MAKELEVEL/MAKEFLAGS would add "Entering directory"
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    env["VISIONLINE_BENCH_RESULTS"] = str(results)
    proc = subprocess.run(
        # make bench asks the report which results are not current: with this python
        ["make", "--no-print-directory", "-n", target, f"PY={sys.executable}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def _benchmarks(lines: list[str]) -> list[str]:
    return [ln.split("benchmarks/")[1].split(".py")[0] for ln in lines if "benchmarks/" in ln]


def test_make_bench_runs_every_cpu_benchmark_then_the_report(tmp_path):
    """With no results at all, every CPU benchmark is measured (which ones run when some
    are current: tests/unit/test_bench_staleness.py)."""
    lines = _make_n("bench", tmp_path)
    ran = _benchmarks(lines)
    cpu = {
        "ingest",
        "accuracy",
        "train_overhead",
        "serve",
        "pipeline",
        "capture",
        "tune",
        "estimate",
    }
    assert set(ran) == cpu and len(ran) == len(cpu)
    assert lines[-1].endswith("-m benchmarks.report")
    # the search runs on its own whatever its status; the GPU benchmark only on its target
    for target, name in (("bench-tune", "tune"), ("bench-gpu", "train_gpu")):
        lines = _make_n(target, tmp_path)
        assert _benchmarks(lines) == [name] and lines[-1].endswith("-m benchmarks.report")


@pytest.mark.slow
def test_tune_packages_nothing_when_the_best_trial_fails_its_gate(tmp_path, monkeypatch):
    """As `visionline tune`: the search's best run is packaged only when it passes its
    gate (the real run's subset fails the gate sized for the whole training set)."""
    from benchmarks import tune as tune_bench

    data, digests = npm_tarball(tmp_path, test=4, train=24)
    out = tmp_path / "out"
    argv = ["tune.py", "--smoke", "--results-dir", str(out), "--fashion-mnist", str(data)]
    monkeypatch.setattr(sys, "argv", argv)
    args, overrides = tune_bench.parse_args()
    unreachable = {"gate.min_accuracy": 1.0, "gate.min_macro_f1": 1.0}
    tune_bench.run(args, overrides | unreachable, digests)
    r = json.loads((out / "tune.json").read_text())
    assert r["smoke"] is True
    assert r["orders"][0]["best_passed_gate"] is False
    assert r["orders"][0]["best_packaged"] is None
    assert r["best_test"]["test_images"] == 10 * 4  # the figures are still made


@pytest.mark.slow
def test_tune_smoke_on_fashion_mnist(tmp_path):
    data, digests = npm_tarball(tmp_path, test=4, train=24)  # 1:6, as the real one
    checksums = tmp_path / "sha256.json"
    checksums.write_text(json.dumps(digests))
    r = bench("tune", tmp_path / "out", "--fashion-mnist", str(data), "--checksums", str(checksums))
    assert r["dataset"] == "fashion-mnist" and r["train_per_class"] == 5
    assert len(r["orders"]) == 1 and sorted(r["orders"][0]["order"]) == ["pruned", "unpruned"]
    assert r["orders"][0]["same_trials"] and r["trials"] == 2
    assert r["orders"][0]["best_passed_gate"] is True  # the smoke run lowers the gate to 0
    assert r["orders"][0]["best_packaged"].startswith("fashion-mnist:")
    assert r["best_params_no_pruning"]["model"] in {"simple_cnn", "cnn3"}
    for side in (r["best_test"], r["default_test"]):
        low, high = side["interval_95"]
        assert low <= side["accuracy"] <= high and side["test_images"] == 10 * 4
    assert 0 <= r["best_test"]["vs_default"]["p"] <= 1
    assert r["pruning_speedup"] == min(r["pruning_speedup_per_order"])
