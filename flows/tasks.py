"""Prefect tasks: one thin wrapper per stage. Only I/O tasks retry, and only on storage
errors (a failed expectation or a failed gate is an answer, not a glitch)."""

from __future__ import annotations

import logging
from typing import Any

from prefect import get_run_logger
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from flows.timing import task
from visionline.backends import compute_backend, deployer, ensure_no_rollout, rollout
from visionline.compute import cancel_waited_runs
from visionline.config import PipelineConfig, load_config
from visionline.data.ingest import ingest as run_ingest
from visionline.data.manifest import DatasetRef, resolve_dataset
from visionline.data.validation import ensure_validated
from visionline.errors import GateFailedError, StoreError, TuningError
from visionline.evaluation import ensure_evaluated
from visionline.evaluation.gate import champion_run_id, gate_run
from visionline.registry import ModelRef
from visionline.serving.deploy import deploy_checked
from visionline.serving.packaging import package_run
from visionline.storage import open_store
from visionline.training.plan import RunPlan, dataset_spec, plan_run
from visionline.tuning import tune

log = logging.getLogger("visionline.flows")


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


def cancel_training(flow: Any, flow_run: Any, state: Any) -> None:
    """The flows' ``on_cancellation`` hook: a cancelled flow run stops the training runs
    it is waiting for (their Jobs deleted, foreground), wherever the engine runs the
    hook. The wait itself also cancels on SIGTERM or an interrupt, and the training Job's
    ownerReference to the flow run's Job covers a flow process killed outright."""
    cancelled = cancel_waited_runs()
    if cancelled:  # a hook may run outside the run's logging context
        log.info("flow run cancelled: stopped training runs %s", cancelled)


@task(**IO)
def load(config: str, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    cfg = load_config(config)
    return cfg.with_overrides(**overrides) if overrides else cfg


@task(**IO)
def ingest(cfg: PipelineConfig, source: str | None) -> DatasetRef:

    store = open_store(cfg.store)
    if source:
        return run_ingest(
            store,
            source,
            cfg.data.dataset,
            cfg.data.split,
            cfg.data.max_image_pixels,
            cfg.data.ingest_workers,
            progress=False,
        ).ref
    return resolve_dataset(store, dataset_spec(cfg))


@task(**IO)
def validate(cfg: PipelineConfig, dataset: DatasetRef) -> dict:

    report = ensure_validated(open_store(cfg.store), dataset, cfg)
    docs = f"{report.report_prefix}/data_docs/index.html" if report.report_prefix else None
    return {
        "dataset": report.dataset,
        "evaluated": report.evaluated,
        "docs_url": report.docs_url,
        "docs_key": docs,
    }


@task(persist_result=True)
def train(cfg: PipelineConfig, dataset: DatasetRef) -> RunPlan:

    store = open_store(cfg.store)
    plan = plan_run(cfg, store, dataset)
    origin = {"prefect_flow_run": str(flow_run.id)} if flow_run.id else {}
    # A trainer process of its own (submit), never this one: the flow's process runs
    # Prefect's threads, and a DataLoader forking workers beside them can deadlock.
    compute_backend(cfg).submit(plan, store, origin).wait()
    return plan


@task(**IO)
def evaluate(cfg: PipelineConfig, run: RunPlan) -> dict:

    return ensure_evaluated(open_store(cfg.store), run.run_id)


@task(**IO)
def gate(cfg: PipelineConfig, run: RunPlan) -> dict:

    store = open_store(cfg.store)
    decision = gate_run(
        store, run.run_id, champion_run=champion_run_id(store, cfg.serve.model_name)
    )
    if not decision.passed:
        raise GateFailedError(decision.summary())
    return decision.to_dict()


@task(**IO)
def package(cfg: PipelineConfig, run: RunPlan) -> ModelRef:

    return package_run(open_store(cfg.store), run.run_id, cfg.serve.model_name, cfg)


@task(persist_result=True)
def deploy(cfg: PipelineConfig, model: ModelRef) -> dict:

    store = open_store(cfg.store)
    if cfg.deploy.mode != "replace":
        # a challenger beside the champion: `visionline rollout status` judges it
        r = cfg.deploy.rollout
        percent = r.shadow_percent if cfg.deploy.mode == "shadow" else r.canary_percent
        return rollout(cfg, store).start(model, cfg.deploy.mode, percent)
    ensure_no_rollout(cfg, store)
    result = deploy_checked(deployer(cfg, store), store, model)
    return {
        "model": str(model),
        "endpoint": result.endpoint,
        "parity_max_abs_diff": result.parity.max_abs_diff,
        "parity_images": result.parity.checked,
        "example": result.smoke,
    }


@task(persist_result=True)
def search(cfg: PipelineConfig, dataset: DatasetRef) -> tuple[RunPlan, dict]:
    """The search of ``cfg.tune`` (continued if an earlier flow run died); the best
    trial's run plan and the search's summary. Not retried as a whole: a re-run of the
    flow continues the stored study instead."""

    store = open_store(cfg.store)
    result = tune(cfg, store, dataset, backend=compute_backend(cfg), on_event=get_run_logger().info)
    if result.best_config is None:
        raise TuningError(f"study {result.study}: no trial finished, nothing to evaluate")
    best = plan_run(result.best_config, store, dataset)
    summary = {
        "study": result.study,
        "metric": result.metric,
        "best": result.best,
        "trials": result.trials,
        "finished": result.finished,
        "report": store.url(result.paths.report),
        "best_config": store.url(result.paths.best_config),
        "plots": [store.url(result.paths.history_png), store.url(result.paths.importance_png)],
    }
    return best, summary
