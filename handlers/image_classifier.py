"""TorchServe handler for visionline models.

A minimal BaseHandler subclass: TorchServe's own initialize() loads the model and
``index_to_name.json``; on CPU we then let ``visionline.serving.inference`` pick how the
forward pass runs (eager, conv-bn fused, or oneDNN layout: measured at load, verified
against eager). Preprocessing is visionline's eval transform, imported, so serving
resizes and normalises exactly as training evaluated. A bad request in a batch gets
its own 400 with a message; the other requests in the batch are answered and the
worker keeps serving.

Accepted bodies: raw image bytes (JPEG, PNG, WebP, BMP, TIFF, GIF; grayscale, RGBA,
CMYK, 16-bit...) or JSON ``{"data": "<base64 image>"}``.

TorchServe loads the single class defined in this module, so bad requests are plain
ValueErrors rather than a class of our own.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os

import torch
from ts.torch_handler.base_handler import BaseHandler

from visionline.data.images import decode_image
from visionline.data.transforms import Preprocessing
from visionline.predictor import Predictor
from visionline.serving.inference import plan_cpu_inference

logger = logging.getLogger(__name__)


class ImageClassifier(BaseHandler):
    def initialize(self, context) -> None:
        super().initialize(context)
        model_dir = context.system_properties["model_dir"]
        with open(os.path.join(model_dir, "serving.json")) as f:
            self._serving = json.load(f)
        self._pre = Preprocessing.from_dict(self._serving["preprocessing"])
        self.inference_plan = None
        if self.device.type == "cpu":
            size = self._pre.image_size
            self.inference_plan = plan_cpu_inference(
                self.model,
                (self._pre.channels, size, size),
                batch_sizes=(1, int(context.system_properties.get("batch_size") or 1)),
                # archives packaged before the setting existed keep running eager
                mode=self._serving.get("cpu_inference", "eager"),
            )
            self.model = self.inference_plan.model
            logger.info(self.inference_plan.summary())
        mapping = self.mapping or {}
        classes = [mapping.get(str(i), str(i)) for i in range(len(mapping))]
        # BaseHandler.inference runs self.model; the predictor supplies the preprocessing
        # and the probabilities, exactly as evaluation and the parity check compute them.
        self.predictor = Predictor(self.model, self._pre, classes, self.device)

    def _payload(self, idx: int, row: dict) -> bytes:
        body = row.get("data") if row.get("data") is not None else row.get("body")
        if body is None:
            raise ValueError('empty request: send image bytes or JSON {"data": "<base64>"}')
        if isinstance(body, dict):
            encoded = body.get("data", body.get("b64"))
            if not isinstance(encoded, str):
                raise ValueError('JSON body must be {"data": "<base64-encoded image>"}')
            try:
                body = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError) as e:
                raise ValueError(f"JSON field 'data' is not valid base64: {e}") from e
        elif isinstance(body, str):
            raise ValueError('text body: send raw image bytes or JSON {"data": "<base64>"}')
        elif isinstance(body, (bytes, bytearray)):
            headers = self.context.get_all_request_header(idx) or {}
            content_type = next(
                (str(v).lower() for k, v in headers.items() if k.lower() == "content-type"), ""
            )
            if content_type.startswith("application/json"):
                raise ValueError("malformed JSON body (Content-Type is application/json)")
        else:
            raise ValueError(f"unsupported request body of type {type(body).__name__}")
        limit = self._serving["max_request_bytes"]
        if len(body) > limit:
            raise ValueError(f"image is {len(body)} bytes, over the limit of {limit}")
        return bytes(body)

    def preprocess(self, data: list[dict]) -> torch.Tensor:
        self._errors: dict[int, str] = {}
        self._count = len(data)
        tensors = []
        for idx, row in enumerate(data):
            try:
                image = decode_image(self._payload(idx, row), self._serving["max_image_pixels"])
                tensors.append(self.predictor.transform(image))
            except ValueError as e:  # ImageDecodeError is one too
                self._errors[idx] = str(e)
        if not tensors:
            s = self._pre.image_size
            return torch.empty((0, self._pre.channels, s, s), device=self.device)
        return torch.stack(tensors).to(self.device)

    def postprocess(self, data: torch.Tensor) -> list[dict]:
        probs = self.predictor.probabilities(data)
        k = min(int(self._serving["top_k"]), probs.shape[1]) if probs.numel() else 0
        top_p, top_i = probs.topk(k, dim=1) if k else (probs, probs)
        answers = iter(zip(top_p.tolist(), top_i.tolist(), strict=True))
        out = []
        for idx in range(self._count):
            if idx in self._errors:
                self.context.set_response_status(400, self._errors[idx], idx)
                out.append({"error": self._errors[idx], "code": 400})
                continue
            p, i = next(answers)
            out.append(
                {(self.mapping or {}).get(str(c), str(c)): v for c, v in zip(i, p, strict=True)}
            )
        return out
