"""The training pipeline: ingest -> validate -> train -> evaluate -> gate -> package ->
deploy (smoke + parity) -> promote. Each step is one call into visionline; a failed
validation stops before training, a failed gate before packaging, and a failed deploy
check leaves the previous champion serving.

    python -m flows.training_pipeline --config configs/digits.yaml [--source DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows import tasks
from flows.artifacts import publish
from flows.results import PipelineStoreResults  # noqa: F401  (registers the block type)
from visionline.config import load_config


def _run_name() -> str:
    cfg = load_config(flow_run.parameters["config"])
    return f"{cfg.data.dataset}-{cfg.model.arch}-{flow_run.scheduled_start_time:%Y%m%d-%H%M%S}"


@flow(
    name="training-pipeline",
    flow_run_name=_run_name,
    log_prints=True,
    persist_result=True,
    on_cancellation=[tasks.cancel_training],
)
def training_pipeline(
    config: str,
    source: str | None = None,
    deploy: bool = True,
    overrides: dict[str, Any] | None = None,
) -> dict:
    """``overrides``: dotted config keys applied on top of the file (``{"deploy.target":
    "kubernetes"}``), as a deployment's parameters."""
    cfg = tasks.load(config, overrides)
    dataset = tasks.ingest(cfg, source)
    validation = tasks.validate(cfg, dataset)
    run = tasks.train(cfg, dataset)
    metrics = tasks.evaluate(cfg, run)
    decision = tasks.gate(cfg, run)
    model = tasks.package(cfg, run)
    deployment = tasks.deploy(cfg, model) if deploy else None
    publish(cfg, dataset, validation, run.run_id, metrics, decision, model)
    return {
        "dataset": str(dataset),
        "run_id": run.run_id,
        "accuracy": metrics["accuracy"],
        "gate": "pass" if decision["passed"] else "fail",
        "model": str(model),
        "deployment": deployment,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/digits.yaml")
    ap.add_argument("--source")
    ap.add_argument("--no-deploy", action="store_true")
    a = ap.parse_args()
    out = training_pipeline(str(Path(a.config).resolve()), a.source, deploy=not a.no_deploy)
    print(json.dumps(out, indent=2))
