"""The LitServe arm of ``benchmarks/serve.py``: the same resnet18 and weights, served by
LitServe with batching, as a LitServe user would write it. Runs in its own venv
(``make litserve-venv``, ``.litserve-venv``), so it imports nothing from this repository.

The work per request is the stock TorchServe handler's, which is also ours: decode the
JPEG (PIL), resize 256, centre crop 224, ImageNet normalisation, then for the batch one
forward pass, softmax and the top-k classes, answered as JSON ``{class: probability}``.

LitServe reads a JSON (or form) body; the other arms get the raw JPEG as the body. An
ASGI middleware in this server wraps a raw body as ``{"image": base64}``, the JSON a
LitServe client sends for an image, so every arm is sent the same bytes and LitServe
pays, on the server's cores, for the format its users send.

    .litserve-venv/bin/python benchmarks/litserve_app.py --state model.pt --port 8123 \
        --batch-size 8 --batch-timeout-ms 10 --threads 1 --classes c0,c1,...
"""

from __future__ import annotations

import argparse
import base64
import io
import json

import litserve as ls
import torch
import torchvision
from PIL import Image
from torchvision import transforms as T

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class RawImageAsJSON:
    """ASGI middleware: a POST whose body is not JSON or a form becomes
    ``{"image": base64(body)}`` with a JSON content type."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        headers = dict(scope.get("headers") or [])
        ctype = headers.get(b"content-type", b"")
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or ctype.startswith((b"application/json", b"multipart/"))
        ):
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        payload = json.dumps({"image": base64.b64encode(body).decode("ascii")}).encode()
        headers[b"content-type"] = b"application/json"
        headers[b"content-length"] = str(len(payload)).encode()
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()
            delivered = True
            return {"type": "http.request", "body": payload, "more_body": False}

        await self.app({**scope, "headers": list(headers.items())}, replay, send)


class ImageClassifierAPI(ls.LitAPI):
    def __init__(self, state: str, classes: list[str], top_k: int, threads: int, **kw) -> None:
        super().__init__(**kw)
        self.state, self.classes, self.top_k, self.threads = state, classes, top_k, threads

    def setup(self, device) -> None:
        torch.set_num_threads(self.threads)
        model = torchvision.models.resnet18(weights=None, num_classes=len(self.classes))
        model.load_state_dict(torch.load(self.state, weights_only=True))  # strict: same model
        self.model = model.eval()
        self.tf = T.Compose(
            [T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)]
        )

    def decode_request(self, request):
        data = base64.b64decode(request["image"])
        return self.tf(Image.open(io.BytesIO(data)).convert("RGB"))

    def batch(self, inputs):
        return torch.stack(inputs)

    def predict(self, x):
        with torch.inference_mode():
            probs = torch.softmax(self.model(x), dim=1)
            top_p, top_i = probs.topk(min(self.top_k, probs.shape[1]), dim=1)
        return list(zip(top_p.tolist(), top_i.tolist(), strict=True))

    def unbatch(self, output):
        return output

    def encode_response(self, output):
        p, i = output
        return {self.classes[c]: v for c, v in zip(i, p, strict=True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--state", required=True, help="the model's state_dict (torch.save)")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--batch-timeout-ms", type=float, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--classes", required=True, help="comma-separated class names")
    ap.add_argument("--api-path", default="/predict")
    args = ap.parse_args()
    api = ImageClassifierAPI(
        args.state,
        args.classes.split(","),
        args.top_k,
        args.threads,
        max_batch_size=args.batch_size,
        batch_timeout=args.batch_timeout_ms / 1000,
        api_path=args.api_path,
    )
    server = ls.LitServer(
        api,
        accelerator="cpu",
        workers_per_device=1,
        timeout=300,
        middlewares=[RawImageAsJSON],
    )
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False, num_api_servers=1)


if __name__ == "__main__":
    main()
