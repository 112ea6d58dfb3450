"""Waiting for a condition a controller or a server reaches in its own time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def until(what: str, predicate: Callable[[], T], timeout: float = 60.0, interval: float = 0.2) -> T:
    """``predicate()``'s first truthy value; an AssertionError naming ``what`` when none
    comes within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
