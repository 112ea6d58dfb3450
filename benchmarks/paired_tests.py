"""McNemar's exact test of two models on the same test images, each given as
source -> right or wrong (what ``visionline.evaluation.load_predictions`` yields)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from benchmarks._common import sig


def mcnemar_by_source(
    a: Mapping[str, bool], b: Mapping[str, bool], what: str
) -> tuple[int, int, float]:
    """(images only ``a`` got right, images only ``b`` got right, p); ``what`` names the
    two in the error when they were not tested on the same images."""
    from visionline.evaluation.gate import mcnemar

    sources = sorted(a)
    if sorted(b) != sources:
        raise RuntimeError(f"{what} were tested on different images")
    only_a, only_b, p = mcnemar(
        np.array([a[s] for s in sources]), np.array([b[s] for s in sources])
    )
    return only_a, only_b, sig(p)
