"""Every ``visionline`` command docs/rollouts.md shows is one the CLI accepts as typed
(tests/integration/test_rollout.py runs them against real servers)."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.conftest import REPO
from visionline.cli import build_parser

PAGE = REPO / "docs" / "rollouts.md"


def _commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", PAGE.read_text(), re.S)
    return [line for b in blocks for line in b.splitlines() if line.startswith("visionline ")]


def test_the_page_shows_the_rollout_commands():
    shown = {" ".join(c.split()[:3]) for c in _commands()}
    assert {"visionline rollout status", "visionline rollout promote"} <= shown
    assert any("--shadow" in c for c in _commands()) and any("--canary" in c for c in _commands())


@pytest.mark.parametrize("command", _commands())
def test_each_command_parses_as_typed(command):
    argv = shlex.split(command)[1:]
    args = build_parser(argv).parse_args(argv)
    assert args.command == argv[0] and callable(args.func)
