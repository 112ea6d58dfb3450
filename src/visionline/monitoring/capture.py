"""Request capture in the serving worker: what the TorchServe handler calls.

The worker samples requests (``monitor.sample_rate``) and describes each sampled one
with the statistics the reference has (``visionline.monitoring.features``), from the
batch it already decoded and the forward pass it already ran. A record is handed to a
``CaptureSink`` (``visionline.monitoring.capture_sink``), which writes it to the store
in the background; a request never waits for the store and never fails because of it.

The worker reads its settings and projection from the archive
(``visionline.monitoring.capture_settings``); captures are read back by window with
``visionline.monitoring.capture_windows``. This module and those it imports are what a
serving worker loads of monitoring: nothing here reads datasets or the reference.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionline.data.transforms import Preprocessing
from visionline.model.predictor import FeatureTap
from visionline.monitoring.capture_settings import (
    MONITOR_FILE,
    PROJECTION_FILE,
    CaptureSettings,
    capture_prefix,
)
from visionline.monitoring.capture_sink import CaptureSink, close_on_sigterm, open_capture_store
from visionline.monitoring.features import describe_batch

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"


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
                lambda: open_capture_store(uri),
                capture_prefix(name, version),
                settings.queue_size,
                settings.flush_records,
                settings.flush_interval_s,
                int(settings.max_queue_mb * 1024 * 1024),
            )
            close_on_sigterm(sink)
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
            chosen = [i for i in range(len(rows)) if self._sampled(context, rows[i][0])]
            if chosen:
                self._pending = (context, rows, batch, chosen)
        except Exception as e:
            self._failed(e)

    def _sampled(self, context: Any, idx: int) -> bool:
        """A request with a client id is sampled by a hash of the id, so every server
        that sees it (a rollout's champion and challenger) makes the same choice and
        their captures join; one without is sampled at random."""
        rate = self.settings.sample_rate
        if rate >= 1.0:
            return True
        rid = _client_request_id(context, idx)
        if rid is None:
            return self.rng.random() < rate
        return int(hashlib.sha256(rid.encode()).hexdigest()[:13], 16) / 16**13 < rate

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


def _client_request_id(context: Any, idx: int) -> str | None:
    """The X-Request-Id the request came with (the client's, or the one the front gave it)."""
    try:
        headers = context.get_all_request_header(idx) or {}
        for k, v in headers.items():
            if str(k).lower() == REQUEST_ID_HEADER and v:
                return (v.decode() if isinstance(v, bytes) else str(v))[:200]
    except Exception:
        pass
    return None


def _request_id(context: Any, idx: int) -> str:
    """The client's X-Request-Id when it sent one (so it can send labels for it later),
    else TorchServe's own request id."""
    client = _client_request_id(context, idx)
    if client:
        return client
    rid = context.get_request_id(idx) if hasattr(context, "get_request_id") else None
    return str(rid) if rid else f"unknown-{os.getpid()}-{time.time_ns()}"
