"""Pod logs as the API server serves them (``pods/<name>/log``): plain text, or a stream
while following, with ``timestamps``, ``tailLines`` and ``sinceSeconds``. The kubelet
(or a test) appends lines through ``Cluster.append_log``; the server only reads them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp.web

LOG_TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


@dataclass
class PodLog:
    """One container's log: (timestamp, line) pairs, and whether the container ended."""

    lines: list[tuple[str, str]] = field(default_factory=list)
    done: bool = False


def log_ts() -> str:
    return datetime.now(UTC).strftime(LOG_TS_FORMAT)


def _selected(entry: PodLog, tail: int | None, since: float | None) -> list[tuple[str, str]]:
    """The lines ``sinceSeconds`` and ``tailLines`` keep, oldest first."""
    lines = list(entry.lines)
    if since is not None:
        cutoff = time.time() - since
        lines = [
            (ts, line)
            for ts, line in lines
            if datetime.strptime(ts, LOG_TS_FORMAT).replace(tzinfo=UTC).timestamp() >= cutoff
        ]
    return lines[-tail:] if tail is not None else lines


async def serve_log(
    request: Any, entry: PodLog, pod_exists: Callable[[], bool]
) -> aiohttp.web.StreamResponse:
    """Answer a log request as a raw aiohttp response (text, or a stream when following)
    rather than through kmock's JSON rendering. A followed stream ends when the
    container ends or the pod is deleted (``pod_exists`` turns false)."""
    p = request.params
    stamps = p.get("timestamps") == "true"
    tail = int(p["tailLines"]) if "tailLines" in p else None
    since = float(p["sinceSeconds"]) if "sinceSeconds" in p else None

    def render(ts: str, line: str) -> bytes:
        return f"{ts} {line}\n".encode() if stamps else f"{line}\n".encode()

    if p.get("follow") != "true":
        body = b"".join(render(ts, line) for ts, line in _selected(entry, tail, since))
        return aiohttp.web.Response(body=body, content_type="text/plain")

    resp = aiohttp.web.StreamResponse(headers={"Content-Type": "text/plain"})
    await resp.prepare(request._raw_request)
    for ts, line in _selected(entry, tail, since):
        await resp.write(render(ts, line))
    sent = len(entry.lines)
    while True:
        if len(entry.lines) > sent:
            for ts, line in entry.lines[sent:]:
                await resp.write(render(ts, line))
            sent = len(entry.lines)
        elif entry.done or not pod_exists():
            break
        else:
            await asyncio.sleep(0.05)
    await resp.write_eof()
    return resp
