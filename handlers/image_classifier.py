"""TorchServe handler for visionline models.

A minimal BaseHandler subclass: TorchServe's own initialize() loads the model and
``index_to_name.json``; on CPU we then let ``visionline.serving.inference`` pick how the
forward pass runs (eager, conv-bn fused, or oneDNN layout: measured at load, verified
against eager). Preprocessing is visionline's eval transform, imported, so serving
resizes and normalises exactly as training evaluated. A bad request in a batch gets
its own 4xx with a message; the other requests in the batch are answered and the
worker keeps serving.

Accepted bodies (``visionline.serving.requests`` turns each into image bytes): raw
image bytes (JPEG, PNG, WebP, BMP, TIFF, GIF; grayscale, RGBA, CMYK, 16-bit...) under
any content type TorchServe leaves intact, a single-file multipart upload under any
field name, or JSON ``{"data": "<base64 image>"}``. Every image is checked against the
archive's limits from its header (``visionline.data.images``) before it is decoded.

Explanations (``POST /explanations/<model>``) are answered per request with gradient
saliency for the predicted class: TorchServe decides "explain" for a whole batch from
its first request, so both paths end in ``postprocess``, which answers each request as
it asked.

A sample of requests (``monitor.sample_rate``) is described for monitoring and written
to the store in the background (``visionline.monitoring.capture``); a request never
waits for that and never fails because of it.

TorchServe loads the single class defined in this module, so bad requests are plain
ValueErrors rather than a class of our own.
"""

from __future__ import annotations

import json
import logging
import os

import torch
from ts.torch_handler.base_handler import BaseHandler

from visionline.data.images import decode_image
from visionline.data.transforms import Preprocessing
from visionline.model.predictor import Predictor
from visionline.monitoring.capture import RequestCapture
from visionline.serving.explain import explanation, gradient_saliency
from visionline.serving.inference import plan_cpu_inference
from visionline.serving.requests import (
    decode_limits,
    error_message,
    image_bytes,
    status_phrase,
    wants_explanation,
)

logger = logging.getLogger(__name__)


class ImageClassifier(BaseHandler):
    def initialize(self, context) -> None:
        super().initialize(context)
        model_dir = context.system_properties["model_dir"]
        with open(os.path.join(model_dir, "serving.json")) as f:
            self._serving = json.load(f)
        self._pre = Preprocessing.from_dict(self._serving["preprocessing"])
        self._limits = decode_limits(self._serving, self._pre.resize_to)
        self._explain_model = self.model  # autograd-capable, whatever the plan serves
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
        # a sample of requests, described and written to the store in the background
        self.capture = RequestCapture.for_worker(model_dir, context, self.model, self._pre)

    def preprocess(self, data: list[dict]) -> torch.Tensor:
        self._errors: dict[int, tuple[int, str]] = {}
        self._explain: set[int] = set()
        self._count = len(data)
        tensors, captured = [], []
        for idx, row in enumerate(data):
            headers = self.context.get_all_request_header(idx) or {}
            try:
                payload = image_bytes(row, headers, self._serving["max_request_bytes"])
                image = decode_image(payload, **self._limits)
                tensors.append(self.predictor.transform(image))
            except ValueError as e:  # RequestError and ImageDecodeError are ones too
                self._errors[idx] = (getattr(e, "status", 400), error_message(e))
                continue
            captured.append((idx, image.size, payload))
            if wants_explanation(headers):
                self._explain.add(idx)
        if not tensors:
            s = self._pre.image_size
            self._batch = torch.empty((0, self._pre.channels, s, s), device=self.device)
        else:
            self._batch = torch.stack(tensors).to(self.device)
            self.capture.start(self.context, captured, self._batch)
        return self._batch

    def explain_handle(self, data_preprocess: torch.Tensor, raw_data: list) -> list[dict]:
        # Called for the whole batch when its first request asked for explanations:
        # postprocess answers every request as that request asked.
        return self.postprocess(self.inference(data_preprocess))

    def postprocess(self, data: torch.Tensor) -> list[dict]:
        probs = self.predictor.probabilities(data)
        self.capture.finish(probs)
        k = min(int(self._serving["top_k"]), probs.shape[1]) if probs.numel() else 0
        top_p, top_i = probs.topk(k, dim=1) if k else (probs, probs)
        answers = iter(zip(top_p.tolist(), top_i.tolist(), strict=True))
        explained = self._explanations()
        out = []
        for idx in range(self._count):
            if idx in self._errors:
                status, message = self._errors[idx]
                # the status line is the code's own phrase: the message quotes the client
                self.context.set_response_status(status, status_phrase(status), idx)
                out.append({"error": message, "code": status})
                continue
            p, i = next(answers)
            out.append(
                explained[idx]
                if idx in explained
                else {
                    (self.mapping or {}).get(str(c), str(c)): v for c, v in zip(i, p, strict=True)
                }
            )
        return out

    def _explanations(self) -> dict[int, dict]:
        """Saliency for the requests that asked for it, by request index."""
        if not self._explain:
            return {}
        ok = [idx for idx in range(self._count) if idx not in self._errors]
        rows = [ok.index(idx) for idx in sorted(self._explain)]
        probs, target, maps = gradient_saliency(self._explain_model, self._batch[rows])
        k = int(self._serving["top_k"])
        return {
            idx: explanation(probs[j], int(target[j]), maps[j], self.mapping, k)
            for j, idx in enumerate(sorted(self._explain))
        }
