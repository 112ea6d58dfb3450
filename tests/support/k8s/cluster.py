"""``Cluster``: the API server on a loopback port, served from its own thread and event
loop, with what tests do to it from outside (deny a verb, write a pod's log, read what
was requested, deleted or refused)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from typing import Any

import kmock

from .api_server import ApiServer
from .logs import PodLog, log_ts
from .rbac import ADMIN, PIPELINE, Rbac, shipped, token


class Cluster:
    """The emulator on a loopback port, served from its own thread and event loop."""

    def __init__(self, rbac: Rbac | str | None = "shipped") -> None:
        """``rbac``: the RBAC requests are authorized against; by default the Roles the
        rendered overlay ships (rbac.py), None to authorize every authenticated request."""
        self._rbac = shipped() if rbac == "shipped" else rbac
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
                server.rbac = self._rbac
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

    def api_client(self, as_: str = PIPELINE) -> Any:
        """An official-client ``ApiClient`` pointed at this cluster, sending the token of
        service account ``as_``: the pipeline's, what the code under test runs as."""
        from kubernetes import client  # the optional client, as in the adapters

        cfg = client.Configuration()
        cfg.host = self.url
        cfg.api_key = {"authorization": token(as_)}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(cfg)

    def admin_client(self) -> Any:
        """A client with every permission: the test's own setup and checks, the controllers."""
        return self.api_client(as_=ADMIN)

    @property
    def forbidden(self) -> list[tuple[str, str, str, str | None]]:
        """(user, verb, resource, name) of every request refused for lack of a Role."""
        assert self.server is not None
        return list(self.server.forbidden)

    def deny(self, verb: str, resource: str) -> None:
        """Answer 403 to ``verb`` on ``resource`` (``"jobs"`` or ``"jobs/status"``) from now on."""
        self.call(lambda: self.server.denied.add((verb, resource)))

    def append_log(self, namespace: str, pod: str, line: str) -> None:
        def add() -> None:
            entry = self.server.logs.setdefault((namespace, pod), PodLog())
            entry.lines.append((log_ts(), line))

        self.call(add)

    def end_log(self, namespace: str, pod: str) -> None:
        def done() -> None:
            self.server.logs.setdefault((namespace, pod), PodLog()).done = True

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


def job_from_requests(cluster: Cluster) -> dict[str, Any]:
    """The Job body our code POSTed."""
    for method, path, body in cluster.requests():
        if method == "POST" and path.endswith("/jobs"):
            return body
    raise AssertionError("no Job was created")


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
