"""Model selection: ingest -> validate -> search (trials as ordinary runs, pruned when
hopeless) -> evaluate the best run -> gate -> package. A flow run that dies is continued
by running the flow again: the study lives in the artifact store.

    python -m flows.tune --config configs/digits.yaml [--source DIR] [--trials N] [--timeout S]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows import tasks
from flows.artifacts import publish_search
from visionline.config import load_config
from visionline.tuning import budget_overrides


def _run_name() -> str:
    cfg = load_config(flow_run.parameters["config"])
    return f"{cfg.data.dataset}-tune-{flow_run.scheduled_start_time:%Y%m%d-%H%M%S}"


@flow(
    name="tune",
    flow_run_name=_run_name,
    log_prints=True,
    persist_result=True,
    on_cancellation=[tasks.cancel_training],
)
def tune(
    config: str,
    source: str | None = None,
    trials: int | None = None,
    timeout_s: float | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict:
    """``trials`` / ``timeout_s`` override ``tune.n_trials`` / ``tune.timeout_s``;
    ``overrides``: any other dotted config keys, as a deployment's parameters."""
    cfg = tasks.load(config, {**(overrides or {}), **budget_overrides(trials, timeout_s)})
    dataset = tasks.ingest(cfg, source)
    tasks.validate(cfg, dataset)
    best, search = tasks.search(cfg, dataset)
    metrics = tasks.evaluate(cfg, best)
    decision = tasks.gate(cfg, best)
    model = tasks.package(cfg, best)
    publish_search(search, metrics, decision, model)
    return {
        "study": search["study"],
        "trials": len(search["trials"]),
        "pruned": sum(t["state"] == "PRUNED" for t in search["trials"]),
        "best_run_id": best.run_id,
        search["metric"]: search["best"]["value"],
        "accuracy": metrics["accuracy"],
        "gate": "pass" if decision["passed"] else "fail",
        "model": str(model),
        "report": search["report"],
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/digits.yaml")
    ap.add_argument("--source")
    ap.add_argument("--trials", type=int)
    ap.add_argument("--timeout", type=float)
    a = ap.parse_args()
    out = tune(str(Path(a.config).resolve()), a.source, a.trials, a.timeout)
    print(json.dumps(out, indent=2))
