"""The Prefect API key stays in its Secret: the flow-run Job the worker creates references
it, instead of carrying the worker's key in plain text in its spec (issue 18, defect 10).

The Job is built as the worker builds it, with prefect-kubernetes at its pinned version:
the work pool's template (k8s/prefect/base-job-template.json) and the `retrain`
deployment's job variables, the worker's own settings (what prefect copies into every
flow run's environment, the API key included), and the worker's environment as the
rendered worker Deployment sets it. Only the API calls are replaced: the variable
resolution (no block or variable references in our template) and the Job creation, which
records the Job the worker would send."""

from __future__ import annotations

import asyncio
import json
import uuid
from types import SimpleNamespace
from typing import Any

import prefect.workers.base
import prefect_kubernetes.worker
import pytest
import yaml
from prefect.client.schemas.objects import FlowRun
from prefect.settings import PREFECT_API_KEY, temporary_settings
from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

from tests.support.manifests import REPO, containers, find, render, which

pytestmark = pytest.mark.skipif(
    which("kubectl") is None, reason="kubectl not found: run `make tools`"
)

KEY = "pnu_0123456789abcdefghijklmnopqrstuvwxyz"
SETTINGS = "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_"
# Given as the Prefect client, so that none is made (nor a temporary server started).
NO_API = SimpleNamespace()


@pytest.fixture(scope="module")
def worker_container() -> dict[str, Any]:
    worker = find(render("k8s/overlays/local"), "Deployment", "visionline-prefect-worker")
    return next(containers(worker["spec"]["template"]["spec"]))


async def _unchanged(template: Any, client: Any = None) -> Any:
    return template


def _flow_run_job(monkeypatch, worker_env: list[dict[str, Any]]) -> dict[str, Any]:
    """The Job the worker, with ``worker_env`` and the API key ``KEY``, creates for a
    `retrain` flow run."""
    monkeypatch.setattr(prefect.workers.base, "resolve_block_document_references", _unchanged)
    monkeypatch.setattr(prefect.workers.base, "resolve_variables", _unchanged)
    for e in worker_env:
        if e["name"].startswith(SETTINGS):
            monkeypatch.setenv(e["name"], e["value"])
    template = json.loads((REPO / "k8s" / "prefect" / "base-job-template.json").read_text())
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    retrain = next(d for d in spec["deployments"] if d["name"] == "retrain")
    with temporary_settings(updates={PREFECT_API_KEY: KEY}):
        cfg = asyncio.run(
            KubernetesWorkerJobConfiguration.from_template_and_values(
                template,
                retrain["work_pool"]["job_variables"],
                client=NO_API,
            )
        )
        cfg.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="calm-heron", flow_id=uuid.uuid4()))

    created: list[dict[str, Any]] = []

    class RecordingBatchApi:
        def __init__(self, client: Any) -> None:
            pass

        async def create_namespaced_job(self, namespace: str, body: dict[str, Any]) -> Any:
            created.append(json.loads(json.dumps(body)))
            return SimpleNamespace(metadata=SimpleNamespace(name="retrain-x", namespace=namespace))

    monkeypatch.setattr(prefect_kubernetes.worker, "BatchV1Api", RecordingBatchApi)
    worker = KubernetesWorker(work_pool_name="visionline-kubernetes")
    asyncio.run(worker._create_job(cfg, client=None))
    assert len(created) == 1
    return created[0]


def _key_entries(job: dict[str, Any]) -> list[dict[str, Any]]:
    env = job["spec"]["template"]["spec"]["containers"][0].get("env", [])
    return [e for e in env if e["name"] == "PREFECT_API_KEY"]


def test_flow_run_job_references_the_key_secret(monkeypatch, worker_container):
    job = _flow_run_job(monkeypatch, worker_container["env"])
    assert KEY not in json.dumps(job), "the API key is in the flow-run Job's spec"
    # The same Secret and key the worker reads its own key from.
    own = next(e for e in worker_container["env"] if e["name"] == "PREFECT_API_KEY")
    ref = own["valueFrom"]["secretKeyRef"]
    assert _key_entries(job) == [
        {
            "name": "PREFECT_API_KEY",
            "valueFrom": {"secretKeyRef": {"name": ref["name"], "key": ref["key"]}},
        }
    ]


def test_without_the_settings_the_worker_copies_the_key(monkeypatch, worker_container):
    """What the worker Deployment's settings prevent: prefect-kubernetes' default."""
    others = [e for e in worker_container["env"] if not e["name"].startswith(SETTINGS)]
    job = _flow_run_job(monkeypatch, others)
    assert _key_entries(job) == [{"name": "PREFECT_API_KEY", "value": KEY}]


def test_the_worker_needs_no_access_to_secrets(worker_container):
    """The secret-reference setting, not the one that makes the worker create a Secret
    per namespace (or per Job), which would need create and patch on Secrets."""
    names = {e["name"] for e in worker_container["env"]}
    assert {f"{SETTINGS}API_KEY_SECRET_NAME", f"{SETTINGS}API_KEY_SECRET_KEY"} <= names
    assert not {f"{SETTINGS}CREATE_SECRET_FOR_API_KEY", f"{SETTINGS}STORE_ENV_AS_SECRET"} & names
    role = find(render("k8s/overlays/local"), "Role", "visionline-worker")
    assert all("secrets" not in rule["resources"] for rule in role["rules"])
