"""The code version artifacts record: the git revision when available, else the package version."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

from visionline import __version__


@functools.cache
def code_version() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return f"{__version__}+g{rev}" + (".dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return __version__
