"""A one-node kubelet for the Job controller's pods, over the API: it runs a pod's
container command as a real local process (its env resolved from the pod spec, Secrets
included) and writes its output as the pod's log, or gives the pod a scripted ``Fate``
(OOMKilled, evicted, image pull failure, unschedulable, a plain exit). Pod statuses are
written as the real kubelet writes them. A pod being deleted is stopped as the kubelet
stops it: SIGTERM, SIGKILL at its grace period, and once it has stopped the deletion is
confirmed (``gracePeriodSeconds: 0``) and the pod goes."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .downward import field_value
from .objects import now_rfc3339
from .runtime import Pid1Process, container_argv, env_from, pid1_available

if TYPE_CHECKING:
    from .cluster import Cluster


@dataclass
class Fate:
    """What the kubelet does with one pod. ``run``: run its command for real; the other
    kinds give it the scripted status a real cluster would."""

    kind: str = "run"  # run | oom | evict | image_pull | unschedulable | exit | hold
    exit_code: int = 1
    # for evict: SIGTERM the running process once a log line contains this
    evict_after: str | None = None
    lines: list[str] = field(default_factory=list)
    # once deleted, the pod takes this long to stop (a slow shutdown; at most its grace
    # period): until then it stays, and so does an owner deleted in the foreground
    stop_seconds: float = 0.0


# -- pod statuses, as the real kubelet and scheduler write them -------------------------
def container_status(state: dict[str, Any], image: str) -> list[dict[str, Any]]:
    return [
        {
            "name": "trainer",
            "image": image,
            "imageID": "",
            "ready": "running" in state,
            "restartCount": 0,
            "state": state,
        }
    ]


def unschedulable_status(ts: str) -> dict[str, Any]:
    return {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. "
                "preemption: 0/3 nodes are available: 3 No preemption victims found "
                "for incoming pod.",
                "lastTransitionTime": ts,
            }
        ],
    }


def image_pull_status(image: str) -> dict[str, Any]:
    return {
        "phase": "Pending",
        "containerStatuses": container_status(
            {
                "waiting": {
                    "reason": "ImagePullBackOff",
                    "message": f'Back-off pulling image "{image}"',
                }
            },
            image,
        ),
    }


def evicted_status(rc: int, image: str, ts: str) -> dict[str, Any]:
    return {
        "phase": "Failed",
        "reason": "Evicted",
        "message": "The node was low on resource: memory.",
        "conditions": [
            {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "TerminationByKubelet",
                "message": "The node was low on resource: memory.",
                "lastTransitionTime": ts,
            }
        ],
        "containerStatuses": container_status(
            {
                "terminated": {
                    "exitCode": rc if rc >= 0 else 128 - rc,
                    "reason": "Error",
                    "finishedAt": ts,
                }
            },
            image,
        ),
    }


class Kubelet:
    """Runs the pods the Job controller creates, one thread each. ``procs`` (pod ->
    process) and ``grace_exits`` (pod -> seconds from SIGTERM to exit) are what tests
    read; failures land in the shared ``errors`` list, unless ``stop_event`` is set."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        api: Any,
        workdir: Path,
        extra_env: dict[str, str],
        stop_event: threading.Event,
        errors: list[BaseException],
    ) -> None:
        from kubernetes import client  # the optional client, as in the adapters

        self.cluster = cluster
        self.namespace = namespace
        self.api = api
        self.core = client.CoreV1Api(api)
        self.workdir = workdir
        self.extra_env = extra_env
        self.stop_event = stop_event
        self.errors = errors
        self.procs: dict[str, Any] = {}  # Popen or runtime.Pid1Process
        self.grace_exits: dict[str, float] = {}
        self._threads: list[threading.Thread] = []
        self._pods: dict[str, Fate] = {}  # the pods on this node, until they are gone
        self._stopping: dict[str, float] = {}  # pod -> when its termination began
        self._lock = threading.Lock()  # a pod's process starts, or its termination does
        # pod -> (hostname, /etc/hosts) of an Indexed Job's pod (indexed.py)
        self.networks: dict[str, tuple[str, Path]] = {}
        self.evictions: dict[str, float] = {}  # pod -> when evict() sent its SIGTERM
        # containers as PID 1 of their own PID namespace, under the image's ENTRYPOINT
        # (runtime.py); where this user cannot, plain processes
        self.pid1 = pid1_available()

    def start(self, name: str, pod: dict[str, Any], fate: Fate) -> None:
        """Run the pod just created as ``name`` on its own thread."""
        self._pods[name] = fate
        t = threading.Thread(target=self._kubelet, args=(name, pod, fate), daemon=True)
        self._threads.append(t)
        t.start()

    def _patch_pod_status(self, name: str, status: dict[str, Any]) -> None:
        self.core.patch_namespaced_pod_status(
            name, self.namespace, {"status": status}, _content_type="application/merge-patch+json"
        )

    def _kubelet(self, name: str, pod: dict[str, Any], fate: Fate) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self._run_pod(name, pod, fate)
        except ApiException as e:
            if e.status != 404 and not self.stop_event.is_set():
                self.errors.append(e)
        except Exception as e:
            if not self.stop_event.is_set():
                self.errors.append(e)

    def _run_pod(self, name: str, pod: dict[str, Any], fate: Fate) -> None:
        container = pod["spec"]["containers"][0]
        image = container["image"]
        ts = now_rfc3339()
        if fate.kind == "unschedulable":
            self._patch_pod_status(name, unschedulable_status(ts))
            return
        if fate.kind == "image_pull":
            self._patch_pod_status(name, image_pull_status(image))
            return
        self._patch_pod_status(
            name,
            {
                "phase": "Running",
                "startTime": ts,
                **{k: v for k, v in (pod.get("status") or {}).items() if k == "podIP"},
                "containerStatuses": container_status({"running": {"startedAt": ts}}, image),
            },
        )
        self.cluster.append_log(self.namespace, name, "")  # the container started: logs exist
        if fate.kind == "hold":
            return  # Running, with no process, until it is deleted
        if fate.kind == "oom":
            for line in fate.lines:
                self.cluster.append_log(self.namespace, name, line)
            self._terminate(name, image, 137, "OOMKilled")
            return
        if fate.kind == "exit":
            for line in fate.lines:
                self.cluster.append_log(self.namespace, name, line)
            self._terminate(name, image, fate.exit_code, "Error")
            return
        self._run_process(name, pod, container, fate)

    def _secret_value(self, ref: dict[str, Any]) -> str | None:
        """A ``secretKeyRef``'s value; None when it is optional and missing."""
        try:
            secret = self.api.sanitize_for_serialization(
                self.core.read_namespaced_secret(ref["name"], self.namespace)
            )
        except Exception:
            if ref.get("optional"):
                return None
            raise
        data = secret.get("stringData") or {}
        if ref["key"] in data:
            return data[ref["key"]]
        if ref["key"] in (secret.get("data") or {}):
            return base64.b64decode(secret["data"][ref["key"]]).decode()
        if not ref.get("optional"):
            raise KeyError(f"secret {ref['name']} has no key {ref['key']}")
        return None

    def _env(
        self, container: dict[str, Any], home: Path, pod: dict[str, Any] | None = None
    ) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
            "LANG": "C.UTF-8",
        }
        env.update(env_from(self.core, self.api, self.namespace, container))
        for e in container.get("env") or []:
            if "value" in e:
                env[e["name"]] = e["value"]
                continue
            field = (e.get("valueFrom") or {}).get("fieldRef")
            if field:  # the downward API
                env[e["name"]] = field_value(pod or {}, field["fieldPath"])
                continue
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                value = self._secret_value(ref)
                if value is not None:
                    env[e["name"]] = value
        env.update(HOME=str(home), TMPDIR=str(home / "tmp"))
        env.update(self.extra_env)
        return env

    def _run_process(
        self, name: str, pod: dict[str, Any], container: dict[str, Any], fate: Fate
    ) -> None:
        home = self.workdir / name
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        env = self._env(container, home, pod)
        cmd = container_argv(container, env)
        with self._lock:
            if name in self._stopping:
                return  # deleted before its container started: it never will
            net = {"network": self.networks[name]} if self.pid1 and name in self.networks else {}
            run = Pid1Process if self.pid1 else subprocess.Popen
            proc = run(
                cmd,
                **net,
                cwd=home,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
            self.procs[name] = proc
        grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
        sigterm_at = self._stream_output(name, proc, fate, grace)
        sigterm_at = self.evictions.get(name, sigterm_at)  # evicted by evict()
        rc = proc.wait()
        if sigterm_at is not None:
            self.grace_exits[name] = time.monotonic() - sigterm_at
        self.cluster.end_log(self.namespace, name)
        if self._gone(name):
            return  # deleted: its end is the deletion's, confirmed by reap_deleted_pods
        if (fate.kind == "evict" or name in self.evictions) and sigterm_at is not None:
            self._patch_pod_status(name, evicted_status(rc, container["image"], now_rfc3339()))
            return
        code = rc if rc >= 0 else 128 - rc
        self._terminate(name, container["image"], code, "Completed" if code == 0 else "Error")

    def _stream_output(
        self, name: str, proc: subprocess.Popen, fate: Fate, grace: float
    ) -> float | None:
        """Copy the process's output into the pod's log until it closes; for an eviction,
        SIGTERM it at the line ``fate`` names (SIGKILL after ``grace``) and return when."""
        sigterm_at: float | None = None
        assert proc.stdout is not None
        for line in proc.stdout:
            self.cluster.append_log(self.namespace, name, line.rstrip("\n"))
            if (
                fate.kind == "evict"
                and sigterm_at is None
                and fate.evict_after
                and fate.evict_after in line
            ):
                sigterm_at = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                threading.Timer(grace, lambda: proc.poll() is None and proc.kill()).start()
        return sigterm_at

    def _terminate(self, name: str, image: str, code: int, reason: str) -> None:
        self.cluster.end_log(self.namespace, name)
        ts = now_rfc3339()
        self._patch_pod_status(
            name,
            {
                "phase": "Succeeded" if code == 0 else "Failed",
                "containerStatuses": container_status(
                    {"terminated": {"exitCode": code, "reason": reason, "finishedAt": ts}}, image
                ),
            },
        )

    def _gone(self, name: str) -> bool:
        """Whether the pod is gone or being deleted."""
        from kubernetes.client.exceptions import ApiException

        try:
            pod = self.core.read_namespaced_pod(name, self.namespace)
        except ApiException as e:
            if e.status == 404:
                return True
            raise
        return pod.metadata.deletion_timestamp is not None

    def evict(self, name: str, grace: float) -> None:
        """Evict the running pod now, as the node-pressure eviction does: SIGTERM, SIGKILL
        after ``grace``, and a ``Failed`` status with ``DisruptionTarget`` once it ended."""
        proc = self.procs[name]
        self.evictions[name] = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        timer = threading.Timer(grace, lambda: proc.poll() is None and proc.kill())
        timer.daemon = True
        timer.start()

    def kill(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Signal the pod's process, if it still runs."""
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)

    def reap_deleted_pods(self) -> None:
        """Stop the pods being deleted, as the kubelet does: SIGTERM at the first sight of
        the ``deletionTimestamp``, SIGKILL at the grace period, and once the container
        has stopped (and the ``Fate``'s ``stop_seconds`` have passed) confirm the
        deletion, so the pod goes. A pod deleted at once only gets the SIGTERM."""
        from kubernetes.client.exceptions import ApiException

        if not self._pods:
            return
        listed = self.api.sanitize_for_serialization(self.core.list_namespaced_pod(self.namespace))
        live = {p["metadata"]["name"]: p for p in listed.get("items") or []}
        for name, fate in list(self._pods.items()):
            pod = live.get(name)
            if pod is not None and not pod["metadata"].get("deletionTimestamp"):
                continue
            # a pod deleted at once still gets the kubelet's minimum grace period
            grace = float((pod or {}).get("metadata", {}).get("deletionGracePeriodSeconds") or 2)
            began = self._begin_stop(name, grace)
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                continue
            if pod is not None and time.monotonic() - began < min(fate.stop_seconds, grace):
                continue
            self._pods.pop(name)
            if pod is not None:
                try:
                    self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)
                except ApiException as e:
                    if e.status != 404:
                        raise

    def _begin_stop(self, name: str, grace: float) -> float:
        """SIGTERM the pod's process (SIGKILL after ``grace``) once; when that was."""
        with self._lock:
            if name in self._stopping:
                return self._stopping[name]
            self._stopping[name] = time.monotonic()
            proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            timer = threading.Timer(grace, lambda: proc.poll() is None and proc.kill())
            timer.daemon = True  # a test's end never waits out a grace period
            timer.start()
        return self._stopping[name]

    def kill_all(self) -> None:
        """SIGKILL every process still running and wait for it."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)

    def join(self, timeout: float = 10) -> None:
        for t in self._threads:
            t.join(timeout=timeout)
