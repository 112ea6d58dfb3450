"""``DeploymentController``: the Deployment controller and its pods, over the API. A
rollout replaces the Deployment's pods at once: a template ``healthy`` accepts becomes
available on every replica; any other gets one new pod whose init container keeps
failing (CrashLoopBackOff), and the old replicas stay available (``maxUnavailable: 0``).
There are no ReplicaSets: the Deployment's status is written directly."""

from __future__ import annotations

import copy
import threading
import uuid
from collections.abc import Callable
from typing import Any

from .cluster import Cluster
from .objects import now_rfc3339

_MERGE_PATCH = "application/merge-patch+json"


def _conditions(progress_reason: str, ts: str) -> list[dict[str, Any]]:
    """Available (the old or new replicas serve) and Progressing with ``progress_reason``."""
    return [
        {
            "type": "Available",
            "status": "True",
            "reason": "MinimumReplicasAvailable",
            "lastUpdateTime": ts,
            "lastTransitionTime": ts,
        },
        {
            "type": "Progressing",
            "status": "True",
            "reason": progress_reason,
            "lastUpdateTime": ts,
            "lastTransitionTime": ts,
        },
    ]


def rolled_out_status(gen: int, want: int, ts: str) -> dict[str, Any]:
    """Every replica runs the new template and is available."""
    return {
        "observedGeneration": gen,
        "replicas": want,
        "updatedReplicas": want,
        "readyReplicas": want,
        "availableReplicas": want,
        "unavailableReplicas": None,
        "conditions": _conditions("NewReplicaSetAvailable", ts),
    }


def stuck_status(gen: int, want: int, ts: str) -> dict[str, Any]:
    """One new replica never becomes ready; the ``want`` old ones still serve."""
    return {
        "observedGeneration": gen,
        "replicas": want + 1,
        "updatedReplicas": 1,
        "readyReplicas": want,
        "availableReplicas": want,
        "unavailableReplicas": 1,
        "conditions": _conditions("ReplicaSetUpdated", ts),
    }


def crashlooping_init_status(init: dict[str, Any]) -> dict[str, Any]:
    """A pod whose init container (``init``) failed verifying the model archive, again."""
    return {
        "phase": "Pending",
        "initContainerStatuses": [
            {
                "name": init["name"],
                "image": init["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 4,
                "state": {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": "back-off 1m20s restarting failed container",
                    }
                },
                "lastState": {
                    "terminated": {
                        "exitCode": 1,
                        "reason": "Error",
                        "message": "error: the archive does not match its registered sha256\n",
                    }
                },
            }
        ],
    }


class DeploymentController(threading.Thread):
    """The Deployment controller and its pods, over the API: a template ``healthy``
    accepts becomes available on every replica (``healthy`` may first bring it up for
    real); any other gets one new pod whose init container keeps failing, and the old
    replicas stay available (``maxUnavailable: 0``). ``templates`` records every
    template rolled out, in order."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        healthy: Callable[[dict[str, Any]], bool],
        tick: float = 0.1,
    ) -> None:
        super().__init__(name="deployment-controller", daemon=True)
        from kubernetes import client  # the optional client, as in the adapters

        self.api = cluster.admin_client()
        self.apps = client.AppsV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.namespace = namespace
        self.healthy = healthy
        self.tick = tick
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        self.templates: list[dict[str, Any]] = []  # every template rolled out, in order

    def run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        while not self.stop_event.is_set():
            try:
                items = (
                    self.api.sanitize_for_serialization(
                        self.apps.list_namespaced_deployment(self.namespace)
                    ).get("items")
                    or []
                )
                for d in items:
                    self._sync(d)
            except ApiException as e:
                if e.status != 404:
                    self.errors.append(e)
            except Exception as e:  # surfaced through .errors
                self.errors.append(e)
            self.stop_event.wait(self.tick)

    def _sync(self, d: dict[str, Any]) -> None:
        """Roll out a Deployment whose spec changed since its status was last written."""
        gen = d["metadata"].get("generation", 1)
        status = d.get("status") or {}
        if status.get("observedGeneration") == gen:
            return
        name, want = d["metadata"]["name"], d["spec"].get("replicas", 1)
        template = d["spec"]["template"]
        self.templates.append(copy.deepcopy(template))
        labels = template["metadata"]["labels"]
        self._delete_pods(d["spec"]["selector"]["matchLabels"])
        ts = now_rfc3339()
        if self.healthy(template):
            new = rolled_out_status(gen, want, ts)
        else:
            self._create_stuck_pod(name, template, labels)
            new = stuck_status(gen, want, ts)
        self.apps.patch_namespaced_deployment_status(
            name, self.namespace, {"status": new}, _content_type=_MERGE_PATCH
        )

    def _delete_pods(self, match_labels: dict[str, str]) -> None:
        """Delete every pod the Deployment's selector matches (the old replicas)."""
        selector = ",".join(f"{k}={v}" for k, v in match_labels.items())
        for pod in (
            self.api.sanitize_for_serialization(
                self.core.list_namespaced_pod(self.namespace, label_selector=selector)
            ).get("items")
            or []
        ):
            self.core.delete_namespaced_pod(pod["metadata"]["name"], self.namespace)

    def _create_stuck_pod(
        self, name: str, template: dict[str, Any], labels: dict[str, str]
    ) -> None:
        """Create the new replica whose first init container keeps crashing."""
        pod_name = f"{name}-{uuid.uuid4().hex[:10]}"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": self.namespace, "labels": labels},
            "spec": copy.deepcopy(template["spec"]),
        }
        self.core.create_namespaced_pod(self.namespace, pod)
        init = template["spec"]["initContainers"][0]
        self.core.patch_namespaced_pod_status(
            pod_name,
            self.namespace,
            {"status": crashlooping_init_status(init)},
            _content_type=_MERGE_PATCH,
        )

    def close(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)
