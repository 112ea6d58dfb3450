"""The capture sink: bounded, never blocking the caller, writing Parquet in the background;
and reading captures back by window."""

import logging
import threading
from datetime import UTC, datetime, timedelta

import pytest

from visionline.errors import MonitoringError, StoreError
from visionline.monitoring.capture_settings import CaptureSettings
from visionline.monitoring.capture_sink import CaptureSink
from visionline.monitoring.capture_windows import parse_window, read_captures
from visionline.storage import LocalStore


def _record(i: int, t: datetime) -> dict:
    return {
        "request_id": f"r{i}",
        "time": t,
        "model": "m",
        "model_version": "1",
        "width": 8,
        "height": 8,
        "label": "a",
        "label_index": 0,
        "confidence": 0.9,
        "margin": 0.8,
        "entropy": 0.1,
        "mean_0": 0.3,
        "std_0": 0.2,
        "embedding": [0.0, 1.0],
        "image": None,
    }


class BlockedStore(LocalStore):
    """A store whose writes hang until released: a store that is slow or unreachable."""

    def __init__(self, root, fail: bool = False) -> None:
        super().__init__(root)
        self.release = threading.Event()
        self.fail = fail
        self.attempts = 0

    def put_bytes(self, key: str, data: bytes) -> str:
        self.attempts += 1
        self.release.wait()
        if self.fail:
            raise StoreError("store unreachable")
        return super().put_bytes(key, data)


def test_records_land_as_parquet_by_day_and_read_back_by_window(tmp_path):
    store = LocalStore(tmp_path)
    sink = CaptureSink(store, "captures/m/1", queue_size=100, flush_records=10, flush_interval_s=60)
    t0 = datetime(2024, 5, 1, 23, 59, 0, tzinfo=UTC)
    for i in range(25):
        assert sink.offer(_record(i, t0 + timedelta(seconds=5 * i)))
    assert sink.flush(timeout=30)
    sink.close()
    keys = list(store.list("captures/m/1/"))
    assert {k.split("/")[3] for k in keys} == {"2024-05-01", "2024-05-02"}
    assert sink.written == 25 and sink.dropped == 0
    everything = read_captures(store, "m", "1")
    assert everything["request_id"].tolist() == [f"r{i}" for i in range(25)]
    window = read_captures(store, "m", None, t0 + timedelta(seconds=60), t0 + timedelta(seconds=90))
    assert window["request_id"].tolist() == ["r12", "r13", "r14", "r15", "r16", "r17"]
    assert window["embedding"].iloc[0].tolist() == [0.0, 1.0]


def test_a_hung_store_never_blocks_the_caller_and_memory_stays_bounded(tmp_path):
    store = BlockedStore(tmp_path)
    # a write per 2 records, never by time: the first write surely holds both
    sink = CaptureSink(store, "captures/m/1", queue_size=5, flush_records=2, flush_interval_s=600)
    now = datetime.now(UTC)
    accepted = [sink.offer(_record(i, now)) for i in range(2)]
    for _ in range(600):  # until the flusher is stuck in its first write
        if store.attempts:
            break
        threading.Event().wait(0.05)
    assert store.attempts == 1
    # the flusher hangs in the store; every offer still returns at once
    accepted += [sink.offer(_record(i, now)) for i in range(2, 200)]
    assert not store.release.is_set() and store.attempts == 1
    assert sink.stats()["queued"] == 5 and sum(accepted) == 2 + 5  # the batch in hand + queue
    assert sink.dropped_full == 200 - 7
    store.release.set()
    assert sink.flush(timeout=30)
    sink.close()
    assert sink.written == sum(accepted) and sink.written + sink.dropped == 200


def test_images_count_against_a_byte_budget(tmp_path):
    store = BlockedStore(tmp_path)
    sink = CaptureSink(
        store,
        "captures/m/1",
        queue_size=100,
        flush_records=50,
        flush_interval_s=600,
        max_bytes=12_000,
    )
    now = datetime.now(UTC)
    big = {**_record(0, now), "image": b"x" * 4000}
    assert sink.offer(big) and sink.offer({**big, "request_id": "r1"})
    assert not sink.offer({**big, "request_id": "r2"})  # 3 x 5 kB > 12 kB
    assert sink.offer(_record(3, now))  # a record without an image still fits
    assert sink.dropped_full == 1 and sink.stats()["queued_bytes"] == 2 * 5024 + 1024
    store.release.set()
    assert sink.flush(timeout=30)
    sink.close()
    assert sink.stats()["queued_bytes"] == 0 and sink.written == 3


def test_a_failing_store_drops_and_logs_and_writing_resumes_when_it_is_back(tmp_path, caplog):
    store = BlockedStore(tmp_path, fail=True)
    store.release.set()
    sink = CaptureSink(store, "captures/m/1", queue_size=50, flush_records=5, flush_interval_s=0.05)
    now = datetime.now(UTC)
    with caplog.at_level(logging.WARNING, logger="visionline.monitoring.capture_sink"):
        for i in range(5):
            sink.offer(_record(i, now))
        assert sink.flush(timeout=30)
    assert sink.dropped_store == 5 and sink.written == 0
    assert "5 records dropped so far" in caplog.text and "store unreachable" in caplog.text
    store.fail = False
    for i in range(5, 8):
        sink.offer(_record(i, now))
    assert sink.flush(timeout=30)  # after its back-off the flusher writes again
    sink.close()
    assert sink.written == 3
    assert read_captures(store, "m", "1")["request_id"].tolist() == ["r5", "r6", "r7"]


def test_windows():
    now = datetime(2024, 5, 2, 12, tzinfo=UTC)
    assert parse_window("now-6h..now", now) == (now - timedelta(hours=6), now)
    assert parse_window("-6h..now", now) == parse_window("now-6h..now", now)
    assert parse_window("2024-05-01..2024-05-02T06:00", now) == (
        datetime(2024, 5, 1, tzinfo=UTC),
        datetime(2024, 5, 2, 6, tzinfo=UTC),
    )
    assert parse_window("-7d..", now)[0] == now - timedelta(days=7)
    for bad, msg in (
        ("yesterday", "START..END"),
        ("now..-1h", "not after"),
        ("x..now", "bad time"),
    ):
        with pytest.raises(MonitoringError, match=msg):
            parse_window(bad, now)


def test_the_serving_environment_overrides_store_and_rate():
    s = CaptureSettings(0.1, False, "/data/store", 10, 5, 1.0)
    assert s.enabled
    env = {"VISIONLINE_CAPTURE_STORE": "s3://b/p", "VISIONLINE_CAPTURE_SAMPLE_RATE": "0.5"}
    assert (s.with_environment(env).store, s.with_environment(env).sample_rate) == ("s3://b/p", 0.5)
    assert not s.with_environment({"VISIONLINE_CAPTURE_STORE": "off"}).enabled
    assert not s.with_environment({"VISIONLINE_CAPTURE_SAMPLE_RATE": "0"}).enabled
    with pytest.raises(ValueError, match="VISIONLINE_CAPTURE_SAMPLE_RATE=2"):
        s.with_environment({"VISIONLINE_CAPTURE_SAMPLE_RATE": "2"})


def test_the_serving_environment_overrides_every_capture_setting():
    from visionline.monitoring.capture_settings import ENV

    s = CaptureSettings(0.1, False, "/data/store", 10, 5, 1.0, 64.0)
    env = {
        "VISIONLINE_CAPTURE_IMAGES": "true",
        "VISIONLINE_CAPTURE_QUEUE_SIZE": "100",
        "VISIONLINE_CAPTURE_FLUSH_RECORDS": "50",
        "VISIONLINE_CAPTURE_FLUSH_INTERVAL_S": "2.5",
        "VISIONLINE_CAPTURE_MAX_QUEUE_MB": "8",
    }
    assert s.with_environment(env) == CaptureSettings(0.1, True, "/data/store", 100, 50, 2.5, 8.0)
    assert set(ENV) == set(CaptureSettings.__dataclass_fields__)  # each one, none left out
    assert not s.with_environment({"VISIONLINE_CAPTURE_IMAGES": "off"}).capture_images
    for bad, msg in (
        ({"VISIONLINE_CAPTURE_IMAGES": "maybe"}, "VISIONLINE_CAPTURE_IMAGES=maybe: must be true"),
        ({"VISIONLINE_CAPTURE_QUEUE_SIZE": "many"}, "VISIONLINE_CAPTURE_QUEUE_SIZE=many: not a"),
        ({"VISIONLINE_CAPTURE_FLUSH_INTERVAL_S": "0"}, "FLUSH_INTERVAL_S=0: must be above 0"),
        ({"VISIONLINE_CAPTURE_FLUSH_RECORDS": "11"}, "flush_records \\(11\\) must not exceed"),
    ):
        with pytest.raises(ValueError, match=msg):
            s.with_environment(bad)


SIGTERM_CHILD = """
import os, signal, sys, time
from datetime import UTC, datetime
sys.path[:0] = {paths!r}
from tests.unit.test_capture import _record
from visionline.monitoring.capture_sink import CaptureSink, close_on_sigterm
from visionline.storage import LocalStore

sink = CaptureSink(LocalStore({root!r}), "captures/m/1", flush_records=1000, flush_interval_s=600)
if {chained!r}:
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(7))
assert close_on_sigterm(sink)
for i in range(30):
    sink.offer(_record(i, datetime.now(UTC)))
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(30)  # never reached: the signal ends the process once the records are written
"""


@pytest.mark.parametrize("chained", [False, True])
def test_sigterm_writes_the_queued_records_then_ends_the_process(tmp_path, chained):
    """A stopping serving worker gets SIGTERM (tini -g in the pod, TorchServe.stop here);
    by default Python dies at once and the queue, up to a flush interval of records, is
    lost. The records must land, and the process must still end as the signal (or the
    handler installed before) says."""
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO

    paths = [str(REPO), str(REPO / "src")]
    code = SIGTERM_CHILD.format(paths=paths, root=str(tmp_path), chained=chained)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == (7 if chained else -signal.SIGTERM), proc.stderr
    assert len(read_captures(LocalStore(tmp_path), "m", "1")) == 30


def test_no_handler_is_installed_off_the_main_thread(tmp_path):
    from visionline.monitoring.capture_sink import close_on_sigterm

    sink = CaptureSink(LocalStore(tmp_path), "captures/m/1", flush_interval_s=600)
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(close_on_sigterm(sink)))
    t.start()
    t.join()
    sink.close()
    assert result == [False]
