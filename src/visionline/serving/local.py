"""Serving on this machine: one locked-down local TorchServe per working directory.

``LocalDeployer`` is what ``visionline serve``, ``visionline deploy`` and the pipeline's
deploy step use locally. What it serves, and what it served before, is recorded in
``<workdir>/served.json``, so ``status()`` and ``rollback()`` work from any process.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from visionline.config import ServeConfig
from visionline.errors import IntegrityError, ServingError
from visionline.registry import ModelRef, Registry
from visionline.serving.client import RestClient
from visionline.serving.deploy import DeploymentStatus
from visionline.serving.torchserve import Endpoints, ServedModel, TorchServe
from visionline.storage import ArtifactStore, sha256_file

DEFAULT_WORKDIR = ".visionline/serve"


def fetch_mar(store: ArtifactStore, ref: ModelRef, dest_dir: Path) -> Path:
    """Download the archive and check it against the sha256 recorded at packaging."""
    info = Registry(store, ref.name).info(ref.version)
    dest = store.get_file(
        ref.mar_key, Path(dest_dir) / f"{ref.name}-{ref.version}.mar", verify=True
    )
    if sha256_file(dest) != info["sha256"]:
        raise IntegrityError(f"{store.url(ref.mar_key)} does not match its registered sha256")
    return dest


def _parse_ref(text: str | None) -> ModelRef | None:
    if not text:
        return None
    name, _, version = text.partition(":")
    return ModelRef(name, version)


class LocalDeployer:
    """One local TorchServe rooted at ``workdir``; deploying swaps the model it serves."""

    def __init__(
        self, store: ArtifactStore, cfg: ServeConfig, workdir: str | Path = DEFAULT_WORKDIR
    ) -> None:
        self.store = store
        self.cfg = cfg
        self.workdir = Path(workdir)
        self.server = TorchServe(workdir, cfg)

    # -- what is served -------------------------------------------------------------------
    @property
    def _state_path(self) -> Path:
        return self.workdir / "served.json"

    def _state(self) -> dict:
        if not self._state_path.is_file():
            return {"model": None, "previous": []}
        return json.loads(self._state_path.read_text())

    def _write_state(self, model: ModelRef | None, previous: list[str]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        tmp = self._state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"model": str(model) if model else None, "previous": previous}))
        os.replace(tmp, self._state_path)

    def served(self) -> ModelRef | None:
        """The model this server was last put in service with (None when stopped)."""
        return _parse_ref(self._state()["model"]) if self.server.is_running() else None

    # -- Deployer -------------------------------------------------------------------------
    def _start(self, ref: ModelRef) -> RestClient:
        with tempfile.TemporaryDirectory() as tmp:
            mar = fetch_mar(self.store, ref, Path(tmp))
            self.server.start(
                [
                    ServedModel(
                        ref.name,
                        f"{ref.name}.mar",
                        self.cfg.batch_size,
                        self.cfg.max_batch_delay_ms,
                        self.cfg.workers,
                    )
                ],
                {ref.name: mar},
            )
        return RestClient(self.endpoint(), ref.name, self.token())

    def deploy(self, ref: ModelRef) -> RestClient:
        state = self._state()
        current = state["model"] if self.server.is_running() else None
        previous = list(state["previous"])
        if current and current != str(ref):
            previous.append(current)
        try:
            client = self._start(ref)
        except Exception:
            self._write_state(None, previous)  # start() stopped the server: nothing is served
            raise
        self._write_state(ref, previous)
        return client

    def rollback(self) -> ModelRef | None:
        """Serve again what was served before the last deploy; None (and stopped) if nothing was."""
        previous = list(self._state()["previous"])
        if not previous:
            self.stop()
            return None
        ref = _parse_ref(previous.pop())
        assert ref is not None
        self._start(ref)
        self._write_state(ref, previous)
        return ref

    def status(self) -> DeploymentStatus:
        ref = self.served()
        if ref is None:
            return DeploymentStatus(None, self.endpoint(), False, "no local server is running")
        try:
            workers = self.server.workers(ref.name)
        except ServingError as e:
            return DeploymentStatus(ref, self.endpoint(), False, str(e))
        ready = [w for w in workers if w.get("status") == "READY"]
        return DeploymentStatus(
            ref,
            self.endpoint(),
            bool(workers) and len(ready) == len(workers),
            f"{len(ready)}/{len(workers)} workers ready",
        )

    def endpoint(self) -> str:
        return self.server.endpoints.inference

    def stop(self) -> None:
        self.server.stop()
        if self._state_path.is_file():
            state = self._state()
            self._write_state(
                None, state["previous"] + ([state["model"]] if state["model"] else [])
            )

    # -- local extras ---------------------------------------------------------------------
    @property
    def endpoints(self) -> Endpoints:
        return self.server.endpoints

    @property
    def key_file(self) -> Path:
        return self.server.key_file

    def token(self, kind: str = "inference") -> str:
        return self.server.tokens()[kind]
