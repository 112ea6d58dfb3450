"""Serving on this machine: one locked-down local TorchServe per working directory.

``LocalDeployer`` is what ``visionline serve``, ``visionline deploy`` and the pipeline's
deploy step use locally. What it serves, and what it served before, is recorded in
``<workdir>/served.json``, so ``status()`` and ``rollback()`` work from any process.

REST goes through the pod's nginx front (``serving.nginx``, ``serve.local_front``) when
nginx is installed: it listens on ``serve.inference_port`` and forwards to TorchServe on
a free loopback port, passing TorchServe's own token through; gRPC, management and
metrics are TorchServe's, on loopback. Without nginx, TorchServe answers REST itself
and a body sent as ``application/x-www-form-urlencoded`` gets a 415 (README).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
from dataclasses import replace
from pathlib import Path

from visionline.config import ServeConfig
from visionline.errors import ServingError
from visionline.registry import ModelRef
from visionline.serving.client import RestClient
from visionline.serving.deploy import DeploymentStatus
from visionline.serving.fetch import fetch_mar
from visionline.serving.nginx import (
    Backend,
    NginxProcess,
    RolloutFront,
    nginx_binary,
    render_nginx_conf,
)
from visionline.serving.torchserve import (
    LOOPBACK,
    Endpoints,
    ServedModel,
    TorchServe,
    max_body_bytes,
)
from visionline.storage import ArtifactStore

DEFAULT_WORKDIR = ".visionline/serve"
log = logging.getLogger(__name__)


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


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
        self.front = NginxProcess(self.workdir / "front")

    def _use_front(self) -> bool:
        if self.cfg.local_front == "none":
            return False
        if nginx_binary() is not None:
            return True
        if self.cfg.local_front == "nginx":
            raise ServingError(
                "serve.local_front is nginx but nginx is not installed: "
                "apt-get install -y nginx-light, or set serve.local_front: auto"
            )
        log.warning(
            "nginx is not installed: TorchServe answers REST itself, and a body sent as "
            "application/x-www-form-urlencoded (curl --data-binary without a content type) "
            "gets a 415; apt-get install -y nginx-light to serve through the front"
        )
        return False

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
        front = self._use_front()
        self.front.stop()
        self.front.conf.unlink(missing_ok=True)  # written again when the front starts
        # behind the front TorchServe's REST moves to a free loopback port
        backend_port = _free_loopback_port() if front else self.cfg.inference_port
        self.server.cfg = self.cfg.model_copy(update={"inference_port": backend_port})
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
        if front:
            try:
                self._start_front(backend_port)
            except ServingError:
                self.server.stop(quiet=True)
                raise
        return RestClient(self.endpoint(), ref.name, self.token())

    def _start_front(self, backend_port: int) -> None:
        self.front.start(self._front_conf(backend_port), f"{self.endpoint()}/healthz")

    def _front_conf(self, backend_port: int, rollout: RolloutFront | None = None) -> str:
        return render_nginx_conf(
            credentials_dir=None,  # TorchServe checks its own tokens
            backend=Backend(
                LOOPBACK, backend_port, self.cfg.grpc_inference_port, self.cfg.metrics_port
            ),
            rest_port=self.cfg.inference_port,
            grpc_port=None,
            metrics_port=None,
            listen_host=LOOPBACK,
            tmp_dir=self.front.tmp,
            max_body_bytes=max_body_bytes(self.cfg),
            max_image_bytes=self.cfg.max_request_bytes,
            timeout_s=120,
            # as root nginx would hand its workers to "nobody", who cannot write the
            # request-body buffers under this working directory
            run_as="root" if os.geteuid() == 0 else None,
            request_id=True,
            rollout=rollout,
        )

    def set_rollout(self, rollout: RolloutFront | None) -> None:
        """Put a challenger beside the served champion in the front (or take it out),
        with a graceful reload: requests in flight finish, none is refused."""
        if not self.front.is_running():
            raise ServingError(
                "a rollout needs the nginx front (serve.local_front auto or nginx, and nginx "
                "installed); it is not running"
            )
        self.front.reload(self._front_conf(self.backend_port(), rollout))

    def backend_port(self) -> int:
        """The champion TorchServe's REST port behind the front (from its state file)."""
        try:
            url = json.loads(self.server.state_path.read_text())["endpoints"]["inference"]
            return int(url.rsplit(":", 1)[1])
        except (OSError, ValueError, KeyError) as e:
            raise ServingError(f"no local server state at {self.server.state_path}: {e}") from e

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
        detail = f"{len(ready)}/{len(workers)} workers ready"
        front_down = self.front.conf.is_file() and not self.front.is_running()
        if front_down:
            detail += f"; the nginx front is not running (see {self.front.log})"
        return DeploymentStatus(
            ref,
            self.endpoint(),
            bool(workers) and len(ready) == len(workers) and not front_down,
            detail,
        )

    def endpoint(self) -> str:
        """REST inference as clients reach it: the front's port, or TorchServe's."""
        return f"http://{LOOPBACK}:{self.cfg.inference_port}"

    def stop(self) -> None:
        self.front.stop()
        self.front.conf.unlink(missing_ok=True)
        # a rollout's challenger (serving.rollout.local) goes with the server it stood beside
        TorchServe(self.workdir / "rollout" / "challenger", self.cfg).stop(quiet=True)
        self.server.stop()
        if self._state_path.is_file():
            state = self._state()
            self._write_state(
                None, state["previous"] + ([state["model"]] if state["model"] else [])
            )

    # -- local extras ---------------------------------------------------------------------
    @property
    def endpoints(self) -> Endpoints:
        return replace(self.server.endpoints, inference=self.endpoint())

    @property
    def key_file(self) -> Path:
        return self.server.key_file

    def token(self, kind: str = "inference") -> str:
        return self.server.tokens()[kind]
