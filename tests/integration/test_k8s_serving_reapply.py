"""Re-applying the overlay after a deploy does not change what is served (issue #18,
defect 8): the strict test cluster applies the rendered k8s/overlays/local as
``kubectl apply`` does (three-way merge with the last applied configuration), the
deployer pins a version, and a later apply, even one that changes the operator's own
settings, leaves the pin where the deployer put it."""

from __future__ import annotations

import copy

import pytest

from tests.conftest import REPO
from tests.support.k8s import Cluster, DeploymentController
from tests.support.k8s.apply import kubectl_apply
from tests.support.manifests import find, render, which
from visionline.config import load_config
from visionline.registry import ModelRef, Registry
from visionline.serving.kubernetes import KubernetesDeployer, template_ref
from visionline.serving.nginx import new_token
from visionline.storage import LocalStore

pytestmark = pytest.mark.skipif(which("kubectl") is None, reason="kubectl not found")
NS = "visionline"  # the overlay's namespace
NAME = "visionline-torchserve"


def _pin(template):
    env = template["spec"]["initContainers"][0].get("env") or []
    return {e["name"]: e["value"] for e in env if e["name"].startswith("VISIONLINE_PINNED_")}


def _served(template) -> str:
    """What a pod of ``template`` fetches: the deployer's pin, else the command's model."""
    command = template["spec"]["initContainers"][0]["command"]
    return _pin(template).get("VISIONLINE_PINNED_MODEL") or command[command.index("--model") + 1]


def _live(api):
    from kubernetes import client

    return api.sanitize_for_serialization(
        client.AppsV1Api(api).read_namespaced_deployment(NAME, NS)
    )


def test_reapplying_the_overlay_after_a_deploy_keeps_the_pinned_version(tmp_path):
    from kubernetes import client

    store = LocalStore(tmp_path / "store")
    reg = Registry(store, "digits")
    for v in ("1", "2"):
        reg.register(v, {"run_id": f"run-{v}", "sha256": v * 64, "parity_keys": ["k"]})
    reg.promote("1", "fixture")
    objects = render("k8s/overlays/local")
    applied = [
        find(objects, "ConfigMap", f"{NAME}-serve"),
        find(objects, "Deployment", NAME),
        find(objects, "Service", NAME),
    ]
    cfg = load_config(REPO / "configs" / "digits-k8s.yaml").with_overrides(
        **{"deploy.kubernetes.poll_seconds": 0.1, "deploy.kubernetes.rollout_timeout_seconds": 5}
    )
    with Cluster() as cluster:
        api = cluster.admin_client()  # the operator's kubectl; the pipeline's account deploys
        client.CoreV1Api(api).create_namespaced_secret(
            NS,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "visionline-inference-credentials", "namespace": NS},
                "stringData": {new_token(): "pipeline"},
            },
        )
        for obj in applied:
            kubectl_apply(api, obj)
        controller = DeploymentController(cluster, NS, lambda t: True)
        controller.start()
        try:
            KubernetesDeployer(cfg, store, api_client=cluster.api_client()).deploy(
                ModelRef("digits", "2")
            )
            deployed = _live(api)
            assert _served(deployed["spec"]["template"]) == "digits:2"

            kubectl_apply(api, applied[1])  # the operator applies the overlay again
            again = _live(api)
            assert _served(again["spec"]["template"]) == "digits:2"
            assert again["spec"]["template"] == deployed["spec"]["template"]
            assert again["metadata"]["generation"] == deployed["metadata"]["generation"]

            edited = copy.deepcopy(applied[1])  # ...and then changes their own settings
            ts = edited["spec"]["template"]["spec"]["containers"][0]
            ts["resources"]["limits"]["memory"] = ts["resources"]["requests"]["memory"] = "3Gi"
            kubectl_apply(api, edited)
            after = _live(api)["spec"]["template"]
            assert after["spec"]["containers"][0]["resources"]["limits"]["memory"] == "3Gi"
            assert _served(after) == "digits:2"
            assert _pin(after) == _pin(deployed["spec"]["template"])
            assert template_ref(after) == ModelRef("digits", "2")
            assert not cluster.rejected
        finally:
            controller.close()
        assert not controller.errors, controller.errors
