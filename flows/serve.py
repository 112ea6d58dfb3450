"""Serve the deployments of prefect.yaml from this process, without a cluster:
the same flows, schedules and parameters, read from the same file.

    python -m flows.serve
"""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect import serve

from flows.monitoring import monitoring
from flows.rollout import rollout_verdict
from flows.training_pipeline import training_pipeline
from flows.tune import tune

PREFECT_YAML = Path(__file__).resolve().parents[1] / "prefect.yaml"
FLOWS = {
    "flows/training_pipeline.py:training_pipeline": training_pipeline,
    "flows/monitoring.py:monitoring": monitoring,
    "flows/tune.py:tune": tune,
    "flows/rollout.py:rollout_verdict": rollout_verdict,
}


def deployments_from_yaml(path: Path = PREFECT_YAML) -> list:
    spec = yaml.safe_load(path.read_text())
    out = []
    for d in spec["deployments"]:
        flow_fn = FLOWS[d["entrypoint"]]
        out.append(
            flow_fn.to_deployment(
                name=d["name"],
                description=d.get("description"),
                tags=d.get("tags"),
                parameters=d.get("parameters", {}),
                cron=[s["cron"] for s in d.get("schedules", []) if "cron" in s] or None,
            )
        )
    return out


if __name__ == "__main__":
    serve(*deployments_from_yaml())
