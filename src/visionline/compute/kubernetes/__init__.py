"""Training as a Kubernetes Job (``compute.backend: kubernetes``).

A run becomes one ``batch/v1`` Job built here from the config (``compute.kubernetes``):
the trainer image runs ``python -m visionline.training --config URI --run-id ID`` (under
``torchrun`` with one process per GPU when a pod has more than one), with
``nvidia.com/gpu`` limits, node selector and tolerations, S3 credentials by reference to
a Secret, and the ``app.kubernetes.io/*`` labels plus the run id and model.

Failures are the Job controller's to count, with rules that match what the trainer does:

- ``restartPolicy: Never`` and ``podReplacementPolicy: Failed``: a replacement pod starts
  only once the old one has fully terminated, so two pods of a run never write the same
  checkpoints;
- ``podFailurePolicy``: a pod that fails because it was disrupted (``DisruptionTarget``:
  preemption, eviction, node drain) is ignored, not counted, and its replacement resumes
  from the last checkpoint (the trainer checkpoints at the next batch boundary on
  SIGTERM); exit code 78 (a configuration error) fails the Job at once, since a retry
  cannot fix it; anything else is retried up to ``backoffLimit``;
- ``activeDeadlineSeconds`` bounds the run, ``ttlSecondsAfterFinished`` cleans it up.

``KubernetesRun`` watches the Job by polling it and its pods (a run lasts hours; a poll
every few seconds costs nothing and never has to resume an expired watch), streams each
pod's log into the ``visionline.compute.kubernetes`` logger (the flow run's log), and on
failure says why in the words an operator acts on. ``cancel()`` deletes the Job with
foreground propagation, so its pods go too (the API's default for Jobs orphans them).

More than one node (``nodes > 1``): an Indexed Job whose pods find each other through a
headless Service (``<job>-0.<service>`` is rank 0), ``torchrun`` with a static rendezvous
and ``--node-rank`` from the pod's completion index.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import deque
from datetime import datetime
from typing import TYPE_CHECKING, Any

from visionline.compute import FAILED, SUCCEEDED, config_key, publish_config, trainer_args
from visionline.errors import EXIT_CONFIG_ERROR, ConfigError, TrainingError
from visionline.kube import (
    DOMAIN,
    KubeAccess,
    KubernetesApiError,
    KubernetesConflictError,
    KubernetesNotFoundError,
    api_errors,
    app_labels,
    as_dict,
    container_security_context,
    dns_name,
    label_value,
    pod_security_context,
    s3_env,
    tolerations,
)

if TYPE_CHECKING:
    from visionline.config import KubernetesComputeConfig, PipelineConfig
    from visionline.storage import ArtifactStore
    from visionline.training.plan import RunPlan

log = logging.getLogger(__name__)

CONTAINER = "trainer"
RENDEZVOUS_PORT = 29500
WORKDIR = "/work"
LOG_TAIL = 40
# Per-batch lines stay out of the flow's log (the trainer logs one every log_every steps).
_STEP_LINE = re.compile(r"\bepoch \d+ step \d+/\d+ loss ")


# --------------------------------------------------------------------------- objects
def job_name(run_id: str) -> str:
    return dns_name("train", run_id)


def trainer_command(
    k: KubernetesComputeConfig,
    config_uri: str,
    store_uri: str,
    run_id: str,
    origin: dict[str, str] | None = None,
    rendezvous_host: str | None = None,
) -> list[str]:
    entry = ["-m", "visionline.training", *trainer_args(config_uri, run_id, store_uri, origin)]
    nproc = k.processes_per_node
    if k.nodes > 1:
        return [
            "python",
            "-m",
            "torch.distributed.run",
            f"--nnodes={k.nodes}",
            f"--nproc-per-node={nproc}",
            # the kubelet expands $(VAR) from the container's env
            "--node-rank=$(JOB_COMPLETION_INDEX)",
            f"--master-addr={rendezvous_host}",
            f"--master-port={RENDEZVOUS_PORT}",
            *entry,
        ]
    if nproc > 1:
        return [
            "python",
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nnodes=1",
            f"--nproc-per-node={nproc}",
            *entry,
        ]
    return ["python", *entry]


def _labels(cfg: PipelineConfig, run_id: str) -> dict[str, str]:
    labels = {
        **app_labels("training"),
        f"{DOMAIN}/run-id": label_value(run_id),
        f"{DOMAIN}/model": label_value(cfg.serve.model_name),
        f"{DOMAIN}/arch": label_value(cfg.model.arch),
        f"{DOMAIN}/dataset": label_value(cfg.data.dataset),
    }
    return labels


def build_job(
    cfg: PipelineConfig,
    run_id: str,
    config_uri: str,
    store_uri: str,
    origin: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The Job for one run, as the API's JSON."""
    k = cfg.compute.kubernetes
    name = job_name(run_id)
    labels = _labels(cfg, run_id)
    job_labels = dict(labels)
    if k.queue_name:
        job_labels["kueue.x-k8s.io/queue-name"] = k.queue_name
    annotations = {
        f"{DOMAIN}/run-id": run_id,
        f"{DOMAIN}/config": config_uri,
        f"{DOMAIN}/store": store_uri,
    }
    if origin:
        annotations[f"{DOMAIN}/origin"] = json.dumps(origin, sort_keys=True)
    service = name if k.nodes > 1 else None
    rendezvous = f"{name}-0.{service}" if service else None

    limits = dict(k.resources.limits)
    requests = dict(k.resources.requests)
    if k.gpus:
        limits["nvidia.com/gpu"] = str(k.gpus)
    env = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HOME", "value": WORKDIR},
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "VISIONLINE_RUN_ID", "value": run_id},
        *s3_env(k.s3_secret, k.env),
    ]
    mounts = [
        {"name": "work", "mountPath": WORKDIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "work", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if k.shm_size:
        # DataLoader workers pass batches through /dev/shm; the runtime's default is 64 MiB.
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": k.shm_size}})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": k.image,
        "imagePullPolicy": k.image_pull_policy,
        "command": trainer_command(k, config_uri, store_uri, run_id, origin, rendezvous),
        "workingDir": WORKDIR,
        "env": env,
        "resources": {"requests": requests, "limits": limits},
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
    }
    if k.nodes > 1:
        container["ports"] = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT}]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": k.service_account,
        # the trainer never calls the Kubernetes API
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": k.termination_grace_period_seconds,
        "securityContext": pod_security_context(k.run_as_user),
        "containers": [container],
        "volumes": volumes,
    }
    if k.node_selector:
        pod_spec["nodeSelector"] = dict(k.node_selector)
    if k.tolerations:
        pod_spec["tolerations"] = tolerations(k.tolerations)
    if k.priority_class:
        pod_spec["priorityClassName"] = k.priority_class
    if k.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in k.image_pull_secrets]
    if service:
        pod_spec["subdomain"] = service

    spec: dict[str, Any] = {
        "backoffLimit": k.backoff_limit,
        "activeDeadlineSeconds": k.active_deadline_seconds,
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": [EXIT_CONFIG_ERROR],
                    },
                },
                {
                    "action": "Ignore",
                    "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                },
            ]
        },
        "template": {
            "metadata": {"labels": labels, "annotations": {f"{DOMAIN}/run-id": run_id}},
            "spec": pod_spec,
        },
    }
    if k.ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = k.ttl_seconds_after_finished
    if k.nodes > 1:
        spec.update(completions=k.nodes, parallelism=k.nodes, completionMode="Indexed")
    else:
        spec.update(completions=1, parallelism=1)
    if k.queue_name:
        spec["suspend"] = True  # Kueue admits (unsuspends) it when the queue has quota
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": k.namespace,
            "labels": job_labels,
            "annotations": annotations,
        },
        "spec": spec,
    }


def build_rendezvous_service(cfg: PipelineConfig, run_id: str) -> dict[str, Any]:
    """Headless Service giving each pod of an Indexed Job a DNS name
    (``<job>-<index>.<service>``); torchrun's rank 0 listens on its rendezvous port."""
    name = job_name(run_id)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": cfg.compute.kubernetes.namespace,
            "labels": _labels(cfg, run_id),
            "annotations": {f"{DOMAIN}/run-id": run_id},
        },
        "spec": {
            "clusterIP": "None",
            # ranks must resolve each other before any of them is Ready
            "publishNotReadyAddresses": True,
            "selector": {"batch.kubernetes.io/job-name": name},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "protocol": "TCP"}],
        },
    }


def build_manifests(
    cfg: PipelineConfig,
    run_id: str,
    config_uri: str,
    store_uri: str,
    origin: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    objects = []
    if cfg.compute.kubernetes.nodes > 1:
        objects.append(build_rendezvous_service(cfg, run_id))
    objects.append(build_job(cfg, run_id, config_uri, store_uri, origin))
    return objects


# --------------------------------------------------------------------------- diagnosis
def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in obj.get("status", {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return c
    return None


def _container(pod: dict[str, Any], name: str = CONTAINER) -> dict[str, Any]:
    for cs in pod.get("status", {}).get("containerStatuses") or []:
        if cs.get("name") == name:
            return cs
    return {}


def pod_problem(pod: dict[str, Any], k: KubernetesComputeConfig) -> tuple[str, str] | None:
    """(kind, operator message) for a pod that cannot make progress or has failed."""
    name = pod["metadata"]["name"]
    status = pod.get("status", {})
    phase = status.get("phase")
    scheduled = next(
        (c for c in status.get("conditions") or [] if c.get("type") == "PodScheduled"), None
    )
    if phase == "Pending" and scheduled and scheduled.get("status") == "False":
        if scheduled.get("reason") == "SchedulingGated":
            return None  # Kueue or another controller holds it on purpose
        msg = scheduled.get("message") or scheduled.get("reason") or "no reason given"
        advice = (
            f"no node has {k.gpus} free nvidia.com/gpu matching the node selector "
            f"{k.node_selector or '{}'} and tolerations: add GPU nodes (or let the "
            "autoscaler), lower compute.kubernetes.gpus, or fix node_selector/tolerations"
            if k.gpus and "nvidia.com/gpu" in msg
            else "check the pod's requests against the nodes, node_selector and tolerations"
        )
        return "Unschedulable", f"pod {name} cannot be scheduled: {msg}; {advice}"
    cs = _container(pod)
    waiting = (cs.get("state") or {}).get("waiting") or {}
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
    if phase != "Failed":
        return None
    disrupted = _condition(pod, "DisruptionTarget")
    if status.get("reason") == "Evicted":
        return "Evicted", f"pod {name} was evicted: {status.get('message') or 'no message'}"
    if disrupted:
        return "Disrupted", (
            f"pod {name} was stopped by the cluster ({disrupted.get('reason')}: "
            f"{disrupted.get('message') or 'no message'})"
        )
    term = (cs.get("state") or {}).get("terminated") or {}
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


# --------------------------------------------------------------------------- the run
class _LogFollower(threading.Thread):
    """Streams one pod's trainer log into our logger, resuming after a dropped
    connection from the last line's timestamp."""

    def __init__(self, run: KubernetesRun, pod: str) -> None:
        super().__init__(name=f"log-{pod}", daemon=True)
        self.run_ = run
        self.pod = pod
        self.tail: deque[str] = deque(maxlen=LOG_TAIL)
        self.last_ts: str | None = None
        self.stop = threading.Event()
        self.finished = threading.Event()

    def _stream_once(self) -> bool:
        """Follow until the stream ends; True when the container is done."""
        from kubernetes.client.exceptions import ApiException

        kwargs: dict[str, Any] = {"container": CONTAINER, "follow": True, "timestamps": True}
        if self.last_ts:
            since = datetime.fromisoformat(self.last_ts.replace("Z", "+00:00"))
            kwargs["since_seconds"] = max(1, int(time.time() - since.timestamp()) + 1)
        try:
            resp = self.run_.core.read_namespaced_pod_log(
                self.pod, self.run_.namespace, _preload_content=False, **kwargs
            )
        except ApiException as e:
            if e.status in (400, 404):  # not started yet, or gone
                return e.status == 404
            raise
        buf = b""
        try:
            for chunk in resp.stream(4096):
                if self.stop.is_set():
                    return True
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    self._line(raw.decode("utf-8", "replace"))
            if buf:
                self._line(buf.decode("utf-8", "replace"))
        finally:
            resp.release_conn()
        pod = self.run_.read_pod(self.pod)
        return pod is None or pod.get("status", {}).get("phase") in ("Succeeded", "Failed")

    def _line(self, line: str) -> None:
        ts, _, text = line.partition(" ")
        if self.last_ts and ts <= self.last_ts:
            return  # already seen before a reconnect
        self.last_ts = ts
        self.tail.append(text)
        if _STEP_LINE.search(text):
            log.debug("[%s] %s", self.pod, text)
        else:
            log.info("[%s] %s", self.pod, text)

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if self._stream_once():
                    return
                self.stop.wait(1.0)
        except Exception as e:  # a broken log stream must never fail the run
            log.warning("log stream of pod %s ended: %s", self.pod, e)
        finally:
            self.finished.set()


class KubernetesRun:
    """A submitted training Job (RunHandle)."""

    def __init__(
        self, backend: KubernetesBackend, run_id: str, name: str, already_done: bool = False
    ) -> None:
        self.backend = backend
        self.run_id = run_id
        self.name = name
        self.namespace = backend.k.namespace
        self.failure: str | None = None
        self._state: str | None = SUCCEEDED if already_done else None
        self._followers: dict[str, _LogFollower] = {}
        self._reported: set[tuple[str, str]] = set()
        self._pending_since: dict[tuple[str, str], float] = {}
        self._last_problem: str | None = None
        self._suspended_logged = False

    @property
    def core(self) -> Any:
        return self.backend.core

    def _call(self, verb: str, resource: str) -> Any:
        return api_errors(verb, resource, self.namespace, self.backend.k.role)

    def read_pod(self, name: str) -> dict[str, Any] | None:
        try:
            with self._call("get", "pods"):
                return as_dict(
                    self.backend.client, self.core.read_namespaced_pod(name, self.namespace)
                )
        except KubernetesNotFoundError:
            return None

    def _job(self) -> dict[str, Any] | None:
        try:
            with self._call("get", "jobs"):
                return as_dict(
                    self.backend.client,
                    self.backend.batch.read_namespaced_job(self.name, self.namespace),
                )
        except KubernetesNotFoundError:
            return None

    def _pods(self) -> list[dict[str, Any]]:
        with self._call("list", "pods"):
            items = self.core.list_namespaced_pod(
                self.namespace, label_selector=f"batch.kubernetes.io/job-name={self.name}"
            )
        pods = as_dict(self.backend.client, items).get("items") or []
        return sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")

    def _follow(self, pods: list[dict[str, Any]]) -> None:
        for pod in pods:
            name = pod["metadata"]["name"]
            phase = pod.get("status", {}).get("phase")
            if name not in self._followers and phase in ("Running", "Succeeded", "Failed"):
                f = _LogFollower(self, name)
                self._followers[name] = f
                f.start()

    def _tail(self, pod: str) -> list[str]:
        f = self._followers.get(pod)
        if f is not None:
            f.finished.wait(timeout=10)
            if f.tail:
                return list(f.tail)
        try:
            with self._call("get", "pods/log"):
                text = self.core.read_namespaced_pod_log(
                    pod, self.namespace, container=CONTAINER, tail_lines=LOG_TAIL
                )
            return str(text).splitlines()
        except KubernetesApiError:
            return []

    def _watch_pods(self, pods: list[dict[str, Any]]) -> str | None:
        """Report what holds pods up; return a failure when waiting cannot help."""
        k = self.backend.k
        now = time.monotonic()
        for pod in pods:
            problem = pod_problem(pod, k)
            name = pod["metadata"]["name"]
            if problem is None:
                continue
            kind, message = problem
            key = (name, kind)
            if key not in self._reported:
                self._reported.add(key)
                log.warning("training run %s: %s", self.run_id, message)
            self._last_problem = message
            since = self._pending_since.setdefault(key, now)
            if (
                kind in ("ImagePull", "ContainerConfig")
                and now - since > k.image_pull_timeout_seconds
            ):
                return message
            if (
                kind == "Unschedulable"
                and k.unschedulable_timeout_seconds is not None
                and now - since > k.unschedulable_timeout_seconds
            ):
                return message
        return None

    def _explain(self, job: dict[str, Any], pods: list[dict[str, Any]]) -> str:
        k = self.backend.k
        cond = _condition(job, "Failed") or _condition(job, "FailureTarget") or {}
        reason = cond.get("reason") or "Failed"
        failed = [p for p in pods if p.get("status", {}).get("phase") == "Failed"]
        last = failed[-1] if failed else (pods[-1] if pods else None)
        problem = pod_problem(last, k) if last else None
        detail = problem[1] if problem else self._last_problem
        head = f"training run {self.run_id} (Job {self.namespace}/{self.name}) failed"
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
        if last is not None:
            tail = self._tail(last["metadata"]["name"])
            if tail:
                text += f"\nlast lines of pod {last['metadata']['name']}:\n" + "\n".join(tail)
        return text

    def poll(self) -> str | None:
        if self._state is not None:
            return self._state
        job = self._job()
        if job is None:
            return self._fail(
                f"training run {self.run_id}: Job {self.namespace}/{self.name} is gone"
            )
        pods = self._pods()
        self._follow(pods)
        if job.get("spec", {}).get("suspend") and not self._suspended_logged:
            self._suspended_logged = True
            log.info(
                "training run %s: Job %s is queued (suspended) in %s until it is admitted",
                self.run_id,
                self.name,
                self.backend.k.queue_name or "its queue",
            )
        if _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet"):
            self._stop_followers(wait=True)
            self._state = SUCCEEDED
            log.info("training run %s: Job %s completed", self.run_id, self.name)
            return self._state
        if _condition(job, "Failed"):
            return self._fail(self._explain(job, pods))
        stuck = self._watch_pods(pods)
        if stuck:
            self._delete()
            return self._fail(
                f"training run {self.run_id} (Job {self.namespace}/{self.name}) cannot start: "
                f"{stuck}. The Job was deleted"
            )
        return None

    def _fail(self, message: str) -> str:
        self.failure = message
        self._state = FAILED
        self._stop_followers(wait=True)
        return self._state

    def _stop_followers(self, wait: bool = False) -> None:
        for f in self._followers.values():
            if wait:
                f.finished.wait(timeout=10)
            f.stop.set()

    def wait(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = self.poll()
            if state == SUCCEEDED:
                return
            if state == FAILED:
                raise TrainingError(self.failure or f"training run {self.run_id} failed")
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"training run {self.run_id} still running after {timeout:.0f}s "
                    f"(Job {self.namespace}/{self.name})"
                )
            time.sleep(self.backend.k.poll_seconds)

    def _delete(self) -> None:
        try:
            with self._call("delete", "jobs"):
                # Foreground: the Job disappears only after its pods (the API's default
                # for Jobs would orphan them, still running on their GPUs).
                self.backend.batch.delete_namespaced_job(
                    self.name, self.namespace, propagation_policy="Foreground"
                )
        except KubernetesNotFoundError:
            pass

    def cancel(self) -> None:
        """Delete the Job and its pods; the pods get SIGTERM and their grace period, so
        the trainer checkpoints and a later submit of the same run resumes."""
        if self._state is not None:
            return
        self._delete()
        log.info("training run %s: cancelled, Job %s deleted", self.run_id, self.name)
        self._fail(f"training run {self.run_id} was cancelled (Job {self.name} deleted)")


class KubernetesBackend(KubeAccess):
    """ComputeBackend that runs each training run as a Kubernetes Job."""

    def __init__(self, cfg: PipelineConfig, api_client: Any | None = None) -> None:
        self.cfg = cfg
        self.k = cfg.compute.kubernetes
        self._client = api_client

    def manifests(
        self, plan: RunPlan, store: ArtifactStore, origin: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """The objects ``submit`` would create, without writing anything anywhere."""
        cfg = plan.cfg.model_copy(update={"compute": self.cfg.compute})
        config_uri = store.url(config_key(plan.cfg))
        return build_manifests(cfg, plan.run_id, config_uri, store.uri, origin)

    def _check_store(self, store: ArtifactStore) -> None:
        if not store.uri.startswith("s3://"):
            raise ConfigError(
                f"compute.backend kubernetes needs an s3:// store that pods can reach; "
                f"{store.uri} is a directory on this machine (set store: s3://bucket/prefix)"
            )

    def submit(
        self, plan: RunPlan, store: ArtifactStore, origin: dict[str, str] | None = None
    ) -> KubernetesRun:
        self._check_store(store)
        run_id = plan.run_id
        done = _finished(store, run_id, plan.cfg)
        name = job_name(run_id)
        if done:
            log.info("training run %s is already complete: no Job needed", run_id)
            return KubernetesRun(self, run_id, name, already_done=True)
        publish_config(plan.cfg, store)
        objects = self.manifests(plan, store, origin)
        for obj in objects:
            if obj["kind"] == "Service":
                self._create_if_absent(obj)  # kept when the same run's Service is there
        job = objects[-1]
        self._create_job(job, run_id)
        return KubernetesRun(self, run_id, name)

    def train(
        self, plan: RunPlan, store: ArtifactStore, origin: dict[str, str] | None = None
    ) -> None:
        self.submit(plan, store, origin).wait()

    def _create_job(self, job: dict[str, Any], run_id: str) -> None:
        name = job["metadata"]["name"]
        for _ in range(3):
            try:
                with self._call("create", "jobs"):
                    self.batch.create_namespaced_job(self.k.namespace, job)
                log.info(
                    "training run %s: created Job %s/%s (watch it: kubectl -n %s get pods "
                    "-l batch.kubernetes.io/job-name=%s -w)",
                    run_id,
                    self.k.namespace,
                    name,
                    self.k.namespace,
                    name,
                )
                return
            except KubernetesConflictError:
                with self._call("get", "jobs"):
                    existing = as_dict(
                        self.client, self.batch.read_namespaced_job(name, self.k.namespace)
                    )
                if not _condition(existing, "Failed"):
                    # still running (or done): never start a second pod for one run
                    log.info("training run %s: attaching to the existing Job %s", run_id, name)
                    return
                log.info("training run %s: replacing the failed Job %s", run_id, name)
                with self._call("delete", "jobs"):
                    self.batch.delete_namespaced_job(
                        name, self.k.namespace, propagation_policy="Foreground"
                    )
                self._wait_gone(name)
        raise TrainingError(f"could not create Job {name} for run {run_id}: it keeps existing")

    def _wait_gone(self, name: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with self._call("get", "jobs"):
                    self.batch.read_namespaced_job(name, self.k.namespace)
            except KubernetesNotFoundError:
                return
            time.sleep(self.k.poll_seconds)
        raise TrainingError(f"the failed Job {name} was not deleted within {timeout:.0f}s")


def _finished(store: ArtifactStore, run_id: str, cfg: PipelineConfig) -> bool:
    from visionline.model.runs import RunPaths

    key = RunPaths(run_id).run_info
    if not store.exists(key):
        return False
    info = store.get_json(key)
    if info.get("config_fingerprint") != cfg.fingerprint():
        raise TrainingError(f"run {run_id} already finished with another config: use a new run id")
    return True
