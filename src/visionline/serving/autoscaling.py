"""Scaling the serving pods on how long requests wait, not on CPU alone.

CPU utilisation says a replica is busy; it does not say users are waiting. What does is the
time a request spends in TorchServe's job queue before a worker takes it into a batch.
TorchServe exposes it as a counter, ``ts_queue_latency_microseconds`` (the sum over
requests), beside ``ts_inference_requests_total``; their rates' ratio over a window is the
mean queue wait per request, per pod: ``visionline_queue_wait_seconds``. One formula,
written here, is what the Prometheus Adapter rule (for an HPA on a Pods metric) and the KEDA
ScaledObject query in ``k8s/components/`` carry; a test holds them to it.

``desired_replicas`` is the HPA controller's rule (the ratio of the metric to its target,
a 10% tolerance, bounds), so a local load test can say what an HPA would do with the
metric it measures.
"""

from __future__ import annotations

import math
import re

METRIC = "visionline_queue_wait_seconds"
QUEUE_COUNTER = "ts_queue_latency_microseconds"
REQUEST_COUNTER = "ts_inference_requests_total"
WINDOW = "2m"
# Scale out once requests wait 100 ms on average in the queue: a few batch delays.
TARGET_SECONDS = 0.1
TOLERANCE = 0.1  # kube-controller-manager's --horizontal-pod-autoscaler-tolerance default


def per_pod_query(matchers: str) -> str:
    """PromQL for each pod's mean queue wait (seconds per request) over ``WINDOW``."""
    by = "sum by (namespace, pod)"
    return (
        f"{by} (rate({QUEUE_COUNTER}{{{matchers}}}[{WINDOW}])) / 1e6"
        f" / clamp_min({by} (rate({REQUEST_COUNTER}{{{matchers}}}[{WINDOW}])), 1e-3)"
    )


ADAPTER_QUERY = per_pod_query("<<.LabelMatchers>>")


def keda_query(namespace: str, pod_prefix: str) -> str:
    """The same per-pod wait, averaged over the Deployment's pods (KEDA's ``Value``)."""
    matchers = f'namespace="{namespace}",pod=~"{pod_prefix}-.*"'
    return f"avg({per_pod_query(matchers)})"


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(?P<value>\S+)")


def counters(text: str) -> tuple[float, float]:
    """(queue microseconds, requests) summed over a /metrics page's samples."""
    totals = {QUEUE_COUNTER: 0.0, REQUEST_COUNTER: 0.0}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group("name") in totals:
            totals[m.group("name")] += float(m.group("value"))
    return totals[QUEUE_COUNTER], totals[REQUEST_COUNTER]


def queue_wait_seconds(before: str, after: str) -> float:
    """Mean queue wait per request between two scrapes of one pod (what ``rate()`` gives)."""
    q0, n0 = counters(before)
    q1, n1 = counters(after)
    if n1 < n0 or q1 < q0:
        raise ValueError("the counters went down between the scrapes: the server restarted")
    return (q1 - q0) / 1e6 / max(n1 - n0, 1e-3)


def desired_replicas(
    current: int,
    value: float,
    target: float = TARGET_SECONDS,
    min_replicas: int = 1,
    max_replicas: int = 8,
    tolerance: float = TOLERANCE,
) -> int:
    """The replica count the HPA controller computes for a Pods metric averaging ``value``."""
    if current < 1 or target <= 0:
        raise ValueError("current replicas must be >= 1 and the target > 0")
    ratio = value / target
    wanted = current if abs(ratio - 1.0) <= tolerance else math.ceil(current * ratio)
    return max(min_replicas, min(max_replicas, wanted))
