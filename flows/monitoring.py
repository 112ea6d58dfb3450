"""The monitoring flow: scheduled hourly. Today it reports what is served and where it
came from; drift statistics and the retraining policy arrive with the monitoring issue
and plug in here."""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from visionline.config import load_config
from visionline.registry import Registry, lineage
from visionline.storage import open_store


@task(retries=3, retry_delay_seconds=5)
def served_model_report(config: str) -> dict:
    cfg = load_config(config)
    store = open_store(cfg.store)
    reg = Registry(store, cfg.serve.model_name)
    aliases = reg.aliases()
    chain = lineage(store, reg.resolve("champion")) if aliases.get("champion") else []
    return {"model": cfg.serve.model_name, "aliases": aliases, "lineage": chain}


@flow(name="monitoring", log_prints=True)
def monitoring(config: str) -> dict:
    report = served_model_report(config)
    lines = (
        "\n".join(f"- **{stage}**: {text}" for stage, text in report["lineage"])
        or "- no champion yet"
    )
    create_markdown_artifact(key="monitoring", markdown=f"# Serving {report['model']}\n\n{lines}\n")
    return report
