"""A rollout on this machine: the challenger's own TorchServe beside the champion's,
behind the same nginx front (``serving.local``).

The challenger listens on loopback with its token auth off; the front asks the
champion's TorchServe whether a client's credential is valid before anything reaches
the challenger, so clients keep using the champion's token. What the rollout is, and
how it ended, is in ``<workdir>/rollout/rollout.json``; each start and end is a line of
``<workdir>/rollout/events.jsonl`` (an automatic rollback with its reason included).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from visionline.config import RolloutConfig
from visionline.errors import ServingError
from visionline.registry import ModelRef
from visionline.serving.deploy import DeployResult, deploy_checked
from visionline.serving.fetch import fetch_mar
from visionline.serving.local import LocalDeployer
from visionline.serving.nginx import RolloutFront
from visionline.serving.rollout.evidence import read_request_log, rollout_report
from visionline.serving.rollout.verdict import Margins
from visionline.serving.torchserve import LOOPBACK, ServedModel, TorchServe
from visionline.storage import ArtifactStore

log = logging.getLogger(__name__)
PORTS = (
    "inference_port",
    "management_port",
    "metrics_port",
    "grpc_inference_port",
    "grpc_management_port",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def margins(rcfg: RolloutConfig) -> Margins:
    return Margins(
        rcfg.min_requests,
        rcfg.min_labelled,
        rcfg.accuracy_margin,
        rcfg.error_margin,
        rcfg.latency_margin,
        rcfg.latency_slack_ms,
        rcfg.confidence,
    )


def _ref(text: str) -> ModelRef:
    name, _, version = text.partition(":")
    return ModelRef(name, version)


class RolloutChanged(ServingError):
    """The rollout in progress is no longer the one a caller read (another process
    ended it, or ended it and started another): nothing was changed."""


def same_rollout(now: dict[str, Any], read: dict[str, Any]) -> bool:
    """Whether two states describe the same rollout (same challenger, same start and,
    on Kubernetes, the same challenger Deployment)."""
    keys = ("challenger", "started", "uid")
    return all(now.get(k) == read.get(k) for k in keys)


class LocalRollout:
    """The challenger of the local server in ``local.workdir``."""

    def __init__(self, local: LocalDeployer, store: ArtifactStore, rcfg: RolloutConfig) -> None:
        self.local = local
        self.store = store
        self.rcfg = rcfg
        self.dir = Path(local.workdir).resolve() / "rollout"
        self.state_path = self.dir / "rollout.json"
        self.events = self.dir / "events.jsonl"
        self.challenger = TorchServe(self.dir / "challenger", local.cfg, token_auth=False)

    # -- state ------------------------------------------------------------------------
    def last(self) -> dict[str, Any] | None:
        """The latest rollout, active or ended (None: there never was one)."""
        if not self.state_path.is_file():
            return None
        return json.loads(self.state_path.read_text())

    def state(self) -> dict[str, Any] | None:
        """The rollout in progress, or None (also once the server it stood beside was
        stopped: ``visionline serve --stop`` stops the challenger too)."""
        s = self.last()
        return s if s and s["active"] and self.local.served() is not None else None

    def _write(self, state: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.state_path)

    def _event(self, action: str, state: dict[str, Any], reason: str = "") -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        line = {
            "time": datetime.now(UTC).isoformat(),
            "action": action,
            "mode": state["mode"],
            "champion": state["champion"],
            "challenger": state["challenger"],
            "reason": reason,
        }
        with self.events.open("a") as f:
            f.write(json.dumps(line) + "\n")

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One start or end at a time on this machine (a promote and the watchdog's
        rollback are separate processes): each reads the state again inside."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / ".lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # -- start and end ----------------------------------------------------------------
    def start(self, ref: ModelRef, mode: str, percent: float) -> dict[str, Any]:
        """Serve ``ref`` as the challenger: ``shadow`` mirrors ``percent`` of the
        predictions to it, ``canary`` lets it answer ``percent`` of them."""
        with self._exclusive():
            return self._start(ref, mode, percent)

    def _start(self, ref: ModelRef, mode: str, percent: float) -> dict[str, Any]:
        champion = self.local.served()
        if champion is None:
            raise ServingError(
                "nothing is served locally: deploy (or serve) the champion first, then "
                f"start a {mode} rollout beside it"
            )
        if champion == ref:
            raise ServingError(f"{ref} is already the served champion: nothing to roll out")
        current = self.state()
        if current:
            raise ServingError(
                f"a {current['mode']} rollout of {current['challenger']} is in progress: "
                "visionline rollout promote or visionline rollout abort first"
            )
        self.challenger.cfg = self.local.cfg.model_copy(update={p: _free_port() for p in PORTS})
        cfg = self.local.cfg
        with tempfile.TemporaryDirectory() as tmp:
            mar = fetch_mar(self.store, ref, Path(tmp))
            served = ServedModel(
                ref.name, f"{ref.name}.mar", cfg.batch_size, cfg.max_batch_delay_ms, cfg.workers
            )
            self.challenger.start([served], {ref.name: mar})
        started = datetime.now(UTC)
        log_path = self.dir / f"{started:%Y%m%dT%H%M%S%f}-requests.jsonl"
        front = RolloutFront(
            mode,
            percent,
            LOOPBACK,
            self.challenger.cfg.inference_port,
            _free_port(),
            str(log_path),
            self.rcfg.challenger_timeout_s,
        )
        try:
            self.local.set_rollout(front)
        except Exception:
            self.challenger.stop(quiet=True)
            raise
        state = {
            "active": True,
            "mode": mode,
            "percent": percent,
            "champion": str(champion),
            "challenger": str(ref),
            "started": started.isoformat(),
            "log": str(log_path),
            "challenger_endpoint": self.challenger.endpoints.inference,
        }
        self._write(state)
        self._event("start", state, f"{mode} {percent:g}%")
        return state

    def end(
        self, action: str, reason: str = "", expected: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Take the challenger out (the front first, so no request reaches a stopping
        server), stop it, and record how and why the rollout ended. With ``expected``
        (a state read earlier), only if the rollout in progress is still that one."""
        with self._exclusive():
            return self._end(action, reason, expected)

    def _end(self, action: str, reason: str, expected: dict[str, Any] | None) -> dict[str, Any]:
        state = self.state()
        if state is None:
            raise ServingError("no rollout is in progress")
        if expected is not None and not same_rollout(state, expected):
            raise RolloutChanged(
                f"the rollout of {expected['challenger']} is no longer the one in progress "
                f"(now {state['challenger']}, started {state['started']}): left as it is"
            )
        self.local.set_rollout(None)
        self.challenger.stop(quiet=True)
        state.update(
            active=False, ended=datetime.now(UTC).isoformat(), outcome=action, reason=reason
        )
        self._write(state)
        self._event(action, state, reason)
        return state

    # -- the verdict ------------------------------------------------------------------
    def records(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        """The front's request log of the rollout ``state``."""
        return read_request_log(Path(state["log"]))

    def report(self, state: dict[str, Any] | None = None) -> dict[str, Any]:
        state = state or self.state() or self.last()
        if state is None:
            raise ServingError("there is no rollout: visionline deploy NAME:VERSION --shadow")
        return rollout_report(
            self.store,
            _ref(state["champion"]),
            _ref(state["challenger"]),
            datetime.fromisoformat(state["started"]),
            self.records(state),
            margins(self.rcfg),
        )

    def promote(self, force: bool = False) -> tuple[dict[str, Any], DeployResult | None]:
        """Make the challenger the champion when the verdict allows it (or ``force``):
        the rollout ends and the challenger is deployed, checked and promoted as any
        deploy is. (report, result); result is None when a check blocks it."""
        state = self.state()
        if state is None:
            raise ServingError("no rollout is in progress")
        report = self.report(state)
        verdict = report["_verdict"]
        if not verdict.promotable and not force:
            return report, None
        self.end("promote", "; ".join(c.detail for c in verdict.checks), expected=state)
        return report, deploy_checked(self.local, self.store, _ref(state["challenger"]))
