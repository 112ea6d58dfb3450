"""The code version artifacts record: the revision the image was built from
(``VISIONLINE_CODE_VERSION``, a build argument: images have no git), else the git revision
of a checkout, else the package version."""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path

from visionline import __version__
from visionline.errors import ConfigError

ENV_VAR = "VISIONLINE_CODE_VERSION"
_REVISION = re.compile(r"[0-9a-f]{7,40}(\.dirty)?")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args],
        cwd=Path(__file__).resolve().parent,
        capture_output=True,
        text=True,
        timeout=5,
        check=True,
    ).stdout.strip()


def _from_env(value: str) -> str:
    """A git revision becomes ``<package version>+g<rev>`` like a checkout's; any other
    version string (a release tag) is recorded as given."""
    if _REVISION.fullmatch(value):
        return f"{__version__}+g{value}"
    if _VERSION.fullmatch(value):
        return value
    raise ConfigError(
        f"{ENV_VAR}={value!r} is not a git revision or a version (letters, digits, '.', "
        "'_', '+', '-'; at most 64): build the image with "
        "--build-arg VISIONLINE_CODE_VERSION=$(git rev-parse --short=12 HEAD)"
    )


@functools.cache
def code_version() -> str:
    pinned = os.environ.get(ENV_VAR, "").strip()
    if pinned:
        return _from_env(pinned)
    try:
        rev = _git("rev-parse", "--short=12", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        return f"{__version__}+g{rev}" + (".dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return __version__
