"""Captured records read back by time window, and the window syntax users type
(``now-24h..now``, ISO dates and times)."""

from __future__ import annotations

import io
import re
import time
from datetime import UTC, datetime, timedelta

import pandas as pd

from visionline.errors import MonitoringError
from visionline.monitoring.capture_settings import capture_prefix
from visionline.storage import ArtifactStore

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
