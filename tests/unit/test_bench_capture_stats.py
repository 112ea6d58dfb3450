"""The capture benchmark's record check: the worker-log counts it reads are the ones the
real capture sink logs, and the binomial check flags a shortfall like the one the last
run recorded (126 records for 1,536 requests at 10%)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from benchmarks.capture import parse_args
from benchmarks.capture_stats import ratio_interval, record_check, worker_log_counts
from tests.unit.test_capture import BlockedStore, _record
from visionline.monitoring.capture_sink import CaptureSink


def test_the_log_counts_are_what_the_real_sink_logs(tmp_path, caplog):
    store = BlockedStore(tmp_path / "store", fail=True)
    store.release.set()
    sink = CaptureSink(store, "captures/m/1", queue_size=50, flush_records=5, flush_interval_s=0.05)
    now = datetime.now(UTC)
    with caplog.at_level(logging.WARNING, logger="visionline.monitoring.capture_sink"):
        for i in range(5):
            sink.offer(_record(i, now))
        assert sink.flush(timeout=30)
    sink.close()
    log = tmp_path / "model_log.log"
    log.write_text(
        "2026-12-07T08:46:21,288 [INFO ] W-9000-bench_1-stdout MODEL_LOG - capture on: 10.0%\n"
        + caplog.text
    )
    counts = worker_log_counts(log)
    assert counts["lost_in_failed_writes"] == sink.dropped_store == 5
    assert counts["dropped_queue_full"] == 0 and counts["worker_starts"] == 1
    check = record_check(0, 50, 0.1, counts)
    assert check["failed_writes"] == 5 and not check["consistent"]


def test_the_last_runs_count_is_flagged_and_a_fair_count_is_not():
    low = record_check(126, 1536, 0.1, {})
    assert low["expected"] == 153.6 and 0.015 < low["binomial_p"] < 0.025  # two-sided
    assert low["expected_95"][0] > 126  # outside the 95% range of the draws
    fair = record_check(150, 1536, 0.1, {})
    assert fair["consistent"] and fair["expected_95"][0] <= 150 <= fair["expected_95"][1]
    assert not record_check(399, 400, 1.0, {})["consistent"]  # at rate 1, every request


def test_ratio_interval_narrows_with_rounds():
    wide = ratio_interval([0.95, 1.05, 1.1, 0.9])
    narrow = ratio_interval([0.95, 1.05, 1.1, 0.9] * 25)
    assert wide["interval_95"][0] < 1 < wide["interval_95"][1]
    assert narrow["width"] < wide["width"] / 4
    assert narrow["n"] == 100


def test_rounds_are_configurable_and_smoke_is_small():
    args = parse_args(["--rounds", "3", "--max-rounds", "50", "--ci-width", "0.04"])
    assert (args.rounds, args.max_rounds, args.ci_width) == (3, 50, 0.04)
    smoke = parse_args(["--smoke"])
    assert (smoke.rounds, smoke.max_rounds, smoke.arch) == (2, 2, "simple_cnn")
    assert parse_args(["--rounds", "10", "--max-rounds", "5"]).max_rounds == 10
