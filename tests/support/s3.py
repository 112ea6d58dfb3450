"""Real S3 for tests: moto's server mode over HTTP, plus a fault-injecting proxy."""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FaultProxy:
    """Forwards HTTP to ``upstream`` but answers the first ``fail_first`` requests with
    ``status`` (503 SlowDown by default), like an overloaded S3 endpoint; ``delay_s``
    adds a round trip to every request, like a real network.

    ``fail_after=N`` fails every request after the first N instead (an endpoint that
    goes away midway), counting only the HTTP ``methods`` given (all by default);
    ``code`` is the S3 error code in the answer (SlowDown is retried by clients,
    AccessDenied is not)."""

    def __init__(
        self,
        upstream: str,
        fail_first: int = 2,
        status: int = 503,
        delay_s: float = 0.0,
        fail_after: int | None = None,
        methods: tuple[str, ...] | None = None,
        code: str = "SlowDown",
        serialize: bool = False,
    ) -> None:
        self.upstream = urlsplit(upstream)
        # moto checks a conditional write's precondition and stores the object in two
        # steps; S3 does both atomically. Serialising requests restores S3's guarantee, so
        # a concurrency test exercises our code and not a gap in the emulator.
        self._serial = threading.Lock() if serialize else None
        self.delay_s = delay_s  # added to every request: a network round trip
        self.remaining = fail_first
        self.fail_after = fail_after
        self.methods = methods
        self.status = status
        self.code = code
        self.requests = 0
        self.counted = 0
        self.failed = 0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _ProxyHandler)
        self.server.proxy = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def should_fail(self, method: str) -> bool:
        """Count one request; whether it is to be answered with the injected error."""
        with self._lock:
            self.requests += 1
            fail = self.remaining > 0
            if fail:
                self.remaining -= 1
            if self.methods is None or method in self.methods:
                self.counted += 1
                if self.fail_after is not None and self.counted > self.fail_after:
                    fail = True
            if fail:
                self.failed += 1
        return fail

    def fault(self) -> bytes:
        """The injected error's body, as S3 words one."""
        return (
            f"<?xml version='1.0'?><Error><Code>{self.code}</Code>"
            "<Message>Injected by FaultProxy.</Message></Error>"
        ).encode()

    def forward(
        self, method: str, path: str, body: bytes, headers: list[tuple[str, str]]
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """The request sent upstream: (status, headers, body) of the answer."""
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        upstream_headers = {k: v for k, v in headers if k.lower() != "host"}
        upstream_headers["Host"] = self.upstream.netloc
        try:
            with self._serial or contextlib.nullcontext():
                conn.request(method, path, body=body, headers=upstream_headers)
                resp = conn.getresponse()
                data = resp.read()
            return resp.status, resp.getheaders(), data
        finally:
            conn.close()


class _ProxyHandler(BaseHTTPRequestHandler):
    """One request through the FaultProxy that serves it (``self.server.proxy``)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *a: object) -> None:
        pass

    def _any(self) -> None:
        proxy: FaultProxy = self.server.proxy  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        fail = proxy.should_fail(self.command)
        if proxy.delay_s:
            time.sleep(proxy.delay_s)
        if fail:
            payload = proxy.fault()
            self.send_response(proxy.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        status, headers, data = proxy.forward(self.command, self.path, body, self.headers.items())
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any
