"""A rollout's two sides sample the same requests: with a request id, the capture's
choice is a function of the id, not of each worker's random state."""

from __future__ import annotations

import random

from visionline.monitoring.capture import RequestCapture
from visionline.monitoring.capture_settings import CaptureSettings


class _Context:
    def __init__(self, ids: list[str | None]) -> None:
        self.ids = ids

    def get_all_request_header(self, idx: int) -> dict:
        return {"X-Request-Id": self.ids[idx]} if self.ids[idx] else {}

    def get_request_id(self, idx: int) -> str:
        return f"ts-{idx}"


def _capture(seed: int, rate: float) -> RequestCapture:
    settings = CaptureSettings(rate, False, "off", 16, 16, 1.0)
    return RequestCapture(settings, "m", "1", None, {}, rng=random.Random(seed))  # type: ignore[arg-type]


def test_two_servers_sample_the_same_request_ids():
    ids = [f"req-{i}" for i in range(2000)]
    ctx = _Context(ids)
    champion, challenger = _capture(1, 0.3), _capture(2, 0.3)
    a = [i for i in range(len(ids)) if champion._sampled(ctx, i)]
    b = [i for i in range(len(ids)) if challenger._sampled(ctx, i)]
    assert a == b and 0.25 < len(a) / len(ids) < 0.35


def test_without_an_id_the_sample_is_random_and_at_rate_1_everything():
    ctx = _Context([None] * 2000)
    one, two, every = _capture(1, 0.3), _capture(2, 0.3), _capture(3, 1.0)
    a = [i for i in range(2000) if one._sampled(ctx, i)]
    b = [i for i in range(2000) if two._sampled(ctx, i)]
    assert a != b and 0.25 < len(a) / 2000 < 0.35
    assert all(every._sampled(ctx, i) for i in range(10))
