"""How long each Prefect task's own code ran, apart from the orchestration around it.

``task`` is ``prefect.task`` with the decorated function's body timed inside the task
run. Prefect's task-run times also hold what Prefect does around the body (state
transitions through the API, result persistence, hooks), so the difference between a
task run's span and its body is that task's orchestration cost. Bodies are recorded
only while a ``recording()`` is open (the pipeline benchmark opens one); otherwise
the wrapper costs two clock reads.

    from flows.timing import task   # instead of: from prefect import task
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import prefect
from prefect.context import TaskRunContext


@dataclass(frozen=True)
class BodyTime:
    task: str  # the function's name
    task_run_id: str | None
    started: float  # time.perf_counter() when the body began
    seconds: float
    ok: bool  # False when the body raised


_lock = threading.Lock()
_recorders: list[list[BodyTime]] = []


@contextmanager
def recording() -> Iterator[list[BodyTime]]:
    """Collect the body time of every timed task that finishes while this is open (tasks
    run in worker threads, so the list is shared under a lock, not a context variable)."""
    times: list[BodyTime] = []
    with _lock:
        _recorders.append(times)
    try:
        yield times
    finally:
        with _lock:
            # by identity: two empty recorders compare equal
            del _recorders[next(i for i, r in enumerate(_recorders) if r is times)]


def _record(fn: Callable, started: float, ok: bool) -> None:
    seconds = time.perf_counter() - started
    if not _recorders:
        return

    ctx = TaskRunContext.get()
    entry = BodyTime(fn.__name__, str(ctx.task_run.id) if ctx else None, started, seconds, ok)
    with _lock:
        for times in _recorders:
            times.append(entry)


def timed(fn: Callable) -> Callable:
    """``fn`` with its run time recorded; same name, signature and source for Prefect."""
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def body_async(*args: Any, **kwargs: Any) -> Any:
            start, ok = time.perf_counter(), False
            try:
                result = await fn(*args, **kwargs)
                ok = True
                return result
            finally:
                _record(fn, start, ok)

        wrapper: Callable = body_async
    else:

        @functools.wraps(fn)
        def body(*args: Any, **kwargs: Any) -> Any:
            start, ok = time.perf_counter(), False
            try:
                result = fn(*args, **kwargs)
                ok = True
                return result
            finally:
                _record(fn, start, ok)

        wrapper = body
    # Prefect derives the task key (and with it cache keys) from this, not the wrapper.
    wrapper.__prefect_task_source__ = fn  # type: ignore[attr-defined]
    return wrapper


def task(fn: Callable | None = None, /, **kwargs: Any) -> Any:
    """``prefect.task``, as ``@task`` or ``@task(...)``, with the body timed."""
    if fn is None:
        return lambda f: prefect.task(timed(f), **kwargs)
    return prefect.task(timed(fn), **kwargs)
