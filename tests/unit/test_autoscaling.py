"""Autoscaling on queue wait (#20, item 4): the HPA's rule, the metric from TorchServe's
counters, and the two optional components of k8s/ (an HPA on a Pods metric through the
Prometheus Adapter, and a KEDA ScaledObject) carrying the one query, valid, with CPU kept."""

from __future__ import annotations

import os

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support.manifests import KUBERNETES_VERSION, OVERLAYS, REPO, find, render, sh
from visionline.serving import autoscaling as a

SERVING = "visionline-torchserve"
COMPONENTS = REPO / "k8s" / "components"


def _page(queue_us: float, requests: float) -> str:
    """A /metrics page as TorchServe 0.12 writes it (prometheus mode)."""
    labels = 'model_name="digits",model_version="default",hostname="pod-1"'
    return (
        "# HELP ts_queue_latency_microseconds Cumulative queue duration in microseconds\n"
        "# TYPE ts_queue_latency_microseconds counter\n"
        f"ts_queue_latency_microseconds{{{labels}}} {queue_us}\n"
        "# TYPE ts_inference_requests_total counter\n"
        f"ts_inference_requests_total{{{labels}}} {requests}\n"
        f"ts_inference_latency_microseconds{{{labels}}} 99999999.0\n"
    )


def test_queue_wait_is_the_ratio_of_the_two_counters_increments():
    before, after = _page(1_000_000.0, 100.0), _page(5_000_000.0, 140.0)
    assert a.queue_wait_seconds(before, after) == pytest.approx(4.0 / 40)
    assert a.queue_wait_seconds(after, after) == 0.0  # no requests: nobody waited
    with pytest.raises(ValueError, match="restarted"):
        a.queue_wait_seconds(after, before)


@pytest.mark.parametrize(
    ("current", "value", "want"),
    [
        (2, 0.1, 2),  # at the target
        (2, 0.105, 2),  # within the 10% tolerance
        (2, 0.25, 5),  # ceil(2 * 2.5)
        (4, 0.01, 1),  # far under: down to the minimum
        (3, 10.0, 8),  # bounded by the maximum
    ],
)
def test_desired_replicas_follows_the_hpa_rule(current, value, want):
    assert a.desired_replicas(current, value, 0.1, min_replicas=1, max_replicas=8) == want


def _with(tmp_path, overlay: str, component: str) -> list[dict]:
    rel = os.path.relpath(REPO, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {rel}/{overlay}\ncomponents:\n  - {rel}/k8s/components/{component}\n"
    )
    proc = sh(f"kubectl kustomize {tmp_path}")
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def test_the_components_are_optional():
    for kustomization in ("k8s/base", *OVERLAYS):
        text = (REPO / kustomization / "kustomization.yaml").read_text()
        assert "components" not in yaml.safe_load(text), kustomization
    for overlay in OVERLAYS:
        kinds = {o["kind"] for o in render(overlay)}
        assert "ScaledObject" not in kinds and "HorizontalPodAutoscaler" in kinds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_queue_metric_is_added_to_the_hpa_and_cpu_stays(tmp_path, overlay):
    plain = find(render(overlay), "HorizontalPodAutoscaler", SERVING)
    objects = _with(tmp_path, overlay, "queue-autoscaling")
    hpa = find(objects, "HorizontalPodAutoscaler", SERVING)
    kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)
    cpu, queue = hpa["spec"]["metrics"]
    assert cpu == plain["spec"]["metrics"][0]  # the overlay's CPU target, as it was
    assert queue["pods"]["metric"]["name"] == a.METRIC
    assert queue["pods"]["target"] == {"type": "AverageValue", "averageValue": "100m"}
    assert float(queue["pods"]["target"]["averageValue"][:-1]) / 1000 == a.TARGET_SECONDS
    rest = [o for o in objects if o["kind"] != "HorizontalPodAutoscaler"]
    assert rest == [o for o in render(overlay) if o["kind"] != "HorizontalPodAutoscaler"]


def test_the_adapter_rule_serves_the_metric_from_the_one_query():
    values = yaml.safe_load(
        (COMPONENTS / "queue-autoscaling/prometheus-adapter-rules.yaml").read_text()
    )
    (rule,) = values["rules"]["custom"]
    assert rule["metricsQuery"] == a.ADAPTER_QUERY
    assert rule["name"]["as"] == a.METRIC
    assert a.QUEUE_COUNTER in rule["seriesQuery"]
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}


_TRIGGER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["type", "metadata"],
    "properties": {
        "type": {"type": "string"},
        "name": {"type": "string"},
        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
        "useCachedMetrics": {"type": "boolean"},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
        "authenticationRef": {"type": "object"},
    },
}
# From KEDA 2.x's ScaledObject CRD (keda.sh/v1alpha1), the fields used here with their types
# as the CRD states them, strictly: a misspelt or misplaced field fails.
SCALEDOBJECT_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name", "namespace"],
            "properties": {
                "name": {"type": "string"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "behavior": {"type": "object"},
                            },
                        },
                    },
                },
                "triggers": {"type": "array", "minItems": 1, "items": _TRIGGER},
            },
        },
    },
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_on_the_same_query_with_cpu_beside_it(tmp_path, overlay):
    base_hpa = find(render("k8s/base"), "HorizontalPodAutoscaler", SERVING)
    objects = _with(tmp_path, overlay, "keda")
    assert all(o["kind"] != "HorizontalPodAutoscaler" for o in objects)  # KEDA owns it
    scaled = find(objects, "ScaledObject", SERVING)
    jsonschema.validate(scaled, SCALEDOBJECT_SCHEMA)
    spec = scaled["spec"]
    deployment = find(objects, "Deployment", SERVING)
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert scaled["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    prom, cpu = spec["triggers"]
    assert prom["type"] == "prometheus" and prom["metricType"] == "Value"
    ns = deployment["metadata"]["namespace"]
    assert prom["metadata"]["query"] == a.keda_query(ns, SERVING)
    assert float(prom["metadata"]["threshold"]) == a.TARGET_SECONDS
    base_cpu = base_hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"]
    assert cpu["type"] == "cpu" and cpu["metadata"]["value"] == str(base_cpu)
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (
        base_hpa["spec"]["minReplicas"],
        base_hpa["spec"]["maxReplicas"],
    )
    assert (
        spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        == base_hpa["spec"]["behavior"]
    )
    for obj in objects:
        if obj["kind"] != "ScaledObject":
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
