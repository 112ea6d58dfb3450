"""What a training run is on the cluster, behind the one interface that submitting and
watching share: a ``batch/v1`` Job (``compute.kubernetes.kind: job``, and every
single-node run), or a JobSet (``kind: jobset``, ``jobset.x-k8s.io/v1alpha2``, where the
JobSet controller creates its Job and headless Service and restarts the group as a
whole). Each kind says how it is created, read and deleted (in the foreground: its Jobs
and pods go first, so a resubmit never meets a half-deleted run), which pods are its
own, and whether and why it has ended."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from visionline.compute.kubernetes.diagnosis import explain_failure, true_condition
from visionline.compute.kubernetes.jobset import jobset_name
from visionline.compute.kubernetes.manifest import job_name
from visionline.errors import ConfigError
from visionline.kube import (
    KubernetesNotFoundError,
    KubernetesPermissionError,
    as_dict,
)

if TYPE_CHECKING:
    from visionline.config import KubernetesComputeConfig
    from visionline.kube import KubeAccess

# The JobSet API, as the JobSet controller's CRD serves it.
GROUP = "jobset.x-k8s.io"
VERSION = "v1alpha2"
PLURAL = "jobsets"
# Labels the JobSet controller puts on its Jobs and their pods.
JOBSET_NAME = "jobset.sigs.k8s.io/jobset-name"
JOB_NAME = "batch.kubernetes.io/job-name"


def uses_jobset(k: KubernetesComputeConfig) -> bool:
    """Whether a run is a JobSet: ``kind: jobset`` and more than one node (one node
    needs no group to restart: a plain Job)."""
    return k.kind == "jobset" and k.nodes > 1


class JobWorkload:
    """A run as one ``batch/v1`` Job."""

    kind = "Job"
    resource = "jobs"

    def __init__(self, access: KubeAccess) -> None:
        self.access = access
        self.namespace = access.k.namespace

    def name(self, run_id: str) -> str:
        return job_name(run_id)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        with self.access._call("create", "jobs"):
            return as_dict(
                self.access.client, self.access.batch.create_namespaced_job(self.namespace, obj)
            )

    def read(self, name: str) -> dict[str, Any] | None:
        return self.read_job(name)

    def read_job(self, name: str) -> dict[str, Any] | None:
        try:
            with self.access._call("get", "jobs"):
                return as_dict(
                    self.access.client, self.access.batch.read_namespaced_job(name, self.namespace)
                )
        except KubernetesNotFoundError:
            return None

    def delete(self, name: str) -> None:
        """Delete in the foreground: the Job goes only after its pods (the API's default
        for Jobs would orphan them, still running on their GPUs). Gone already: fine."""
        try:
            with self.access._call("delete", "jobs"):
                self.access.batch.delete_namespaced_job(
                    name, self.namespace, propagation_policy="Foreground"
                )
        except KubernetesNotFoundError:
            pass

    def pod_selector(self, name: str) -> str:
        return f"{JOB_NAME}={name}"

    def succeeded(self, obj: dict[str, Any]) -> bool:
        return bool(true_condition(obj, "Complete") or true_condition(obj, "SuccessCriteriaMet"))

    def failed(self, obj: dict[str, Any]) -> bool:
        return true_condition(obj, "Failed") is not None

    def explain(
        self,
        obj: dict[str, Any],
        pods: list[dict[str, Any]],
        head: str,
        last_problem: str | None,
    ) -> tuple[str, dict[str, Any] | None]:
        """(why the failed run failed, the pod whose log tail says more)."""
        return explain_failure(obj, pods, self.access.k, head, last_problem)


class JobSetWorkload(JobWorkload):
    """A run as a JobSet: its Jobs (``<jobset>-<replicatedJob>-<index>``) and their pods
    carry the label ``jobset.sigs.k8s.io/jobset-name``; it ends with the condition
    ``Completed`` or ``Failed``, whose reason says whether its failure policy gave up
    after ``maxRestarts`` restarts of the whole group or a rule ended it at once."""

    kind = "JobSet"
    resource = "jobsets"

    def name(self, run_id: str) -> str:
        return jobset_name(run_id)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        ns = self.namespace
        try:
            with self.access._call("create", "jobsets"):
                created = self.access.custom.create_namespaced_custom_object(
                    GROUP, VERSION, ns, PLURAL, obj
                )
        except KubernetesPermissionError as e:
            raise KubernetesPermissionError(
                f"{e}. With compute.kubernetes.kind: jobset the pipeline's Role needs the "
                "JobSet verbs of the component k8s/components/jobset: add it to the "
                "overlay's components (docs/kubernetes.md) and apply the overlay again",
                403,
            ) from e
        except KubernetesNotFoundError as e:
            raise ConfigError(
                f"compute.kubernetes.kind: jobset, but the cluster has no JobSet API "
                f"({GROUP}/{VERSION} {PLURAL} in namespace {ns}): install the JobSet "
                "controller (docs/kubernetes.md) or set compute.kubernetes.kind: job"
            ) from e
        return as_dict(self.access.client, created)

    def read(self, name: str) -> dict[str, Any] | None:
        try:
            with self.access._call("get", "jobsets"):
                return as_dict(
                    self.access.client,
                    self.access.custom.get_namespaced_custom_object(
                        GROUP, VERSION, self.namespace, PLURAL, name
                    ),
                )
        except KubernetesNotFoundError:
            return None

    def delete(self, name: str) -> None:
        """Delete in the foreground: the JobSet goes after its Jobs, which go after their
        pods (a custom resource's default, Background, would let the JobSet vanish while
        its pods still stop)."""
        try:
            with self.access._call("delete", "jobsets"):
                self.access.custom.delete_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL, name, propagation_policy="Foreground"
                )
        except KubernetesNotFoundError:
            pass

    def pod_selector(self, name: str) -> str:
        return f"{JOBSET_NAME}={name}"

    def succeeded(self, obj: dict[str, Any]) -> bool:
        return true_condition(obj, "Completed") is not None

    def explain(
        self,
        obj: dict[str, Any],
        pods: list[dict[str, Any]],
        head: str,
        last_problem: str | None,
    ) -> tuple[str, dict[str, Any] | None]:
        """The JobSet's reason in the operator's words, then its failed Job's, as the Job
        path says it (the pods of that Job, the last one's log tail)."""
        cond = true_condition(obj, "Failed") or {}
        reason, message = cond.get("reason") or "Failed", cond.get("message") or ""
        restarts = int((obj.get("status") or {}).get("restarts") or 0)
        limit = ((obj.get("spec") or {}).get("failurePolicy") or {}).get("maxRestarts", 0)
        if reason == "ReachedMaxRestarts":
            text = (
                f"{head}: its Job failed again after {restarts} restart(s) of the whole "
                f"group, as many as failurePolicy.maxRestarts={limit} allows "
                "(compute.kubernetes.backoff_limit)"
            )
        elif reason == "FailJobSetFailurePolicyAction":
            text = f"{head}: a failure no restart can fix ended it at once ({message})"
        else:
            text = f"{head} ({reason}: {message})"
        job = self._failed_job(obj, message)
        if job is None:
            return text + (f". Before that: {last_problem}" if last_problem else ""), None
        job_name = job["metadata"]["name"]
        mine = [p for p in pods if (p["metadata"].get("labels") or {}).get(JOB_NAME) == job_name]
        detail, last = explain_failure(
            job, mine, self.access.k, f"Job {self.namespace}/{job_name} failed", last_problem
        )
        return f"{text}. {detail}", last

    def _failed_job(self, obj: dict[str, Any], message: str) -> dict[str, Any] | None:
        """The failed Job the JobSet's condition names (``first failed job: <name>``),
        else the first failed one of its Jobs (``<jobset>-<replicatedJob>-<index>``)."""
        name = obj["metadata"]["name"]
        named = re.search(r"first failed job: ([a-z0-9.-]+)", message)
        candidates = [named.group(1)] if named else []
        for rjob in (obj.get("spec") or {}).get("replicatedJobs") or []:
            candidates += [f"{name}-{rjob['name']}-{i}" for i in range(rjob.get("replicas", 1))]
        for candidate in candidates:
            job = self.read_job(candidate)
            if job is not None and true_condition(job, "Failed"):
                return job
        return None
