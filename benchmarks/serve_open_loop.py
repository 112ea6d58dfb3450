"""Open-loop load for the serving benchmark: requests arrive on a schedule fixed in
advance (a Poisson process at a set rate), whatever the server is doing, as they do from
many independent users. A closed loop (each client waits for its answer before the next
request) slows down with the server and so hides queueing; this does not.

Each request's latency runs from its *scheduled* send time to its answer, so a request
that had to wait for a free client thread counts that wait too (no coordinated
omission). The client pool is large enough that it is rarely the wait.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from benchmarks.serve_stats import latency_summary, poisson_schedule

CLIENT_THREADS = 64


def open_loop(
    url: str,
    token: str,
    images: list[bytes],
    rate: float,
    n: int,
    rng: random.Random,
) -> dict:
    """``n`` requests at ``rate`` per second (Poisson arrivals) to ``url``: the latency
    percentiles, the rate offered and the rate achieved, and failures."""
    schedule = poisson_schedule(rate, n, rng)
    local = threading.local()
    lat: list[float | None] = [None] * n
    errors: list[str] = []

    def send(i: int, due: float) -> None:
        s = getattr(local, "session", None)
        if s is None:
            s = local.session = requests.Session()
        try:
            r = s.post(
                url,
                data=images[i % len(images)],
                headers={"Authorization": f"Bearer {token}"},
                timeout=300,
            )
            r.raise_for_status()
            lat[i] = (time.perf_counter() - due) * 1000
        except requests.RequestException as e:
            errors.append(f"request {i}: {e}")

    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        start = time.perf_counter()
        for i, offset in enumerate(schedule):
            due = start + offset
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            pool.submit(send, i, due)
        sent_s = time.perf_counter() - start
    wall = time.perf_counter() - start
    done = [x for x in lat if x is not None]
    if not done:
        raise RuntimeError(
            f"open loop at {rate:.1f}/s to {url}: every request failed: {errors[:3]}"
        )
    return {
        "arrivals": "poisson",
        "offered_per_s": round(rate, 2),
        "scheduled_per_s": round((n - 1) / schedule[-1], 2) if schedule[-1] > 0 else None,
        "achieved_per_s": round(len(done) / wall, 2),
        "send_lag_s": round(sent_s - schedule[-1], 3),
        "failed": len(errors),
        "first_errors": errors[:3],
        **latency_summary(done),
    }
