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
import math
import multiprocessing as mp
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import add_common_args, arm_order, paired, write_result
from tests.support.ports import serve_ports
from visionline.config import ServeConfig, parse_config
from visionline.data.samples import draw_shape
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


# --------------------------------------------------------------------------- inputs
def photo_jpeg(rng: np.random.Generator, width: int = 640, height: int = 480) -> bytes:
    """A photo-sized JPEG whose size and decode cost resemble a camera picture's."""
    field = rng.integers(0, 256, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    im = Image.fromarray(field).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(12):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(20, 200)), int(rng.integers(20, 200))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x, y, x + w, y + h], colour)
    im = im.filter(ImageFilter.GaussianBlur(1.2))
    noisy = np.asarray(im, dtype=np.float32) + rng.normal(0, 7, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_inputs(names: list[str], count: int = 16) -> dict[str, list[bytes]]:
    rng = np.random.default_rng(0)
    out: dict[str, list[bytes]] = {}
    for name in names:
        if name == "photo":
            out[name] = [photo_jpeg(rng) for _ in range(count)]
        elif name == "small":
            imgs = []
            for i in range(count):
                buf = io.BytesIO()
                draw_shape(["circle", "square", "star", "cross"][i % 4], 320, rng).save(
                    buf, "JPEG", quality=90
                )
                imgs.append(buf.getvalue())
            out[name] = imgs
        else:
            raise SystemExit(f"--inputs: unknown input set {name!r} (photo, small)")
    return out


# --------------------------------------------------------------------------- the model
def make_run(store: LocalStore, arch: str = "resnet18"):
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


# --------------------------------------------------------------------------- CPU pinning
def split_cores(pin: bool) -> tuple[set[int], set[int]] | None:
    """(client cores, server cores), or None when pinning is off or impossible."""
    cores = sorted(os.sched_getaffinity(0))
    if not pin or len(cores) < 2:
        return None
    return {cores[0]}, set(cores[1:])


# --------------------------------------------------------------------------- in-process arm
def _forward_worker(conn, arch: str, state_path: str, cores: list[int] | None) -> None:
    """The in-process arm, in its own process so it can sit on the server's cores."""
    if cores:
        os.sched_setaffinity(0, cores)
        torch.set_num_threads(len(cores))
    from visionline.config import ModelConfig
    from visionline.serving.inference import plan_cpu_inference

    base = build_model(ModelConfig(arch=arch), len(CLASSES), 3, 224).eval()
    base.load_state_dict(torch.load(state_path, weights_only=True))
    plans: dict[int, torch.nn.Module] = {}
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            return
        if msg[0] == "plan":
            _, bs, mode = msg
            plan = plan_cpu_inference(base, (3, 224, 224), batch_sizes=(1, bs), mode=mode)
            plans[bs] = plan.model
            conn.send({"choice": plan.choice, "threads": torch.get_num_threads()})
        elif msg[0] == "run":
            _, bs, images = msg
            x = torch.randn(bs, 3, 224, 224, generator=torch.Generator().manual_seed(bs))
            calls = max(1, math.ceil(images / bs))
            with torch.inference_mode():
                plans[bs](x)
                t = time.perf_counter()
                for _ in range(calls):
                    plans[bs](x)
                seconds = time.perf_counter() - t
            conn.send(calls * bs / seconds)


class InProcess:
    def __init__(self, arch: str, state_path: Path, cores: set[int] | None) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_forward_worker,
            args=(child, arch, str(state_path), sorted(cores) if cores else None),
            daemon=True,
        )
        self.proc.start()

    def plan(self, bs: int, mode: str) -> dict:
        self.conn.send(("plan", bs, mode))
        return self.conn.recv()

    def rate(self, bs: int, images: int) -> float:
        self.conn.send(("run", bs, images))
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send(("stop",))
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.kill()


# --------------------------------------------------------------------------- load
def load(url: str, token: str, images: list[bytes], clients: int, per_client: int) -> dict:
    """``clients`` threads, each sending ``per_client`` requests back to back."""
    latencies: list[float] = []

    def client(i: int) -> list[float]:
        s = requests.Session()
        out = []
        for j in range(per_client):
            t = time.perf_counter()
            r = s.post(
                url,
                data=images[(i + j) % len(images)],
                headers={"Authorization": f"Bearer {token}"},
                timeout=300,
            )
            out.append(time.perf_counter() - t)
            r.raise_for_status()
        return out

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for lat in pool.map(client, range(clients)):
            latencies += lat
    wall = time.perf_counter() - start
    return {"requests_per_s": len(latencies) / wall, "latencies_ms": [x * 1000 for x in latencies]}


def percentiles(ms: list[float]) -> dict:
    """p50 always; p90 / p99 only with at least 10 requests beyond them."""
    v = sorted(ms)
    n = len(v)

    def pct(q: float) -> float | None:
        if n * (1 - q) < 10:
            return None
        return round(float(np.percentile(v, 100 * q)), 1)

    return {
        "n": n,
        "p50_ms": round(statistics.median(v), 1),
        "p90_ms": pct(0.9),
        "p99_ms": pct(0.99),
    }


# --------------------------------------------------------------------------- server logs
def worker_plan(server: TorchServe) -> str:
    """Our handler's 'cpu inference: ...' line from the worker log (the auto arm's)."""
    log = server.workdir / "logs" / "model_log.log"
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if "cpu inference:" in ln]
    auto = [ln for ln in lines if "(mode auto)" in ln]
    chosen = (auto or lines)[-1:] if lines else []
    return chosen[0].split("cpu inference:", 1)[1].strip() if chosen else "not logged"


def worker_load_seconds(server: TorchServe) -> dict[str, float]:
    """TorchServe's own WorkerLoadTime metric for each worker: from the load request to
    the model being ready, the handler's initialize() (and so the plan) included. Read
    from the metrics endpoint (our config sets metrics_mode=prometheus)."""
    out: dict[str, float] = {}
    try:
        text = requests.get(f"{server.endpoints.metrics}/metrics", timeout=10).text
    except requests.RequestException:
        return out
    # WorkerLoadTime{WorkerName="W-9000-<model>_<version>",Level="Host",...} 2345.0
    pattern = re.compile(r'^WorkerLoadTime\{[^}]*WorkerName="W-\d+-([^"]+)"[^}]*\}\s+([\d.eE+]+)')
    for line in text.splitlines():
        m = pattern.search(line)
        if m:
            out[m.group(1).rsplit("_", 1)[0]] = round(float(m.group(2)) / 1000, 2)
    return out


def preprocess_cost(inputs: dict[str, list[bytes]], repeats: int) -> dict[str, dict[str, float]]:
    """ms per image of each handler's preprocessing, in this process: the part the two
    handlers really differ in besides the forward pass."""
    from torchvision import transforms as T

    from visionline.data.images import decode_image
    from visionline.data.transforms import Preprocessing, eval_transform

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
def main() -> None:
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
    conc = [int(c) for c in args.concurrency.split(",")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    inputs = make_inputs(args.inputs.split(","))
    sizes_kb = {k: round(statistics.median(len(b) for b in v) / 1024, 1) for k, v in inputs.items()}
    rng = random.Random(args.seed)
    pinning = split_cores(not args.no_pin)
    client_cores, server_cores = pinning or (None, None)
    all_cores = os.sched_getaffinity(0)
    print(
        f"client cores {sorted(client_cores)}, server cores {sorted(server_cores)}"
        if pinning
        else f"not pinned ({len(all_cores)} cores{', --no-pin' if args.no_pin else ''})",
        flush=True,
    )
    preprocess_ms = preprocess_cost(inputs, 2 if args.smoke else 10)
    print("preprocess ms/image", preprocess_ms, flush=True)

    # per (input, batch size, concurrency) point: arm -> per-round throughputs, latencies
    rates: dict[tuple, dict[str, list[float]]] = {}
    lat: dict[tuple, dict[str, list[float]]] = {}
    worker_plans: dict[int, str] = {}
    in_process_plans: dict[int, dict] = {}
    load_s: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
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
        in_process = InProcess(cfg.model.arch, state_path, server_cores)
        try:
            for bs in batch_sizes:
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
                    # The server and its workers inherit the affinity of the thread that
                    # starts them; the load generator's threads inherit the client core.
                    if pinning:
                        os.sched_setaffinity(0, server_cores)
                    server.start(
                        [ServedModel(name, f"{name}.mar", bs, BATCH_DELAY_MS, 1) for name in mars],
                        mars,
                    )
                    if pinning:
                        os.sched_setaffinity(0, client_cores)
                    worker_plans[bs] = worker_plan(server)
                    load_s[bs] = worker_load_seconds(server)
                    # the ceiling runs the forward pass our worker chose
                    choice = worker_plans[bs].split(" ", 1)[0]
                    mode = choice if choice in ("eager", "fused", "mkldnn") else "auto"
                    in_process_plans[bs] = in_process.plan(bs, mode)
                    print(
                        f"batch {bs}: our worker's {worker_plans[bs]}; load s {load_s[bs]}; "
                        f"in-process {in_process_plans[bs]}",
                        flush=True,
                    )
                    token = server.tokens()["inference"]
                    urls = {
                        arm: f"{server.endpoints.inference}/predictions/{name}"
                        for arm, name in ARMS.items()
                        if name
                    }
                    for name, images in inputs.items():
                        for url in urls.values():
                            load(url, token, images, 2, 3)  # warm-up
                        for c in conc:
                            per_client = max(
                                args.requests_per_client, -(-args.min_requests_per_round // c)
                            )
                            key = (name, bs, c)
                            rates[key] = {arm: [] for arm in ARMS}
                            lat[key] = {arm: [] for arm in ARMS if ARMS[arm]}
                            for r in range(args.rounds):
                                for arm in arm_order(ARMS, rng):
                                    if arm == "in_process":
                                        got = in_process.rate(bs, c * per_client)
                                    else:
                                        res = load(urls[arm], token, images, c, per_client)
                                        got = res["requests_per_s"]
                                        lat[key][arm] += res["latencies_ms"]
                                    rates[key][arm].append(got)
                                print(
                                    f"{name} batch {bs} clients {c} round {r + 1}/{args.rounds}: "
                                    + ", ".join(
                                        f"{a} {v[-1]:.1f}/s" for a, v in rates[key].items()
                                    ),
                                    flush=True,
                                )
                finally:
                    if pinning:
                        os.sched_setaffinity(0, all_cores)
                    server.stop()
        finally:
            in_process.close()

    points, pairs = [], []
    for (name, bs, c), by_arm in rates.items():
        for arm, values in by_arm.items():
            points.append(
                {
                    "input": name,
                    "batch_size": bs,
                    "concurrency": c,
                    "arm": arm,
                    "requests_per_s": round(statistics.median(values), 2),
                    "rounds_requests_per_s": [round(v, 2) for v in values],
                    **(percentiles(lat[(name, bs, c)][arm]) if arm in lat[(name, bs, c)] else {}),
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
    write_result(
        "serve",
        {
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
            "worker_load_s": load_s,
            "worker_inference_plan": worker_plans,
            "in_process_plan": in_process_plans,
            "model": "resnet18 224x224, 10 classes",
            "workers_per_arm": 1,
            "batch_delay_ms": BATCH_DELAY_MS,
            "rounds": args.rounds,
            "min_requests_per_round": args.min_requests_per_round,
            "inputs": {k: {"images": len(v), "median_kb": sizes_kb[k]} for k, v in inputs.items()},
            "pinning": (
                {"client_cores": sorted(client_cores), "server_cores": sorted(server_cores)}
                if pinning
                else f"none ({len(all_cores)} cores{', --no-pin' if args.no_pin else ''})"
            ),
            "preprocess_ms_per_image": preprocess_ms,
            "paired": pairs,
            "points": points,
            "targets": {
                "paired_min_ratio_vs_stock": 1.0,
                "served_vs_in_process_b8_c32": 0.85,
            },
        },
        args.results_dir,
        smoke=args.smoke,
    )
    print(json.dumps({"paired_min_ratio_vs_stock": min(vs_stock), "b8_c32": b8c32}))


if __name__ == "__main__":
    main()
