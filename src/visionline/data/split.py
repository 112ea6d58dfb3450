"""Deterministic train/val/test assignment from an image's content hash.

Each image's split depends only on its own sha256, so adding images never moves
existing ones, and identical bytes can never straddle train and test. Applying the
same thresholds inside every class keeps each class's split proportions at the
configured ratios (stratified in expectation; exact for large classes).
"""

from __future__ import annotations

from visionline.config import SplitConfig


def assign_split(sha256_hex: str, ratios: SplitConfig) -> str:
    # 60 bits of the hash as a uniform number in [0, 1).
    u = int(sha256_hex[:15], 16) / float(16**15)
    if u < ratios.train:
        return "train"
    if u < ratios.train + ratios.val:
        return "val"
    return "test"
