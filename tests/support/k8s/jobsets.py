"""``JobSetController``: the JobSet controller over the API, as kubernetes-sigs/jobset
v0.8.2 reconciles a JobSet (pkg/controllers/jobset_controller.go, failure_policy.go,
success_policy.go; read at the tag). Creating one installs the JobSet API in the test
API server first (jobset_crd.py), as the release manifests install the CRD with the
controller; without it, requests for jobsets get the API server's 404. The Jobs it
makes are run by ``JobController`` (jobs.py, indexed.py), as real Jobs are by the Job
controller.

Modelled, per JobSet:

- for each replicatedJob, ``replicas`` Jobs named ``<jobset>-<replicatedJob>-<index>``
  from its template (``constructJob``), the Job and its pod template labelled and
  annotated as ``labelAndAnnotateObject`` does (``jobset.sigs.k8s.io/``: jobset-name,
  replicatedjob-name, replicatedjob-replicas, global-replicas, job-index,
  job-global-index, job-key, restart-attempt), the pods' ``subdomain`` when
  ``network.enableDNSHostnames`` (the webhook's default: on; the Indexed Job then names
  its pods ``<jobset>-<replicatedJob>-<job index>-<pod index>``), ``suspend`` as the
  JobSet's, and a controller ownerReference with ``blockOwnerDeletion``
  (``SetControllerReference``): a JobSet deleted in the foreground waits for its Jobs;
- with DNS hostnames, the headless Service named after the subdomain (default: the
  JobSet's name), selecting ``jobset-name``, ``publishNotReadyAddresses`` (default
  true), owned by the JobSet (``createHeadlessSvcIfNecessary``);
- a failed Job (``executeFailurePolicy``): no failurePolicy fails the JobSet
  (``FailedJobs``); else the first rule whose ``onJobFailureReasons`` (the Job's
  ``Failed`` reason) and ``targetReplicatedJobs`` match gives the action, none matching
  means ``RestartJobSet``. ``FailJobSet`` fails it (``FailJobSetFailurePolicyAction``);
  ``RestartJobSet`` fails it once ``restartsCountTowardsMax`` reached ``maxRestarts``
  (``ReachedMaxRestarts``), else bumps ``status.restarts`` and
  ``restartsCountTowardsMax``; ``RestartJobSetAndIgnoreMaxRestarts`` bumps
  ``restarts`` only. Messages end ``(first failed job: <name>)``;
- on a restart, the Jobs whose ``restart-attempt`` is below ``status.restarts`` are
  deleted in the foreground (their pods first) and made anew once gone
  (``restartStrategy: Recreate``);
- ``successPolicy`` (``All``: every Job of the targeted replicatedJobs, ``Any``: one;
  default All) completes it (``Completed``/``AllJobsCompleted``); a finished JobSet's
  active Jobs are deleted (foreground); ``status.terminalState``;
- ``suspend``: its Jobs are suspended and resumed with it, and the ``Suspended``
  condition says which (``SuspendedJobs``/``ResumeJobs``);
- ``status.replicatedJobsStatus`` (ready, succeeded, failed, active, suspended Jobs).

Left out: ``startupPolicy: InOrder``, ``dependsOn``, ``coordinator``, exclusive placement
(the pod controller), ``managedBy``, ``restartStrategy: BlockingRecreate``,
``ttlSecondsAfterFinished`` (the test Job controller has no TTL either), events and
metrics, and the resume's pod-template update for Kueue.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from typing import Any

from .cluster import Cluster
from .jobset_crd import API_VERSION, GROUP, PLURAL, VERSION
from .objects import now_rfc3339

_MERGE_PATCH = "application/merge-patch+json"
_P = "jobset.sigs.k8s.io/"
JOBSET_NAME, RJOB_NAME, RESTARTS = (
    f"{_P}jobset-name",
    f"{_P}replicatedjob-name",
    f"{_P}restart-attempt",
)


def install(cluster: Cluster) -> None:
    """Serve the JobSet API (the CRD, with its status subresource)."""
    from kmock._internal.references import ResourceInfo

    info = ResourceInfo(namespaced=True, kind="JobSet", singular="jobset", subresources={"status"})
    cluster.call(lambda: cluster.server.resources.__setitem__(f"{API_VERSION}/{PLURAL}", info))


def _true(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return c
    return None


def _finished_as(job: dict[str, Any]) -> str | None:
    """``Complete`` or ``Failed`` for a finished Job (``JobFinished``), else None."""
    return next((k for k in ("Complete", "Failed") if _true(job, k)), None)


def _subdomain(js: dict[str, Any]) -> str | None:
    network = js["spec"].get("network") or {}
    if not network.get("enableDNSHostnames", True):
        return None
    return network.get("subdomain") or js["metadata"]["name"]


def _owner(js: dict[str, Any]) -> dict[str, Any]:
    meta = js["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": "JobSet",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_job(js: dict[str, Any], rjob: dict[str, Any], index: int) -> dict[str, Any]:
    """The Job of ``index`` of ``rjob`` (``constructJob`` + ``labelAndAnnotateObject``)."""
    meta, spec = js["metadata"], js["spec"]
    name = f"{meta['name']}-{rjob['name']}-{index}"
    replicas = [r.get("replicas", 1) for r in spec["replicatedJobs"]]
    before = sum(replicas[: spec["replicatedJobs"].index(rjob)])
    extra = {
        JOBSET_NAME: meta["name"],
        RJOB_NAME: rjob["name"],
        RESTARTS: str((js.get("status") or {}).get("restarts", 0)),
        f"{_P}replicatedjob-replicas": str(rjob.get("replicas", 1)),
        f"{_P}global-replicas": str(sum(replicas)),
        f"{_P}job-index": str(index),
        f"{_P}job-key": hashlib.sha1(f"{meta['namespace']}/{name}".encode()).hexdigest(),
        f"{_P}job-global-index": str(before + index),
    }
    template = copy.deepcopy(rjob["template"])
    job_spec = template["spec"]
    for obj in (template, job_spec["template"]):
        m = obj.setdefault("metadata", {})
        m["labels"] = {**(m.get("labels") or {}), **extra}
        m["annotations"] = {**(m.get("annotations") or {}), **extra}
    if _subdomain(js):
        job_spec["template"]["spec"]["subdomain"] = _subdomain(js)
    job_spec["suspend"] = bool(spec.get("suspend"))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": template["metadata"]["labels"],
            "annotations": template["metadata"]["annotations"],
            "ownerReferences": [_owner(js)],
        },
        "spec": job_spec,
    }


def _rule_applies(rule: dict[str, Any], job: dict[str, Any]) -> bool:
    """``ruleIsApplicable``: the failed Job's reason and replicatedJob are the rule's."""
    reasons, targets = rule.get("onJobFailureReasons"), rule.get("targetReplicatedJobs")
    reason = (_true(job, "Failed") or {}).get("reason")
    return (not reasons or reason in reasons) and (
        not targets or job["metadata"]["labels"].get(RJOB_NAME) in targets
    )


def _condition(status: dict[str, Any], kind: str, value: str, reason: str, message: str) -> None:
    """Set condition ``kind`` (a list keyed by type); its time changes with its status."""
    conds = [c for c in status.get("conditions") or [] if c["type"] != kind]
    old = next((c for c in status.get("conditions") or [] if c["type"] == kind), None)
    ts = old["lastTransitionTime"] if old and old["status"] == value else now_rfc3339()
    conds.append(
        {
            "type": kind,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": ts,
        }
    )
    status["conditions"] = conds


class JobSetController(threading.Thread):
    """The JobSet controller over the API (see module docstring)."""

    def __init__(self, cluster: Cluster, namespace: str, tick: float = 0.1) -> None:
        super().__init__(name="jobset-controller", daemon=True)
        from kubernetes import client  # the optional client, as in the adapters

        install(cluster)
        self.namespace = namespace
        self.api = cluster.admin_client()
        self.custom = client.CustomObjectsApi(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.tick = tick
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        self.created: list[str] = []  # every Job made, in order (a restart makes them again)

    def _d(self, obj: Any) -> Any:
        return self.api.sanitize_for_serialization(obj)

    def jobsets(self) -> list[dict[str, Any]]:
        found = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
        return self._d(found).get("items") or []

    def run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            while not self.stop_event.is_set():
                for js in self.jobsets():
                    try:
                        self._sync(js)
                    except ApiException as e:
                        if e.status not in (404, 409):  # changed under our feet: next pass
                            raise
                self.stop_event.wait(self.tick)
        except BaseException as e:  # surfaced by the test through .errors
            if not self.stop_event.is_set():
                self.errors.append(e)
                raise

    def close(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)

    # -- one reconcile ---------------------------------------------------------------
    def _children(self, js: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
        """Its Jobs by bucket (``getChildJobs``): previous (an earlier attempt), active,
        failed, successful."""
        uid, restarts = js["metadata"]["uid"], (js.get("status") or {}).get("restarts", 0)
        selector = f"{JOBSET_NAME}={js['metadata']['name']}"
        items = self._d(self.batch.list_namespaced_job(self.namespace, label_selector=selector))
        out: dict[str, list[dict[str, Any]]] = {
            k: [] for k in ("previous", "active", "failed", "successful")
        }
        for job in items.get("items") or []:
            if not any(r.get("uid") == uid for r in job["metadata"].get("ownerReferences") or []):
                continue
            if int(job["metadata"]["labels"][RESTARTS]) < restarts:
                out["previous"].append(job)
            else:
                done = _finished_as(job) or ""
                out[{"Complete": "successful", "Failed": "failed"}.get(done, "active")].append(job)
        return out

    def _sync(self, js: dict[str, Any]) -> None:
        if js["metadata"].get("deletionTimestamp"):
            return  # the garbage collector takes its Jobs
        jobs = self._children(js)
        status = copy.deepcopy(js.get("status") or {})
        status["replicatedJobsStatus"] = self._rjob_statuses(js, jobs)
        if _true(js, "Completed") or _true(js, "Failed"):
            self._delete_jobs(jobs["active"])
        else:
            self._delete_jobs(jobs["previous"])
            self._reconcile(js, jobs, status)
        if status != (js.get("status") or {}):
            self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                js["metadata"]["name"],
                {"status": status},
                _content_type=_MERGE_PATCH,
            )

    def _reconcile(self, js: dict[str, Any], jobs: dict[str, list], status: dict[str, Any]) -> None:
        if jobs["failed"]:
            self._failure_policy(js, jobs["failed"], status)
            return
        if jobs["successful"] and self._succeeded(js, jobs["successful"]):
            _condition(
                status, "Completed", "True", "AllJobsCompleted", "jobset completed successfully"
            )
            status["terminalState"] = "Completed"
            return
        self._service(js)
        have = {j["metadata"]["name"] for bucket in jobs.values() for j in bucket}
        for rjob in js["spec"]["replicatedJobs"]:
            for i in range(rjob.get("replicas", 1)):
                job = child_job(js, rjob, i)
                if job["metadata"]["name"] not in have:  # an earlier attempt's: once gone
                    self.batch.create_namespaced_job(self.namespace, job)
                    self.created.append(job["metadata"]["name"])
        suspend = bool(js["spec"].get("suspend"))
        for job in jobs["active"]:
            if bool(job["spec"].get("suspend")) != suspend:
                self.batch.patch_namespaced_job(
                    job["metadata"]["name"],
                    self.namespace,
                    {"spec": {"suspend": suspend}},
                    _content_type=_MERGE_PATCH,
                )
        if suspend:
            _condition(status, "Suspended", "True", "SuspendedJobs", "jobset is suspended")
        elif any(c["type"] == "Suspended" for c in status.get("conditions") or []):
            _condition(status, "Suspended", "False", "ResumeJobs", "jobset is resumed")

    def _succeeded(self, js: dict[str, Any], successful: list[dict[str, Any]]) -> bool:
        policy = js["spec"].get("successPolicy") or {"operator": "All"}
        targets = policy.get("targetReplicatedJobs") or []
        matching = [
            j for j in successful if not targets or j["metadata"]["labels"][RJOB_NAME] in targets
        ]
        if policy["operator"] == "Any":
            return len(matching) >= 1
        expected = sum(
            r.get("replicas", 1)
            for r in js["spec"]["replicatedJobs"]
            if not targets or r["name"] in targets
        )
        return len(matching) >= expected

    def _failure_policy(
        self, js: dict[str, Any], failed: list[dict[str, Any]], status: dict[str, Any]
    ) -> None:
        def when(job: dict[str, Any]) -> str:
            return (_true(job, "Failed") or {}).get("lastTransitionTime") or ""

        first = min(failed, key=when)
        policy = js["spec"].get("failurePolicy")
        if policy is None:
            self._fail(status, "FailedJobs", "jobset failed due to one or more job failures", first)
            return
        action, job = "RestartJobSet", first
        for rule in policy.get("rules") or []:
            hits = [j for j in failed if _rule_applies(rule, j)]
            if hits:
                action, job = rule["action"], min(hits, key=when)
                break
        if action == "FailJobSet":
            self._fail(
                status,
                "FailJobSetFailurePolicyAction",
                "applying FailJobSet failure policy action",
                job,
            )
            return
        counted = action == "RestartJobSet"
        if counted and status.get("restartsCountTowardsMax", 0) >= policy.get("maxRestarts", 0):
            self._fail(
                status,
                "ReachedMaxRestarts",
                "jobset failed due to reaching max number of restarts",
                job,
            )
            return
        status["restarts"] = status.get("restarts", 0) + 1
        if counted:
            status["restartsCountTowardsMax"] = status.get("restartsCountTowardsMax", 0) + 1

    def _fail(self, status: dict[str, Any], reason: str, message: str, job: dict[str, Any]) -> None:
        _condition(
            status,
            "Failed",
            "True",
            reason,
            f"{message} (first failed job: {job['metadata']['name']})",
        )
        status["terminalState"] = "Failed"

    def _delete_jobs(self, jobs: list[dict[str, Any]]) -> None:
        for job in jobs:
            if not job["metadata"].get("deletionTimestamp"):
                self.batch.delete_namespaced_job(
                    job["metadata"]["name"], self.namespace, propagation_policy="Foreground"
                )

    def _service(self, js: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        subdomain = _subdomain(js)
        if subdomain is None:
            return
        try:
            self.core.read_namespaced_service(subdomain, self.namespace)
            return
        except ApiException as e:
            if e.status != 404:
                raise
        network = js["spec"].get("network") or {}
        self.core.create_namespaced_service(
            self.namespace,
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": subdomain,
                    "namespace": self.namespace,
                    "ownerReferences": [_owner(js)],
                },
                "spec": {
                    "clusterIP": "None",
                    "selector": {JOBSET_NAME: js["metadata"]["name"]},
                    "publishNotReadyAddresses": network.get("publishNotReadyAddresses", True),
                },
            },
        )

    def _rjob_statuses(self, js: dict[str, Any], jobs: dict[str, list]) -> list[dict[str, Any]]:
        """``calculateReplicatedJobStatuses``: per replicatedJob, how many of its Jobs of
        this attempt are ready (every pod ready or done), active, suspended, done."""
        counts = {
            r["name"]: dict.fromkeys(("ready", "succeeded", "failed", "active", "suspended"), 0)
            for r in js["spec"]["replicatedJobs"]
        }
        for bucket, key in (("successful", "succeeded"), ("failed", "failed")):
            for job in jobs[bucket]:
                counts[job["metadata"]["labels"][RJOB_NAME]][key] += 1
        for job in jobs["active"]:
            c, st = counts[job["metadata"]["labels"][RJOB_NAME]], job.get("status") or {}
            pods = min(job["spec"].get("parallelism", 1), job["spec"].get("completions") or 10**9)
            c["ready"] += st.get("succeeded", 0) + st.get("ready", 0) >= pods
            c["active"] += st.get("active", 0) > 0
            c["suspended"] += bool(job["spec"].get("suspend"))
        return [{"name": name, **c} for name, c in counts.items()]
