"""Egress isolation (issue 18, defect 9): every visionline pod's egress is denied but for
what it needs (DNS for all; the object store for the serving, training and flow-run pods;
the Kubernetes API for the two whose service accounts call it; the training pods to each
other), and nothing reaches the cloud metadata endpoint. The policies are read from the
rendered overlays and evaluated as the NetworkPolicy API defines them
(tests/support/netpol.py), for the labels the pods really carry: the overlays' Deployments,
the reference training Jobs and the flow-run Job the Prefect worker builds from the work
pool's template.

Also the optional PodMonitor component (k8s/components/podmonitor): not in the base,
renders with an overlay, and is valid. kubernetes-validate knows no custom resources, so
the PodMonitor is checked against the schema below, written from the Prometheus
Operator's PodMonitor CRD (monitoring.coreos.com/v1, the fields used here, with their
types, patterns and enums as the CRD states them), strictly: a misspelt or misplaced field
fails, as it would against the CRD's structural schema."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import uuid
from types import SimpleNamespace

import jsonschema
import kubernetes_validate
import prefect.workers.base
import pytest
import yaml
from prefect.client.schemas.objects import FlowRun
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

from tests.support.manifests import (
    KUBERNETES_VERSION,
    OVERLAYS,
    REPO,
    find,
    render,
    sh,
    which,
)
from tests.support.netpol import Destination, egress_allowed, egress_policies

pytestmark = pytest.mark.skipif(
    which("kubectl") is None, reason="kubectl not found: run `make tools`"
)

SERVING = "visionline-torchserve"
METADATA = "169.254.169.254"
# Destinations, as a CNI sees them (Service addresses already translated to endpoints).
S3 = "52.216.8.1"  # an address of s3.us-east-1.amazonaws.com
API_SERVERS = ("10.0.0.1", "172.20.0.10", "192.168.49.2")  # kubeadm, EKS/GKE, minikube
PRIVATE_HOST = "10.12.0.7"
# Given as the Prefect client, so that none is made (nor a temporary server started): the
# template's references to blocks and variables are not resolved (it has none).
NO_API = SimpleNamespace()


def _ns(name: str, **labels: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": name, **labels}


def _flow_run_pod_labels(monkeypatch, **values) -> dict[str, str]:
    """The labels of a `retrain` flow run's pod, as prefect-kubernetes builds its Job
    (``values``: job variables set over the deployment's)."""

    async def unchanged(template, client=None):
        return template  # our template references no blocks or variables

    monkeypatch.setattr(prefect.workers.base, "resolve_block_document_references", unchanged)
    monkeypatch.setattr(prefect.workers.base, "resolve_variables", unchanged)
    template = json.loads((REPO / "k8s" / "prefect" / "base-job-template.json").read_text())
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    retrain = next(d for d in spec["deployments"] if d["name"] == "retrain")
    cfg = asyncio.run(
        KubernetesWorkerJobConfiguration.from_template_and_values(
            template,
            {**retrain["work_pool"]["job_variables"], **values},
            client=NO_API,
        )
    )
    cfg.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="calm-heron", flow_id=uuid.uuid4()))
    return cfg.job_manifest["spec"]["template"]["metadata"]["labels"]


@pytest.fixture(scope="module")
def training_pods() -> list[dict[str, str]]:
    jobs = [o for o in render("k8s/training") if o["kind"] == "Job"]
    assert len(jobs) == 2
    return [j["spec"]["template"]["metadata"]["labels"] for j in jobs]


@pytest.fixture
def pods(monkeypatch, training_pods) -> dict[str, list[dict[str, str]]]:
    objects = render("k8s/overlays/local")

    def template_labels(name: str) -> dict[str, str]:
        return find(objects, "Deployment", name)["spec"]["template"]["metadata"]["labels"]

    return {
        "serving": [template_labels(SERVING)],
        "worker": [template_labels("visionline-prefect-worker")],
        "training": training_pods,
        "flow-run": [_flow_run_pod_labels(monkeypatch)],
    }


def _pod(labels: dict[str, str], ip: str = "10.244.1.9", port: int = 8080) -> Destination:
    return Destination(ip, port, pod_labels=labels, namespace_labels=_ns("visionline"))


# Who may reach what: the egress each pod is meant to have, and nothing more.
DNS = [
    Destination("10.96.0.10", 53, "UDP", {"k8s-app": "kube-dns"}, _ns("kube-system")),
    Destination("10.244.0.3", 53, "TCP", {"k8s-app": "kube-dns"}, _ns("kube-system")),
]
STORE = [Destination(S3, 443)]
KUBE_API = [Destination(ip, port) for ip in API_SERVERS for port in (443, 6443)]
PREFECT = [
    Destination("10.244.3.4", 4200, pod_labels={"app": "prefect"}, namespace_labels=_ns("prefect"))
]
ALLOWED = {
    "serving": DNS + STORE,
    "training": DNS + STORE,
    "flow-run": DNS + STORE + KUBE_API + PREFECT,
    "worker": DNS + KUBE_API + PREFECT,
}
DENIED = [
    *(Destination(METADATA, port) for port in (80, 443, 8080)),
    Destination("169.254.170.2", 80),  # the ECS/EKS pod credential endpoint
    Destination(S3, 80),  # plain HTTP anywhere
    Destination("1.1.1.1", 53, "UDP"),  # DNS outside the cluster (tunnels)
    Destination(PRIVATE_HOST, 5432),  # anything else in the VPC
    Destination("10.244.7.7", 22, pod_labels={"app": "x"}, namespace_labels=_ns("other")),
]


@pytest.mark.parametrize("kind", sorted(ALLOWED))
def test_each_pod_reaches_what_it_needs_and_nothing_else(kind, pods):
    objects = render("k8s/overlays/local")
    for labels in pods[kind]:
        assert egress_policies(objects, labels), f"{kind}: egress is not restricted"
        for dest in ALLOWED[kind]:
            assert egress_allowed(objects, labels, dest), (kind, dest)
        for dest in DENIED:
            assert not egress_allowed(objects, labels, dest), (kind, dest)
        # The Kubernetes API only for the pods whose service account calls it.
        api_ok = [egress_allowed(objects, labels, d) for d in KUBE_API]
        assert all(api_ok) if kind in ("flow-run", "worker") else not any(api_ok), kind


def test_training_pods_reach_each_other_and_nothing_else_in_the_namespace(pods):
    objects = render("k8s/overlays/local")
    trainer, serving = pods["training"][0], pods["serving"][0]
    for port in (29500, 40123):  # the rendezvous port, an NCCL port
        assert egress_allowed(objects, trainer, _pod(pods["training"][1], port=port))
        assert not egress_allowed(objects, serving, _pod(trainer, port=port))
    assert not egress_allowed(objects, trainer, _pod(serving))
    assert not egress_allowed(objects, trainer, _pod(pods["worker"][0]))


def test_flow_runs_reach_the_serving_pods_for_the_deploy_checks(pods):
    objects = render("k8s/overlays/local")
    serving = pods["serving"][0]
    assert egress_allowed(objects, pods["flow-run"][0], _pod(serving, port=8080))
    assert not egress_allowed(objects, pods["flow-run"][0], _pod(serving, port=8082))
    assert not egress_allowed(objects, pods["worker"][0], _pod(serving, port=8080))


def test_flow_run_pods_keep_their_label_whatever_the_deployment_labels(monkeypatch):
    """The policies find flow-run pods by the template's own pod label, not by the
    `labels` job variable, which a deployment may replace."""
    labels = _flow_run_pod_labels(monkeypatch, labels={"team": "vision"})
    assert labels["app.kubernetes.io/component"] == "flow-run" and labels["team"] == "vision"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_nothing_reaches_the_metadata_endpoint(overlay):
    """Whatever pod labels: every egress rule names its peers (no rule open to every
    address), and an address block that holds the metadata endpoint excepts it."""
    metadata = ipaddress.ip_address(METADATA)
    for policy in (o for o in render(overlay) if o["kind"] == "NetworkPolicy"):
        for rule in policy["spec"].get("egress") or []:
            assert rule.get("to"), policy["metadata"]["name"]
            for peer in rule["to"]:
                block = peer.get("ipBlock")
                if block and metadata in ipaddress.ip_network(block["cidr"]):
                    excepted = [ipaddress.ip_network(c) for c in block.get("except", [])]
                    assert any(metadata in net for net in excepted), policy["metadata"]["name"]


# -- the PodMonitor component ------------------------------------------------------------

_DURATION = (
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array"},
    },
}
PODMONITOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "additionalProperties": False,
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector"],
            "properties": {
                "selector": _SELECTOR,
                "jobLabel": {"type": "string"},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "podMetricsEndpoints": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "portNumber": {"type": "integer", "minimum": 1, "maximum": 65535},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                            "honorLabels": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}
COMPONENT = REPO / "k8s" / "components" / "podmonitor"


def _with_component(tmp_path, overlay: str) -> list[dict]:
    """The overlay with the component added, as an operator's kustomization adds it
    (kustomize takes relative paths only)."""
    rel = os.path.relpath(REPO, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {rel}/{overlay}\n"
        f"components:\n  - {rel}/k8s/components/podmonitor\n"
    )
    proc = sh(f"kubectl kustomize {tmp_path}")
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_podmonitor_is_optional():
    component = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    for kustomization in ("k8s/base", *OVERLAYS):
        text = (REPO / kustomization / "kustomization.yaml").read_text()
        assert "components" not in yaml.safe_load(text), kustomization
    for overlay in OVERLAYS:
        assert all(o["kind"] != "PodMonitor" for o in render(overlay))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_podmonitor_scrapes_the_metrics_port_the_policy_admits(tmp_path, overlay):
    objects = _with_component(tmp_path, overlay)
    monitors = [o for o in objects if o["kind"] == "PodMonitor"]
    assert len(monitors) == 1
    monitor = monitors[0]
    jsonschema.validate(monitor, PODMONITOR_SCHEMA)
    # Everything else is the overlay as it was, and valid.
    rest = [o for o in objects if o["kind"] != "PodMonitor"]
    assert rest == render(overlay)
    for obj in rest:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    assert monitor["metadata"]["namespace"] == "visionline"
    assert monitor["metadata"]["labels"]["app.kubernetes.io/part-of"] == "visionline"

    pod = find(objects, "Deployment", SERVING)["spec"]["template"]
    spec = monitor["spec"]
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (endpoint,) = spec["podMetricsEndpoints"]
    ports = {
        p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])
    }
    port = ports[endpoint["port"]]
    # The port the serving policy opens to the scraper, and the path nginx serves there.
    policy = find(objects, "NetworkPolicy", SERVING)
    scraped = [r for r in policy["spec"]["ingress"] if "from" in r]
    assert [p["port"] for r in scraped for p in r["ports"]] == [port]
    nginx = (REPO / "k8s" / "base" / "serving" / "nginx.conf").read_text()
    server = next(
        s for s in nginx.split("server {")[1:] if re.search(rf"listen [\d.]+:{port}\b", s)
    )
    assert f"location = {endpoint['path']} " in server


def test_podmonitor_schema_rejects_a_misplaced_field():
    monitor = yaml.safe_load((COMPONENT / "podmonitor.yaml").read_text())
    jsonschema.validate(monitor, PODMONITOR_SCHEMA)
    monitor["spec"]["port"] = "metrics"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, PODMONITOR_SCHEMA)
    bad = yaml.safe_load((COMPONENT / "podmonitor.yaml").read_text())
    bad["spec"]["podMetricsEndpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, PODMONITOR_SCHEMA)
