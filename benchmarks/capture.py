"""What request capture costs the served model: throughput with capture on (10% of
requests sampled, embeddings on, records written to a local store in the background)
against capture off, same weights, same handler, same server settings; and whether
every sampled request became a record.

The only difference between the arms is ``monitor.sample_rate`` in the archive (0.1 vs
0): both archives carry the projection, so "off" is the handler as shipped with capture
disabled, not another handler. Both run the same forward pass: the plan the handler
picks in ``auto`` mode is read from a first start and fixed in both archives, so no
restart picks another.

Each arm of a round starts its own server (pinned: server on its cores, load generator
on another, as ``benchmarks/serve.py`` pins them), warms it up, sends the round's load,
and stops it; a stopping worker writes every record it still holds before it exits
(the server's stop waits for that), so no capture work of one arm runs during the
other, and the records of a round are counted once its server is gone: exactly, with no
guess at when the writes have ended. (Counting while the server ran, once the count had
stopped growing for two flush intervals, could stop early on a loaded machine; and
before the workers wrote on SIGTERM, whatever they held at the stop was lost.) The arms run in random order within a round;
the figure is the paired per-round ratio (median, and the geometric mean with a 95%
interval). Rounds go on past ``--rounds`` until that interval is narrower than
``--ci-width`` or ``--max-rounds`` is reached (``interval_reached`` says which).

Records are checked against ``sample_rate x requests`` with an exact binomial test, and
the capturing worker's log is read for what it lost (records dropped on a full queue,
records in batch writes the store refused, batches it could not describe, restarts).

    python benchmarks/capture.py [--arch resnet18] [--image-size 224] [--rounds 8]
                                 [--max-rounds 200] [--ci-width 0.05]
                                 [--requests-per-round 256] [--concurrency 8]
                                 [--batch-size 8] [--flush-interval-s 2] [--no-pin]
                                 [--smoke] [--results-dir DIR]

On 2 cores a round of the defaults takes about a minute (two server starts, 2 x 256
requests of photo-sized JPEGs through resnet18 at 224 px); with a per-round spread like
the last run's (0.94-1.31) an interval 0.05 wide needs on the order of 100 rounds.
``--smoke`` serves the small CNN at 32 px for two short rounds.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import add_common_args, arm_order, paired, write_result
from benchmarks.capture_stats import (
    add_counts,
    ratio_interval,
    record_check,
    rounds_for_width,
    worker_log_counts,
)
from benchmarks.serve_arms import Pinning, load, make_inputs, percentiles, worker_plan
from tests.support.ports import serve_ports
from visionline.config import PipelineConfig, parse_config
from visionline.model.architectures import build_model
from visionline.monitoring.capture_windows import read_captures
from visionline.serving.packaging import build_mar
from visionline.serving.torchserve import ServedModel, TorchServe
from visionline.storage import LocalStore

CLASSES = [f"c{i}" for i in range(10)]
ARMS = ("on", "off")
# the seeded resnet18's input normalisation (as serve.py's); a constant of its own, so
# that a change to the serve benchmark does not mark this one stale
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def make_run(
    store: LocalStore, arch: str, size: int, sample_rate: float, captures: str
) -> PipelineConfig:
    """A run with seeded weights (training is not what is measured) and its config."""
    cfg = parse_config(
        {
            "store": store.uri,
            "data": {"dataset": "bench", "image_size": size, "channels": 3, **IMAGENET},
            "model": {"arch": arch},
            "serve": {"model_name": "bench", "top_k": 5},
            "monitor": {"sample_rate": sample_rate, "store": captures},
        }
    )
    if not store.exists("runs/bench/model.pt"):
        torch.manual_seed(0)
        buf = io.BytesIO()
        torch.save(build_model(cfg.model, len(CLASSES), 3, size).state_dict(), buf)
        store.put_bytes("runs/bench/model.pt", buf.getvalue())
        store.put_json(
            "runs/bench/run.json",
            {"classes": CLASSES, "preprocessing": {"image_size": size, "channels": 3, **IMAGENET}},
        )
    return cfg


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--sample-rate", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=8, help="paired rounds, at least")
    ap.add_argument("--max-rounds", type=int, default=200, help="paired rounds, at most")
    ap.add_argument(
        "--ci-width",
        type=float,
        default=0.05,
        help="stop when the ratio's 95%% interval is narrower",
    )
    ap.add_argument("--requests-per-round", type=int, default=256, help="per arm")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--flush-interval-s",
        type=float,
        default=2.0,
        help="monitor.flush_interval_s of the capturing archive",
    )
    ap.add_argument("--no-pin", action="store_true", help="do not pin client and server cores")
    ap.add_argument("--seed", type=int, default=0)
    add_common_args(ap)
    args = ap.parse_args(argv)
    if args.smoke:
        args.arch, args.image_size, args.rounds, args.max_rounds = "simple_cnn", 32, 2, 2
        args.requests_per_round, args.concurrency = 64, 2
    args.max_rounds = max(args.max_rounds, args.rounds)
    return args


@dataclass
class Arms:
    """What every arm needs to start, and what the rounds measured."""

    args: argparse.Namespace
    tmp: Path
    mars: dict[str, Path]
    cfg: PipelineConfig  # the serving settings; fresh ports each start
    captures: LocalStore
    pin: Pinning
    images: list[bytes]
    rates: dict[str, list[float]] = field(default_factory=lambda: {a: [] for a in ARMS})
    latencies: dict[str, list[float]] = field(default_factory=lambda: {a: [] for a in ARMS})
    captured: list[int] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    worker: dict[str, int] = field(default_factory=dict)
    plan: str = "auto"

    @property
    def per_client(self) -> int:
        return -(-self.args.requests_per_round // self.args.concurrency)


def start(arms: Arms, arm: str, workdir: Path) -> TorchServe:
    """A server for ``arm`` on the server cores (its workers inherit them)."""
    server = TorchServe(workdir, arms.cfg.with_overrides(**serve_ports()).serve)
    if arms.pin.on:
        os.sched_setaffinity(0, arms.pin.server)
    try:
        server.start(
            [ServedModel("bench", "bench.mar", arms.args.batch_size, 10, 1)],
            {"bench": arms.mars[arm]},
        )
    except Exception:
        print_log(server, arm)
        server.stop(quiet=True)
        raise
    finally:
        if arms.pin.on:
            os.sched_setaffinity(0, arms.pin.client)
    return server


def build_archives(arms: Arms, store: LocalStore, mode: str) -> None:
    for arm in ARMS:
        rate = arms.args.sample_rate if arm == "on" else 0.0
        cfg = make_run(store, arms.args.arch, arms.args.image_size, rate, arms.captures.uri)
        cfg = cfg.with_overrides(
            **{"serve.cpu_inference": mode, "monitor.flush_interval_s": arms.args.flush_interval_s}
        )
        arms.mars[arm] = build_mar(
            store, "bench", "bench", "1", cfg, arms.tmp / f"mar-{arm}-{mode}"
        )


def fix_plan(arms: Arms, store: LocalStore) -> None:
    """Start the off arm once in auto mode, then build both archives with its choice."""
    server = start(arms, "off", arms.tmp / "ts-plan")
    try:
        arms.plan = (
            worker_plan(server).split()[0] if worker_plan(server) != "not logged" else "auto"
        )
    finally:
        server.stop()
    if arms.plan not in ("eager", "fused", "mkldnn"):
        arms.plan = "auto"
    build_archives(arms, store, arms.plan)
    print(f"capture: both arms serve with cpu_inference {arms.plan}", flush=True)


def written_since(arms: Arms, since: datetime) -> int:
    """Records written since ``since``. Called once the server has stopped: a stopping
    worker writes what it still holds before it exits, so nothing is left to come."""
    return len(read_captures(arms.captures, "bench", "1", since, None, columns=["time"]))


def run_arm(arms: Arms, arm: str, r: int) -> None:
    """Start, warm up, load, (flush,) stop: one arm of round ``r``."""
    workdir = arms.tmp / f"ts-{arm}-{r}"
    server = start(arms, arm, workdir)
    try:
        url = f"{server.endpoints.inference}/predictions/bench"
        token = server.tokens()["inference"]
        load(url, token, arms.images, 2, 4)  # warm-up, before the window
        since = datetime.now(UTC)
        res = load(url, token, arms.images, arms.args.concurrency, arms.per_client)
        arms.rates[arm].append(res["requests_per_s"])
        arms.latencies[arm] += res["latencies_ms"]
    except Exception:
        print_log(server, arm)
        raise
    finally:
        server.stop()
    if arm == "on":
        arms.captured.append(written_since(arms, since))
        arms.sent.append(arms.per_client * arms.args.concurrency)
        arms.worker = add_counts(arms.worker, worker_log_counts(workdir / "logs" / "model_log.log"))
    shutil.rmtree(workdir, ignore_errors=True)


def run_rounds(arms: Arms) -> dict:
    """At least ``--rounds``, then on until the ratio's interval is narrow enough."""
    rng = random.Random(arms.args.seed)
    interval: dict = {}
    for r in range(arms.args.max_rounds):
        order = arm_order(ARMS, rng)
        for arm in order:
            run_arm(arms, arm, r)
        ratios = [a / b for a, b in zip(arms.rates["on"], arms.rates["off"], strict=True)]
        interval = ratio_interval(ratios)
        print(
            f"round {r + 1} ({' then '.join(order)}): "
            + ", ".join(f"{a} {arms.rates[a][-1]:.1f} req/s" for a in ARMS)
            + f", ratio {ratios[-1]:.3f}, captured {arms.captured[-1]}/{arms.sent[-1]}"
            + (f", interval {interval['interval_95']}" if "interval_95" in interval else ""),
            flush=True,
        )
        done = r + 1 >= arms.args.rounds
        if done and interval.get("width", float("inf")) < arms.args.ci_width:
            break
    return interval


def print_log(server: TorchServe, arm: str) -> None:
    for name in ("model_log.log", "ts_log.log"):
        f = server.workdir / "logs" / name
        if f.is_file():
            tail = f.read_text(errors="replace").splitlines()[-15:]
            print(f"--- {arm}: {name}\n" + "\n".join(tail), file=sys.stderr)


def figures(arms: Arms, interval: dict) -> dict:
    args = arms.args
    ratio = paired(arms.rates["on"], arms.rates["off"])
    check = record_check(sum(arms.captured), sum(arms.sent), args.sample_rate, arms.worker)
    return {
        "ratio_capture_on_vs_off": ratio["median"],
        "ratio_paired": ratio,
        "ratio_interval": interval,
        "interval_reached": interval.get("width", float("inf")) < args.ci_width,
        "rounds_for_ci_width": rounds_for_width(interval, args.ci_width),
        "target": 0.95,
        "capture_check": check,
        "captured_per_round": arms.captured,
        "requests_per_s": {a: [round(x, 2) for x in arms.rates[a]] for a in ARMS},
        "latency_ms": {a: percentiles(arms.latencies[a]) for a in ARMS},
        "requests_sent_per_arm": sum(arms.sent),
        "captured_records": sum(arms.captured),
        "settings": {
            "arch": args.arch,
            "image_size": args.image_size,
            "inputs": "photo-sized JPEGs (640x480)",
            "sample_rate": args.sample_rate,
            "embedding_dims": 32,
            "requests_per_round": arms.per_client * args.concurrency,
            "concurrency": args.concurrency,
            "batch_size": args.batch_size,
            "workers": 1,
            "cpu_inference": arms.plan,
            "flush_interval_s": args.flush_interval_s,
            "ci_width": args.ci_width,
            "rounds_min_max": [args.rounds, args.max_rounds],
            "server_per_arm": "started, warmed up, flushed (capture) and stopped each arm",
            "pinning": (
                {"client_cores": sorted(arms.pin.client), "server_cores": sorted(arms.pin.server)}
                if arms.pin.on
                else f"none ({arms.pin.unpinned()})"
            ),
            "capture_store": "local directory",
        },
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    pin = Pinning.of(args.no_pin)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        store, captures = LocalStore(tmp / "store"), LocalStore(tmp / "captures")
        cfg = make_run(store, args.arch, args.image_size, 0.0, captures.uri)
        images = make_inputs(["photo"])["photo"]
        arms = Arms(args, tmp, {}, cfg, captures, pin, images)
        if pin.on:
            os.sched_setaffinity(0, pin.client)
        try:
            build_archives(arms, store, "auto")
            fix_plan(arms, store)
            interval = run_rounds(arms)
        finally:
            os.sched_setaffinity(0, pin.all)
    write_result("capture", figures(arms, interval), args.results_dir, smoke=args.smoke)


if __name__ == "__main__":
    main()
