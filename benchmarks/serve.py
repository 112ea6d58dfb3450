"""Serving throughput and latency: our handler vs TorchServe's stock image_classifier.

Same model (resnet18, 224x224, 10 classes, the same weights), same preprocessing work
(resize 256, centre crop 224, ImageNet normalisation: the stock handler's own), same
server settings; batch size 1 and 8; 1, 8 and 32 concurrent clients. Each point is the
median of rounds in which the two handlers alternate. The in-process forward pass (no
HTTP, no decoding) is the upper bound: eager for the stock handler, and the forward pass
our worker planned (``visionline.serving.inference``: eager, conv-bn fused or oneDNN
layout, measured at load and verified against eager) for ours. The plan each of our
workers chose is recorded from its log.

    python benchmarks/serve.py [--requests-per-client 8] [--min-requests-per-round 64]
                               [--rounds 5]

Every round sends at least ``--min-requests-per-round`` requests (a single client sends
64, not 8), so a round at low concurrency is long enough not to be decided by one
hiccup of a shared machine.
"""

from __future__ import annotations

import argparse
import io
import json
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
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_result
from tests.support.ports import serve_ports
from visionline.config import ServeConfig, parse_config
from visionline.data.samples import draw_shape
from visionline.models import build_model
from visionline.packaging import archiver_command, build_mar, handler_files
from visionline.serving.inference import plan_cpu_inference
from visionline.serving.torchserve import ServedModel, TorchServe
from visionline.storage import LocalStore

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
CLASSES = [f"c{i}" for i in range(10)]


def make_run(store: LocalStore, tmp: Path):
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
            "model": {"arch": "resnet18"},
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
    return cfg, model


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


def worker_plan(server: TorchServe) -> str:
    """The handler's 'cpu inference: ...' line from the worker log."""
    log = server.workdir / "logs" / "model_log.log"
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if "cpu inference:" in ln]
    return lines[-1].split("cpu inference:", 1)[1].strip() if lines else "not logged"


def load(url: str, token: str, images: list[bytes], clients: int, per_client: int) -> dict:
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
            )
            out.append(time.perf_counter() - t)
            r.raise_for_status()
        return out

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for lat in pool.map(client, range(clients)):
            latencies += lat
    wall = time.perf_counter() - start
    ms = sorted(x * 1000 for x in latencies)
    return {
        "requests_per_s": round(len(ms) / wall, 2),
        "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests-per-client", type=int, default=8)
    ap.add_argument("--min-requests-per-round", type=int, default=64)
    ap.add_argument(
        "--rounds", type=int, default=5, help="alternating rounds per point; the median counts"
    )
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--batch-sizes", default="1,8")
    args = ap.parse_args()
    conc = [int(c) for c in args.concurrency.split(",")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    rng = np.random.default_rng(0)
    images = []
    for i in range(16):
        buf = io.BytesIO()
        draw_shape(["circle", "square", "star", "cross"][i % 4], 320, rng).save(
            buf, "JPEG", quality=90
        )
        images.append(buf.getvalue())

    points = []
    worker_plans: dict[int, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = LocalStore(tmp / "store")
        cfg, model = make_run(store, tmp)
        ours = build_mar(store, "bench", "ours", "1", cfg, tmp / "ours")
        stock = stock_mar(tmp / "ours" / "src", tmp / "stock")

        # the part the two handlers really differ in: per-image preprocessing, in-process
        from torchvision import transforms as T

        from visionline.data.images import decode_image
        from visionline.data.transforms import Preprocessing, eval_transform

        stock_tf = T.Compose(
            [
                T.Resize(256),
                T.CenterCrop(224),
                T.ToTensor(),
                T.Normalize(IMAGENET["mean"], IMAGENET["std"]),
            ]
        )
        ours_tf = eval_transform(
            Preprocessing(224, 3, tuple(IMAGENET["mean"]), tuple(IMAGENET["std"]), 0.875)
        )
        pre = {"visionline": 0.0, "stock": 0.0}
        for _ in range(20):
            for img in images:
                t = time.perf_counter()
                ours_tf(decode_image(img))
                pre["visionline"] += time.perf_counter() - t
                t = time.perf_counter()
                stock_tf(Image.open(io.BytesIO(img)))
                pre["stock"] += time.perf_counter() - t
        preprocess_ms = {k: round(v / (20 * len(images)) * 1000, 3) for k, v in pre.items()}
        print("preprocess ms/image", preprocess_ms)

        # upper bound: the model alone, on preprocessed tensors; eager, and as our worker
        # would plan it for this batch size
        for bs in batch_sizes:
            planned = plan_cpu_inference(model, (3, 224, 224), batch_sizes=(1, bs))
            x = torch.randn(bs, 3, 224, 224)
            for label, m in (
                ("in_process_forward", model),
                (f"in_process_forward_{planned.choice}", planned.model),
            ):
                with torch.inference_mode():
                    m(x)
                    t, n = time.perf_counter(), 0
                    while time.perf_counter() - t < 5:
                        m(x)
                        n += bs
                rate = n / (time.perf_counter() - t)
                points.append(
                    {
                        "handler": label,
                        "concurrency": 0,
                        "batch_size": bs,
                        "requests_per_s": round(rate, 2),
                        "p50_ms": round(1000 * bs / rate, 1),
                        "p99_ms": None,
                    }
                )
                print(points[-1])

        for bs in batch_sizes:
            # Both servers up at once (each in its own temp dir, so their workers' sockets
            # do not collide); an idle server costs next to no CPU. The two handlers then
            # alternate, round after round, so drift on the machine hits both alike.
            servers = {}
            try:
                for handler, name, mar in (("visionline", "ours", ours), ("stock", "stock", stock)):
                    serve_cfg = ServeConfig(
                        model_name=name,
                        batch_size=bs,
                        max_batch_delay_ms=10,
                        **serve_ports(prefix=""),
                    )
                    server = TorchServe(tmp / f"ts-{name}-{bs}", serve_cfg)
                    servers[handler] = server
                    server.start([ServedModel(name, f"{name}.mar", bs, 10, 1)], {name: mar})
                worker_plans[bs] = worker_plan(servers["visionline"])
                print(f"batch {bs}: our worker's {worker_plans[bs]}")
                urls = {
                    h: (
                        f"{srv.endpoints.inference}/predictions/{'ours' if h == 'visionline' else 'stock'}",
                        srv.tokens()["inference"],
                    )
                    for h, srv in servers.items()
                }
                for url, token in urls.values():
                    load(url, token, images, 2, 3)  # warm-up
                for c in conc:
                    per_client = max(args.requests_per_client, -(-args.min_requests_per_round // c))
                    rounds: dict[str, list[dict]] = {h: [] for h in urls}
                    for _ in range(args.rounds):
                        for h, (url, token) in urls.items():
                            rounds[h].append(load(url, token, images, c, per_client))
                    for h, rs in rounds.items():
                        med = sorted(rs, key=lambda r: r["requests_per_s"])[len(rs) // 2]
                        points.append(
                            {
                                "handler": h,
                                "concurrency": c,
                                "batch_size": bs,
                                **med,
                                "rounds_requests_per_s": [r["requests_per_s"] for r in rs],
                            }
                        )
                        print(points[-1])
            finally:
                for server in servers.values():
                    server.stop()

    ratios = []
    for bs in batch_sizes:
        for c in conc:
            o = next(
                p
                for p in points
                if p["handler"] == "visionline" and p["batch_size"] == bs and p["concurrency"] == c
            )
            s = next(
                p
                for p in points
                if p["handler"] == "stock" and p["batch_size"] == bs and p["concurrency"] == c
            )
            ratios.append(o["requests_per_s"] / s["requests_per_s"])
    write_result(
        "serve",
        {
            "min_ratio_vs_stock": round(min(ratios), 3),
            "median_ratio_vs_stock": round(statistics.median(ratios), 3),
            "model": "resnet18 224x224, 10 classes",
            "workers": 1,
            "requests_per_client": args.requests_per_client,
            "min_requests_per_round": args.min_requests_per_round,
            "rounds": args.rounds,
            "preprocess_ms_per_image": preprocess_ms,
            "worker_inference_plan": worker_plans,
            "points": points,
        },
    )
    print(json.dumps({"min_ratio_vs_stock": round(min(ratios), 3)}))


if __name__ == "__main__":
    main()
