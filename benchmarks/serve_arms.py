"""How the serving benchmarks drive their arms and read their servers: the JPEGs they
send, the cores the load generator and the server sit on, the in-process forward-pass
arm in a process of its own, the HTTP load generator (with the latency percentiles it
reports), and the worker's plan and load time as TorchServe reports them.

Used by ``benchmarks/serve.py`` (every arm) and ``benchmarks/capture.py`` (inputs, load).
"""

from __future__ import annotations

import io
import math
import multiprocessing as mp
import os
import re
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
import torch
from PIL import Image, ImageDraw, ImageFilter

from visionline.config import ModelConfig
from visionline.data.samples import draw_shape
from visionline.model.architectures import build_model
from visionline.serving.inference import plan_cpu_inference
from visionline.serving.torchserve import TorchServe


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


# --------------------------------------------------------------------------- CPU pinning
def split_cores(pin: bool) -> tuple[set[int], set[int]] | None:
    """(client cores, server cores), or None when pinning is off or impossible."""
    cores = sorted(os.sched_getaffinity(0))
    if not pin or len(cores) < 2:
        return None
    return {cores[0]}, set(cores[1:])


@dataclass(frozen=True)
class Pinning:
    """Which cores the load generator and the server sit on (``client`` None: unpinned)."""

    client: set[int] | None
    server: set[int] | None
    all: set[int]
    no_pin: bool

    @classmethod
    def of(cls, no_pin: bool) -> Pinning:
        client, server = split_cores(not no_pin) or (None, None)
        return cls(client, server, os.sched_getaffinity(0), no_pin)

    @property
    def on(self) -> bool:
        return self.client is not None

    def unpinned(self) -> str:
        return f"{len(self.all)} cores{', --no-pin' if self.no_pin else ''}"


# --------------------------------------------------------------------------- in-process arm
def _forward_worker(
    conn, arch: str, num_classes: int, state_path: str, cores: list[int] | None
) -> None:
    """The in-process arm, in its own process so it can sit on the server's cores."""
    if cores:
        os.sched_setaffinity(0, cores)
        torch.set_num_threads(len(cores))
    base = build_model(ModelConfig(arch=arch), num_classes, 3, 224).eval()
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


class PipeWorker:
    """A measuring process of its own, driven over a pipe: ``plan`` and ``rate`` ask it,
    ``close`` stops it (the in-process ceilings)."""

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child, *args), daemon=True)
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


class InProcess(PipeWorker):
    """The forward pass alone, at a batch size, on preprocessed tensors: the ceiling."""

    def __init__(
        self, arch: str, num_classes: int, state_path: Path, cores: set[int] | None
    ) -> None:
        self._spawn(
            _forward_worker, arch, num_classes, str(state_path), sorted(cores) if cores else None
        )


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
        if round(n * (1 - q), 9) < 10:  # 100 * (1 - 0.9) is 9.999...: still 10 beyond p90
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
