"""The test cluster authorizes every request against the Roles we ship, as the API server
does: code that calls the API without a Role granting it fails here as it would on a real
cluster (#18: "RBAC is evaluated ... the default, not an opt-in")."""

from __future__ import annotations

import pytest

from tests.support.k8s import Cluster
from tests.support.k8s.rbac import PIPELINE, WORKER, Rbac
from tests.support.manifests import render

NS = "vl-rbac"


@pytest.fixture(scope="module")
def overlay() -> list[dict]:
    return render("k8s/overlays/local")


@pytest.fixture
def s3_store(s3_client, bucket):
    from visionline.storage import S3Store

    return S3Store(f"s3://{bucket}/artifacts", client=s3_client)


def _api(cluster: Cluster, as_: str | None = None):
    from kubernetes import client

    api = cluster.api_client() if as_ is None else cluster.api_client(as_=as_)
    return client.CoreV1Api(api), client.BatchV1Api(api)


def _secret(name: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "stringData": {"k": "v"},
    }


def test_the_shipped_roles_decide_by_default():
    from kubernetes.client.exceptions import ApiException

    with Cluster() as cluster:
        admin = _api(cluster, "cluster-admin")[0]
        for name in ("visionline-inference-credentials", "visionline-s3"):
            admin.create_namespaced_secret(NS, _secret(name))
        core, batch = _api(cluster)  # the code under test: the pipeline's account
        # granted: the one Secret by name, pods
        core.read_namespaced_secret("visionline-inference-credentials", NS)
        core.list_namespaced_pod(NS)
        # not granted: another Secret (resourceNames), listing Jobs, deleting pods
        for call in (
            lambda: core.read_namespaced_secret("visionline-s3", NS),
            lambda: batch.list_namespaced_job(NS),
            lambda: core.delete_namespaced_pod("p", NS),
        ):
            with pytest.raises(ApiException) as e:
                call()
            assert e.value.status == 403
            assert f"system:serviceaccount:{NS}:{PIPELINE}" in e.value.body
            assert "bound: visionline-pipeline" in e.value.body
        assert [f[1:3] for f in cluster.forbidden] == [
            ("get", "secrets"),
            ("list", "jobs"),
            ("delete", "pods"),
        ]
        # the worker's Role is another: it lists Jobs, and reads no Secret
        worker_core, worker_batch = _api(cluster, WORKER)
        worker_batch.list_namespaced_job(NS)
        with pytest.raises(ApiException, match="403"):
            worker_core.read_namespaced_secret("visionline-inference-credentials", NS)


def test_a_request_without_a_token_is_refused():
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    with Cluster() as cluster:
        cfg = client.Configuration()
        cfg.host = cluster.url
        with pytest.raises(ApiException) as e:
            client.CoreV1Api(client.ApiClient(cfg)).list_namespaced_pod(NS)
        assert e.value.status == 403 and "system:anonymous" in e.value.body


def test_a_role_without_a_verb_the_code_uses_fails_the_submit(overlay, s3_store, moto_server):
    """Defect 1 as this cluster sees it: without `create services` in the pipeline's Role, a
    multi-node submit is refused, naming the verb and the Role to edit."""
    from tests.integration.test_k8s_training import _plan
    from visionline.compute.kubernetes import KubernetesBackend
    from visionline.kube import KubernetesPermissionError

    def strip(o: dict) -> dict:
        if o["kind"] == "Role" and o["metadata"]["name"] == PIPELINE:
            rules = [r for r in o["rules"] if r.get("resources") != ["services"]]
            return {**o, "rules": rules}
        return o

    plan = _plan(s3_store, moto_server, nodes=2)
    with Cluster(rbac=Rbac(strip(o) for o in overlay)) as cluster:
        backend = KubernetesBackend(plan.cfg, api_client=cluster.api_client())
        with pytest.raises(KubernetesPermissionError) as e:
            backend.submit(plan, s3_store)
    for words in ("create", "services", PIPELINE):
        assert words in str(e.value)
