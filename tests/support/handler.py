"""Our TorchServe handler in this process, with TorchServe's own Context, metrics cache
and request headers: the worker's code path without the Java frontend."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

from tests.conftest import REPO


def extract_mar(mar: Path, model_dir: Path) -> dict:
    with zipfile.ZipFile(mar) as z:
        z.extractall(model_dir)
    return json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())


def load_handler(model_dir: Path, manifest: dict, batch_size: int = 8):
    """(handler, context) for an extracted archive; put ``model_dir`` on sys.path first,
    as TorchServe does."""
    import ts
    from ts.context import Context
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    metrics = MetricsCacheYamlImpl(
        config_file_path=str(Path(ts.__file__).parent / "configs" / "metrics.yaml")
    )
    metrics.initialize_cache()
    ctx = Context(
        manifest["model"]["modelName"],
        str(model_dir),
        manifest,
        batch_size=batch_size,
        gpu=None,
        mms_version="0.12.0",
        metrics=metrics,
        model_yaml_config={},
    )
    spec = importlib.util.spec_from_file_location(
        "image_classifier", REPO / "handlers" / "image_classifier.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler = module.ImageClassifier()
    handler.initialize(ctx)
    return handler, ctx


def handle(handler, ctx, bodies: list[bytes], request_ids: list[str] | None = None):
    """One batch through the handler, as the worker receives it; (answers, statuses)."""
    from ts.context import RequestProcessor

    ids = request_ids or [None] * len(bodies)
    ctx.request_processor = [RequestProcessor({"X-Request-Id": rid} if rid else {}) for rid in ids]
    ctx.request_ids = {i: f"ts-{i}" for i in range(len(bodies))}
    out = handler.handle([{"body": b} for b in bodies], ctx)
    return out, [p._status_code for p in ctx.request_processor]
