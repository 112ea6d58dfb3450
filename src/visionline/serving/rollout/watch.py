"""The canary's watchdog: rolls the challenger back as soon as its error rate or p99
latency exceeds the champion's by more than the configured margins (on at least
``min_requests`` per side), and records why."""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from visionline.config import RolloutConfig
from visionline.errors import ServingError
from visionline.kube import KubernetesApiError
from visionline.serving.rollout.evidence import sides
from visionline.serving.rollout.local import RolloutChanged, margins, same_rollout
from visionline.serving.rollout.verdict import health_checks

log = logging.getLogger(__name__)


class Watched(Protocol):
    """A rollout, local (``serving.rollout.local``) or on Kubernetes
    (``serving.kubernetes.rollout``)."""

    rcfg: RolloutConfig

    def state(self) -> dict[str, Any] | None: ...

    def records(self, state: dict[str, Any]) -> list[dict[str, Any]]: ...

    def end(
        self, action: str, reason: str = "", expected: dict[str, Any] | None = None
    ) -> dict[str, Any]: ...


def check_once(rollout: Watched, state: dict[str, Any] | None = None) -> str | None:
    """Roll back when a health check fails; the reason, or None (healthy, too early,
    no rollout in progress, or one another process is ending). ``state``: the rollout
    to judge, as read (default: the one in progress now)."""
    state = state or rollout.state()
    if state is None or state.get("ending"):
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
    try:
        rollout.end("rollback", reason, expected=state)
    except ServingError as e:
        # ended (promoted, aborted) or replaced by another process since it was read
        now = rollout.state()
        if not isinstance(e, RolloutChanged) and now is not None and same_rollout(now, state):
            raise
        log.warning("watch: %s was not rolled back: %s", state["challenger"], e)
        return None
    log.warning("rolled back %s (%s): %s", state["challenger"], state["mode"], reason)
    return reason


# Consecutive failed checks a watchdog rides out before it gives up: one API server
# hiccup (a 5xx, a timeout, a 429) must not leave a canary unwatched.
MAX_TRANSIENT = 10


def transient(e: Exception) -> bool:
    """An error a later check may not meet: the API server's 429 or 5xx, a connection
    that failed (no status), a local log that could not be read. A refusal (403) or a
    missing object (404) is an answer, not a hiccup."""
    if isinstance(e, KubernetesApiError):
        return e.status is None or e.status == 429 or e.status >= 500
    return isinstance(e, OSError)


def watch(rollout: Watched, interval_s: float, timeout_s: float | None = None) -> str | None:
    """Check every ``interval_s`` until the rollout in progress when it first looks ends
    (rolled back here, promoted or aborted elsewhere) or ``timeout_s`` passes; the
    rollback reason, if it was one. Up to ``MAX_TRANSIENT`` transient errors in a row
    are logged and ridden out."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    failures = 0
    watched: dict[str, Any] | None = None  # the rollout this watchdog is for
    while True:
        try:
            now = rollout.state()
            watched = watched or now
            if now is None or (watched is not None and not same_rollout(now, watched)):
                return None  # ended, or ended and another started (its own watchdog)
            reason = check_once(rollout, now)
            failures = 0
        except (KubernetesApiError, OSError) as e:
            failures += 1
            if not transient(e) or failures > MAX_TRANSIENT:
                raise
            log.warning("watch: check %d failed, trying again: %s", failures, e)
            reason = None
        if reason:
            return reason
        if deadline is not None and time.monotonic() > deadline:
            return None
        time.sleep(interval_s)
