"""Print docker/requirements.txt: every package the images need, pinned at the version
installed in this interpreter's environment (the one the tests pass in).

    python docker/pin.py > docker/requirements.txt

The closure of pyproject.toml's runtime dependencies (no extras), with the environment
markers of this platform (CPython 3.11, linux/x86_64: the images' platform).
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HEADER = """\
# Every package the images install, pinned: the closure of pyproject.toml's runtime
# dependencies (no [dev]) for CPython 3.11 on linux/x86_64, at the versions the test suite
# passes with. Regenerate with `python docker/pin.py > docker/requirements.txt`;
# tests/unit/test_image.py checks each pin against pyproject.toml's ranges.
# torch from PyPI is its CUDA build (the nvidia-* wheels below): the NVIDIA container
# runtime on a GPU node provides the driver; on CPU nodes the same wheels simply idle.
"""


def closure(requirements: list[str]) -> dict[str, str]:
    pinned: dict[str, str] = {}
    extras_seen: dict[str, set[str]] = {}
    todo = [(Requirement(r), frozenset()) for r in requirements]
    while todo:
        req, parent_extras = todo.pop()
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in ("", *parent_extras)):
            continue
        name = canonicalize_name(req.name)
        extras = set(req.extras)
        if name in pinned and extras <= extras_seen[name]:
            continue
        extras_seen[name] = extras_seen.get(name, set()) | extras
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            sys.exit(f"{req.name} is required but not installed here: install the project first")
        pinned[name] = dist.version
        todo += [(Requirement(r), frozenset(extras_seen[name])) for r in dist.requires or []]
    return pinned


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    pins = closure(project["dependencies"])
    pins.pop(canonicalize_name(project["name"]), None)
    sys.stdout.write(HEADER + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))


if __name__ == "__main__":
    main()
