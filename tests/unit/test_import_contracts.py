"""The import contracts in pyproject.toml ([tool.importlinter]) are live: `make lint` runs
lint-imports, and a deliberately wrong import in a copy of the code breaks the contract
it crosses, by name."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import importlinter
import pytest

REPO = Path(__file__).resolve().parents[2]
NO_PREFECT = "The core knows no Prefect: flows import the core, never the other way round"
# What `$(VENV)/bin/lint-imports` runs, with this interpreter.
LINT_IMPORTS = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def test_make_lint_runs_the_import_contracts():
    lint = (REPO / "Makefile").read_text().split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "$(VENV)/bin/lint-imports" in lint


@pytest.fixture
def checkout(tmp_path) -> Path:
    """The three root packages and the contracts, importable from the copy only (the
    installed visionline and visionline_handlers point at the original checkout)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("src", "handlers", "flows"):
        shutil.copytree(REPO / part, tmp_path / part, ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    (tmp_path / ".shim").mkdir()
    (tmp_path / ".shim" / "visionline_handlers").symlink_to(tmp_path / "handlers")
    return tmp_path


def lint_imports(root: Path) -> tuple[int, dict[str, str], str]:
    """Exit status, each contract's verdict (KEPT or BROKEN), and the whole report."""
    path = [root / ".shim", root / "src", root, Path(importlinter.__file__).parents[1]]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, path))}
    proc = subprocess.run(
        [sys.executable, "-c", LINT_IMPORTS],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert "Contracts:" in out, out  # it analysed the code, rather than failing to start
    verdicts = {}
    for line in out.splitlines():
        for verdict in ("KEPT", "BROKEN"):
            if line.endswith(verdict):
                verdicts[line.removesuffix(verdict).strip()] = verdict
    return proc.returncode, verdicts, out


def test_a_prefect_import_in_the_core_breaks_lint(checkout):
    """The unmodified copy keeps every contract; one `import prefect` in the data stage
    breaks the no-Prefect one, by name, and fails the run."""
    rc, verdicts, out = lint_imports(checkout)
    assert rc == 0, out
    assert len(verdicts) == 4 and set(verdicts.values()) == {"KEPT"}, out

    split = checkout / "src" / "visionline" / "data" / "split.py"
    split.write_text("import prefect  # noqa: F401\n" + split.read_text())
    rc, verdicts, out = lint_imports(checkout)
    assert rc != 0
    assert verdicts[NO_PREFECT] == "BROKEN", out
    assert "visionline.data.split -> prefect" in out
