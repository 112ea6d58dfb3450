"""The canary's watchdog: rolls the challenger back as soon as its error rate or p99
latency exceeds the champion's by more than the configured margins (on at least
``min_requests`` per side), and records why."""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from visionline.config import RolloutConfig
from visionline.serving.rollout.evidence import sides
from visionline.serving.rollout.local import margins
from visionline.serving.rollout.verdict import health_checks

log = logging.getLogger(__name__)


class Watched(Protocol):
    """A rollout, local (``serving.rollout.local``) or on Kubernetes
    (``serving.kubernetes.rollout``)."""

    rcfg: RolloutConfig

    def state(self) -> dict[str, Any] | None: ...

    def records(self, state: dict[str, Any]) -> list[dict[str, Any]]: ...

    def end(self, action: str, reason: str = "") -> dict[str, Any]: ...


def check_once(rollout: Watched) -> str | None:
    """Roll back when a health check fails; the reason, or None (healthy, too early,
    or no rollout in progress)."""
    state = rollout.state()
    if state is None:
        return None
    stats = sides(rollout.records(state))
    failed = [
        c
        for c in health_checks(stats["champion"], stats["challenger"], margins(rollout.rcfg))
        if not c.passed and not c.needs
    ]
    if not failed:
        return None
    reason = "; ".join(f"{c.name}: {c.detail}" for c in failed)
    rollout.end("rollback", reason)
    log.warning("rolled back %s (%s): %s", state["challenger"], state["mode"], reason)
    return reason


def watch(rollout: Watched, interval_s: float, timeout_s: float | None = None) -> str | None:
    """Check every ``interval_s`` until the rollout ends (rolled back here, promoted or
    aborted elsewhere) or ``timeout_s`` passes; the rollback reason, if it was one."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while rollout.state() is not None:
        reason = check_once(rollout)
        if reason:
            return reason
        if deadline is not None and time.monotonic() > deadline:
            return None
        time.sleep(interval_s)
    return None
