"""Why a training run's pods cannot make progress, or why its Job failed, in the words an
operator acts on (which setting to change, which command to run). Pure functions of the
pod and Job status as the API returns them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from visionline.compute.kubernetes.manifest import CONTAINER
from visionline.errors import EXIT_CONFIG_ERROR

if TYPE_CHECKING:
    from visionline.config import KubernetesComputeConfig

Problem = tuple[str, str]  # (kind, operator message)


def true_condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The condition ``kind`` of a Job or pod when its status is True, else None."""
    for c in obj.get("status", {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return c
    return None


def container_status(pod: dict[str, Any], name: str = CONTAINER) -> dict[str, Any]:
    for cs in pod.get("status", {}).get("containerStatuses") or []:
        if cs.get("name") == name:
            return cs
    return {}


def _unschedulable(
    pod: dict[str, Any], scheduled: dict[str, Any], k: KubernetesComputeConfig
) -> Problem:
    msg = scheduled.get("message") or scheduled.get("reason") or "no reason given"
    advice = (
        f"no node has {k.gpus} free nvidia.com/gpu matching the node selector "
        f"{k.node_selector or '{}'} and tolerations: add GPU nodes (or let the "
        "autoscaler), lower compute.kubernetes.gpus, or fix node_selector/tolerations"
        if k.gpus and "nvidia.com/gpu" in msg
        else "check the pod's requests against the nodes, node_selector and tolerations"
    )
    return "Unschedulable", f"pod {pod['metadata']['name']} cannot be scheduled: {msg}; {advice}"


def _cannot_start(pod: dict[str, Any], k: KubernetesComputeConfig) -> Problem | None:
    name = pod["metadata"]["name"]
    waiting = (container_status(pod).get("state") or {}).get("waiting") or {}
    reason = waiting.get("reason")
    if reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
        return "ImagePull", (
            f"pod {name} cannot pull image {k.image} ({reason}: "
            f"{waiting.get('message') or 'no message'}); check compute.kubernetes.image, "
            "that the tag was pushed, and image_pull_secrets"
        )
    if reason in ("CreateContainerConfigError", "CreateContainerError"):
        return "ContainerConfig", (
            f"pod {name} cannot start its container ({reason}: "
            f"{waiting.get('message') or 'no message'}); a Secret or ConfigMap it "
            f"references may be missing (s3_secret: {k.s3_secret})"
        )
    return None


def _failed(pod: dict[str, Any], k: KubernetesComputeConfig) -> Problem | None:
    name = pod["metadata"]["name"]
    status = pod.get("status", {})
    disrupted = true_condition(pod, "DisruptionTarget")
    if status.get("reason") == "Evicted":
        return "Evicted", f"pod {name} was evicted: {status.get('message') or 'no message'}"
    if disrupted:
        return "Disrupted", (
            f"pod {name} was stopped by the cluster ({disrupted.get('reason')}: "
            f"{disrupted.get('message') or 'no message'})"
        )
    term = (container_status(pod).get("state") or {}).get("terminated") or {}
    code = term.get("exitCode")
    if term.get("reason") == "OOMKilled":
        limit = k.resources.limits.get("memory", "none set")
        return "OOMKilled", (
            f"pod {name}: the trainer ran out of memory and was killed (OOMKilled, memory "
            f"limit {limit}); raise compute.kubernetes.resources.limits.memory, or lower "
            "train.batch_size or train.num_workers"
        )
    if code == EXIT_CONFIG_ERROR:
        return "ConfigError", (
            f"pod {name}: the trainer rejected its configuration (exit {EXIT_CONFIG_ERROR}); "
            "a retry cannot fix this, fix the config"
        )
    if term:
        return "Error", (
            f"pod {name}: the trainer exited with code {code} ({term.get('reason') or 'Error'})"
        )
    if status.get("reason"):
        return status[
            "reason"
        ], f"pod {name} failed: {status['reason']} {status.get('message', '')}"
    return None


def pod_problem(pod: dict[str, Any], k: KubernetesComputeConfig) -> Problem | None:
    """(kind, operator message) for a pod that cannot make progress or has failed."""
    status = pod.get("status", {})
    phase = status.get("phase")
    scheduled = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), None
    )
    if phase == "Pending" and scheduled and scheduled.get("status") == "False":
        if scheduled.get("reason") == "SchedulingGated":
            return None  # Kueue or another controller holds it on purpose
        return _unschedulable(pod, scheduled, k)
    found = _cannot_start(pod, k)
    if found is not None or phase != "Failed":
        return found
    return _failed(pod, k)


def explain_failure(
    job: dict[str, Any],
    pods: list[dict[str, Any]],
    k: KubernetesComputeConfig,
    head: str,
    last_problem: str | None,
) -> tuple[str, dict[str, Any] | None]:
    """(why the failed Job failed, the pod whose log tail says more). ``head`` names the
    run; ``last_problem`` is what held the pods up before, when no pod says more."""
    cond = true_condition(job, "Failed") or true_condition(job, "FailureTarget") or {}
    reason = cond.get("reason") or "Failed"
    failed = [p for p in pods if p.get("status", {}).get("phase") == "Failed"]
    last = failed[-1] if failed else (pods[-1] if pods else None)
    problem = pod_problem(last, k) if last else None
    detail = problem[1] if problem else last_problem
    if reason == "DeadlineExceeded":
        text = (
            f"{head}: it ran longer than activeDeadlineSeconds="
            f"{k.active_deadline_seconds} and was stopped; raise "
            "compute.kubernetes.active_deadline_seconds or train for fewer epochs"
        )
        if detail:
            text += f". Before that: {detail}"
    elif reason == "BackoffLimitExceeded":
        text = (
            f"{head}: the trainer failed {len(failed)} time(s), more than backoffLimit="
            f"{k.backoff_limit} allows. Last failure: {detail or 'unknown'}"
        )
    elif reason == "PodFailurePolicy":
        text = f"{head}: {detail or cond.get('message') or 'a pod failure policy rule matched'}"
    else:
        text = f"{head} ({reason}: {cond.get('message') or ''}): {detail or 'no pod detail'}"
    return text, last
