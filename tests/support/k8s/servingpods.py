"""``ServingKubelet``: the kubelet of the pods ReplicaSets own (replicasets.py), run for
real: every pod in its own network namespace (sandbox.py), its volumes and paths laid
out by podfs.py, its init containers one after the other, then each container as a
process in its own session; startup and readiness probes (``exec`` and ``httpGet``, at
their periods and thresholds) decide the pod's ``Ready`` condition, written to the API
as the kubelet writes it. Liveness probes are not run (nothing here restarts).

A deleted pod is stopped with the kubelet's termination sequence: it is marked not
ready at once (its endpoint goes), every container's ``preStop`` hook runs (``sleep``
or ``exec``, in parallel), then SIGTERM goes to the container (its process group, as
tini -g passes it on), and whatever still runs when the grace period is over gets
SIGKILL; then the deletion is confirmed. ``events`` records each step with its time.

``Endpoints`` plays kube-proxy: the ready pods a Service selects, as a proxy sees them
``lag`` seconds late (endpoint removal takes that long to reach every node)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import requests

from .podfs import PodFS
from .replicasets import NODE, ready
from .sandbox import Sandbox

_MERGE_PATCH = "application/merge-patch+json"


class PodWorker(threading.Thread):
    """One pod: init containers, containers, probes, and its termination."""

    def __init__(self, kubelet: ServingKubelet, pod: dict[str, Any]) -> None:
        super().__init__(name=f"pod-{pod['metadata']['name']}", daemon=True)
        self.kubelet = kubelet
        self.pod = pod
        self.name = pod["metadata"]["name"]
        self.spec = pod["spec"]
        self.deleted = threading.Event()
        self.sandbox: Sandbox | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.ready = False

    def event(self, what: str, container: str = "") -> None:
        self.kubelet.events.append((time.monotonic(), self.name, container, what))

    def run(self) -> None:
        try:
            self._live()
        except Exception as e:
            if not self.kubelet.stop_event.is_set():
                self.kubelet.errors.append(e)
        finally:
            self._terminate()

    # -- running --------------------------------------------------------------------
    def _start(self, c: dict[str, Any]) -> subprocess.Popen:
        env = self.fs.env(c)
        log = (self.fs.root / f"{c['name']}.log").open("ab")
        assert self.sandbox is not None
        proc = subprocess.Popen(
            self.fs.argv(c, env),
            env=env,
            cwd=self.fs.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=self.sandbox.preexec,
        )
        log.close()
        self.event("started", c["name"])
        return proc

    def _live(self) -> None:
        # short: TorchServe's worker sockets live under the pod's /tmp, and a Unix
        # socket's path has at most 107 bytes
        root = self.kubelet.workdir / hashlib.sha256(self.name.encode()).hexdigest()[:8]
        root.mkdir(parents=True)
        (root / "pod").write_text(self.name)
        self.sandbox = Sandbox()
        self.fs = PodFS(root, self.pod, self.kubelet.api)
        for c in self.spec.get("initContainers") or []:
            proc = self._start(c)
            while proc.poll() is None:
                if self.deleted.wait(0.2):
                    proc.kill()
                    return
            if proc.returncode != 0:
                self.event(f"init failed ({proc.returncode})", c["name"])
                self.kubelet.errors.append(
                    RuntimeError(
                        f"{self.name}: init container {c['name']} exited {proc.returncode}"
                    )
                )
                self.deleted.wait()
                return
        for c in self.spec["containers"]:
            self.procs[c["name"]] = self._start(c)
        self._status(False)
        self._probe_until_deleted()

    def _probe_until_deleted(self) -> None:
        started = {c["name"]: "startupProbe" not in c for c in self.spec["containers"]}
        ready = {c["name"]: False for c in self.spec["containers"]}
        fails = {c["name"]: 0 for c in self.spec["containers"]}
        due = {c["name"]: 0.0 for c in self.spec["containers"]}
        while not self.deleted.is_set():
            now = time.monotonic()
            for c in self.spec["containers"]:
                name = c["name"]
                if now < due[name]:
                    continue
                kind = "readinessProbe" if started[name] else "startupProbe"
                probe = c.get(kind)
                if probe is None:
                    ready[name] = True
                    due[name] = float("inf")
                    continue
                ok = self._probe(c, probe)
                if kind == "startupProbe":
                    started[name] = ok
                    fails[name] = 0 if ok else fails[name] + 1
                    if fails[name] >= probe.get("failureThreshold", 3):
                        self.event("startup probe failed", name)
                    due[name] = now if ok else now + probe.get("periodSeconds", 10)
                    continue
                fails[name] = 0 if ok else fails[name] + 1
                if ok:
                    ready[name] = True
                elif fails[name] >= probe.get("failureThreshold", 3):
                    ready[name] = False
                due[name] = now + probe.get("periodSeconds", 10)
            if all(ready.values()) != self.ready:
                self._status(all(ready.values()))
            self.deleted.wait(0.2)

    def _probe(self, c: dict[str, Any], probe: dict[str, Any]) -> bool:
        timeout = probe.get("timeoutSeconds", 1)
        if "exec" in probe:
            env = self.fs.env(c)
            argv = self.fs.argv({"command": probe["exec"]["command"]}, env)
            assert self.sandbox is not None
            try:
                done = subprocess.run(
                    argv,
                    env=env,
                    capture_output=True,
                    timeout=timeout,
                    preexec_fn=self.sandbox.enter,
                )
            except subprocess.TimeoutExpired:
                return False
            return done.returncode == 0
        get = probe["httpGet"]
        port = get["port"]
        if isinstance(port, str):
            port = next(p["containerPort"] for p in c["ports"] if p.get("name") == port)
        url = f"http://127.0.0.1:{port}{get.get('path', '/')}"
        try:
            assert self.sandbox is not None
            answer = self.sandbox.call(lambda: requests.get(url, timeout=timeout))
        except requests.RequestException:
            return False
        return 200 <= answer.status_code < 400

    def _status(self, is_ready: bool) -> None:
        self.ready = is_ready
        self.event("ready" if is_ready else "not ready")
        value = "True" if is_ready else "False"
        ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status = {
            "phase": "Running",
            "podIP": "127.0.0.1",
            "conditions": [
                {"type": t, "status": value, "lastTransitionTime": ts}
                for t in ("Ready", "ContainersReady")
            ],
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c["image"],
                    "imageID": "",
                    "ready": is_ready,
                    "restartCount": 0,
                    "started": True,
                    "state": {"running": {"startedAt": ts}},
                }
                for c in self.spec["containers"]
            ],
        }
        self.kubelet.core.patch_namespaced_pod_status(
            self.name, self.kubelet.namespace, {"status": status}, _content_type=_MERGE_PATCH
        )

    # -- the termination sequence -----------------------------------------------------
    def _stop_container(self, c: dict[str, Any], deadline: float) -> None:
        name, proc = c["name"], self.procs.get(c["name"])
        if proc is None:
            return
        hook = (c.get("lifecycle") or {}).get("preStop") or {}
        if hook and proc.poll() is None:
            self.event("preStop", name)
            if "sleep" in hook:
                time.sleep(max(0, min(hook["sleep"]["seconds"], deadline - time.monotonic())))
            elif "exec" in hook:
                self._exec_hook(c, hook["exec"]["command"], proc, deadline)
            self.event("preStop done", name)
        if proc.poll() is None:
            self.event("SIGTERM", name)
            _signal_group(proc, signal.SIGTERM)
        # a hook that used the whole grace period still leaves the kubelet's 2 s
        end = deadline if time.monotonic() < deadline else time.monotonic() + 2
        while proc.poll() is None and time.monotonic() < end:
            time.sleep(0.05)
        if proc.poll() is None:
            self.event("SIGKILL", name)
        _signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=30)
        self.event(f"exited ({proc.returncode})", name)

    def _exec_hook(
        self, c: dict[str, Any], command: list[str], proc: subprocess.Popen, deadline: float
    ) -> None:
        """Run an exec hook in the container until it ends, the grace period does, or the
        container's main process exits (which, as PID 1 of the container, takes the
        hook down with it)."""
        env = self.fs.env(c)
        assert self.sandbox is not None
        hook = subprocess.Popen(
            self.fs.argv({"command": command}, env),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=self.sandbox.enter,
        )
        while hook.poll() is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if hook.poll() is None:
            hook.kill()
        hook.wait(timeout=30)

    def _terminate(self) -> None:
        from kubernetes.client.exceptions import ApiException

        grace = self.kubelet.grace_of(self.name, self.spec)
        deadline = time.monotonic() + grace
        if self.ready:
            with contextlib.suppress(ApiException):
                self._status(False)  # the endpoint controller removes it now
        stops = [
            threading.Thread(target=self._stop_container, args=(c, deadline), daemon=True)
            for c in self.spec["containers"]
        ]
        for t in stops:
            t.start()
        for t in stops:
            t.join()
        if self.sandbox is not None:
            self.sandbox.close()
        try:
            self.kubelet.core.delete_namespaced_pod(
                self.name, self.kubelet.namespace, grace_period_seconds=0
            )
        except ApiException as e:
            if e.status != 404:
                raise


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class ServingKubelet(threading.Thread):
    """Runs the pods bound to ``NODE`` that ReplicaSets own, one ``PodWorker`` each."""

    def __init__(self, cluster: Any, namespace: str, workdir: Path, tick: float = 0.2) -> None:
        super().__init__(name="serving-kubelet", daemon=True)
        from kubernetes import client  # the optional client, as in the adapters

        self.api = cluster.admin_client()
        self.core = client.CoreV1Api(self.api)
        self.namespace = namespace
        self.workdir = workdir
        self.tick = tick
        self.stop_event = threading.Event()
        self.errors: list[BaseException] = []
        self.events: list[tuple[float, str, str, str]] = []
        self.workers: dict[str, PodWorker] = {}
        self._grace: dict[str, float] = {}

    def grace_of(self, name: str, spec: dict[str, Any]) -> float:
        return self._grace.get(name, spec.get("terminationGracePeriodSeconds", 30))

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                listed = self.api.sanitize_for_serialization(
                    self.core.list_namespaced_pod(self.namespace)
                )
                for pod in listed.get("items") or []:
                    self._sync(pod)
            except Exception as e:  # surfaced through .errors
                if not self.stop_event.is_set():
                    self.errors.append(e)
            self.stop_event.wait(self.tick)

    def _sync(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        owners = [r.get("kind") for r in meta.get("ownerReferences") or []]
        if pod["spec"].get("nodeName") != NODE or "ReplicaSet" not in owners:
            return
        worker = self.workers.get(meta["name"])
        if worker is None and not meta.get("deletionTimestamp"):
            worker = self.workers[meta["name"]] = PodWorker(self, pod)
            worker.start()
        if worker is not None and meta.get("deletionTimestamp") and not worker.deleted.is_set():
            self._grace[meta["name"]] = float(meta.get("deletionGracePeriodSeconds") or 30)
            worker.deleted.set()

    def close(self) -> None:
        """Stop every pod at once (SIGKILL) and the kubelet."""
        self.stop_event.set()
        self.join(timeout=10)
        for w in self.workers.values():
            self._grace[w.name] = 0
            w.deleted.set()
        for w in self.workers.values():
            w.join(timeout=60)


class Endpoints(threading.Thread):
    """kube-proxy: the pods behind a Service as a proxy sees them, ``lag`` seconds late."""

    def __init__(self, kubelet: ServingKubelet, selector: dict[str, str], lag: float) -> None:
        super().__init__(name="endpoints", daemon=True)
        self.kubelet = kubelet
        self.selector = ",".join(f"{k}={v}" for k, v in selector.items())
        self.lag = lag
        self.stop_event = threading.Event()
        self._seen: list[tuple[float, set[str]]] = []
        self.current: set[str] = set()

    def run(self) -> None:
        core = self.kubelet.core
        while not self.stop_event.is_set():
            try:
                listed = self.kubelet.api.sanitize_for_serialization(
                    core.list_namespaced_pod(self.kubelet.namespace, label_selector=self.selector)
                )
                now = time.monotonic()
                names = {p["metadata"]["name"] for p in listed.get("items") or [] if ready(p)}
                self._seen.append((now, names))
                # what was true `lag` seconds ago reaches the proxy now; a new endpoint
                # is used once it was seen ready that long too
                old = [s for t, s in self._seen if t <= now - self.lag]
                if old:
                    self.current = set(old[-1])
                    self._seen = [(t, s) for t, s in self._seen if t > now - self.lag - 1]
            except Exception as e:
                self.kubelet.errors.append(e)
            self.stop_event.wait(0.1)

    def pick(self) -> Sandbox | None:
        """A pod to send one request to (its sandbox), or None when there is none."""
        names = sorted(self.current)
        random.shuffle(names)
        for name in names:
            worker = self.kubelet.workers.get(name)
            if worker is not None and worker.sandbox is not None:
                return worker.sandbox
        return None

    def close(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)
