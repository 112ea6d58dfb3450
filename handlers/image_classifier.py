"""TorchServe handler for visionline models.

A minimal BaseHandler subclass: TorchServe's own initialize() loads the model and
``index_to_name.json``; we override only preprocess and postprocess. Preprocessing is
visionline's eval transform, imported, so serving resizes and normalises exactly as
training evaluated. A bad request in a batch gets its own 400 with a message; the
other requests in the batch are answered and the worker keeps serving.

Accepted bodies: raw image bytes (JPEG, PNG, WebP, BMP, TIFF, GIF; grayscale, RGBA,
CMYK, 16-bit...) or JSON ``{"data": "<base64 image>"}``.

TorchServe loads the single class defined in this module, so bad requests are plain
ValueErrors rather than a class of our own.
"""

from __future__ import annotations

import base64
import binascii
import json
import os

import torch
from ts.torch_handler.base_handler import BaseHandler

from visionline.data.images import decode_image
from visionline.data.transforms import Preprocessing, eval_transform


class ImageClassifier(BaseHandler):
    def _settings(self) -> dict:
        # Read once per worker from the archive's serving.json (initialize stays stock).
        if getattr(self, "_serving", None) is None:
            model_dir = self.context.system_properties["model_dir"]
            with open(os.path.join(model_dir, "serving.json")) as f:
                self._serving = json.load(f)
            self._pre = Preprocessing.from_dict(self._serving["preprocessing"])
            self._transform = eval_transform(self._pre)
        return self._serving

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
        limit = self._settings()["max_request_bytes"]
        if len(body) > limit:
            raise ValueError(f"image is {len(body)} bytes, over the limit of {limit}")
        return bytes(body)

    def preprocess(self, data: list[dict]) -> torch.Tensor:
        settings = self._settings()
        self._errors: dict[int, str] = {}
        self._count = len(data)
        tensors = []
        for idx, row in enumerate(data):
            try:
                image = decode_image(self._payload(idx, row), settings["max_image_pixels"])
                tensors.append(self._transform(image))
            except ValueError as e:  # ImageDecodeError is one too
                self._errors[idx] = str(e)
        if not tensors:
            s = self._pre.image_size
            return torch.empty((0, self._pre.channels, s, s), device=self.device)
        return torch.stack(tensors).to(self.device)

    def postprocess(self, data: torch.Tensor) -> list[dict]:
        probs = torch.softmax(data.float(), dim=1)
        k = min(int(self._settings()["top_k"]), probs.shape[1]) if probs.numel() else 0
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
