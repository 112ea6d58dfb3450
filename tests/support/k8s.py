"""A Kubernetes API over HTTP for tests, driven by the official client.

``Cluster`` serves kmock's ``KubernetesEmulator`` (an in-memory API server) from a
background thread and adds what our code relies on from a real API server:

- server-filled metadata (uid, resourceVersion, generation, creationTimestamp) and a
  generation bump when a spec changes;
- label and field selectors on lists;
- JSON merge patches (kmock's own patch semantics: ``null`` deletes, lists replace);
- deletion with ``propagationPolicy``: Background/Foreground delete the dependents
  (``ownerReferences``), the API default for Jobs (orphan) leaves them;
- pod logs (``pods/<name>/log`` with follow, timestamps, tailLines, sinceSeconds);
- RBAC refusals: ``deny("create", "jobs")`` answers 403 as the API server does;
- every object written is validated against the real 1.31 schemas (kubernetes-validate,
  strict) and refused with 422 when it does not validate, so nothing our code sends can
  be silently wrong.

``JobController`` plays the Job controller and the kubelet: it creates pods for Jobs,
applies their ``podFailurePolicy``, ``backoffLimit``, ``activeDeadlineSeconds`` and
``suspend``, and either runs a pod's container command as a real local process (its env
resolved from the pod spec, Secrets included) or gives the pod a scripted fate (OOMKilled,
evicted, image pull failure, unschedulable). It talks to the emulator only through the
API, like the real controllers.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kmock
from kmock._internal.k8s import KubernetesEmulator, KubernetesError

SCHEMA_VERSION = "1.31.0"
_DELETE_DEPENDENTS = ("Background", "Foreground")


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _log_ts() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def validate(obj: dict[str, Any]) -> None:
    """Raise when ``obj`` does not validate against the 1.31 schema (strict)."""
    import kubernetes_validate

    kubernetes_validate.validate(obj, SCHEMA_VERSION, strict=True)


def _selector_matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _field_matches(obj: dict[str, Any], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        path, _, want = term.partition("=")
        node: Any = obj
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if str(node) != want.lstrip("="):
            return False
    return True


@dataclass
class _Log:
    lines: list[tuple[str, str]] = field(default_factory=list)
    done: bool = False


class ApiServer(KubernetesEmulator):
    """kmock's emulator with the API-server semantics listed in the module docstring."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources.load_bundled()
        self.denied: set[tuple[str, str]] = set()
        self.logs: dict[tuple[str, str], _Log] = {}
        self.rejected: list[tuple[str, str]] = []
        self._rv = itertools.count(1)

    # -- helpers running in the server's loop ----------------------------------------
    def _key(self, request: Any, name: str | None = None, ns: str | None = None) -> Any:
        return (request.resource, ns if ns is not None else request.namespace, name or request.name)

    def _current(self, key: Any) -> dict[str, Any] | None:
        if key in self.objects and not self.objects[key].deleted:
            return copy.deepcopy(self.objects[key].raw)
        return None

    def _refuse(self, status: int, reason: str, message: str) -> None:
        raise KubernetesError(status=status, reason=reason, message=message, details={"causes": []})

    def _check(self, obj: dict[str, Any], what: str) -> None:
        try:
            validate(obj)
        except Exception as e:
            msg = getattr(e, "message", None) or str(e)
            self.rejected.append((what, msg))
            self._refuse(422, "Invalid", f"{what} is invalid: {msg}")

    async def _handle(self, request: Any) -> Any:
        res = request.resource
        action = str(request.action.value).lower() if request.action else None
        if res is not None and res.plural is not None:
            verb = {"fetch": "get", "update": "patch"}.get(action or "", action or "")
            sub = f"/{request.subresource}" if request.subresource else ""
            if (verb, f"{res.plural}{sub}") in self.denied or (verb, res.plural) in self.denied:
                group = res.group or ""
                self._refuse(
                    403,
                    "Forbidden",
                    f"{res.plural}{'.' + group if group else ''} is forbidden: User "
                    f'"system:serviceaccount:{request.namespace}:default" cannot {verb} '
                    f'resource "{res.plural}{sub}" in API group "{group}" in the namespace '
                    f'"{request.namespace}"',
                )
            if action == "fetch" and request.subresource == "log" and res.plural == "pods":
                return await self._serve_log(request)
            if action == "create" and isinstance(request.data, dict):
                self._on_create(request)
            elif action == "update" and request.name and isinstance(request.data, dict):
                self._on_patch(request)
            elif action == "delete" and request.name:
                return await self._on_delete(request)
            elif request.method and str(request.method.value).upper() == "PUT":
                self._refuse(405, "MethodNotAllowed", "this test API server takes PATCH, not PUT")
        return await super()._handle(request)

    def _on_create(self, request: Any) -> None:
        obj = request.data
        meta = obj.setdefault("metadata", {})
        ns = request.namespace or meta.get("namespace")
        if ns:
            meta["namespace"] = ns
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        key = self._key(request, meta.get("name"), ns)
        if self._current(key) is not None:
            return  # kmock answers 409
        if obj.get("kind") == "Secret" and "stringData" in obj:
            import base64

            # the API server stores stringData as base64 data and never returns it
            data = obj.setdefault("data", {})
            for k, v in obj.pop("stringData").items():
                data[k] = base64.b64encode(v.encode()).decode()
        meta.update(
            uid=str(uuid.uuid4()),
            resourceVersion=str(next(self._rv)),
            creationTimestamp=now_rfc3339(),
            generation=1,
        )
        self._check(obj, f"{obj.get('kind')} {meta.get('name')}")

    def _on_patch(self, request: Any) -> None:
        from kmock._internal import dicts

        key = self._key(request)
        old = self._current(key)
        if old is None:
            return  # kmock answers 404
        patch = request.data
        expected = (patch.get("metadata") or {}).get("resourceVersion")
        if expected and expected != old["metadata"].get("resourceVersion"):
            # optimistic concurrency, as the API server does it
            self._refuse(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {request.resource.plural} "{request.name}": '
                "the object has been modified; please apply your changes to the latest version",
            )
        merged = dicts.patch_dict(copy.deepcopy(old), copy.deepcopy(patch))
        meta = patch.setdefault("metadata", {})
        meta["resourceVersion"] = str(next(self._rv))
        if request.subresource != "status" and merged.get("spec") != old.get("spec"):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        merged["metadata"].update(
            resourceVersion=meta["resourceVersion"],
            generation=meta.get("generation", merged["metadata"].get("generation")),
        )
        self._check(merged, f"{old.get('kind')} {request.name}")

    async def _on_delete(self, request: Any) -> Any:
        key = self._key(request)
        obj = self._current(key)
        if obj is None:
            self._refuse(404, "NotFound", f'{request.resource.plural} "{request.name}" not found')
        body = request.data if isinstance(request.data, dict) else {}
        policy = request.params.get("propagationPolicy") or body.get("propagationPolicy")
        if policy is None and request.resource.plural == "jobs":
            policy = "Orphan"  # batch/v1's default, kept for compatibility
        self.deletions.append((request.resource.plural, request.name, policy))
        if policy in _DELETE_DEPENDENTS:
            uid = obj["metadata"]["uid"]
            for dkey, dobj in list(self.objects.items()):
                if dobj.deleted:
                    continue
                owners = dobj.raw.get("metadata", {}).get("ownerReferences") or []
                if any(o.get("uid") == uid for o in owners):
                    dobj.delete()
                    await self._buses[dkey[0]].put({"type": "DELETED", "object": obj})
        self.objects[key].delete()
        import aiohttp.web

        return aiohttp.web.json_response(obj)

    @property
    def deletions(self) -> list[tuple[str, str, str | None]]:
        if not hasattr(self, "_deletions"):
            self._deletions: list[tuple[str, str, str | None]] = []
        return self._deletions

    async def _serve_list(self, request: Any) -> Any:
        payload = await super()._serve_list(request)
        labels = request.params.get("labelSelector")
        fields = request.params.get("fieldSelector")
        items = payload["items"]
        if labels:
            items = [
                o
                for o in items
                if _selector_matches(o.get("metadata", {}).get("labels") or {}, labels)
            ]
        if fields:
            items = [o for o in items if _field_matches(o, fields)]
        return {**payload, "items": items}

    async def _serve_log(self, request: Any) -> Any:
        """Pod logs, answered here as raw aiohttp responses (text, or a stream when
        following) rather than through kmock's JSON rendering."""
        import aiohttp.web

        if self._current(self._key(request)) is None:
            self._refuse(404, "NotFound", f'pods "{request.name}" not found')
        entry = self.logs.get((request.namespace, request.name))
        if entry is None:
            self._refuse(
                400,
                "BadRequest",
                f'container "trainer" in pod "{request.name}" is waiting to start',
            )
        p = request.params
        stamps = p.get("timestamps") == "true"
        tail = int(p["tailLines"]) if "tailLines" in p else None
        since = float(p["sinceSeconds"]) if "sinceSeconds" in p else None

        def render(ts: str, line: str) -> bytes:
            return f"{ts} {line}\n".encode() if stamps else f"{line}\n".encode()

        def selected() -> list[tuple[str, str]]:
            lines = list(entry.lines)
            if since is not None:
                cutoff = time.time() - since
                lines = [
                    (ts, line)
                    for ts, line in lines
                    if datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ")
                    .replace(tzinfo=UTC)
                    .timestamp()
                    >= cutoff
                ]
            return lines[-tail:] if tail is not None else lines

        if p.get("follow") != "true":
            body = b"".join(render(ts, line) for ts, line in selected())
            return aiohttp.web.Response(body=body, content_type="text/plain")

        resp = aiohttp.web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request._raw_request)
        for ts, line in selected():
            await resp.write(render(ts, line))
        sent = len(entry.lines)
        while True:
            if len(entry.lines) > sent:
                for ts, line in entry.lines[sent:]:
                    await resp.write(render(ts, line))
                sent = len(entry.lines)
            elif entry.done or self._current(self._key(request)) is None:
                break
            else:
                await asyncio.sleep(0.05)
        await resp.write_eof()
        return resp


class Cluster:
    """The emulator on a loopback port, served from its own thread and event loop."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.server: ApiServer | None = None
        self.url = ""
        self._thread = threading.Thread(target=self._main, name="k8s-api", daemon=True)

    def _main(self) -> None:
        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            async with ApiServer() as server, kmock.Server(server) as srv:
                self.server = server
                self.url = str(srv.url).rstrip("/")
                self._ready.set()
                await self._stop.wait()

        asyncio.run(serve())

    def __enter__(self) -> Cluster:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the Kubernetes API emulator did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the server's loop (the only thread that may touch its state)."""
        assert self._loop is not None

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=30)

    def api_client(self) -> Any:
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        return client.ApiClient(cfg)

    def deny(self, verb: str, resource: str) -> None:
        self.call(lambda: self.server.denied.add((verb, resource)))

    def append_log(self, namespace: str, pod: str, line: str) -> None:
        def add() -> None:
            entry = self.server.logs.setdefault((namespace, pod), _Log())
            entry.lines.append((_log_ts(), line))

        self.call(add)

    def end_log(self, namespace: str, pod: str) -> None:
        def done() -> None:
            self.server.logs.setdefault((namespace, pod), _Log()).done = True

        self.call(done)

    @property
    def deletions(self) -> list[tuple[str, str, str | None]]:
        return self.call(lambda: list(self.server.deletions))

    @property
    def rejected(self) -> list[tuple[str, str]]:
        return self.call(lambda: list(self.server.rejected))

    def requests(self) -> list[tuple[str, str, dict]]:
        """(method, path, body) of every request so far."""

        def collect() -> list[tuple[str, str, dict]]:
            out = []
            for r in self.server:  # kmock iterates the requests it has served
                out.append((str(r.method.value).upper(), r.url.path if r.url else "", r.data))
            return out

        return self.call(collect)


# --------------------------------------------------------------------------- controllers
@dataclass
class Fate:
    """What the kubelet does with one pod. ``run``: run its command for real; the other
    kinds give it the scripted status a real cluster would."""

    kind: str = "run"  # run | oom | evict | image_pull | unschedulable | exit
    exit_code: int = 1
    # for evict: SIGTERM the running process once a log line contains this
    evict_after: str | None = None
    lines: list[str] = field(default_factory=list)


class JobController(threading.Thread):
    """The Job controller and a one-node kubelet, over the API (see module docstring)."""

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
        from kubernetes import client

        self.cluster = cluster
        self.namespace = namespace
        self.api = cluster.api_client()
        self.batch = client.BatchV1Api(self.api)
        self.core = client.CoreV1Api(self.api)
        self.fates = list(fates or [])
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="kubelet-"))
        self.extra_env = extra_env or {}
        self.tick = tick
        self.stop_event = threading.Event()
        # while held, no pod starts (a test changes the world between submit and start)
        self.released = threading.Event()
        if not hold:
            self.released.set()
        self.procs: dict[str, subprocess.Popen] = {}
        self.pod_fates: dict[str, Fate] = {}
        self.started: dict[str, float] = {}
        self.grace_exits: dict[str, float] = {}  # pod -> seconds from SIGTERM to exit
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []

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

    def _patch_pod_status(self, name: str, status: dict[str, Any]) -> None:
        self.core.patch_namespaced_pod_status(
            name, self.namespace, {"status": status}, _content_type="application/merge-patch+json"
        )

    def _patch_job_status(self, name: str, status: dict[str, Any]) -> None:
        self.batch.patch_namespaced_job_status(
            name, self.namespace, {"status": status}, _content_type="application/merge-patch+json"
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
                self._reap_deleted_pods()
                self.stop_event.wait(self.tick)
        except BaseException as e:  # surfaced by the test through .errors
            if not self.stop_event.is_set():
                self.errors.append(e)
                raise

    def _terminal(self, job: dict[str, Any]) -> bool:
        return any(
            c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
            for c in job.get("status", {}).get("conditions") or []
        )

    def _finish(self, job: dict[str, Any], kind: str, reason: str, message: str) -> None:
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
        self._patch_job_status(job["metadata"]["name"], status)

    def _sync(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        spec = job["spec"]
        if self._terminal(job) or spec.get("suspend"):
            return
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
                self._kill(p["metadata"]["name"])
                self.core.delete_namespaced_pod(p["metadata"]["name"], self.namespace)
            self._finish(
                job, "Failed", "DeadlineExceeded", "Job was active longer than specified deadline"
            )
            return
        if succeeded and not active:
            self._patch_job_status(name, {"succeeded": len(succeeded)})
            self._finish(
                job, "Complete", "CompletionsReached", "Reached expected number of succeeded pods"
            )
            return
        counted = 0
        for p in failed:
            action, message = self._policy(spec, p)
            if action == "FailJob":
                self._finish(job, "Failed", "PodFailurePolicy", message)
                return
            if action != "Ignore":
                counted += 1
        if counted > spec.get("backoffLimit", 6):
            self._finish(
                job, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"
            )
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

    def _policy(self, spec: dict[str, Any], pod: dict[str, Any]) -> tuple[str, str]:
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
        self.core.create_namespaced_pod(self.namespace, pod)
        fate = self.fates.pop(0) if self.fates else Fate()
        self.pod_fates[name] = fate
        t = threading.Thread(target=self._kubelet, args=(name, pod, fate), daemon=True)
        self._threads.append(t)
        t.start()

    # -- the kubelet ----------------------------------------------------------------
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

    def _container_status(self, state: dict[str, Any], image: str) -> list[dict[str, Any]]:
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

    def _run_pod(self, name: str, pod: dict[str, Any], fate: Fate) -> None:
        container = pod["spec"]["containers"][0]
        image = container["image"]
        ts = now_rfc3339()
        if fate.kind == "unschedulable":
            self._patch_pod_status(
                name,
                {
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
                },
            )
            return
        if fate.kind == "image_pull":
            self._patch_pod_status(
                name,
                {
                    "phase": "Pending",
                    "containerStatuses": self._container_status(
                        {
                            "waiting": {
                                "reason": "ImagePullBackOff",
                                "message": f'Back-off pulling image "{image}"',
                            }
                        },
                        image,
                    ),
                },
            )
            return
        self._patch_pod_status(
            name,
            {
                "phase": "Running",
                "startTime": ts,
                "containerStatuses": self._container_status({"running": {"startedAt": ts}}, image),
            },
        )
        self.cluster.append_log(self.namespace, name, "")  # the container started: logs exist
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

    def _env(self, container: dict[str, Any], home: Path) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
            "LANG": "C.UTF-8",
        }
        for e in container.get("env") or []:
            if "value" in e:
                env[e["name"]] = e["value"]
                continue
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                try:
                    secret = self._d(self.core.read_namespaced_secret(ref["name"], self.namespace))
                except Exception:
                    if ref.get("optional"):
                        continue
                    raise
                data = secret.get("stringData") or {}
                if ref["key"] in data:
                    env[e["name"]] = data[ref["key"]]
                elif ref["key"] in (secret.get("data") or {}):
                    import base64

                    env[e["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
                elif not ref.get("optional"):
                    raise KeyError(f"secret {ref['name']} has no key {ref['key']}")
        env.update(HOME=str(home), TMPDIR=str(home / "tmp"))
        env.update(self.extra_env)
        return env

    def _run_process(
        self, name: str, pod: dict[str, Any], container: dict[str, Any], fate: Fate
    ) -> None:
        home = self.workdir / name
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable if c == "python" else c for c in container["command"]]
        proc = subprocess.Popen(
            cmd,
            cwd=home,
            env=self._env(container, home),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.procs[name] = proc
        grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
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
        rc = proc.wait()
        if sigterm_at is not None:
            self.grace_exits[name] = time.monotonic() - sigterm_at
        self.cluster.end_log(self.namespace, name)
        if self._gone(name):
            return
        if fate.kind == "evict" and sigterm_at is not None:
            ts = now_rfc3339()
            self._patch_pod_status(
                name,
                {
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
                    "containerStatuses": self._container_status(
                        {
                            "terminated": {
                                "exitCode": rc if rc >= 0 else 128 - rc,
                                "reason": "Error",
                                "finishedAt": ts,
                            }
                        },
                        container["image"],
                    ),
                },
            )
            return
        code = rc if rc >= 0 else 128 - rc
        self._terminate(name, container["image"], code, "Completed" if code == 0 else "Error")

    def _terminate(self, name: str, image: str, code: int, reason: str) -> None:
        self.cluster.end_log(self.namespace, name)
        ts = now_rfc3339()
        self._patch_pod_status(
            name,
            {
                "phase": "Succeeded" if code == 0 else "Failed",
                "containerStatuses": self._container_status(
                    {"terminated": {"exitCode": code, "reason": reason, "finishedAt": ts}}, image
                ),
            },
        )

    def _gone(self, name: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.read_namespaced_pod(name, self.namespace)
            return False
        except ApiException as e:
            if e.status == 404:
                return True
            raise

    def _kill(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)

    def _reap_deleted_pods(self) -> None:
        """A deleted pod's process gets SIGTERM, as the kubelet sends it."""
        for name, proc in list(self.procs.items()):
            if proc.poll() is None and self._gone(name):
                proc.send_signal(signal.SIGTERM)

    def close(self) -> None:
        self.stop_event.set()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        self.join(timeout=10)
        for t in self._threads:
            t.join(timeout=10)


class DeploymentController(threading.Thread):
    """The Deployment controller and its pods, over the API: a template ``healthy``
    accepts becomes available on every replica (``on_template`` may first bring it up
    for real); any other gets one new pod whose init container keeps failing, and the
    old replicas stay available (``maxUnavailable: 0``)."""

    def __init__(
        self,
        cluster: Cluster,
        namespace: str,
        healthy: Callable[[dict[str, Any]], bool],
        tick: float = 0.1,
    ) -> None:
        super().__init__(name="deployment-controller", daemon=True)
        from kubernetes import client

        self.api = cluster.api_client()
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
        gen = d["metadata"].get("generation", 1)
        status = d.get("status") or {}
        if status.get("observedGeneration") == gen:
            return
        name, want = d["metadata"]["name"], d["spec"].get("replicas", 1)
        template = d["spec"]["template"]
        self.templates.append(copy.deepcopy(template))
        labels = template["metadata"]["labels"]
        selector = ",".join(f"{k}={v}" for k, v in d["spec"]["selector"]["matchLabels"].items())
        for pod in (
            self.api.sanitize_for_serialization(
                self.core.list_namespaced_pod(self.namespace, label_selector=selector)
            ).get("items")
            or []
        ):
            self.core.delete_namespaced_pod(pod["metadata"]["name"], self.namespace)
        ts = now_rfc3339()
        if self.healthy(template):
            new = {
                "observedGeneration": gen,
                "replicas": want,
                "updatedReplicas": want,
                "readyReplicas": want,
                "availableReplicas": want,
                "unavailableReplicas": None,
                "conditions": [
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
                        "reason": "NewReplicaSetAvailable",
                        "lastUpdateTime": ts,
                        "lastTransitionTime": ts,
                    },
                ],
            }
        else:
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
                {
                    "status": {
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
                },
                _content_type="application/merge-patch+json",
            )
            new = {
                "observedGeneration": gen,
                "replicas": want + 1,
                "updatedReplicas": 1,
                "readyReplicas": want,
                "availableReplicas": want,
                "unavailableReplicas": 1,
                "conditions": [
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
                        "reason": "ReplicaSetUpdated",
                        "lastUpdateTime": ts,
                        "lastTransitionTime": ts,
                    },
                ],
            }
        self.apps.patch_namespaced_deployment_status(
            name, self.namespace, {"status": new}, _content_type="application/merge-patch+json"
        )

    def close(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)


def job_from_requests(cluster: Cluster) -> dict[str, Any]:
    """The Job body our code POSTed."""
    for method, path, body in cluster.requests():
        if method == "POST" and path.endswith("/jobs"):
            return body
    raise AssertionError("no Job was created")


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
