"""The code version artifacts record: the git revision when available, else the package version."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from visionline import __version__


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args],
        cwd=Path(__file__).resolve().parent,
        capture_output=True,
        text=True,
        timeout=5,
        check=True,
    ).stdout.strip()


@functools.cache
def code_version() -> str:
    try:
        rev = _git("rev-parse", "--short=12", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        return f"{__version__}+g{rev}" + (".dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return __version__
