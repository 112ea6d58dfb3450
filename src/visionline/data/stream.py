"""Streaming work through a bounded window of threads: ingestion, the local image cache
and clean-up all read or write many files without holding them all in memory.

Its own module so that what only needs the cache (evaluation, the monitoring reference)
does not load ingestion.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def bounded_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    workers: int,
    bound: int | None = None,
) -> Iterator[R]:
    """``fn`` over ``items`` on ``workers`` threads, results in input order.

    At most ``bound`` items (default ``2 * workers``) are taken from ``items`` and not
    yet handed back, so memory stays flat however many items there are (an executor's
    ``map`` submits everything at once). On an error, or when the caller stops early,
    queued work is cancelled and running work finishes before this returns: nothing
    started here is still running afterwards.
    """
    workers = max(1, workers)
    bound = max(1, bound or 2 * workers)
    pending: deque[Future[R]] = deque()
    failed = threading.Event()

    def note(fut: Future[R]) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            failed.set()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            for item in items:
                if failed.is_set():
                    break  # stop taking work; the error surfaces below, in order
                fut = pool.submit(fn, item)
                fut.add_done_callback(note)
                pending.append(fut)
                if len(pending) >= bound:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()
