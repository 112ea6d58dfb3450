"""The in-process ceiling of the full request path: what our worker does per batch, with
no HTTP and no TorchServe, in a process of its own on the server's cores. Per batch of
``batch_size`` of the same JPEGs the served arms get: decode (our handler's
``decode_image``, with the archive's limits), preprocessing (the archive's eval
transform), stacking, the forward pass our worker chose, softmax and the top-k.

``serve_arms.InProcess`` stays beside it as the forward-only figure (a fixed tensor,
nothing decoded): the two together show how much of the gap is the request path's own
work and how much is HTTP and TorchServe.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch

from benchmarks.serve_arms import PipeWorker
from visionline.config import ModelConfig
from visionline.data.images import decode_image
from visionline.data.transforms import Preprocessing
from visionline.model.architectures import build_model
from visionline.model.predictor import Predictor
from visionline.serving.inference import plan_cpu_inference
from visionline.serving.requests import decode_limits


def _full_path_worker(
    conn, arch: str, num_classes: int, serving_json: str, state_path: str, cores
) -> None:
    if cores:
        os.sched_setaffinity(0, cores)
        torch.set_num_threads(len(cores))
    serving = json.loads(Path(serving_json).read_text())
    pre = Preprocessing.from_dict(serving["preprocessing"])
    limits = decode_limits(serving, pre.resize_to)
    top_k = int(serving["top_k"])
    classes = [str(i) for i in range(num_classes)]
    base = build_model(ModelConfig(arch=arch), len(classes), pre.channels, pre.image_size).eval()
    base.load_state_dict(torch.load(state_path, weights_only=True))
    predictors: dict[int, Predictor] = {}
    images: list[bytes] = []
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            return
        if msg[0] == "images":
            images = msg[1]
            conn.send(len(images))
        elif msg[0] == "plan":
            _, bs, mode = msg
            size = pre.image_size
            plan = plan_cpu_inference(base, (pre.channels, size, size), (1, bs), mode=mode)
            predictors[bs] = Predictor(plan.model, pre, classes)
            conn.send({"choice": plan.choice})
        elif msg[0] == "run":
            _, bs, count = msg
            conn.send(_run(predictors[bs], images, bs, count, limits, top_k))


def _run(pred: Predictor, images: list[bytes], bs: int, count: int, limits, top_k: int) -> float:
    """Images per second over ``ceil(count / bs)`` full batches (one untimed first)."""
    calls = max(1, math.ceil(count / bs))

    def batch(i: int) -> list:
        chunk = [images[(i * bs + j) % len(images)] for j in range(bs)]
        x = torch.stack([pred.transform(decode_image(b, **limits)) for b in chunk])
        with torch.inference_mode():
            probs = pred.probabilities(pred.model(x))
        p, idx = probs.topk(min(top_k, probs.shape[1]), dim=1)
        return [
            dict(zip(map(str, i), q, strict=True))
            for i, q in zip(idx.tolist(), p.tolist(), strict=True)
        ]

    batch(0)
    t = time.perf_counter()
    for i in range(calls):
        batch(i)
    return calls * bs / (time.perf_counter() - t)


class FullPathInProcess(PipeWorker):
    """Decode, preprocess, forward, softmax and top-k in a process of its own."""

    def __init__(
        self,
        arch: str,
        num_classes: int,
        serving_json: Path,
        state_path: Path,
        images: list[bytes],
        cores: set[int] | None,
    ) -> None:
        self._spawn(
            _full_path_worker,
            arch,
            num_classes,
            str(serving_json),
            str(state_path),
            sorted(cores) if cores else None,
        )
        self.use_images(images)

    def use_images(self, images: list[bytes]) -> None:
        self.conn.send(("images", list(images)))
        self.conn.recv()
