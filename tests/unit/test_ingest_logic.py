"""Pure logic of ingestion: names, allowed places, the bounded work window."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from visionline.data.ingest import bounded_map
from visionline.data.sources import AllowedRoots, name_problem
from visionline.errors import IngestError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["cat", "0", "Golden Retriever", "été", "a.b", "n-1_x"])
def test_ordinary_labels_are_fine(name):
    assert name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "empty"),
        (" cat", "whitespace"),
        ("a/b", "separator"),
        ("a\\b", "separator"),
        ("..", "'..'"),
        ("x..y", "'..'"),
        (".git", "starts with '.'"),
        ("a\nb", "U+000A"),
        ("a\x00b", "U+0000"),
        ("a\x7fb", "U+007F"),
        ("a\u202eb", "U+202E"),  # right-to-left override: shows a different name
        ("a\u2028b", "U+2028"),
        ("x" * 256, "255 bytes"),
        ("é" * 128, "255 bytes"),
    ],
)
def test_unsafe_labels_say_why(name, why):
    assert why in (name_problem(name) or "")


def test_allowed_roots_are_folders_not_string_prefixes(tmp_path):
    roots = AllowedRoots.parse([tmp_path / "data", "s3://bkt/raw/", "s3://whole"])
    assert roots.has_path((tmp_path / "data" / "x.png").resolve())
    assert not roots.has_path((tmp_path / "database" / "x.png").resolve())
    assert roots.has_key("bkt", "raw/a/x.png")
    assert not roots.has_key("bkt", "rawdata/x.png")
    assert not roots.has_key("other", "raw/x.png")
    assert roots.has_key("whole", "anything/at/all.png")
    with pytest.raises(IngestError, match="use a local folder or s3://"):
        AllowedRoots.parse(["https://example.com/x"])


def test_bounded_map_never_runs_ahead_of_its_bound():
    taken = 0
    lock = threading.Lock()

    def source():
        nonlocal taken
        for i in range(200):
            with lock:
                taken += 1
            yield i

    def slow_square(x: int) -> int:
        time.sleep(0.001)
        return x * x

    consumed = 0
    ahead = []
    for i, y in enumerate(bounded_map(slow_square, source(), workers=4, bound=6)):
        assert y == i * i  # in input order
        consumed += 1
        ahead.append(taken - consumed)
    assert consumed == 200
    # at most `bound` items are held (taken, not yet handed back) at any time
    assert max(ahead) <= 6 - 1


def test_bounded_map_stops_taking_work_after_an_error():
    taken: list[int] = []
    running = 0
    after_error: list[int] = []

    def source():
        for i in range(1000):
            taken.append(i)
            yield i

    lock = threading.Lock()

    def work(x: int) -> int:
        nonlocal running
        with lock:
            running += 1
        try:
            time.sleep(0.002)
            if x == 10:
                raise ValueError("boom")
            return x
        finally:
            with lock:
                running -= 1

    got = []
    with pytest.raises(ValueError, match="boom"):
        for y in bounded_map(work, source(), workers=4, bound=8):
            got.append(y)
    after_error.append(running)
    assert got == list(range(10))
    assert len(taken) < 40  # not the 1000 a plain executor.map would have queued
    assert after_error == [0]  # nothing still running once the error surfaced


def test_fault_corpus_is_the_same_in_every_process(tmp_path):
    """Fixture images must not depend on PYTHONHASHSEED (``hash()`` of strings does)."""
    code = (
        "import hashlib, sys; from pathlib import Path;"
        "from tests.support.faults import write_fault_corpus;"
        "root = write_fault_corpus(Path(sys.argv[1]));"
        "h = hashlib.sha256();"
        "[h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())"
        " for p in sorted(root.rglob('*')) if p.is_file()];"
        "print(h.hexdigest())"
    )
    digests = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / seed)],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            check=True,
        )
        digests.add(out.stdout.strip())
    assert len(digests) == 1
