"""The Prefect flows against a real temporary Prefect API, real TorchServe, real S3 (moto)."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from tests.conftest import digits_config
from tests.support.faults import CLASSES, write_fault_corpus
from tests.support.ports import serve_ports
from tests.support.s3 import FaultProxy
from visionline.errors import DataValidationError, GateFailedError
from visionline.registry import Registry
from visionline.serving.local import LocalDeployer
from visionline.serving.torchserve import TorchServe
from visionline.storage import LocalStore, S3Store, make_s3_client

pytestmark = pytest.mark.slow

FAST = {
    "train.epochs": 3,
    "train.early_stopping": None,
    "gate.min_accuracy": 0.5,
    "gate.min_macro_f1": 0.5,
    "gate.min_class_recall": 0.0,
    "validation.min_per_class": 1,
    # the deploy check's requests are not traffic: a capture would change the store
    # between the re-run snapshots
    "monitor.sample_rate": 0.0,
}


def _write(cfg, path):
    path.write_text(cfg.to_yaml())
    return str(path)


def _snapshot(store):
    return {k: store.get_bytes(k) for k in store.list("")}


def _visionline_lines(flow_run_id, words) -> list[str]:
    """visionline's lines in the flow's task runs' logs, once all ``words`` are there."""
    from tests.integration.test_flow_logs import _run_logs

    def lines(logs):
        return [g.message for g in logs if g.name.startswith("visionline") and g.task_run_id]

    def complete(logs):
        return all(any(w in line for line in lines(logs)) for w in words)

    return lines(_run_logs(flow_run_id, complete))


def test_happy_path_end_to_end_then_rerun_writes_nothing(prefect_api, small_digits_dir, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.training_pipeline import training_pipeline

    store = LocalStore(tmp_path / "store")
    workdir = tmp_path / "serve"
    cfg = digits_config(store.uri, **FAST, **serve_ports(), **{"deploy.workdir": str(workdir)})
    config = _write(cfg, tmp_path / "cfg.yaml")

    def run():
        return training_pipeline(config=config, source=str(small_digits_dir), return_state=True)

    try:
        state = run()
        assert state.is_completed(), state.message
        out = state.result()
        assert out["gate"] == "pass" and out["model"] == "digits:1"
        assert (
            out["deployment"]["parity_images"] > 0
            and out["deployment"]["parity_max_abs_diff"] <= 1e-4
        )
        assert Registry(store, "digits").aliases()["champion"] == "1"
        assert TorchServe(workdir, cfg.serve).is_running()  # deployed and serving

        async def ui_view():
            async with get_client() as client:
                run = await client.read_flow_run(state.state_details.flow_run_id)
                summary = await client.read_latest_artifacts()
                return run.name, {a.key: a for a in summary}

        name, artifacts = asyncio.run(ui_view())
        assert name.startswith("digits-simple_cnn-")
        summary = artifacts["pipeline-summary"].data
        assert "Gate decision: PASS" in summary and "data_docs/index.html" in summary
        # pictures travel inline (Prefect's UI renders data URIs); local paths are text
        assert summary.count("](data:image/png;base64,") == 2
        assert "](/" not in summary and "](file:" not in summary
        assert "per-class-metrics" in artifacts
        # what the run did is in its task runs' logs, not only Prefect's state lines
        words = ("images (train", '"success": true', "gate for", "parity max")
        said = _visionline_lines(state.state_details.flow_run_id, words)
        for w in words:
            assert any(w in line for line in said), (w, said)

        before = _snapshot(store)
        again = run()  # the same inputs once more
        assert again.is_completed(), again.message
        assert again.result()["run_id"] == out["run_id"]
        assert _snapshot(store) == before  # nothing written twice, nothing rewritten
        assert [e["action"] for e in Registry(store, "digits").log()] == ["register", "promote"]
    finally:
        # the deployment is TorchServe and its nginx front: stop both, whatever happened
        LocalDeployer(store, cfg.serve, workdir).stop()


def test_failed_validation_stops_before_training(prefect_api, tmp_path):
    from flows.training_pipeline import training_pipeline

    store = LocalStore(tmp_path / "store")
    cfg = digits_config(
        store.uri,
        **FAST,
        **{"data.classes": CLASSES, "data.channels": 3, "validation.max_imbalance_ratio": 4.0},
    )
    corpus = write_fault_corpus(tmp_path / "faults")
    state = training_pipeline(
        config=_write(cfg, tmp_path / "c.yaml"), source=str(corpus), deploy=False, return_state=True
    )
    assert state.is_failed()
    with pytest.raises(DataValidationError, match=r"train/cat/bomb\.png"):
        state.result()
    assert not list(store.list("runs/")) and not list(store.list("models/"))


def test_failed_gate_stops_before_packaging(prefect_api, small_digits_dir, tmp_path):
    from flows.training_pipeline import training_pipeline

    store = LocalStore(tmp_path / "store")
    cfg = digits_config(
        store.uri,
        **{**FAST, "train.epochs": 1, "gate.min_accuracy": 1.0, "gate.min_macro_f1": 1.0},
        **serve_ports(),
        **{"deploy.workdir": str(tmp_path / "serve")},
    )
    workdir = tmp_path / "serve"
    state = training_pipeline(
        config=_write(cfg, tmp_path / "c.yaml"), source=str(small_digits_dir), return_state=True
    )
    assert state.is_failed()
    with pytest.raises(GateFailedError, match=r"\[FAIL\] accuracy"):
        state.result()
    assert list(store.list("runs/")) and not list(store.list("models/"))
    assert not TorchServe(workdir, cfg.serve).is_running()


def test_transient_s3_errors_are_retried_and_results_live_in_the_store(
    prefect_api, moto_server, small_digits_dir, tmp_path, monkeypatch
):
    """More consecutive 503s than botocore's own 8 attempts: the task-level retry is what
    saves the run. With the results block registered (as the Kubernetes work pool sets
    it), Prefect's persisted results go to the S3 store, not to a local home directory."""
    from prefect.settings import (
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK,
        temporary_settings,
    )

    from flows.results import register
    from flows.training_pipeline import training_pipeline

    bucket = "flaky"
    make_s3_client().create_bucket(Bucket=bucket)
    few = tmp_path / "few"
    for cls in ("0", "1"):
        shutil.copytree(small_digits_dir / cls, few / cls)
    with FaultProxy(moto_server, fail_first=9) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        cfg = digits_config(
            f"s3://{bucket}/vl",
            **{
                **FAST,
                "train.epochs": 1,
                "data.classes": ["0", "1"],
                "gate.min_accuracy": 0.0,
                "gate.min_macro_f1": 0.0,
            },  # this test is about retries, not model quality
        )
        cfg = cfg.with_overrides(**{"data.cache_dir": str(tmp_path / "cache")})
        local_results = tmp_path / "home-results"
        with temporary_settings(
            {
                PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: register(),
                PREFECT_LOCAL_STORAGE_PATH: local_results,
            }
        ):
            state = training_pipeline(
                config=_write(cfg, tmp_path / "c.yaml"),
                source=str(few),
                deploy=False,
                return_state=True,
            )
        assert state.is_completed(), state.message
        assert proxy.failed == 9
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    store = S3Store(f"s3://{bucket}/vl", client=make_s3_client())
    assert Registry(store, "digits").versions() == ["1"]
    assert len(list(store.list("prefect-results/"))) >= 7  # every task's result
    assert not local_results.exists() or not any(local_results.iterdir())
