"""What the serving benchmark serves: the model and its weights, our archives and the
stock handler's (eager, and compiled as TorchServe 0.12's ``model-config.yaml`` offers),
the per-image preprocessing cost, and each worker's load time measured one at a time.
"""

from __future__ import annotations

import io
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests
import torch
from PIL import Image
from torchvision import transforms as T

from visionline.config import PipelineConfig, parse_config
from visionline.data.images import decode_image
from visionline.data.transforms import Preprocessing, eval_transform
from visionline.model.architectures import build_model
from visionline.serving.packaging import archiver_command, build_mar, handler_files
from visionline.serving.torchserve import TorchServe
from visionline.storage import LocalStore

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
CLASSES = [f"c{i}" for i in range(10)]

# The best CPU setting TorchServe 0.12's model-config.yaml offers the stock handler:
# BaseHandler.initialize reads ``pt2.compile`` and, with ``enable: true``, calls
# ``torch.compile(model, **the other keys)`` (backend checked against ts.utils.util's
# PT2Backend: inductor is the CPU compiler; the CUDA-graph modes do nothing on CPU).
# ``options: {freezing: true}`` is inductor's inference setting for CPU: weights become
# constants, batch norm folds into the convolutions and oneDNN prepacks them. IPEX, the
# other CPU path, needs intel-extension-for-pytorch, which has no release for torch 2.14.
# Compilation happens at the first batch of each new shape, not at load.
COMPILED_CONFIG = """\
pt2:
  compile:
    enable: true
    backend: inductor
    options:
      freezing: true
"""


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


def stock_mar(src: Path, out: Path, name: str = "stock", config: str | None = None) -> Path:
    """The same weights and model file, with TorchServe's built-in image_classifier (and
    with ``config`` as the archive's model-config.yaml)."""
    out.mkdir(parents=True, exist_ok=True)
    extra = []
    if config is not None:
        (out / "model-config.yaml").write_text(config)
        extra = ["--config-file", str(out / "model-config.yaml")]
    subprocess.run(
        [
            *archiver_command(),
            "--model-name",
            name,
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
            *extra,
            "--export-path",
            str(out),
            "--force",
        ],
        check=True,
        capture_output=True,
    )
    return out / f"{name}.mar"


@dataclass(frozen=True)
class Archives:
    cfg: PipelineConfig
    mars: dict[str, Path]  # model name on the server -> .mar
    state_path: Path  # the weights (a state_dict), for the in-process and LitServe arms
    serving_json: Path  # our archive's serving.json: the full-path ceiling's settings


def build_archives(tmp: Path, arch: str = "resnet18") -> Archives:
    """Ours as shipped, ours with eager inference, stock eager and stock compiled."""
    store = LocalStore(tmp / "store")
    cfg = make_run(store, arch)
    ours = build_mar(store, "bench", "ours", "1", cfg, tmp / "ours")
    eager_cfg = cfg.with_overrides(**{"serve.cpu_inference": "eager"})
    eager = build_mar(store, "bench", "ours_eager", "1", eager_cfg, tmp / "ours_eager")
    src = tmp / "ours" / "src"
    stock = stock_mar(src, tmp / "stock")
    compiled = stock_mar(src, tmp / "stock_compiled", "stock_compiled", COMPILED_CONFIG)
    state_path = tmp / "state.pt"
    state_path.write_bytes(store.get_bytes("runs/bench/model.pt"))
    mars = {"ours": ours, "ours_eager": eager, "stock": stock, "stock_compiled": compiled}
    return Archives(cfg, mars, state_path, src / "serving.json")


def preprocess_cost(inputs: dict[str, list[bytes]], repeats: int) -> dict[str, dict[str, float]]:
    """ms per image of each handler's decode and preprocessing, in this process: the part
    the handlers really differ in besides the forward pass."""
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


def _load_times(server: TorchServe, model: str) -> dict[str, float]:
    """TorchServe's WorkerLoadTime (s) of each of ``model``'s workers, by worker name."""
    try:
        text = requests.get(f"{server.endpoints.metrics}/metrics", timeout=10).text
    except requests.RequestException:
        return {}
    pattern = re.compile(
        r'^WorkerLoadTime\{[^}]*WorkerName="(W-\d+-'
        + re.escape(model)
        + r'_[^"]*)"[^}]*\}\s+([\d.eE+]+)'
    )
    return {
        m.group(1): round(float(m.group(2)) / 1000, 2)
        for ln in text.splitlines()
        if (m := pattern.search(ln))
    }


def _scale(server: TorchServe, headers: dict, model: str, workers: int) -> float:
    t = time.perf_counter()
    r = requests.put(
        f"{server.endpoints.management}/models/{model}",
        params={"min_worker": workers, "max_worker": workers, "synchronous": "true"},
        headers=headers,
        timeout=600,
    )
    if not r.ok:
        raise RuntimeError(f"scaling {model} to {workers} workers: {r.status_code} {r.text}")
    return round(time.perf_counter() - t, 2)


def solo_load_seconds(server: TorchServe, models: list[str]) -> dict:
    """Each archive's worker loaded while no other worker loads: on the running, idle
    server, the model scaled to a second worker, synchronously, then back to one (the
    server runs with registering models off, so scaling is how to load one alone).
    TorchServe's WorkerLoadTime of the new worker, and the wall time of the call."""
    headers = {"Authorization": f"Bearer {server.tokens()['management']}"}
    out = {}
    for name in models:
        before = _load_times(server, name)
        wall = _scale(server, headers, name, 2)
        new = {w: s for w, s in _load_times(server, name).items() if w not in before}
        out[name] = {
            "worker_load_s": next(iter(new.values()), None),
            "scale_up_wall_s": wall,
        }
        _scale(server, headers, name, 1)
    return out
