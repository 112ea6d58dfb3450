"""The monitoring flow, hourly: the latest window of the served model's captures against
its reference (drift report in the store and as an artifact with its plots inline),
the retraining policy applied and logged, and the `retrain` deployment started when
the policy says so.

    python -m flows.monitoring --config configs/digits.yaml [--window-hours 1]
"""

from __future__ import annotations

import argparse
import json

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.deployments import run_deployment

from flows.tasks import IO
from visionline.config import load_config
from visionline.monitoring.scheduled import scheduled_check
from visionline.registry import Registry
from visionline.serving.lineage import lineage
from visionline.storage import open_store

RETRAIN_DEPLOYMENT = "training-pipeline/retrain"


@task(**IO)
def served_model_report(config: str) -> dict:
    cfg = load_config(config)
    store = open_store(cfg.store)
    reg = Registry(store, cfg.serve.model_name)
    aliases = reg.aliases()
    chain = lineage(store, reg.resolve("champion")) if aliases.get("champion") else []
    return {"model": cfg.serve.model_name, "aliases": aliases, "lineage": chain}


@task(**{**IO, "persist_result": False})  # a check is never reused: it looks at "now"
def check_and_decide(config: str, window_hours: float | None) -> dict:

    cfg = load_config(config)
    store = open_store(cfg.store)
    done = scheduled_check(store, cfg, window_hours=window_hours)
    return {
        "verdict": done.outcome.report.verdict,
        "report": store.url(done.outcome.report_key) if done.outcome.report_key else None,
        "decision": done.decision.to_dict(),
        "decision_log": store.url(done.decision_key),
        "markdown": done.markdown_inline(),
    }


@task
def start_retrain(deployment: str, reasons: list[str]) -> str:
    run = run_deployment(
        name=deployment,
        timeout=0,  # start it and return: the training pipeline reports for itself
        tags=["visionline", "retrain-by-monitoring"],
    )
    print(f"started {deployment} (flow run {run.id}): " + "; ".join(reasons))
    return str(run.id)


@flow(name="monitoring", log_prints=True)
def monitoring(
    config: str,
    window_hours: float | None = None,
    retrain_deployment: str = RETRAIN_DEPLOYMENT,
) -> dict:
    served = served_model_report(config)
    if not served["aliases"].get("champion"):
        create_markdown_artifact(
            key="monitoring", markdown=f"# {served['model']}: no champion yet\n"
        )
        return {"served": served, "checked": None, "retrain_run": None}
    checked = check_and_decide(config, window_hours)
    decision = checked["decision"]
    retrain_run = (
        start_retrain(retrain_deployment, decision["reasons"]) if decision["retrain"] else None
    )
    lines = "\n".join(f"- **{stage}**: {text}" for stage, text in served["lineage"])
    create_markdown_artifact(
        key="monitoring",
        description=f"{served['model']}: {checked['verdict']}, "
        + ("retrain started" if retrain_run else "no retrain"),
        markdown=f"{checked['markdown']}\n## Served model\n\n{lines}\n",
    )
    return {"served": served, "checked": checked, "retrain_run": retrain_run}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/digits.yaml")
    ap.add_argument("--window-hours", type=float)
    a = ap.parse_args()
    out = monitoring(a.config, a.window_hours)
    print(json.dumps({k: v for k, v in out.items() if k != "checked"}, indent=2, default=str))
