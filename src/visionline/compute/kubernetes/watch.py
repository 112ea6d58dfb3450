"""Watching a submitted training Job or JobSet (workloads.py): ``KubernetesRun`` polls it
and its pods (a run lasts hours; a poll every few seconds costs nothing and never has to
resume an expired watch), relays each pod's trainer log into this module's logger (the
flow run's log), gives up on pods that waiting cannot help, and cancels by deleting it."""

from __future__ import annotations

import contextvars
import logging
import re
import threading
import time
from collections import deque
from datetime import datetime
from typing import TYPE_CHECKING, Any

from kubernetes.client.exceptions import ApiException

from visionline.compute import FAILED, SUCCEEDED
from visionline.compute.kubernetes.diagnosis import pod_problem
from visionline.compute.kubernetes.manifest import CONTAINER
from visionline.compute.kubernetes.owner import cancel_on_exit
from visionline.errors import TrainingError
from visionline.kube import KubernetesApiError, KubernetesNotFoundError, api_errors, as_dict

if TYPE_CHECKING:
    from visionline.compute.kubernetes.backend import KubernetesBackend

log = logging.getLogger(__name__)

LOG_TAIL = 40
# Per-batch lines stay out of the flow's log (the trainer logs one every log_every steps).
_STEP_LINE = re.compile(r"\bepoch \d+ step \d+/\d+ loss ")


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
        # The lines are logged from this thread: carry the submitter's context (an
        # orchestrator's run context among it), so they land in the same run's log.
        self._context = contextvars.copy_context()

    def _stream_once(self) -> bool:
        """Follow until the stream ends; True when the container is done."""
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
        self._context.run(self._follow)

    def _follow(self) -> None:
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
    """A submitted training Job or JobSet (RunHandle)."""

    def __init__(
        self, backend: KubernetesBackend, run_id: str, name: str, already_done: bool = False
    ) -> None:
        self.backend = backend
        self.run_id = run_id
        self.name = name
        self.namespace = backend.k.namespace
        self.workload = backend.workload
        self.kind = self.workload.kind
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

    def _pods(self) -> list[dict[str, Any]]:
        with self._call("list", "pods"):
            items = self.core.list_namespaced_pod(
                self.namespace, label_selector=self.workload.pod_selector(self.name)
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

    def _explain(self, obj: dict[str, Any], pods: list[dict[str, Any]]) -> str:
        head = f"training run {self.run_id} ({self.kind} {self.namespace}/{self.name}) failed"
        text, last = self.workload.explain(obj, pods, head, self._last_problem)
        if last is not None:
            tail = self._tail(last["metadata"]["name"])
            if tail:
                text += f"\nlast lines of pod {last['metadata']['name']}:\n" + "\n".join(tail)
        return text

    def poll(self) -> str | None:
        if self._state is not None:
            return self._state
        obj = self.workload.read(self.name)
        if obj is None:
            return self._fail(
                f"training run {self.run_id}: {self.kind} {self.namespace}/{self.name} is gone"
            )
        pods = self._pods()
        self._follow(pods)
        if obj.get("spec", {}).get("suspend") and not self._suspended_logged:
            self._suspended_logged = True
            log.info(
                "training run %s: %s %s is queued (suspended) in %s until it is admitted",
                self.run_id,
                self.kind,
                self.name,
                self.backend.k.queue_name or "its queue",
            )
        if self.workload.succeeded(obj):
            self._stop_followers(wait=True)
            self._state = SUCCEEDED
            log.info("training run %s: %s %s completed", self.run_id, self.kind, self.name)
            return self._state
        if self.workload.failed(obj):
            return self._fail(self._explain(obj, pods))
        stuck = self._watch_pods(pods)
        if stuck:
            self.workload.delete(self.name)
            return self._fail(
                f"training run {self.run_id} ({self.kind} {self.namespace}/{self.name}) "
                f"cannot start: {stuck}. The {self.kind} was deleted"
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
        """Block until the run ends; a signal or interrupt meanwhile cancels it first
        (``owner.cancel_on_exit``): a cancelled flow run leaves no training run behind."""
        with cancel_on_exit(self):
            self._wait(timeout)

    def _wait(self, timeout: float | None) -> None:
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
                    f"({self.kind} {self.namespace}/{self.name})"
                )
            time.sleep(self.backend.k.poll_seconds)

    def cancel(self) -> None:
        """Delete the Job (JobSet) and its pods, in the foreground; the pods get SIGTERM
        and their grace period, so the trainer checkpoints and a later submit of the same
        run resumes."""
        if self._state is not None:
            return
        self.workload.delete(self.name)
        log.info("training run %s: cancelled, %s %s deleted", self.run_id, self.kind, self.name)
        self._fail(f"training run {self.run_id} was cancelled ({self.kind} {self.name} deleted)")
