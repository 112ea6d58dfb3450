"""``RolloutController``: the Deployment and ReplicaSet controllers over the API, as the
real ones roll a Deployment out. Each pod template gets its ReplicaSet (named after the
template's hash, the ``pod-template-hash`` label on its pods, owned by the Deployment);
a changed template scales the new ReplicaSet up and the old ones down within
``maxSurge`` (pods above ``replicas``) and ``maxUnavailable`` (available pods below
it), counting a pod available only once it is Ready (its startup and readiness probes,
run by its kubelet) and not terminating. A rollout that makes no progress for
``progressDeadlineSeconds`` gets ``Progressing=False, ProgressDeadlineExceeded``. The
ReplicaSet controller creates pods up to its count and deletes surplus ones (not ready
first, then the newest), gracefully: the kubelet runs the termination sequence.

Pods are bound to ``NODE`` at creation (there is no scheduler); a kubelet
(``ServingKubelet``, servingpods.py) runs them."""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
import uuid
from typing import Any

from .cluster import Cluster
from .objects import now_rfc3339

_MERGE_PATCH = "application/merge-patch+json"
NODE = "node-1"
HASH = "pod-template-hash"


def template_hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def _count(value: Any, want: int, round_up: bool) -> int:
    """An int or a percentage of ``want`` (surge rounds up, unavailable down)."""
    if isinstance(value, str) and value.endswith("%"):
        share = want * int(value[:-1]) / 100
        return int(-(-share // 1)) if round_up else int(share)
    return int(value)


def ready(pod: dict[str, Any]) -> bool:
    """Ready and not terminating: what an endpoint and availability count."""
    if pod["metadata"].get("deletionTimestamp"):
        return False
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def _owned(items: list[dict[str, Any]], uid: str) -> list[dict[str, Any]]:
    return [
        o
        for o in items
        if any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])
    ]


def _owner_ref(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


class RolloutController(threading.Thread):
    """Deployments through ReplicaSets to pods, in ``namespace`` (module docstring).
    ``history`` records (seconds, total pods, available pods) at every sync, for tests
    to check the surge and unavailability bounds against."""

    def __init__(self, cluster: Cluster, namespace: str, tick: float = 0.2) -> None:
        super().__init__(name="rollout-controller", daemon=True)
        from kubernetes import client  # the optional client, as in the adapters

        self.api = cluster.admin_client()
        self.apps = client.AppsV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.namespace = namespace
        self.tick = tick
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        self.history: list[tuple[float, int, int]] = []
        self._progress: dict[str, tuple[Any, float]] = {}  # deployment -> (state, since)

    def _list(self, fn: Any) -> list[dict[str, Any]]:
        return self.api.sanitize_for_serialization(fn(self.namespace)).get("items") or []

    def run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        while not self.stop_event.is_set():
            try:
                pods = self._list(self.core.list_namespaced_pod)
                sets = self._list(self.apps.list_namespaced_replica_set)
                for d in self._list(self.apps.list_namespaced_deployment):
                    if not d["metadata"].get("deletionTimestamp"):
                        self._sync_deployment(d, _owned(sets, d["metadata"]["uid"]), pods)
                for rs in self._list(self.apps.list_namespaced_replica_set):
                    self._sync_replica_set(rs, _owned(pods, rs["metadata"]["uid"]))
            except ApiException as e:
                if e.status not in (404, 409) and not self.stop_event.is_set():
                    self.errors.append(e)
            except Exception as e:  # surfaced through .errors
                if not self.stop_event.is_set():
                    self.errors.append(e)
            self.stop_event.wait(self.tick)

    # -- the Deployment controller ----------------------------------------------------
    def _new_set(self, d: dict[str, Any], sets: list[dict[str, Any]]) -> dict[str, Any]:
        h = template_hash(d["spec"]["template"])
        for rs in sets:
            if rs["metadata"]["labels"].get(HASH) == h:
                return rs
        template = copy.deepcopy(d["spec"]["template"])
        template["metadata"].setdefault("labels", {})[HASH] = h
        selector = copy.deepcopy(d["spec"]["selector"])
        selector.setdefault("matchLabels", {})[HASH] = h
        rs = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": f"{d['metadata']['name']}-{h}",
                "namespace": self.namespace,
                "labels": template["metadata"]["labels"],
                "ownerReferences": [_owner_ref(d, "Deployment")],
            },
            "spec": {"replicas": 0, "selector": selector, "template": template},
        }
        return self.api.sanitize_for_serialization(
            self.apps.create_namespaced_replica_set(self.namespace, rs)
        )

    def _scale(self, rs: dict[str, Any], replicas: int) -> None:
        if rs["spec"].get("replicas", 0) != replicas:
            rs["spec"]["replicas"] = replicas
            self.apps.patch_namespaced_replica_set(
                rs["metadata"]["name"],
                self.namespace,
                {"spec": {"replicas": replicas}},
                _content_type=_MERGE_PATCH,
            )

    def _sync_deployment(
        self, d: dict[str, Any], sets: list[dict[str, Any]], pods: list[dict[str, Any]]
    ) -> None:
        want = d["spec"].get("replicas", 1)
        new = self._new_set(d, sets)
        olds = [rs for rs in sets if rs["metadata"]["uid"] != new["metadata"]["uid"]]
        olds.sort(key=lambda rs: rs["metadata"].get("creationTimestamp", ""))
        rolling = (d["spec"].get("strategy") or {}).get("rollingUpdate") or {}
        surge = _count(rolling.get("maxSurge", "25%"), want, True)
        unavailable = _count(rolling.get("maxUnavailable", "25%"), want, False)
        by_set = {rs["metadata"]["uid"]: _owned(pods, rs["metadata"]["uid"]) for rs in sets}
        by_set.setdefault(new["metadata"]["uid"], [])
        live = {
            u: [p for p in ps if not p["metadata"].get("deletionTimestamp")]
            for u, ps in by_set.items()
        }
        avail = {u: sum(map(ready, ps)) for u, ps in live.items()}
        total = sum(rs["spec"].get("replicas", 0) for rs in [new, *olds])
        # up: the new set, within the surge
        room = want + surge - total
        if room > 0 and new["spec"].get("replicas", 0) < want:
            self._scale(new, min(want, new["spec"].get("replicas", 0) + room))
        # down: the old sets, their unavailable pods first, then within maxUnavailable
        can_remove = sum(avail.values()) - (want - unavailable)
        for rs in olds:
            count = rs["spec"].get("replicas", 0)
            if count == 0:
                continue
            broken = max(0, count - avail[rs["metadata"]["uid"]])
            down = min(count, broken + max(0, can_remove))
            can_remove -= max(0, down - broken)
            self._scale(rs, count - down)
        if new["spec"].get("replicas", 0) > want:
            self._scale(new, want)
        pods_now = sum(len(ps) for ps in live.values())
        self.history.append((time.monotonic(), pods_now, sum(avail.values())))
        self._write_status(d, new, live, avail, want - unavailable)

    def _write_status(
        self,
        d: dict[str, Any],
        new: dict[str, Any],
        live: dict[str, list[dict[str, Any]]],
        avail: dict[str, int],
        min_available: int,
    ) -> None:
        want = d["spec"].get("replicas", 1)
        uid = new["metadata"]["uid"]
        total = sum(len(ps) for ps in live.values())
        available = sum(avail.values())
        done = len(live[uid]) == want == avail[uid] and total == want
        state = (len(live[uid]), avail[uid], total, d["metadata"].get("generation"))
        name = d["metadata"]["name"]
        last, since = self._progress.get(name, (None, time.monotonic()))
        if state != last:
            since = time.monotonic()
            self._progress[name] = (state, since)
        deadline = d["spec"].get("progressDeadlineSeconds", 600)
        ts = now_rfc3339()
        if done:
            progressing = (
                "True",
                "NewReplicaSetAvailable",
                f'ReplicaSet "{new["metadata"]["name"]}" has successfully progressed.',
            )
        elif time.monotonic() - since > deadline:
            progressing = (
                "False",
                "ProgressDeadlineExceeded",
                f'ReplicaSet "{new["metadata"]["name"]}" has timed out progressing.',
            )
        else:
            progressing = (
                "True",
                "ReplicaSetUpdated",
                f'ReplicaSet "{new["metadata"]["name"]}" is progressing.',
            )
        status = {
            "observedGeneration": d["metadata"].get("generation", 1),
            "replicas": total,
            "updatedReplicas": len(live[uid]),
            "readyReplicas": available,
            "availableReplicas": available,
            "unavailableReplicas": max(0, want - available) or None,
            "conditions": [
                {
                    "type": "Available",
                    "status": "True" if available >= min_available else "False",
                    "reason": "MinimumReplicasAvailable",
                    "lastUpdateTime": ts,
                    "lastTransitionTime": ts,
                },
                {
                    "type": "Progressing",
                    "status": progressing[0],
                    "reason": progressing[1],
                    "message": progressing[2],
                    "lastUpdateTime": ts,
                    "lastTransitionTime": ts,
                },
            ],
        }
        old = d.get("status") or {}
        if {k: old.get(k) for k in status if k != "conditions"} != {
            k: v for k, v in status.items() if k != "conditions"
        } or [c.get("reason") for c in old.get("conditions") or []] != [
            c["reason"] for c in status["conditions"]
        ]:
            self.apps.patch_namespaced_deployment_status(
                name, self.namespace, {"status": status}, _content_type=_MERGE_PATCH
            )

    # -- the ReplicaSet controller ----------------------------------------------------
    def _sync_replica_set(self, rs: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        want = rs["spec"].get("replicas", 0)
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        for _ in range(want - len(live)):
            self._create_pod(rs)
        if len(live) > want:
            # the not-ready first, then the newest
            live.sort(key=lambda p: (ready(p), p["metadata"].get("creationTimestamp", "")))
            surplus = [p for p in live if not ready(p)] + [p for p in reversed(live) if ready(p)]
            for p in surplus[: len(live) - want]:
                self.core.delete_namespaced_pod(p["metadata"]["name"], self.namespace)

    def _create_pod(self, rs: dict[str, Any]) -> None:
        template = rs["spec"]["template"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{rs['metadata']['name']}-{uuid.uuid4().hex[:5]}",
                "namespace": self.namespace,
                "labels": dict(template["metadata"].get("labels") or {}),
                "annotations": dict(template["metadata"].get("annotations") or {}),
                "ownerReferences": [_owner_ref(rs, "ReplicaSet")],
            },
            "spec": {**copy.deepcopy(template["spec"]), "nodeName": NODE},
        }
        self.core.create_namespaced_pod(self.namespace, pod)

    def close(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)
