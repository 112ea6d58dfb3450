"""What a run did shows in the Prefect UI: visionline's log lines reach the task run's log on a
real Prefect server, the training pod's lines among them, prefixed by the pod (#18, defect 12).

Before ``flows.logs`` a flow run's log held Prefect's own state lines only: the stages log
through ``visionline.*`` loggers, and the pod lines are relayed from a thread that had no run
context."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import digits_config
from tests.support.k8s import Cluster, JobController
from tests.support.k8s.rbac import PIPELINE, token
from visionline.data.manifest import DatasetRef
from visionline.storage import S3Store

pytestmark = pytest.mark.slow
NS = "vl-logs"


def _kubeconfig(url: str, path: Path) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: test\n"
        f"clusters: [{{name: test, cluster: {{server: '{url}'}}}}]\n"
        f"users: [{{name: test, user: {{token: '{token(PIPELINE)}'}}}}]\n"
        f"contexts: [{{name: test, context: {{cluster: test, user: test, namespace: {NS}}}}}]\n"
    )
    return path


def _run_logs(flow_run_id, until: Callable[[list], bool], timeout: float = 30.0) -> list:
    """The flow run's logs as the UI reads them, once ``until(logs)`` holds (they are
    shipped in the background) or the time is up."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def read():
        async with get_client() as client:
            return await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
            )

    deadline = time.monotonic() + timeout
    while True:
        logs = asyncio.run(read())
        if until(logs) or time.monotonic() > deadline:
            return logs
        time.sleep(0.5)


def _s3_secret(cluster: Cluster) -> None:
    from kubernetes import client

    client.CoreV1Api(cluster.admin_client()).create_namespaced_secret(
        NS,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "visionline-s3", "namespace": NS},
            "stringData": {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"},
        },
    )


def test_pod_lines_reach_the_train_task_runs_log(
    prefect_api, moto_server, s3_client, bucket, tmp_path, monkeypatch
):
    from prefect import flow

    from flows.tasks import train
    from visionline.errors import TrainingError

    store = S3Store(f"s3://{bucket}/artifacts", client=s3_client)
    cfg = digits_config(
        store.uri,
        **{
            "data.cache_dir": ".visionline/cache",
            "compute.backend": "kubernetes",
            "compute.kubernetes.namespace": NS,
            "compute.kubernetes.image": "visionline-trainer:test",
            "compute.kubernetes.poll_seconds": 0.2,
            "compute.kubernetes.backoff_limit": 0,
            "compute.kubernetes.env": {"AWS_ENDPOINT_URL": moto_server},
        },
    )
    # a dataset version that does not exist: the real trainer starts, logs, and fails at once
    missing = DatasetRef("digits", "0123456789ab")

    @flow
    def train_only():
        return train(cfg, missing)

    with Cluster() as cluster:
        monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(cluster.url, tmp_path / "kubeconfig")))
        _s3_secret(cluster)
        kubelet = JobController(cluster, NS, workdir=tmp_path / "node")
        kubelet.start()
        try:
            state = train_only(return_state=True)
        finally:
            kubelet.close()
    assert state.is_failed()
    with pytest.raises(TrainingError):
        state.result()

    def pod_lines_of(logs: list) -> list:
        return [g for g in logs if g.name.startswith("visionline.") and g.message.startswith("[")]

    logs = _run_logs(state.state_details.flow_run_id, lambda got: bool(pod_lines_of(got)))
    pod_lines = pod_lines_of(logs)
    assert pod_lines, [g.message for g in logs]
    pod = pod_lines[0].message[1:].split("]", 1)[0]
    assert pod.startswith("train-digits-")  # the pod's own name, as kubectl shows it
    # in the train task run's log, not only the flow's
    assert all(g.task_run_id is not None for g in pod_lines)
    assert any("0123456789ab" in g.message for g in pod_lines)  # the trainer's own words
