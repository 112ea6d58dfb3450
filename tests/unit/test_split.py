import hashlib
from collections import Counter

from visionline.config import SplitConfig
from visionline.data.split import assign_split


def test_split_is_deterministic_and_close_to_ratios():
    ratios = SplitConfig(train=0.6, val=0.2, test=0.2)
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20000)]
    first = [assign_split(h, ratios) for h in hashes]
    assert first == [assign_split(h, ratios) for h in hashes]
    c = Counter(first)
    assert abs(c["train"] / 20000 - 0.6) < 0.015
    assert abs(c["val"] / 20000 - 0.2) < 0.015
    assert abs(c["test"] / 20000 - 0.2) < 0.015
