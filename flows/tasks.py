"""Prefect tasks: one thin wrapper per stage. Only I/O tasks retry, and only on storage
errors (a failed expectation or a failed gate is an answer, not a glitch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.tasks import exponential_backoff

from visionline.config import PipelineConfig, load_config
from visionline.errors import StoreError
from visionline.storage import open_store


def _io_error(task: Any, task_run: Any, state: Any) -> bool:
    try:
        state.result()
    except StoreError:
        return True
    except Exception:
        return False
    return False


IO = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_condition_fn": _io_error,
    "persist_result": True,
}


@task(**IO)
def load(config: str) -> PipelineConfig:
    return load_config(config)


@task(**IO)
def ingest(cfg: PipelineConfig, source: str | None) -> str:
    from visionline.data.ingest import ingest as run_ingest
    from visionline.data.manifest import resolve_dataset

    store = open_store(cfg.store)
    if source:
        return str(
            run_ingest(
                store,
                source,
                cfg.data.dataset,
                cfg.data.split,
                cfg.data.max_image_pixels,
                cfg.data.ingest_workers,
                progress=False,
            ).ref
        )
    return str(
        resolve_dataset(
            store, cfg.data.dataset + (f":{cfg.data.version}" if cfg.data.version else "")
        )
    )


@task(**IO)
def validate(cfg: PipelineConfig, dataset: str) -> dict:
    from visionline.data.manifest import resolve_dataset
    from visionline.validation import ensure_validated

    store = open_store(cfg.store)
    report = ensure_validated(store, resolve_dataset(store, dataset), cfg)
    return {"dataset": report.dataset, "evaluated": report.evaluated, "docs_url": report.docs_url}


@task(persist_result=True)
def train(cfg: PipelineConfig, dataset: str) -> str:
    from visionline.compute.local import LocalBackend
    from visionline.training import default_run_id

    store = open_store(cfg.store)
    run_id = default_run_id(cfg, dataset.split(":")[1])
    LocalBackend().train(
        cfg.with_overrides(**{"data.version": dataset.split(":")[1]}), store, run_id
    )
    return run_id


@task(**IO)
def evaluate(cfg: PipelineConfig, run_id: str) -> dict:
    from visionline.evaluation import ensure_evaluated

    return ensure_evaluated(open_store(cfg.store), run_id)


@task(**IO)
def gate(cfg: PipelineConfig, run_id: str) -> dict:
    from visionline.errors import GateFailedError
    from visionline.gate import champion_run_id, gate_run

    store = open_store(cfg.store)
    decision = gate_run(store, run_id, champion_run=champion_run_id(store, cfg.serve.model_name))
    if not decision.passed:
        raise GateFailedError(decision.summary())
    return decision.to_dict()


@task(**IO)
def package(cfg: PipelineConfig, run_id: str) -> str:
    from visionline.packaging import package_run

    return str(package_run(open_store(cfg.store), run_id, cfg.serve.model_name))


@task(persist_result=True)
def deploy(cfg: PipelineConfig, model: str, workdir: str) -> dict:
    from visionline.registry import ModelRef
    from visionline.serving.deploy import LocalTorchServeDeployer, deploy_checked

    store = open_store(cfg.store)
    name, version = model.split(":")
    result = deploy_checked(
        LocalTorchServeDeployer(store, cfg.serve, Path(workdir)), store, ModelRef(name, version)
    )
    return {
        "model": model,
        "endpoint": result.endpoint,
        "parity_max_abs_diff": result.parity.max_abs_diff,
        "parity_images": result.parity.checked,
        "example": result.smoke,
    }
