"""Reproducible installs: constraints.txt pins every package `make install` installs, and
tools/constraints.txt every package of the tools venv; the Makefile installs through them
and reinstalls when they change. A dependency added to pyproject.toml without `make lock`
fails here, not on the day an index serves a new release."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"{path.name}: not an exact pin: {line!r}"
        out[canonicalize_name(m[1])] = m[2]
    return out


def declared() -> list[Requirement]:
    """pyproject.toml's dependencies and dev extras."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [
        Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]
    ]


def closure(roots: list[Requirement]) -> set[str]:
    """The installed distributions `roots` pull in (markers evaluated here)."""
    seen: set[str] = set()
    visited: set[tuple[str, frozenset[str]]] = set()
    todo = list(roots)
    while todo:
        req = todo.pop()
        name, wanted = canonicalize_name(req.name), frozenset(req.extras)
        if (name, wanted) in visited:
            continue
        visited.add((name, wanted))
        seen.add(name)
        dist = distribution(req.name)
        for text in dist.requires or []:
            sub = Requirement(text)
            envs = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                todo.append(sub)
    return seen


@pytest.mark.parametrize("path", ["constraints.txt", "tools/constraints.txt"])
def test_every_line_is_an_exact_pin(path):
    assert len(pins(REPO / path)) > 50


def test_the_project_and_its_dev_tools_are_pinned_whole():
    pinned = pins(REPO / "constraints.txt")
    try:
        needed = closure(declared())
    except PackageNotFoundError as e:
        pytest.fail(f"{e} is not installed: `make install` installs it")
    assert needed - set(pinned) == set(), "not pinned: run `make lock`"


def test_the_pins_satisfy_pyproject():
    """Every range in pyproject.toml admits its pin (torch stays at the release this
    machine's wheels hold)."""
    pinned = pins(REPO / "constraints.txt")
    for req in declared():
        version = pinned[canonicalize_name(req.name)]
        assert req.specifier.contains(version, prereleases=True), (str(req), version)
    assert (pinned["torch"], pinned["torchvision"]) == ("2.14.1", "0.29.1")
    assert "import-linter" in pinned


def test_the_tools_pins_cover_their_requirements():
    pinned = pins(REPO / "tools" / "constraints.txt")
    for line in (REPO / "tools" / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            assert req.specifier.contains(pinned[canonicalize_name(req.name)]), line


def test_make_installs_through_the_pins_and_reinstalls_when_they_change():
    makefile = (REPO / "Makefile").read_text()
    for stamp, constraints in (
        ("$(STAMP)", "constraints.txt"),
        ("$(TOOLS_STAMP)", "tools/constraints.txt"),
    ):
        rule = makefile.split(f"\n{stamp}:", 1)[1].split("\n\n", 1)[0]
        assert constraints in rule.splitlines()[0], rule  # a prerequisite of the stamp
        installs = [line for line in rule.splitlines() if "pip install" in line]
        assert installs and all(f"-c {constraints}" in line for line in installs), rule
    assert re.search(r"^lock:", makefile, re.M)
