"""Serving throughput and latency: our handler vs TorchServe's stock image_classifier.

Same model (resnet18, 224x224, 10 classes, the same weights), same preprocessing work
(resize 256, centre crop 224, ImageNet normalisation: the stock handler's own), the same
TorchServe (one server per batch size serving every arm's archive, one worker each,
batch delay 10 ms). Arms, all measured in every round, in random order within a round:

- ``visionline``: our handler as shipped (``cpu_inference: auto``: the worker times
  eager, conv-bn fused and oneDNN layout at load and keeps the fastest);
- ``visionline_eager``: our handler with ``cpu_inference: eager``: the handler alone,
  running the same forward pass as the stock handler;
- ``stock``: TorchServe's built-in ``image_classifier`` handler, as its docs set it up;
- ``in_process``: the forward pass our worker chose, called in a process of its own on
  preprocessed tensors at the same batch size (no HTTP, no decoding): the ceiling.

The three workers load at once when a server starts; ``worker_load_s`` is TorchServe's
own WorkerLoadTime for each (our ``auto`` worker's includes timing its forward plan).

So ``visionline_eager`` vs ``stock`` is what the handler buys, ``visionline`` vs
``visionline_eager`` what the forward plan buys, and ``visionline`` vs ``in_process``
what the request path costs. Ratios are paired: each round's ratio of the two arms'
throughputs, summarised by median, quartiles and range over rounds. A point's ratio is
its median paired ratio; ``paired_min_ratio_vs_stock`` and
``paired_median_ratio_vs_stock`` are the min and median of those over points.

Inputs: ``photo``, 640x480 JPEGs with photo-like content (smooth colour fields,
shapes, sensor noise; about 60-100 KB at quality 90), and ``small``, 320x320 JPEGs of
drawn shapes. Where the machine has at least 2 cores the load generator is pinned to
one core and the server (Java frontend, Python workers) and the in-process arm to the
others, as ``taskset`` would (on 2 cores: client on one, server on the other).
Latency percentiles pool every round's requests; a percentile q is reported only when
at least 10 requests lie beyond it (p90: n >= 100, p99: n >= 1000), with n alongside.

The default grid (2 inputs x batch 1, 8 x 1, 8, 32 clients, 5 rounds) takes about 25
minutes on 2 cores; ``make bench`` runs photo inputs at batch 8 (about 6 minutes).

    python benchmarks/serve.py [--rounds 5] [--min-requests-per-round 64]
                               [--inputs photo,small] [--batch-sizes 1,8]
                               [--concurrency 1,8,32] [--no-pin]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms as T

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import add_common_args, arm_order, paired, write_result
from benchmarks.serve_arms import (
    InProcess,
    Pinning,
    load,
    make_inputs,
    percentiles,
    worker_load_seconds,
    worker_plan,
)
from tests.support.ports import serve_ports
from visionline.config import PipelineConfig, ServeConfig, parse_config
from visionline.data.images import decode_image
from visionline.data.transforms import Preprocessing, eval_transform
from visionline.model.architectures import build_model
from visionline.serving.packaging import archiver_command, build_mar, handler_files
from visionline.serving.torchserve import ServedModel, TorchServe
from visionline.storage import LocalStore

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
CLASSES = [f"c{i}" for i in range(10)]
# arm -> model name on the server (None: not served)
ARMS = {
    "visionline": "ours",
    "visionline_eager": "ours_eager",
    "stock": "stock",
    "in_process": None,
}
BATCH_DELAY_MS = 10


# --------------------------------------------------------------------------- the model
def make_run(store: LocalStore, arch: str = "resnet18") -> PipelineConfig:
    cfg = parse_config(
        {
            "store": store.uri,
            "data": {
                "dataset": "bench",
                "image_size": 224,
                "crop_ratio": 0.875,
                "channels": 3,
                **IMAGENET,
            },
            "model": {"arch": arch},
            "serve": {"model_name": "ours", "top_k": 5, "cpu_inference": "auto"},
        }
    )
    torch.manual_seed(0)
    model = build_model(cfg.model, len(CLASSES), 3, 224).eval()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    store.put_bytes("runs/bench/model.pt", buf.getvalue())
    store.put_json(
        "runs/bench/run.json",
        {
            "classes": CLASSES,
            "preprocessing": {"image_size": 224, "channels": 3, "crop_ratio": 0.875, **IMAGENET},
        },
    )
    return cfg


def stock_mar(our_mar_src: Path, out: Path) -> Path:
    """The same weights and model file, with TorchServe's built-in image_classifier."""
    src = our_mar_src
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            *archiver_command(),
            "--model-name",
            "stock",
            "--version",
            "1",
            "--model-file",
            str(handler_files()[1]),
            "--serialized-file",
            str(src / "model.pt"),
            "--handler",
            "image_classifier",
            "--extra-files",
            f"{src / 'model_spec.json'},{src / 'index_to_name.json'}",
            "--export-path",
            str(out),
            "--force",
        ],
        check=True,
        capture_output=True,
    )
    return out / "stock.mar"


# --------------------------------------------------------------------------- preprocessing
def preprocess_cost(inputs: dict[str, list[bytes]], repeats: int) -> dict[str, dict[str, float]]:
    """ms per image of each handler's preprocessing, in this process: the part the two
    handlers really differ in besides the forward pass."""
    stock_tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(**IMAGENET)])
    ours_tf = eval_transform(
        Preprocessing(224, 3, tuple(IMAGENET["mean"]), tuple(IMAGENET["std"]), 0.875)
    )
    out = {}
    for name, images in inputs.items():
        ours_tf(decode_image(images[0]))  # first calls pay one-off set-up: not counted
        stock_tf(Image.open(io.BytesIO(images[0])).convert("RGB"))
        took = {"visionline": 0.0, "stock": 0.0}
        for _ in range(repeats):
            for img in images:
                t = time.perf_counter()
                ours_tf(decode_image(img))
                took["visionline"] += time.perf_counter() - t
                t = time.perf_counter()
                stock_tf(Image.open(io.BytesIO(img)).convert("RGB"))
                took["stock"] += time.perf_counter() - t
        out[name] = {k: round(v / (repeats * len(images)) * 1000, 3) for k, v in took.items()}
    return out


# --------------------------------------------------------------------------- main
@dataclass
class Measurements:
    """Per (input, batch size, concurrency) point: arm -> per-round throughputs and
    latencies; per batch size: what the workers chose and how long they took to load."""

    rates: dict[tuple, dict[str, list[float]]] = field(default_factory=dict)
    lat: dict[tuple, dict[str, list[float]]] = field(default_factory=dict)
    worker_plans: dict[int, str] = field(default_factory=dict)
    in_process_plans: dict[int, dict] = field(default_factory=dict)
    load_s: dict[int, dict[str, float]] = field(default_factory=dict)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="paired rounds per point")
    ap.add_argument("--min-requests-per-round", type=int, default=64)
    ap.add_argument("--requests-per-client", type=int, default=2)
    ap.add_argument("--inputs", default="photo,small")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--no-pin", action="store_true", help="do not pin client and server cores")
    ap.add_argument("--seed", type=int, default=0)
    add_common_args(ap)
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.min_requests_per_round = 2, 4
        args.batch_sizes, args.concurrency = "2", "1,2"
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    return args


def build_archives(tmp: Path) -> tuple[PipelineConfig, dict[str, Path], Path]:
    """Our archive as shipped, ours with eager inference and the stock one (model name ->
    .mar), and the weights file the in-process arm loads."""
    store = LocalStore(tmp / "store")
    cfg = make_run(store)
    ours = build_mar(store, "bench", "ours", "1", cfg, tmp / "ours")
    eager = build_mar(
        store,
        "bench",
        "ours_eager",
        "1",
        cfg.with_overrides(**{"serve.cpu_inference": "eager"}),
        tmp / "ours_eager",
    )
    stock = stock_mar(tmp / "ours" / "src", tmp / "stock")
    mars = {"ours": ours, "ours_eager": eager, "stock": stock}
    state_path = tmp / "state.pt"
    state_path.write_bytes(store.get_bytes("runs/bench/model.pt"))
    return cfg, mars, state_path


def start_server(server: TorchServe, bs: int, mars: dict[str, Path], pin: Pinning) -> None:
    # The server and its workers inherit the affinity of the thread that
    # starts them; the load generator's threads inherit the client core.
    if pin.on:
        os.sched_setaffinity(0, pin.server)
    server.start(
        [ServedModel(name, f"{name}.mar", bs, BATCH_DELAY_MS, 1) for name in mars],
        mars,
    )
    if pin.on:
        os.sched_setaffinity(0, pin.client)


def record_plans(server: TorchServe, bs: int, in_process: InProcess, m: Measurements) -> None:
    """What our worker chose and how long each worker took to load; the in-process arm
    then plans the same forward pass."""
    m.worker_plans[bs] = worker_plan(server)
    m.load_s[bs] = worker_load_seconds(server)
    # the ceiling runs the forward pass our worker chose
    choice = m.worker_plans[bs].split(" ", 1)[0]
    mode = choice if choice in ("eager", "fused", "mkldnn") else "auto"
    m.in_process_plans[bs] = in_process.plan(bs, mode)
    print(
        f"batch {bs}: our worker's {m.worker_plans[bs]}; load s {m.load_s[bs]}; "
        f"in-process {m.in_process_plans[bs]}",
        flush=True,
    )


def measure_point(
    key: tuple,
    urls: dict[str, str],
    token: str,
    images: list[bytes],
    in_process: InProcess,
    per_client: int,
    rounds: int,
    rng: random.Random,
    m: Measurements,
) -> None:
    """Every arm, every round, at one (input, batch size, concurrency) point."""
    name, bs, c = key
    m.rates[key] = {arm: [] for arm in ARMS}
    m.lat[key] = {arm: [] for arm in ARMS if ARMS[arm]}
    for r in range(rounds):
        for arm in arm_order(ARMS, rng):
            if arm == "in_process":
                got = in_process.rate(bs, c * per_client)
            else:
                res = load(urls[arm], token, images, c, per_client)
                got = res["requests_per_s"]
                m.lat[key][arm] += res["latencies_ms"]
            m.rates[key][arm].append(got)
        print(
            f"{name} batch {bs} clients {c} round {r + 1}/{rounds}: "
            + ", ".join(f"{a} {v[-1]:.1f}/s" for a, v in m.rates[key].items()),
            flush=True,
        )


def measure_batch_size(
    bs: int,
    tmp: Path,
    mars: dict[str, Path],
    in_process: InProcess,
    inputs: dict[str, list[bytes]],
    args: argparse.Namespace,
    rng: random.Random,
    pin: Pinning,
    m: Measurements,
) -> None:
    """One server at batch size ``bs`` serving every arm's archive, every point on it."""
    server = TorchServe(
        tmp / f"ts-{bs}",
        ServeConfig(
            model_name="ours",
            batch_size=bs,
            max_batch_delay_ms=BATCH_DELAY_MS,
            **serve_ports(prefix=""),
        ),
    )
    try:
        start_server(server, bs, mars, pin)
        record_plans(server, bs, in_process, m)
        token = server.tokens()["inference"]
        urls = {
            arm: f"{server.endpoints.inference}/predictions/{name}"
            for arm, name in ARMS.items()
            if name
        }
        for name, images in inputs.items():
            for url in urls.values():
                load(url, token, images, 2, 3)  # warm-up
            for c in args.concurrency:
                per_client = max(args.requests_per_client, -(-args.min_requests_per_round // c))
                key = (name, bs, c)
                measure_point(key, urls, token, images, in_process, per_client, args.rounds, rng, m)
    finally:
        if pin.on:
            os.sched_setaffinity(0, pin.all)
        server.stop()


def measure(
    args: argparse.Namespace, inputs: dict[str, list[bytes]], pin: Pinning, rng: random.Random
) -> Measurements:
    m = Measurements()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg, mars, state_path = build_archives(tmp)
        in_process = InProcess(cfg.model.arch, len(CLASSES), state_path, pin.server)
        try:
            for bs in args.batch_sizes:
                measure_batch_size(bs, tmp, mars, in_process, inputs, args, rng, pin, m)
        finally:
            in_process.close()
    return m


def summarise(m: Measurements) -> tuple[list[dict], list[dict]]:
    """Each arm's figures at each point, and each point's paired ratios."""
    points, pairs = [], []
    for (name, bs, c), by_arm in m.rates.items():
        for arm, values in by_arm.items():
            points.append(
                {
                    "input": name,
                    "batch_size": bs,
                    "concurrency": c,
                    "arm": arm,
                    "requests_per_s": round(statistics.median(values), 2),
                    "rounds_requests_per_s": [round(v, 2) for v in values],
                    **(
                        percentiles(m.lat[(name, bs, c)][arm])
                        if arm in m.lat[(name, bs, c)]
                        else {}
                    ),
                }
            )
        pairs.append(
            {
                "input": name,
                "batch_size": bs,
                "concurrency": c,
                "vs_stock": paired(by_arm["visionline"], by_arm["stock"]),
                "handler_alone_vs_stock": paired(by_arm["visionline_eager"], by_arm["stock"]),
                "plan_vs_eager": paired(by_arm["visionline"], by_arm["visionline_eager"]),
                "served_vs_in_process": paired(by_arm["visionline"], by_arm["in_process"]),
            }
        )
    return points, pairs


def figures(
    args: argparse.Namespace,
    inputs: dict[str, list[bytes]],
    pin: Pinning,
    preprocess_ms: dict[str, dict[str, float]],
    m: Measurements,
) -> dict:
    """What serve.json holds."""
    points, pairs = summarise(m)
    sizes_kb = {k: round(statistics.median(len(b) for b in v) / 1024, 1) for k, v in inputs.items()}
    vs_stock = [p["vs_stock"]["median"] for p in pairs]
    alone = [p["handler_alone_vs_stock"]["median"] for p in pairs]
    headline_input = "photo" if "photo" in inputs else next(iter(inputs))
    b8c32 = next(
        (
            p["served_vs_in_process"]["median"]
            for p in pairs
            if (p["input"], p["batch_size"], p["concurrency"]) == (headline_input, 8, 32)
        ),
        None,
    )
    return {
        "paired_min_ratio_vs_stock": min(vs_stock),
        "paired_median_ratio_vs_stock": round(statistics.median(vs_stock), 3),
        "paired_min_ratio_handler_alone_vs_stock": min(alone),
        "paired_median_ratio_handler_alone_vs_stock": round(statistics.median(alone), 3),
        "served_vs_in_process_b8_c32": b8c32,
        "served_vs_in_process_input": headline_input,
        "points_ratio_vs_stock": {
            f"{p['input']}_b{p['batch_size']}_c{p['concurrency']}": p["vs_stock"]["median"]
            for p in pairs
        },
        "worker_load_s": m.load_s,
        "worker_inference_plan": m.worker_plans,
        "in_process_plan": m.in_process_plans,
        "model": "resnet18 224x224, 10 classes",
        "workers_per_arm": 1,
        "batch_delay_ms": BATCH_DELAY_MS,
        "rounds": args.rounds,
        "min_requests_per_round": args.min_requests_per_round,
        "inputs": {k: {"images": len(v), "median_kb": sizes_kb[k]} for k, v in inputs.items()},
        "pinning": (
            {"client_cores": sorted(pin.client), "server_cores": sorted(pin.server)}
            if pin.on
            else f"none ({pin.unpinned()})"
        ),
        "preprocess_ms_per_image": preprocess_ms,
        "paired": pairs,
        "points": points,
        "targets": {
            "paired_min_ratio_vs_stock": 1.0,
            "served_vs_in_process_b8_c32": 0.85,
        },
    }


def main() -> None:
    args = parse_args()
    inputs = make_inputs(args.inputs.split(","))
    rng = random.Random(args.seed)
    pin = Pinning.of(args.no_pin)
    print(
        f"client cores {sorted(pin.client)}, server cores {sorted(pin.server)}"
        if pin.on
        else f"not pinned ({pin.unpinned()})",
        flush=True,
    )
    preprocess_ms = preprocess_cost(inputs, 2 if args.smoke else 10)
    print("preprocess ms/image", preprocess_ms, flush=True)
    m = measure(args, inputs, pin, rng)
    result = figures(args, inputs, pin, preprocess_ms, m)
    write_result("serve", result, args.results_dir, smoke=args.smoke)
    print(
        json.dumps(
            {
                "paired_min_ratio_vs_stock": result["paired_min_ratio_vs_stock"],
                "b8_c32": result["served_vs_in_process_b8_c32"],
            }
        )
    )


if __name__ == "__main__":
    main()
