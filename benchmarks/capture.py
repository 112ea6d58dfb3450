"""What request capture costs the served model: throughput with capture on (10% of
requests sampled, embeddings on, records written to a local store in the background)
against capture off, same weights, same handler, same server settings.

The only difference between the arms is ``monitor.sample_rate`` in the archive (0.1 vs
0): both archives carry the projection, so "off" is the handler as shipped with capture
disabled, not another handler. Both servers are up at once (an idle one costs next to
no CPU); every round sends the same load to each, the arms in random order, and the
figure is the median of the per-round ratios (paired: a machine that slows down mid-run
slows both arms of a round alike), reported with their spread.

    python benchmarks/capture.py [--arch resnet18] [--image-size 224] [--rounds 8]
                                 [--requests-per-round 256] [--concurrency 8]
                                 [--batch-size 8] [--smoke] [--results-dir DIR]

Defaults take about 10 minutes on 2 cores (photo-sized JPEGs, resnet18 at 224 px);
``--smoke`` serves the small CNN at 32 px for two short rounds.
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import add_common_args, arm_order, paired, write_result
from benchmarks.serve import IMAGENET
from benchmarks.serve_arms import load, make_inputs, percentiles
from tests.support.ports import serve_ports
from visionline.config import PipelineConfig, parse_config
from visionline.model.architectures import build_model
from visionline.monitoring.capture_windows import wait_for_captures
from visionline.serving.packaging import build_mar
from visionline.serving.torchserve import ServedModel, TorchServe
from visionline.storage import LocalStore

CLASSES = [f"c{i}" for i in range(10)]
ARMS = ("on", "off")


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


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--sample-rate", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=8, help="paired rounds")
    ap.add_argument("--requests-per-round", type=int, default=256, help="per arm")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    add_common_args(ap)
    args = ap.parse_args()
    if args.smoke:
        args.arch, args.image_size, args.rounds = "simple_cnn", 32, 2
        args.requests_per_round, args.concurrency = 64, 2
    return args


def start_servers(
    args: argparse.Namespace,
    tmp: Path,
    store: LocalStore,
    captures: LocalStore,
    servers: dict[str, TorchServe],
) -> dict[str, tuple[str, str]]:
    """One server per arm (into ``servers``, so the caller stops every one that started);
    arm -> (prediction url, inference token)."""
    urls: dict[str, tuple[str, str]] = {}
    for arm in ARMS:
        rate = args.sample_rate if arm == "on" else 0.0
        cfg = make_run(store, args.arch, args.image_size, rate, captures.uri)
        cfg = cfg.with_overrides(**serve_ports())
        mar = build_mar(store, "bench", "bench", "1", cfg, tmp / f"mar-{arm}")
        servers[arm] = TorchServe(tmp / f"ts-{arm}", cfg.serve)
        servers[arm].start(
            [ServedModel("bench", "bench.mar", args.batch_size, 10, 1)], {"bench": mar}
        )
        urls[arm] = (
            f"{servers[arm].endpoints.inference}/predictions/bench",
            servers[arm].tokens()["inference"],
        )
        print(f"capture {arm}: serving {args.arch} at {args.image_size} px", flush=True)
    return urls


def run_rounds(
    args: argparse.Namespace,
    urls: dict[str, tuple[str, str]],
    images: list[bytes],
    per_client: int,
    rates: dict[str, list[float]],
    latencies: dict[str, list[float]],
) -> None:
    """Every round, the same load to each arm in random order."""
    rng = random.Random(args.seed)
    for r in range(args.rounds):
        order = arm_order(ARMS, rng)
        for arm in order:
            res = load(*urls[arm], images, args.concurrency, per_client)
            rates[arm].append(res["requests_per_s"])
            latencies[arm] += res["latencies_ms"]
        print(
            f"round {r + 1}/{args.rounds} ({' then '.join(order)}): "
            + ", ".join(f"{a} {rates[a][-1]:.1f} req/s" for a in ARMS)
            + f", ratio {rates['on'][-1] / rates['off'][-1]:.3f}",
            flush=True,
        )


def count_captures(captures: LocalStore, started: datetime, sent: int) -> int:
    """Every record the worker wrote for the requests sent since ``started``."""
    # the worker writes every monitor.flush_interval_s (10 s): wait until the
    # count stops growing, so the figure is every record the worker wrote
    captured, previous = 0, -1
    while captured != previous:
        previous = captured
        captured = wait_for_captures(captures, "bench", "1", started, sent, 12)
    return captured


def print_server_logs(servers: dict[str, TorchServe]) -> None:
    """What the servers said, before they go."""
    for arm, server in servers.items():
        for name in ("model_log.log", "ts_log.log"):
            f = server.workdir / "logs" / name
            if f.is_file():
                tail = f.read_text(errors="replace").splitlines()[-15:]
                print(f"--- {arm}: {name}\n" + "\n".join(tail), file=sys.stderr)


def main() -> None:
    args = parse_args()
    images = make_inputs(["photo"])["photo"]
    per_client = -(-args.requests_per_round // args.concurrency)

    rates: dict[str, list[float]] = {arm: [] for arm in ARMS}
    latencies: dict[str, list[float]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = LocalStore(tmp / "store")
        captures = LocalStore(tmp / "captures")
        servers: dict[str, TorchServe] = {}
        try:
            urls = start_servers(args, tmp, store, captures, servers)
            for url, token in urls.values():
                load(url, token, images, 2, 4)  # warm-up
            started = datetime.now(UTC)
            run_rounds(args, urls, images, per_client, rates, latencies)
            sent = args.rounds * per_client * args.concurrency
            captured = count_captures(captures, started, sent)
            log = servers["on"].workdir / "logs" / "model_log.log"
            dropped_warnings = log.read_text(errors="replace").count("records dropped so far")
        except Exception:
            print_server_logs(servers)
            raise
        finally:
            for server in servers.values():
                server.stop()

    ratio = paired(rates["on"], rates["off"])
    write_result(
        "capture",
        {
            "ratio_capture_on_vs_off": ratio["median"],
            "ratio_paired": ratio,
            "target": 0.95,
            "requests_per_s": {a: [round(x, 2) for x in rates[a]] for a in ARMS},
            "latency_ms": {a: percentiles(latencies[a]) for a in ARMS},
            "requests_sent_per_arm": sent,
            "captured_records": captured,
            "capture_drop_warnings": dropped_warnings,
            "settings": {
                "arch": args.arch,
                "image_size": args.image_size,
                "inputs": "photo-sized JPEGs (640x480)",
                "sample_rate": args.sample_rate,
                "embedding_dims": 32,
                "requests_per_round": per_client * args.concurrency,
                "concurrency": args.concurrency,
                "batch_size": args.batch_size,
                "workers": 1,
                "capture_store": "local directory",
            },
        },
        args.results_dir,
        smoke=args.smoke,
    )


if __name__ == "__main__":
    main()
