"""Serving a registered model on this machine with a local TorchServe."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from visionline.config import ServeConfig
from visionline.errors import IntegrityError
from visionline.registry import ModelRef, Registry
from visionline.serving.torchserve import Endpoints, ServedModel, TorchServe
from visionline.storage import ArtifactStore, sha256_file

DEFAULT_WORKDIR = ".visionline/serve"


@dataclass
class LocalServer:
    ref: ModelRef
    endpoints: Endpoints
    key_file: Path
    server: TorchServe

    def token(self, kind: str = "inference") -> str:
        return self.server.tokens()[kind]


def fetch_mar(store: ArtifactStore, ref: ModelRef, dest_dir: Path) -> Path:
    """Download the archive and check it against the sha256 recorded at packaging."""
    info = Registry(store, ref.name).info(ref.version)
    dest = store.get_file(
        ref.mar_key, Path(dest_dir) / f"{ref.name}-{ref.version}.mar", verify=True
    )
    if sha256_file(dest) != info["sha256"]:
        raise IntegrityError(f"{store.url(ref.mar_key)} does not match its registered sha256")
    return dest


def serve_model(
    store: ArtifactStore,
    name: str,
    spec: str | None,
    cfg: ServeConfig,
    workdir: str | Path = DEFAULT_WORKDIR,
) -> LocalServer:
    ref = Registry(store, name).resolve(spec)
    server = TorchServe(workdir, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        mar = fetch_mar(store, ref, Path(tmp))
        endpoints = server.start(
            [ServedModel(name, f"{name}.mar", cfg.batch_size, cfg.max_batch_delay_ms, cfg.workers)],
            {name: mar},
        )
    (Path(workdir) / "served.json").write_text(json.dumps({"model": str(ref)}))
    return LocalServer(ref, endpoints, server.key_file, server)


def stop_server(cfg: ServeConfig, workdir: str | Path = DEFAULT_WORKDIR) -> bool:
    server = TorchServe(workdir, cfg)
    was_running = server.is_running()
    server.stop()
    return was_running
