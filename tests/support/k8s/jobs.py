"""``JobController``: the Job controller over the API. It creates pods for Jobs and
applies their ``podFailurePolicy``, ``backoffLimit``, ``activeDeadlineSeconds`` and
``suspend``; its ``Kubelet`` runs the pods. It talks to the emulator only through the
API, like the real controllers."""

from __future__ import annotations

import copy
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from . import indexed
from .cluster import Cluster
from .kubelet import Fate, Kubelet
from .objects import now_rfc3339

_MERGE_PATCH = "application/merge-patch+json"
NODE = "node-1"  # the kubelet's one node


def _terminal(job: dict[str, Any]) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in job.get("status", {}).get("conditions") or []
    )


def _finished_status(kind: str, reason: str, message: str) -> dict[str, Any]:
    """A Job's status once it ended: the ``FailureTarget``/``SuccessCriteriaMet``
    condition first, then ``Failed``/``Complete``, as the 1.31 controller writes them."""
    ts = now_rfc3339()
    conds = [
        {
            "type": "FailureTarget" if kind == "Failed" else "SuccessCriteriaMet",
            "status": "True",
            "reason": reason,
            "message": message,
            "lastProbeTime": ts,
            "lastTransitionTime": ts,
        },
        {
            "type": kind,
            "status": "True",
            "reason": reason,
            "message": message,
            "lastProbeTime": ts,
            "lastTransitionTime": ts,
        },
    ]
    status: dict[str, Any] = {"conditions": conds, "active": 0}
    if kind == "Complete":
        status["completionTime"] = ts
    return status


class JobController(threading.Thread):
    """The Job controller and a one-node kubelet, over the API (see module docstring).
    ``procs`` and ``grace_exits`` are the kubelet's; ``pod_fates`` maps each pod
    created to the ``Fate`` it was given, in order."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        fates: list[Fate] | None = None,
        workdir: Path | None = None,
        extra_env: dict[str, str] | None = None,
        tick: float = 0.1,
        hold: bool = False,
    ) -> None:
        super().__init__(name="job-controller", daemon=True)
        from kubernetes import client  # the optional client, as in the adapters

        self.cluster = cluster
        self.namespace = namespace
        self.api = cluster.admin_client()
        self.batch = client.BatchV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.fates = list(fates or [])
        self.tick = tick
        self.stop_event = threading.Event()
        # while held, no pod starts (a test changes the world between submit and start)
        self.released = threading.Event()
        if not hold:
            self.released.set()
        self.pod_fates: dict[str, Fate] = {}
        self.started: dict[str, float] = {}
        self.errors: list[BaseException] = []
        self.kubelet = Kubelet(
            cluster,
            namespace,
            self.api,
            workdir=Path(workdir or tempfile.mkdtemp(prefix="kubelet-")),
            extra_env=extra_env or {},
            stop_event=self.stop_event,
            errors=self.errors,
        )
        self.workdir = self.kubelet.workdir
        self.network = indexed.Network(namespace, self.workdir)  # addresses, DNS
        self.generations = self.network.generations  # Indexed Job uid -> index -> pods
        self.extra_env = self.kubelet.extra_env
        self.procs = self.kubelet.procs
        self.grace_exits = self.kubelet.grace_exits  # pod -> seconds from SIGTERM to exit

    # -- API helpers ----------------------------------------------------------------
    def _d(self, obj: Any) -> dict[str, Any]:
        return self.api.sanitize_for_serialization(obj)

    def jobs(self) -> list[dict[str, Any]]:
        return self._d(self.batch.list_namespaced_job(self.namespace)).get("items") or []

    def pods(self, job: str) -> list[dict[str, Any]]:
        items = self._d(
            self.core.list_namespaced_pod(
                self.namespace, label_selector=f"batch.kubernetes.io/job-name={job}"
            )
        ).get("items")
        return sorted(items or [], key=lambda p: p["metadata"]["name"])

    def _patch_job_status(self, name: str, status: dict[str, Any]) -> None:
        self.batch.patch_namespaced_job_status(
            name, self.namespace, {"status": status}, _content_type=_MERGE_PATCH
        )

    # -- the Job controller ---------------------------------------------------------
    def run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            while not self.stop_event.is_set():
                if not self.released.is_set():
                    self.stop_event.wait(self.tick)
                    continue
                for job in self.jobs():
                    try:
                        self._sync(job)
                    except ApiException as e:
                        if e.status != 404:  # deleted under our feet: as real controllers do
                            raise
                self.kubelet.reap_deleted_pods()
                self.stop_event.wait(self.tick)
        except BaseException as e:  # surfaced by the test through .errors
            if not self.stop_event.is_set():
                self.errors.append(e)
                raise

    def _finish(self, job: dict[str, Any], kind: str, reason: str, message: str) -> None:
        self._patch_job_status(job["metadata"]["name"], _finished_status(kind, reason, message))

    def _sync(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        spec = job["spec"]
        if _terminal(job) or spec.get("suspend") or job["metadata"].get("deletionTimestamp"):
            return  # a Job being deleted gets no new pods
        pods = self.pods(name)
        active = [
            p for p in pods if p.get("status", {}).get("phase") in (None, "Pending", "Running")
        ]
        succeeded = [p for p in pods if p.get("status", {}).get("phase") == "Succeeded"]
        failed = [p for p in pods if p.get("status", {}).get("phase") == "Failed"]
        started = self.started.setdefault(name, time.monotonic())
        deadline = spec.get("activeDeadlineSeconds")
        if deadline is not None and time.monotonic() - started > deadline:
            for p in active:
                self.kubelet.kill(p["metadata"]["name"])
                self.core.delete_namespaced_pod(p["metadata"]["name"], self.namespace)
            self._finish(
                job, "Failed", "DeadlineExceeded", "Job was active longer than specified deadline"
            )
            return
        if spec.get("completionMode") == "Indexed":
            indexed.sync(self, job, pods)  # every index at once, retried per index
            return
        if succeeded and not active:
            self._patch_job_status(name, {"succeeded": len(succeeded)})
            self._finish(
                job, "Complete", "CompletionsReached", "Reached expected number of succeeded pods"
            )
            return
        counted = self._count_failures(job, failed)
        if counted is None:
            return
        self._patch_job_status(
            name,
            {
                "active": len(active),
                "failed": counted,
                "startTime": job.get("status", {}).get("startTime") or now_rfc3339(),
            },
        )
        if not active:
            self._create_pod(job, index=len(pods))

    def _count_failures(self, job: dict[str, Any], failed: list[dict[str, Any]]) -> int | None:
        """The failed pods that count against ``backoffLimit``; None when the failure
        policy or the backoff limit has just failed the Job."""
        spec = job["spec"]
        counted = 0
        for p in failed:
            action, message = self._policy(spec, p)
            if action == "FailJob":
                self._finish(job, "Failed", "PodFailurePolicy", message)
                return None
            if action != "Ignore":
                counted += 1
        if counted > spec.get("backoffLimit", 6):
            self._finish(
                job, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"
            )
            return None
        return counted

    def _policy(self, spec: dict[str, Any], pod: dict[str, Any]) -> tuple[str, str]:
        """The ``podFailurePolicy`` action for a failed pod (``Count`` when no rule
        matches) and the message the Job controller gives it."""
        rules = (spec.get("podFailurePolicy") or {}).get("rules") or []
        statuses = pod.get("status", {}).get("containerStatuses") or []
        conditions = pod.get("status", {}).get("conditions") or []
        for rule in rules:
            codes = rule.get("onExitCodes")
            if codes:
                for cs in statuses:
                    if codes.get("containerName") not in (None, cs["name"]):
                        continue
                    code = ((cs.get("state") or {}).get("terminated") or {}).get("exitCode")
                    if code is None or code == 0:
                        continue
                    hit = code in codes["values"]
                    if hit == (codes.get("operator") == "In"):
                        return rule["action"], (
                            f"Container {cs['name']} for pod {self.namespace}/"
                            f"{pod['metadata']['name']} failed with exit code {code} matching "
                            f"{rule['action']} rule at index {rules.index(rule)}"
                        )
            for pattern in rule.get("onPodConditions") or []:
                for c in conditions:
                    if c.get("type") == pattern["type"] and c.get("status") == pattern.get(
                        "status", "True"
                    ):
                        return rule["action"], f"pod condition {c['type']}"
        return "Count", ""

    def _create_pod(self, job: dict[str, Any], index: int) -> None:
        name = f"{job['metadata']['name']}-{uuid.uuid4().hex[:5]}"
        template = copy.deepcopy(job["spec"]["template"])
        meta = template.setdefault("metadata", {})
        ip = ""
        if job["spec"].get("completionMode") == "Indexed":
            name = f"{job['metadata']['name']}-{index}-{uuid.uuid4().hex[:5]}"
            extra = indexed.indexed_template(job, index)
            meta.setdefault("labels", {}).update(extra["labels"])
            meta.setdefault("annotations", {}).update(extra["annotations"])
            template["spec"]["hostname"] = extra["hostname"]
            for c in template["spec"]["containers"]:
                c.setdefault("env", []).insert(0, extra["env"])
            hosts, ip = self.network.add_pod(job, index, name)
            self.kubelet.networks[name] = (extra["hostname"], hosts)
        meta["name"] = name
        meta["namespace"] = self.namespace
        meta.setdefault("labels", {}).update(
            {
                "batch.kubernetes.io/job-name": job["metadata"]["name"],
                "job-name": job["metadata"]["name"],
                "batch.kubernetes.io/controller-uid": job["metadata"]["uid"],
            }
        )
        meta["ownerReferences"] = [
            {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "name": job["metadata"]["name"],
                "uid": job["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]}
        fate = self.fates.pop(0) if self.fates else Fate()
        if fate.kind != "unschedulable":
            # bound to this one node at once: its deletion is then graceful, as on a node
            pod["spec"]["nodeName"] = NODE
        # the pod as the server has it (its uid, for the downward API)
        pod = self._d(self.core.create_namespaced_pod(self.namespace, pod))
        if ip:
            pod["status"] = {**(pod.get("status") or {}), "podIP": ip}  # the kubelet's
        self.pod_fates[name] = fate
        self.kubelet.start(name, pod, fate)

    def close(self) -> None:
        self.stop_event.set()
        self.kubelet.kill_all()
        self.join(timeout=10)
        self.kubelet.join(timeout=10)
