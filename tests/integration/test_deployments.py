"""prefect.yaml and the Kubernetes work pool template, loaded by Prefect itself."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow
SPEC = yaml.safe_load((REPO / "prefect.yaml").read_text())
EXPECTED = {
    "retrain": (["0 2 * * *"], "flows/training_pipeline.py:training_pipeline"),
    "monitor": (["0 * * * *"], "flows/monitoring.py:monitoring"),
    "tune": ([], "flows/tune.py:tune"),  # on demand: a search is started, not scheduled
    "rollout": ([], "flows/rollout.py:rollout_verdict"),  # on demand, while a rollout runs
}


def _prefect(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "--no-prompt", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )


def test_work_pool_and_deployments_load(prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    pool = _prefect(
        "work-pool",
        "create",
        "visionline-kubernetes",
        "--type",
        "kubernetes",
        "--base-job-template",
        "k8s/prefect/base-job-template.json",
        "--overwrite",
        env=env,
    )
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deployed = _prefect("deploy", "--all", env=env)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    async def read():
        async with get_client() as client:
            wp = await client.read_work_pool("visionline-kubernetes")
            deps = {d.name: d for d in await client.read_deployments()}
            return wp, deps

    wp, deps = asyncio.run(read())
    assert wp.type == "kubernetes"
    assert wp.base_job_template["variables"]["properties"]["namespace"]["default"] == "visionline"
    for spec in SPEC["deployments"]:
        d = deps[spec["name"]]
        crons, entrypoint = EXPECTED[spec["name"]]
        assert d.entrypoint == entrypoint
        assert [s.schedule.cron for s in d.schedules] == crons
        assert d.parameters == spec["parameters"]
        assert d.work_pool_name == "visionline-kubernetes"
        assert d.job_variables["image"] == spec["work_pool"]["job_variables"]["image"]


def test_local_runner_serves_the_same_schedules():
    from flows.serve import deployments_from_yaml

    by_name = {d.name: d for d in deployments_from_yaml()}
    assert set(by_name) == set(EXPECTED)
    for name, (crons, _) in EXPECTED.items():
        assert [s.schedule.cron for s in by_name[name].schedules] == crons
        spec = next(s for s in SPEC["deployments"] if s["name"] == name)
        assert by_name[name].parameters == spec["parameters"]


def test_flow_run_job_from_the_work_pool_template_is_valid(prefect_api):
    """The Job the Prefect worker would create for a flow run of `retrain`: built by
    prefect-kubernetes from our template and the deployment's job variables, then checked
    against the Kubernetes 1.31 schema, strictly (the template used to put completions
    and parallelism in the pod spec, which the API rejects)."""
    import json
    import uuid

    import kubernetes_validate
    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = json.loads((REPO / "k8s" / "prefect" / "base-job-template.json").read_text())
    retrain = next(d for d in SPEC["deployments"] if d["name"] == "retrain")
    cfg = asyncio.run(
        KubernetesWorkerJobConfiguration.from_template_and_values(
            template, retrain["work_pool"]["job_variables"]
        )
    )
    flow_run = FlowRun(id=uuid.uuid4(), name="calm-heron", flow_id=uuid.uuid4())
    cfg.prepare_for_flow_run(flow_run)
    job = cfg.job_manifest
    kubernetes_validate.validate(job, "1.31.0", strict=True)

    assert job["metadata"]["namespace"] == "visionline"
    assert job["spec"]["completions"] == 1 and job["spec"]["parallelism"] == 1
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "visionline-pipeline"
    container = pod["containers"][0]
    assert container["image"] == retrain["work_pool"]["job_variables"]["image"]
    assert container["args"][:3] == ["prefect", "flow-run", "execute"]
    # The flow run talks to the Prefect API and the cluster, nothing secret in its spec.
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PREFECT__FLOW_RUN_ID"] == str(flow_run.id)
    assert not any("SECRET" in k or k.endswith("_KEY") for k in env)
    assert {"configMapRef": {"name": "visionline-settings"}} in container["envFrom"]
