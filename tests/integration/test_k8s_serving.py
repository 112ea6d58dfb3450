"""Serving on Kubernetes against an API server over HTTP (kmock's emulator with the
API-server semantics of tests/support/k8s/) and the official client; the test plays
the Deployment controller (``DeploymentController``)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO
from tests.support.k8s import Cluster, DeploymentController
from visionline.config import load_config
from visionline.kube import KubernetesPermissionError
from visionline.registry import ModelRef, Registry
from visionline.serving.deploy import DeploymentError, deploy_checked
from visionline.serving.kubernetes import MODEL, PREVIOUS, KubernetesDeployer
from visionline.serving.nginx import new_token
from visionline.storage import LocalStore

NS = "vl-serve"


@pytest.fixture
def cluster():
    with Cluster() as c:
        yield c


@pytest.fixture
def registry(tmp_path):
    """Two registered versions, the first the champion (enough for rollouts; the archives
    themselves are only read by the pods' init containers)."""
    store = LocalStore(tmp_path / "store")
    reg = Registry(store, "digits")
    for v in ("1", "2"):
        reg.register(v, {"run_id": f"run-{v}", "sha256": f"{v}" * 64, "parity_keys": ["k"]})
    reg.promote("1", "fixture")
    return store, reg


@pytest.fixture
def token(cluster):
    from kubernetes import client

    value = new_token()
    client.CoreV1Api(cluster.admin_client()).create_namespaced_secret(
        NS,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "visionline-inference-credentials", "namespace": NS},
            "stringData": {value: "pipeline"},
        },
    )
    return value


def _cfg(**kube):
    cfg = load_config(REPO / "configs" / "digits.yaml")
    return cfg.with_overrides(
        **{
            "deploy.target": "kubernetes",
            "deploy.kubernetes.namespace": NS,
            "deploy.kubernetes.poll_seconds": 0.1,
            "deploy.kubernetes.rollout_timeout_seconds": 3,
            **{f"deploy.kubernetes.{k}": v for k, v in kube.items()},
        }
    )


@pytest.fixture
def controller(cluster):
    made = []

    def make(healthy):
        c = DeploymentController(cluster, NS, healthy)
        made.append(c)
        c.start()
        return c

    yield make
    for c in made:
        c.close()
        assert not c.errors, c.errors


def _deployment(cluster):
    from kubernetes import client

    api = cluster.admin_client()
    return api.sanitize_for_serialization(
        client.AppsV1Api(api).read_namespaced_deployment("visionline-torchserve", NS)
    )


def _pin(template):
    """The fetch-model container's pin, as the deployer wrote it."""
    env = template["spec"]["initContainers"][0]["env"]
    return {e["name"]: e["value"] for e in env if e["name"].startswith("VISIONLINE_PINNED_")}


def _version(template):
    return template["metadata"]["annotations"][MODEL]


def test_first_deploy_creates_valid_objects_and_reports_status(
    cluster, controller, registry, token
):
    store, _ = registry
    controller(lambda t: True)
    # a first deploy creates every object: an operator's kubeconfig (cluster admin), as on
    # a cluster without the overlay; the pipeline's account only retargets (tests below)
    deployer = KubernetesDeployer(_cfg(), store, api_client=cluster.admin_client())
    client = deployer.deploy(ModelRef("digits", "1"))
    assert not cluster.rejected  # ConfigMap, Deployment, Service all validate (1.31 strict)
    assert client.url == f"http://visionline-torchserve.{NS}.svc:8080/predictions/digits"
    assert client.headers == {"Authorization": f"Bearer {token}"}
    d = _deployment(cluster)
    tpl = d["spec"]["template"]
    assert _version(tpl) == "digits:1"
    pin = _pin(tpl)
    assert pin["VISIONLINE_PINNED_MODEL"] == "digits:1"
    assert pin["VISIONLINE_PINNED_SHA256"] == "1" * 64
    status = deployer.status()
    assert status.ready and status.model == ModelRef("digits", "1")
    posted = {
        path.rsplit("/", 1)[-1]: body
        for method, path, body in cluster.requests()
        if method == "POST"
    }
    assert {p["port"] for p in posted["services"]["spec"]["ports"]} == {8080, 7070}
    assert posted["configmaps"]["immutable"] is True


def test_rollout_that_never_becomes_available_is_rolled_back_and_champion_stays(
    cluster, controller, registry, token
):
    store, reg = registry
    kubelet = controller(lambda t: _version(t) != "digits:2")
    KubernetesDeployer(_cfg(), store, api_client=cluster.admin_client()).deploy(
        ModelRef("digits", "1")
    )  # the operator's first deploy; then the pipeline's account rolls out and back
    deployer = KubernetesDeployer(_cfg(), store, api_client=cluster.api_client())
    before = _deployment(cluster)["spec"]["template"]

    with pytest.raises(DeploymentError) as e:
        deploy_checked(deployer, store, ModelRef("digits", "2"))
    text = str(e.value)
    assert "did not become available" in text and "fetching the model keeps failing" in text
    assert "does not match its registered sha256" in text  # the init container's own words
    after = _deployment(cluster)
    assert after["spec"]["template"] == before  # the previous pod template, exactly
    assert PREVIOUS not in (after["metadata"].get("annotations") or {})
    assert [_version(t) for t in kubelet.templates] == ["digits:1", "digits:2", "digits:1"]
    assert reg.aliases()["champion"] == "1"
    assert "promote" not in [e["action"] for e in reg.log() if e["version"] == "2"]
    # every change was a merge patch guarded by the resourceVersion it was computed from
    patches = [
        b for m, p, b in cluster.requests() if m == "PATCH" and p.endswith("visionline-torchserve")
    ]
    assert len(patches) == 2 and all(b["metadata"]["resourceVersion"] for b in patches)
    assert deployer.status().model == ModelRef("digits", "1")


def test_rollback_of_a_first_deploy_removes_it(cluster, controller, registry, token):
    store, _ = registry
    controller(lambda t: False)
    deployer = KubernetesDeployer(_cfg(), store, api_client=cluster.admin_client())
    with pytest.raises(DeploymentError):
        deployer.deploy(ModelRef("digits", "1"))
    assert deployer.rollback() is None
    assert deployer.status().model is None


def test_rbac_refusal_names_verb_resource_and_role(cluster, controller, registry, token):
    store, _ = registry
    controller(lambda t: True)
    KubernetesDeployer(_cfg(), store, api_client=cluster.admin_client()).deploy(
        ModelRef("digits", "1")
    )
    deployer = KubernetesDeployer(_cfg(), store, api_client=cluster.api_client())
    cluster.deny("patch", "deployments")
    with pytest.raises(KubernetesPermissionError) as e:
        deployer.deploy(ModelRef("digits", "2"))
    for words in ("patch", "deployments", f"namespace {NS}", "visionline-pipeline"):
        assert words in str(e.value)
    assert json.dumps(_deployment(cluster)).count("digits:2") == 0  # nothing changed


def test_the_documented_credential_secret_is_what_the_deployer_reads(cluster, registry):
    """The way docs/kubernetes.md creates the credential (kubectl, a client-side dry run
    here: no cluster) gives a Secret whose key is the token the deploy checks then send."""
    import subprocess

    from kubernetes import client

    token = new_token()
    made = subprocess.run(
        [
            "kubectl",
            "-n",
            NS,
            "create",
            "secret",
            "generic",
            "visionline-inference-credentials",
            f"--from-literal={token}=client-app",
            "--dry-run=client",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    client.CoreV1Api(cluster.admin_client()).create_namespaced_secret(NS, json.loads(made.stdout))
    store, _ = registry
    assert KubernetesDeployer(_cfg(), store, api_client=cluster.api_client()).token() == token


def test_deploy_retargets_an_applied_deployment_and_keeps_its_settings(
    cluster, controller, registry, token
):
    """The Deployment an operator applied (kustomize: the champion alias, their own
    resources and replicas): deploy changes only what names the model."""
    from kubernetes import client

    from visionline.serving.kubernetes import build_objects

    store, _ = registry
    cfg = _cfg()
    _, dep, _ = build_objects(cfg, "s3://elsewhere/vl", ModelRef("digits", "1"), "1" * 64)
    fetch = dep["spec"]["template"]["spec"]["initContainers"][0]
    # as applied: the champion, no pin
    fetch["env"] = [e for e in fetch["env"] if not e["name"].startswith("VISIONLINE_PINNED_")]
    assert fetch["command"][fetch["command"].index("--model") + 1] == "digits:champion"
    ts = dep["spec"]["template"]["spec"]["containers"][0]
    ts["resources"] = {"requests": {"cpu": "3", "memory": "6Gi"}, "limits": {"memory": "6Gi"}}
    dep["spec"]["replicas"] = 4
    client.AppsV1Api(cluster.admin_client()).create_namespaced_deployment(NS, dep)
    controller(lambda t: True)

    KubernetesDeployer(cfg, store, api_client=cluster.api_client()).deploy(ModelRef("digits", "2"))
    after = _deployment(cluster)
    tpl = after["spec"]["template"]
    pin = _pin(tpl)
    assert pin["VISIONLINE_PINNED_MODEL"] == "digits:2"
    assert pin["VISIONLINE_PINNED_SHA256"] == "2" * 64
    assert pin["VISIONLINE_PINNED_STORE"] == store.uri  # where the deployer read the registry
    cmd = tpl["spec"]["initContainers"][0]["command"]
    assert cmd == fetch["command"]  # the operator's command as applied
    assert tpl["spec"]["containers"][0]["resources"] == ts["resources"]
    assert after["spec"]["replicas"] == 4
    assert _version(tpl) == "digits:2"
