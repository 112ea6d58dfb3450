"""Challengers for rollout tests: a second version of the packaged digits model whose
handler misbehaves on purpose (slow, failing, or wrong on a share of requests), made
by editing the archive's handler, registered as any version is."""

from __future__ import annotations

import json
import shutil
import threading
import zipfile
from pathlib import Path
from typing import Any

from visionline.registry import ModelRef, Registry
from visionline.storage import ArtifactStore, sha256_file


# ``_visionline_fault(stage, data)`` runs first in preprocess ("pre", the request rows)
# and postprocess ("post", the logits, which it returns).
def fault(slow: float = 0.0, fail: float = 0.0, wrong: float = 0.0, sleep_s: float = 3.0) -> str:
    """A handler that sleeps ``sleep_s`` on ``slow`` of its batches, raises (TorchServe
    answers 5xx) on ``fail`` of them, and answers the next class instead of its own on
    ``wrong`` of the requests."""
    return f"""
import random as _r
import time as _time
import torch as _t


def _visionline_fault(stage, data):
    if stage == "pre":
        draw = _r.random()
        if draw < {slow}:
            _time.sleep({sleep_s})
        elif draw < {slow} + {fail}:
            raise RuntimeError("injected failure")
        return data
    if data.numel() == 0 or not {wrong}:
        return data
    mask = _t.rand(data.shape[0]) < {wrong}
    data = data.clone()
    data[mask] = data[mask].roll(1, dims=1)
    return data
"""


def _patched_handler(source: str, fault: str) -> str:
    pre = "    def preprocess(self, data: list[dict]) -> torch.Tensor:\n"
    post = "    def postprocess(self, data: torch.Tensor) -> list[dict]:\n"
    assert pre in source and post in source, "the handler's signatures changed"
    source = source.replace(pre, pre + "        _visionline_fault('pre', data)\n")
    source = source.replace(post, post + "        data = _visionline_fault('post', data)\n")
    return source + "\n\n" + fault


def register_variant(store: ArtifactStore, ref: ModelRef, fault: str, work: Path) -> ModelRef:
    """A new version of ``ref``'s model: the same weights, the handler with ``fault``."""
    reg = Registry(store, ref.name)
    info = reg.info(ref.version)
    version = reg.allocate_version(f"{info['run_id']}-variant")
    work.mkdir(parents=True, exist_ok=True)
    src, out = work / "in.mar", work / f"{ref.name}.mar"
    store.get_file(ref.mar_key, src)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "image_classifier.py":
                data = _patched_handler(data.decode(), fault).encode()
            elif item.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["modelVersion"] = version
                data = json.dumps(manifest).encode()
            zout.writestr(item, data)
    new = ModelRef(ref.name, version)
    store.put_file(new.mar_key, out)
    sha = sha256_file(out)
    shutil.rmtree(work, ignore_errors=True)
    return reg.register(version, {**info, "sha256": sha})


def end_at_once(
    rollouts: dict[str, Any], expected: dict[str, Any], timeout: float = 60
) -> tuple[list[str], list[Exception]]:
    """Each ``action -> rollout`` ends the rollout ``expected`` at the same moment (a
    promote and a watchdog's rollback, say): the actions that ended it, and the
    ServingErrors the others got."""
    from visionline.errors import ServingError

    go = threading.Barrier(len(rollouts))
    outcomes: dict[str, object] = {}

    def ender(action: str) -> None:
        go.wait()
        try:
            outcomes[action] = rollouts[action].end(action, "test", expected=dict(expected))
        except ServingError as e:
            outcomes[action] = e

    threads = [threading.Thread(target=ender, args=(a,)) for a in rollouts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    ended = [a for a, o in outcomes.items() if isinstance(o, dict) and o["outcome"] == a]
    refused = [o for o in outcomes.values() if isinstance(o, ServingError)]
    return ended, refused
