"""Request capture in the serving worker, and reading captures back by time window.

The worker samples requests (``monitor.sample_rate``) and describes each sampled one
with the statistics the reference has (``visionline.monitoring.features``), from the
batch it already decoded and the forward pass it already ran. A record is handed to a
``CaptureSink``: a bounded in-memory queue that a background thread empties into the
artifact store as Parquet,

    captures/<model>/<version>/<YYYY-MM-DD>/<HHMMSSffffff>-<pid>-<seq>.parquet

A request never waits for the store and never fails because of it: when the queue is
full (the store is slow or down) the record is dropped, and dropped records are counted
and logged. Memory is bounded: at most ``queue_size`` records and ``max_queue_mb`` of
them (images count by their size), the batch being written included.

Settings travel in the archive (``monitor.json``); the serving environment may
override two of them: ``VISIONLINE_CAPTURE_STORE`` (a store URI, or ``off``) and
``VISIONLINE_CAPTURE_SAMPLE_RATE``.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import itertools
import json
import logging
import os
import queue
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from visionline.config import PipelineConfig
from visionline.data.transforms import Preprocessing
from visionline.model.predictor import FeatureTap
from visionline.monitoring.features import describe_batch
from visionline.monitoring.reference import MonitoringError, ensure_projection
from visionline.storage import ArtifactStore, open_store

log = logging.getLogger(__name__)

MONITOR_FILE = "monitor.json"
PROJECTION_FILE = "projection.npy"
STORE_ENV = "VISIONLINE_CAPTURE_STORE"
RATE_ENV = "VISIONLINE_CAPTURE_SAMPLE_RATE"
REQUEST_ID_HEADER = "x-request-id"


@dataclass(frozen=True)
class CaptureSettings:
    sample_rate: float
    capture_images: bool
    store: str | None  # None or "off": capture disabled
    queue_size: int
    flush_records: int
    flush_interval_s: float
    max_queue_mb: float = 64.0  # archives packaged before the setting get the default

    @classmethod
    def from_config(cls, cfg: PipelineConfig, store_uri: str) -> CaptureSettings:
        m = cfg.monitor
        return cls(
            m.sample_rate,
            m.capture_images,
            m.store or store_uri,
            m.queue_size,
            m.flush_records,
            m.flush_interval_s,
            m.max_queue_mb,
        )

    def with_environment(self, env: dict[str, str]) -> CaptureSettings:
        out = self
        if env.get(STORE_ENV):
            out = replace(out, store=env[STORE_ENV])
        if env.get(RATE_ENV):
            rate = float(env[RATE_ENV])
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{RATE_ENV}={env[RATE_ENV]}: must be within [0, 1]")
            out = replace(out, sample_rate=rate)
        return out

    @property
    def enabled(self) -> bool:
        return self.sample_rate > 0 and bool(self.store) and self.store != "off"


def write_archive_files(
    store: ArtifactStore, run_id: str, cfg: PipelineConfig, dest: Path
) -> list[Path]:
    """The files the serving worker's capture reads from the archive: its settings and
    the run's embedding projection. Captures go to this store unless ``monitor.store``
    names another."""
    settings = CaptureSettings.from_config(cfg, store.uri)
    (dest / MONITOR_FILE).write_text(json.dumps(asdict(settings)))
    np.save(dest / PROJECTION_FILE, ensure_projection(store, run_id, cfg), allow_pickle=False)
    return [dest / MONITOR_FILE, dest / PROJECTION_FILE]


def capture_prefix(model: str, version: str | None = None) -> str:
    return f"captures/{model}/" + (f"{version}/" if version else "")


# --------------------------------------------------------------------------- the sink
def _open_capture_store(uri: str) -> ArtifactStore:
    """A store for background writes: on S3, short timeouts and few retries, since a
    write that gives up only drops records, and a flusher stuck in retries would hold
    a batch in memory for minutes."""
    if uri.startswith("s3://"):
        import boto3
        from botocore.config import Config

        from visionline.storage import S3Store

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
    import pyarrow as pa
    import pyarrow.parquet as pq

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


# --------------------------------------------------------------------------- the worker
class RequestCapture:
    """What the TorchServe handler calls: ``start`` after preprocessing a batch,
    ``finish`` with its class probabilities. Both catch everything: monitoring must not
    fail a request. Disabled (both return at once) when the archive has no monitoring
    files, the sample rate is 0 or the store is ``off``."""

    def __init__(
        self,
        settings: CaptureSettings,
        model: str,
        version: str,
        pre: Preprocessing,
        classes: dict[str, str],
        projection: np.ndarray | None = None,
        tap: FeatureTap | None = None,
        sink: CaptureSink | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.model = model
        self.version = version
        self.pre = pre
        self.classes = classes
        self.projection = torch.from_numpy(projection) if projection is not None else None
        self.tap = tap
        self.sink = sink
        self.rng = rng or random.Random()
        self._pending: tuple | None = None
        self.errors = 0

    @property
    def enabled(self) -> bool:
        return self.sink is not None

    @classmethod
    def disabled(cls) -> RequestCapture:
        return cls(CaptureSettings(0.0, False, None, 1, 1, 1.0), "", "", None, {})  # type: ignore[arg-type]

    @classmethod
    def for_worker(
        cls,
        model_dir: str | Path,
        context: Any,
        model: torch.nn.Module,
        pre: Preprocessing,
        env: dict[str, str] | None = None,
    ) -> RequestCapture:
        """Capture as the archive in ``model_dir`` says; disabled (and logged) when it
        cannot be set up, never an error that stops the worker."""
        model_dir = Path(model_dir)
        try:
            if not (model_dir / MONITOR_FILE).is_file():
                log.info("capture off: the archive has no %s", MONITOR_FILE)
                return cls.disabled()
            settings = CaptureSettings(**json.loads((model_dir / MONITOR_FILE).read_text()))
            settings = settings.with_environment(dict(os.environ if env is None else env))
            if not settings.enabled:
                log.info(
                    "capture off (sample rate %s, store %s)", settings.sample_rate, settings.store
                )
                return cls.disabled()
            meta = context.manifest["model"]
            name, version = meta["modelName"], str(meta.get("modelVersion", ""))
            classes = json.loads((model_dir / "index_to_name.json").read_text())
            projection = np.load(model_dir / PROJECTION_FILE, allow_pickle=False)
            uri = settings.store
            sink = CaptureSink(
                lambda: _open_capture_store(uri),
                capture_prefix(name, version),
                settings.queue_size,
                settings.flush_records,
                settings.flush_interval_s,
                int(settings.max_queue_mb * 1024 * 1024),
            )
            log.info(
                "capture on: %.1f%% of requests to %s/%s (images %s)",
                100 * settings.sample_rate,
                uri,
                capture_prefix(name, version),
                "kept" if settings.capture_images else "not kept",
            )
            return cls(settings, name, version, pre, classes, projection, FeatureTap(model), sink)
        except Exception as e:
            log.warning("capture off: cannot set it up (%s: %s)", type(e).__name__, e)
            return cls.disabled()

    def start(
        self,
        context: Any,
        rows: list[tuple[int, tuple[int, int], bytes]],
        batch: torch.Tensor,
    ) -> None:
        """``rows``: (request index, (width, height), payload) of each image in ``batch``."""
        self._pending = None
        if self.sink is None or not rows:
            return
        try:
            rate = self.settings.sample_rate
            chosen = [i for i in range(len(rows)) if self.rng.random() < rate]
            if chosen:
                self._pending = (context, rows, batch, chosen)
        except Exception as e:
            self._failed(e)

    def finish(self, probs: torch.Tensor) -> None:
        pending, self._pending = self._pending, None
        try:
            feats = self.tap.take() if self.tap is not None else None  # always: frees it
            if pending is None or self.sink is None:
                return
            context, rows, batch, chosen = pending
            idx = torch.tensor(chosen)
            if feats is not None and feats.shape[0] != batch.shape[0]:
                feats = None  # not the forward pass of this batch: record no embedding
            d = describe_batch(
                batch[idx],
                probs[idx],
                feats[idx] if feats is not None else None,
                self.pre,
                self.projection,
            )
            now = datetime.now(UTC)
            for j, i in enumerate(chosen):
                req, (w, h), payload = rows[i]
                rec: dict[str, Any] = {
                    "request_id": _request_id(context, req),
                    "time": now,
                    "model": self.model,
                    "model_version": self.version,
                    "width": int(w),
                    "height": int(h),
                    "label": self.classes.get(
                        str(int(d["label_index"][j])), str(int(d["label_index"][j]))
                    ),
                    "label_index": int(d["label_index"][j]),
                }
                for k, v in d.items():
                    if k not in ("label_index", "embedding"):
                        rec[k] = float(v[j])
                rec["embedding"] = d["embedding"][j].tolist() if "embedding" in d else None
                rec["image"] = payload if self.settings.capture_images else None
                self.sink.offer(rec)
        except Exception as e:
            self._failed(e)

    def _failed(self, e: Exception) -> None:
        self.errors += 1
        if self.errors == 1 or self.errors % 1000 == 0:
            log.warning(
                "capture: %d batches not captured; latest: %s: %s", self.errors, type(e).__name__, e
            )


def _request_id(context: Any, idx: int) -> str:
    """The client's X-Request-Id when it sent one (so it can send labels for it later),
    else TorchServe's own request id."""
    try:
        headers = context.get_all_request_header(idx) or {}
        for k, v in headers.items():
            if str(k).lower() == REQUEST_ID_HEADER and v:
                return (v.decode() if isinstance(v, bytes) else str(v))[:200]
    except Exception:
        pass
    rid = context.get_request_id(idx) if hasattr(context, "get_request_id") else None
    return str(rid) if rid else f"unknown-{os.getpid()}-{time.time_ns()}"


# --------------------------------------------------------------------------- windows
_RELATIVE = re.compile(r"^(?:now)?-(\d+(?:\.\d+)?)([mhd])$")


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """``now``, ``now-30m``/``now-6h``/``now-7d`` (or ``-6h``) relative to now, or an ISO
    date or time (UTC unless it names a zone)."""
    now = now or datetime.now(UTC)
    text = text.strip()
    if text == "now":
        return now
    m = _RELATIVE.match(text)
    if m:
        unit = {"m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return now - timedelta(**{unit: float(m.group(1))})
    try:
        t = datetime.fromisoformat(text)
    except ValueError as e:
        raise MonitoringError(
            f"bad time {text!r}: use an ISO time (2024-05-01T12:00), a date, 'now', "
            "or now-6h / now-7d"
        ) from e
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def parse_window(text: str, now: datetime | None = None) -> tuple[datetime, datetime]:
    """``START..END`` -> (start, end), end exclusive."""
    if ".." not in text:
        raise MonitoringError(f"bad window {text!r}: write START..END, e.g. now-24h..now")
    a, _, b = text.partition("..")
    start, end = parse_time(a, now), parse_time(b or "now", now)
    if end <= start:
        raise MonitoringError(f"bad window {text!r}: the end is not after the start")
    return start, end


def _days(start: datetime, end: datetime) -> list[str]:
    d, last = start.astimezone(UTC).date(), end.astimezone(UTC).date()
    out = []
    while d <= last:
        out.append(d.isoformat())
        d += timedelta(days=1)
    return out


def capture_keys(
    store: ArtifactStore,
    model: str,
    version: str | None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[str]:
    prefix = capture_prefix(model, version)
    if start is None or end is None or (end - start) > timedelta(days=62):
        keys = list(store.list(prefix))
    else:
        versions = (
            [version]
            if version
            else sorted({k.split("/")[2] for k in store.list(prefix) if k.count("/") >= 4})
        )
        keys = [
            k
            for v in versions
            for day in _days(start, end)
            for k in store.list(f"{capture_prefix(model, v)}{day}/")
        ]
    return [k for k in keys if k.endswith(".parquet")]


def read_captures(
    store: ArtifactStore,
    model: str,
    version: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    columns: list[str] | None = None,
) -> pd.DataFrame:
    """Captured records of ``model`` (one version, or all) with start <= time < end."""
    frames = []
    for key in capture_keys(store, model, version, start, end):
        frames.append(pd.read_parquet(io.BytesIO(store.get_bytes(key)), columns=columns))
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    if start is not None:
        df = df[df["time"] >= pd.Timestamp(start)]
    if end is not None:
        df = df[df["time"] < pd.Timestamp(end)]
    return df.sort_values("time", kind="stable").reset_index(drop=True)


def wait_for_captures(
    store: ArtifactStore,
    model: str,
    version: str | None,
    since: datetime,
    count: int,
    timeout: float = 60.0,
) -> int:
    """Poll until ``count`` records since ``since`` are in the store (the workers flush
    every ``monitor.flush_interval_s``); the number found when it returns."""
    deadline = time.monotonic() + timeout
    while True:
        n = len(read_captures(store, model, version, since, None, columns=["time"]))
        if n >= count or time.monotonic() > deadline:
            return n
        time.sleep(1.0)
