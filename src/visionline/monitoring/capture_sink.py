"""Where the serving worker's capture records go: a bounded in-memory queue that a
background thread empties into the artifact store as Parquet.

A request never waits for the store and never fails because of it: when the queue is
full (the store is slow or down) the record is dropped, and dropped records are counted
and logged. Memory is bounded: at most ``queue_size`` records and ``max_queue_mb`` of
them (images count by their size), the batch being written included.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import itertools
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from visionline.storage import ArtifactStore, S3Store, open_store

log = logging.getLogger(__name__)


def open_capture_store(uri: str) -> ArtifactStore:
    """A store for background writes: on S3, short timeouts and few retries, since a
    write that gives up only drops records, and a flusher stuck in retries would hold
    a batch in memory for minutes."""
    if uri.startswith("s3://"):
        # boto3 only when captures go to S3: a worker writing to a local store never needs it
        import boto3
        from botocore.config import Config

        client = boto3.session.Session().client(
            "s3",
            config=Config(
                retries={"mode": "standard", "max_attempts": 2},
                connect_timeout=2,
                read_timeout=10,
            ),
        )
        return S3Store(uri, client=client)
    return open_store(uri)


_WAKE = object()


def close_on_sigterm(sink: CaptureSink, timeout: float = 5.0) -> bool:
    """Write what ``sink`` holds before SIGTERM ends this process, then end it as the
    signal would have (or as the handler installed before this one does).

    A stopping worker otherwise loses every record still queued, up to a flush interval
    of them: in the pod, tini (``-g``) sends SIGTERM to the JVM and the workers alike
    and Python's default action exits at once, skipping ``atexit``. Only the main
    thread may install a handler: elsewhere this does nothing and returns False."""
    if threading.current_thread() is not threading.main_thread():
        return False
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        sink.close(timeout)
        if callable(previous):
            previous(signum, frame)
            return
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)
    return True


class CaptureSink:
    """A bounded queue of records and one background thread writing them as Parquet.

    ``offer`` never blocks: it returns False (and counts the record as dropped) when the
    queue is full, in records or in bytes (an image counts by its size, a record without
    one as ``RECORD_BYTES``; the batch being written still counts until it is written). The thread writes a file per ``flush_records`` records or every
    ``flush_interval_s``; a failed write drops its batch (counted, logged) and the next
    attempt waits a growing back-off, so a store that is down is not hammered.
    """

    def __init__(
        self,
        store: ArtifactStore | Callable[[], ArtifactStore],
        prefix: str,
        queue_size: int = 4096,
        flush_records: int = 512,
        flush_interval_s: float = 10.0,
        max_bytes: int = 64 * 1024 * 1024,
        log_every_s: float = 60.0,
    ) -> None:
        self._store_factory = store if callable(store) else (lambda: store)
        self._store: ArtifactStore | None = None
        self.prefix = prefix.rstrip("/")
        self.flush_records = flush_records
        self.flush_interval_s = flush_interval_s
        self.log_every_s = log_every_s
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.max_bytes = max_bytes
        self._bytes = 0  # of the records queued or being written
        self._bytes_lock = threading.Lock()
        self._stop = threading.Event()
        self._flush_requested = threading.Event()
        self._flushed = threading.Condition()
        self._generation = 0
        self._seq = itertools.count()
        self.offered = 0
        self.dropped_full = 0
        self.dropped_store = 0
        self.written = 0
        self.files: list[str] = []
        self.last_error: str | None = None
        self._reported = (0, 0)
        self._thread = threading.Thread(target=self._run, name="capture-flusher", daemon=True)
        self._thread.start()
        atexit.register(self.close, 5.0)

    # -- the request path: never blocks ------------------------------------------------
    def offer(self, record: dict[str, Any]) -> bool:
        self.offered += 1
        size = _size(record)
        with self._bytes_lock:
            if self._bytes + size > self.max_bytes:
                self.dropped_full += 1
                return False
            self._bytes += size
        try:
            self._queue.put_nowait(record)
            return True
        except queue.Full:
            with self._bytes_lock:
                self._bytes -= size
            self.dropped_full += 1
            return False

    @property
    def dropped(self) -> int:
        return self.dropped_full + self.dropped_store

    def stats(self) -> dict[str, Any]:
        return {
            "offered": self.offered,
            "written": self.written,
            "dropped_queue_full": self.dropped_full,
            "dropped_store_error": self.dropped_store,
            "queued": self._queue.qsize(),
            "queued_bytes": self._bytes,
            "files": len(self.files),
            "last_error": self.last_error,
        }

    # -- control ----------------------------------------------------------------------
    def flush(self, timeout: float = 30.0) -> bool:
        """Write what is queued now; True when done within ``timeout``."""
        with self._flushed:
            target = self._generation + 1
            self._flush_requested.set()
            with contextlib.suppress(queue.Full):  # then the flusher is busy anyway
                self._queue.put_nowait(_WAKE)
            return self._flushed.wait_for(lambda: self._generation >= target, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (within ``timeout``) and stop the thread."""
        if self._stop.is_set():
            return
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_WAKE)
        self._thread.join(timeout)

    # -- the background thread ----------------------------------------------------------
    def _run(self) -> None:
        pending: list[dict] = []
        deadline = time.monotonic() + self.flush_interval_s
        backoff = 0.0
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                if item is not _WAKE:
                    pending.append(item)
                while len(pending) < self.flush_records:
                    item = self._queue.get_nowait()
                    if item is not _WAKE:
                        pending.append(item)
            except queue.Empty:
                pass
            now = time.monotonic()
            stopping = self._stop.is_set()
            flush_now = self._flush_requested.is_set()
            due = now >= deadline
            if pending and (len(pending) >= self.flush_records or due or stopping or flush_now):
                if backoff and not stopping:
                    self._stop.wait(backoff)
                ok = self._write(pending)
                backoff = 0.0 if ok else min(30.0, max(1.0, backoff * 2))
                with self._bytes_lock:
                    self._bytes -= sum(_size(r) for r in pending)
                pending = []
            if due:
                self._report()
                deadline = time.monotonic() + self.flush_interval_s
            if flush_now and self._queue.empty() and not pending:
                self._flush_requested.clear()
                with self._flushed:
                    self._generation += 1
                    self._flushed.notify_all()
            if stopping and self._queue.empty() and not pending:
                self._report()
                with self._flushed:
                    self._generation += 1
                    self._flushed.notify_all()
                return

    def _write(self, records: list[dict]) -> bool:
        try:
            if self._store is None:
                self._store = self._store_factory()
            by_day: dict[date, list[dict]] = {}
            for r in records:
                by_day.setdefault(r["time"].date(), []).append(r)
            for day, rows in by_day.items():
                key = (
                    f"{self.prefix}/{day.isoformat()}/"
                    f"{datetime.now(UTC):%H%M%S%f}-{os.getpid()}-{next(self._seq):06d}.parquet"
                )
                self._store.put_bytes(key, records_to_parquet(rows))
                self.written += len(rows)
                self.files.append(key)
            return True
        except Exception as e:  # the store is down or refuses: drop, count, go on
            self.dropped_store += len(records)
            self.last_error = f"{type(e).__name__}: {e}"
            self._report(force=self.dropped_store == len(records))
            return False

    def _report(self, force: bool = False) -> None:
        now = (self.dropped_full, self.dropped_store)
        if now == self._reported:
            return
        last = getattr(self, "_reported_at", 0.0)
        if not force and time.monotonic() - last < self.log_every_s:
            return
        self._reported_at = time.monotonic()
        log.warning(
            "capture: %d records dropped so far (%d queue full, %d store errors) of %d offered; "
            "last store error: %s",
            self.dropped,
            self.dropped_full,
            self.dropped_store,
            self.offered,
            self.last_error,
        )
        self._reported = now


RECORD_BYTES = 1024  # a record without its image: a few dozen numbers and strings


def _size(record: dict[str, Any]) -> int:
    return RECORD_BYTES + len(record.get("image") or b"")


def records_to_parquet(records: list[dict]) -> bytes:
    fields = []
    for name in records[0]:
        if name == "time":
            t = pa.timestamp("us", tz="UTC")
        elif name == "embedding":
            t = pa.list_(pa.float32())
        elif name == "image":
            t = pa.binary()
        elif name in ("request_id", "model", "model_version", "label"):
            t = pa.string()
        elif name in ("width", "height", "label_index"):
            t = pa.int64()
        else:
            t = pa.float64()
        fields.append(pa.field(name, t))
    table = pa.Table.from_pylist(records, schema=pa.schema(fields))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()
