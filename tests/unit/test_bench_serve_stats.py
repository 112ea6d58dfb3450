"""The serving benchmark's statistics on numbers worked out by hand: the minimum over
pairs (not over per-point medians), per-run medians and their spread, comparisons with
the fastest alternative, the open-loop schedules and the percentiles."""

from __future__ import annotations

import itertools
import random
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from benchmarks.serve_stats import (
    best_other_pairs,
    capacity,
    compare,
    fixed_schedule,
    latency_summary,
    per_core,
    per_run_point_medians,
    percentile,
    poisson_schedule,
    run_pairs,
)

P1, P8 = ("photo", 8, 1), ("photo", 8, 8)
# two runs; ours / stock per round: run 1 P1 [1.2, 0.9, 1.1], P8 [1.5, 1.4, 1.6];
# run 2 P1 [1.0, 1.05, 0.95], P8 [1.3, 1.25, 1.35]
RUN1 = {
    P1: {"ours": [12.0, 9.0, 11.0], "stock": [10.0, 10.0, 10.0], "other": [11.0, 8.0, 12.0]},
    P8: {"ours": [30.0, 28.0, 32.0], "stock": [20.0, 20.0, 20.0], "other": [25.0, 30.0, 20.0]},
}
RUN2 = {
    P1: {"ours": [10.0, 10.5, 9.5], "stock": [10.0, 10.0, 10.0]},
    P8: {"ours": [26.0, 25.0, 27.0], "stock": [20.0, 20.0, 20.0]},
}


def test_minimum_is_over_pairs_not_over_point_medians() -> None:
    got = compare([RUN1, RUN2], "ours", "stock")
    # per-point medians are 1.1, 1.5, 1.0, 1.3: their minimum would say 1.0
    assert got["min_over_pairs"] == 0.9
    assert got["min_at"] == {"run": 1, "point": "photo_b8_c1", "round": 2}
    ratios = [1.2, 0.9, 1.1, 1.5, 1.4, 1.6, 1.0, 1.05, 0.95, 1.3, 1.25, 1.35]
    assert got["median_over_pairs"] == round(statistics.median(ratios), 3) == 1.225
    assert got["n_pairs"] == 12
    assert got["pairs_above_1"] == 9


def test_per_run_medians_and_their_spread() -> None:
    got = compare([RUN1, RUN2], "ours", "stock")
    # run 1: median of 1.2 0.9 1.1 1.5 1.4 1.6 = 1.3; run 2: of 1.0 1.05 0.95 1.3 1.25 1.35
    assert got["per_run_medians"] == [1.3, 1.15]
    assert got["runs"] == 2
    assert got["spread_across_runs"] == {"min": 1.15, "max": 1.3, "range": 0.15}


def test_pairs_need_the_same_rounds() -> None:
    with pytest.raises(ValueError, match="not paired"):
        run_pairs({P1: {"a": [1.0, 2.0], "b": [1.0]}}, "a", "b")
    # an arm missing at a point gives no pairs there, not an error
    assert run_pairs({P1: {"a": [1.0]}}, "a", "b") == []
    assert compare([{P1: {"a": [1.0]}}], "a", "b") == {"n_pairs": 0}


def test_best_other_takes_the_fastest_alternative_in_each_round() -> None:
    pairs = best_other_pairs(RUN1, "ours", ["stock", "other"])
    ratios = [round(x, 4) for _, _, x in pairs]
    # P1: max(10, 11)=11 -> 12/11; max(10, 8)=10 -> 0.9; max(10, 12)=12 -> 11/12
    # P8: 30/25; 28/30; 32/20
    assert ratios == [round(12 / 11, 4), 0.9, round(11 / 12, 4), 1.2, round(28 / 30, 4), 1.6]


def test_per_run_point_medians() -> None:
    got = per_run_point_medians([RUN1, RUN2], "ours")
    assert got == {"photo_b8_c1": [11.0, 10.0], "photo_b8_c8": [30.0, 26.0]}


def test_capacity_is_the_best_point_median() -> None:
    assert capacity(RUN1, "ours", "photo") == 30.0
    assert capacity(RUN1, "stock", "photo") == 20.0
    with pytest.raises(ValueError, match="no closed-loop measurement"):
        capacity(RUN1, "ours", "small")


def test_poisson_schedule_has_the_asked_rate() -> None:
    times = poisson_schedule(20.0, 2000, random.Random(1))
    assert times[0] == 0.0
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= 0 for g in gaps)
    # mean gap 1/20 s, within a few standard errors (sd of an exponential = its mean)
    assert abs(statistics.mean(gaps) - 0.05) < 4 * 0.05 / len(gaps) ** 0.5
    # exponential: the sd of the gaps is about their mean (a fixed interval's is 0)
    assert 0.8 < statistics.stdev(gaps) / statistics.mean(gaps) < 1.2
    # the same seed gives the same schedule
    assert poisson_schedule(20.0, 10, random.Random(1)) == times[:10]


def test_fixed_schedule_and_bad_rates() -> None:
    assert fixed_schedule(4.0, 5) == [0.0, 0.25, 0.5, 0.75, 1.0]
    for bad in (lambda: fixed_schedule(0, 5), lambda: poisson_schedule(5.0, 0, random.Random())):
        with pytest.raises(ValueError, match="positive rate and count"):
            bad()


def test_percentiles_interpolate_like_numpy() -> None:
    v = [float(x) for x in range(1, 101)]  # 1..100
    assert percentile(v, 0.5) == 50.5
    assert percentile(v, 0.99) == pytest.approx(99.01)
    assert percentile([3.0, 1.0, 2.0], 0.0) == 1.0
    assert percentile([3.0, 1.0, 2.0], 1.0) == 3.0
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_latency_summary_reports_a_tail_only_with_enough_requests() -> None:
    small = latency_summary([float(x) for x in range(1, 101)])  # 100: p90 yes, p99 no
    assert small == {"n": 100, "p50_ms": 50.5, "p90_ms": 90.1, "p99_ms": None, "max_ms": 100.0}
    big = latency_summary([float(x) for x in range(1, 1001)])
    assert big["p99_ms"] == 990.0  # 1 + 0.99 * 999 = 990.01
    assert big["p50_ms"] == 500.5


def test_per_core() -> None:
    assert per_core(30.0, 1) == 30.0
    assert per_core(30.0, 4) == 7.5
    with pytest.raises(ValueError):
        per_core(30.0, 0)


def _run(rates: dict) -> SimpleNamespace:
    """A run as serve.py records it, with no server figures."""
    lat = {
        p: {a: [10.0, 20.0] for a in by if not a.startswith("in_process")}
        for p, by in rates.items()
    }
    return SimpleNamespace(
        rates=rates,
        lat=lat,
        worker_plans={8: "mkldnn"},
        in_process_plans={},
        solo_load={8: {"ours": {"worker_load_s": 2.5}, "stock": {"worker_load_s": 1.5}}},
        startup_load_s={8: {"ours": 7.0}},
        compile_warmup_s={8: 60.0},
        litserve_start_to_ready_s={8: 9.0},
    )


def _arms(ours: list[float], full: list[float]) -> dict:
    return {
        "visionline": ours,
        "stock_eager": [10.0] * len(ours),
        "stock_compiled": [12.0] * len(ours),
        "litserve": [9.0] * len(ours),
        "in_process_full": full,
        "in_process_forward_only": [40.0] * len(ours),
    }


def test_serve_json_figures_and_headline_from_runs(tmp_path) -> None:
    """serve.json's figures from two runs, and the headline rows and plot made of them."""
    from benchmarks.report_headline import _serve
    from benchmarks.report_plots import draw_serve, save
    from benchmarks.serve_arms import Pinning
    from benchmarks.serve_figures import figures

    runs = [
        _run({P1: _arms([11.0, 9.0], [20.0, 20.0]), P8: _arms([15.0, 13.0], [20.0, 26.0])}),
        _run({P1: _arms([10.0, 10.5], [20.0, 20.0]), P8: _arms([14.0, 12.0], [28.0, 24.0])}),
    ]
    pin = Pinning({0}, {1}, {0, 1}, False)
    args = SimpleNamespace(runs=2, rounds=2, min_requests_per_round=48)
    open_loop = {
        "visionline": {
            "capacity_per_s": 14.0,
            "at_80pct": {"p50_ms": 90.0, "p99_ms": 400.0, "n": 1000},
        }
    }
    r = figures(args, {"photo": [b"x" * 2048]}, pin, {}, runs, open_loop, 10)
    assert r["paired_min_over_pairs"] == 0.9  # 9 / 10 in run 1, photo_b8_c1, round 2
    # ours / stock eager: run 1 1.1 0.9 1.5 1.3 -> 1.2; run 2 1.0 1.05 1.4 1.2 -> 1.125
    assert r["per_run_medians_vs_stock_eager"] == [1.2, 1.125]
    assert r["comparisons"]["visionline_vs_stock_compiled"]["min_over_pairs"] == 0.75  # 9 / 12
    assert r["paired_min_over_pairs_vs_best_other"] == 0.75
    # the ceiling at the busiest point (batch 8, 8 clients): 15/20 13/26 14/28 12/24
    assert r["served_vs_in_process_point"] == "photo_b8_c8"
    assert r["served_vs_in_process_full_path"] == 0.5
    assert r["ceilings"]["full_path"]["min_over_pairs"] == 0.5
    assert r["served_vs_in_process_forward_only"] == round(
        statistics.median([15 / 40, 13 / 40, 14 / 40, 12 / 40]), 3
    )
    assert r["throughput_per_core"]["visionline"] == 13.5  # median of 15 13 14 12, 1 core
    assert r["worker_load"]["one_at_a_time_per_run"] == {
        "8": {"ours": [2.5, 2.5], "stock": [1.5, 1.5]}
    }
    rows = {row[0]: row for row in _serve(r)}
    first = rows["served throughput / stock eager (min over pairs)"]
    assert first[1] == ">= 1 (missed)"
    assert first[2].startswith("0.9 (median 1.15; per-run medians 1.2, 1.12; 8 pairs)")
    assert "p99 400 ms" in rows["open loop visionline: latency at 50% / 80% of capacity"][2]
    assert save(draw_serve, r, "current", tmp_path / "serve.png") is not None


class _Slow(BaseHTTPRequestHandler):
    """Answers every 5th request with a 500, the others after 5 ms."""

    count = itertools.count(1)  # next() is atomic; `count += 1` across threads is not

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        status = 500 if next(type(self).count) % 5 == 0 else 200
        time.sleep(0.005)
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


def test_open_loop_against_a_real_server() -> None:
    from benchmarks.serve_open_loop import open_loop

    _Slow.count = itertools.count(1)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/predictions/x"
        t = time.perf_counter()
        got = open_loop(url, "token", [b"jpeg"], 100.0, 200, random.Random(3))
        wall = time.perf_counter() - t
    finally:
        server.shutdown()
    assert got["failed"] == 40 and len(got["first_errors"]) == 3
    assert got["n"] == 160  # latencies of the answered requests only
    assert got["p50_ms"] >= 5.0  # from the scheduled send time: at least the server's 5 ms
    assert got["arrivals"] == "poisson" and got["offered_per_s"] == 100.0
    # the schedule sets the pace: its last send is about 2 s in (199 gaps of 10 ms on
    # average, sd 0.14 s), so the run cannot end sooner, whatever the server's speed
    last_send = 199 / got["scheduled_per_s"]
    assert 1.5 < last_send < 2.5
    assert last_send <= wall < last_send + 15


def test_the_closed_loop_percentiles_count_ten_beyond_exactly() -> None:
    """100 requests leave exactly 10 beyond p90; in floats 100 * (1 - 0.9) is 9.999...,
    which dropped the p90 of every 100-request point (capture's latencies among them)."""
    from benchmarks.serve_arms import percentiles

    assert percentiles([float(i) for i in range(100)])["p90_ms"] == 89.1
    assert percentiles([float(i) for i in range(99)])["p90_ms"] is None
    assert percentiles([float(i) for i in range(1000)])["p99_ms"] == 989.0
