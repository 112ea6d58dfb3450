"""What request capture costs the served model: throughput with capture on (10% of
requests sampled, embeddings on, records written to a local store in the background)
against capture off, same weights, same handler, same server settings.

Both servers are up at once (an idle one costs next to no CPU); every round runs the
same load against each, in a random order, and the figure is the median of the per-round
ratios (paired: a machine that slows down mid-run slows both arms of a round alike),
with the spread of those ratios.

    python benchmarks/capture.py [--arch resnet18] [--image-size 224] [--rounds 8]
                                 [--requests-per-round 256] [--concurrency 8] [--batch-size 8]

The only difference between the arms is ``monitor.sample_rate`` in the archive
(0.1 vs 0); both archives carry the projection, so the "off" arm is the handler as
shipped with capture disabled, not a different handler.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_result
from benchmarks.serve import IMAGENET, load
from tests.support.ports import serve_ports
from visionline.config import parse_config
from visionline.data.samples import draw_shape
from visionline.models import build_model
from visionline.monitoring.capture import read_captures
from visionline.packaging import build_mar
from visionline.serving.torchserve import ServedModel, TorchServe
from visionline.storage import LocalStore

CLASSES = [f"c{i}" for i in range(10)]


def make_run(store: LocalStore, arch: str, size: int, sample_rate: float, captures: str):
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
        model = build_model(cfg.model, len(CLASSES), 3, size).eval()
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        store.put_bytes("runs/bench/model.pt", buf.getvalue())
        store.put_json(
            "runs/bench/run.json",
            {
                "classes": CLASSES,
                "preprocessing": {"image_size": size, "channels": 3, **IMAGENET},
            },
        )
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--sample-rate", type=float, default=0.1)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--requests-per-round", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    images = []
    for i in range(16):
        buf = io.BytesIO()
        shape = ["circle", "square", "star", "cross"][i % 4]
        draw_shape(shape, 320, rng).save(buf, "JPEG", quality=90)
        images.append(buf.getvalue())
    order = random.Random(args.seed)
    per_client = -(-args.requests_per_round // args.concurrency)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = LocalStore(tmp / "store")
        captures = LocalStore(tmp / "captures")
        servers: dict[str, TorchServe] = {}
        urls: dict[str, tuple[str, str]] = {}
        try:
            for arm, rate in (("on", args.sample_rate), ("off", 0.0)):
                cfg = make_run(store, args.arch, args.image_size, rate, captures.uri)
                cfg = cfg.with_overrides(**serve_ports())
                mar = build_mar(store, "bench", "bench", "1", cfg, tmp / f"mar-{arm}")
                server = TorchServe(tmp / f"ts-{arm}", cfg.serve)
                servers[arm] = server
                server.start(
                    [ServedModel("bench", "bench.mar", args.batch_size, 10, 1)], {"bench": mar}
                )
                urls[arm] = (
                    f"{server.endpoints.inference}/predictions/bench",
                    server.tokens()["inference"],
                )
            for url, token in urls.values():
                load(url, token, images, 2, 4)  # warm-up
            started = datetime.now(UTC)
            rounds: list[dict[str, dict]] = []
            for r in range(args.rounds):
                arms = ["on", "off"]
                order.shuffle(arms)
                result = {}
                for arm in arms:
                    url, token = urls[arm]
                    result[arm] = load(url, token, images, args.concurrency, per_client)
                rounds.append(result)
                ratio = result["on"]["requests_per_s"] / result["off"]["requests_per_s"]
                print(
                    f"round {r + 1}/{args.rounds} ({' then '.join(arms)}): "
                    f"on {result['on']['requests_per_s']} req/s, "
                    f"off {result['off']['requests_per_s']} req/s, ratio {ratio:.3f}"
                )
            servers["on"].stop()  # the workers write what they hold as they exit
            captured = len(
                read_captures(captures, "bench", "1", started, None, columns=["request_id"])
            )
        finally:
            for server in servers.values():
                server.stop()

    ratios = sorted(r["on"]["requests_per_s"] / r["off"]["requests_per_s"] for r in rounds)
    sent = args.rounds * per_client * args.concurrency
    write_result(
        "capture",
        {
            "ratio_capture_on_vs_off": round(statistics.median(ratios), 3),
            "ratio_min": round(ratios[0], 3),
            "ratio_max": round(ratios[-1], 3),
            "ratio_iqr": round(float(np.percentile(ratios, 75) - np.percentile(ratios, 25)), 3),
            "target": 0.95,
            "rounds_ratio": [round(x, 3) for x in ratios],
            "rounds": [{arm: r[arm]["requests_per_s"] for arm in ("on", "off")} for r in rounds],
            "p50_ms": {
                arm: statistics.median(r[arm]["p50_ms"] for r in rounds) for arm in ("on", "off")
            },
            "captured_records": captured,
            "requests_sent_with_capture_on": sent,
            "settings": {
                "arch": args.arch,
                "image_size": args.image_size,
                "sample_rate": args.sample_rate,
                "embedding_dims": 32,
                "requests_per_round": per_client * args.concurrency,
                "concurrency": args.concurrency,
                "batch_size": args.batch_size,
                "workers": 1,
                "capture_store": "local directory",
            },
        },
    )


if __name__ == "__main__":
    main()
