"""A plain (non-editable) `pip install .` can package and serve: the handler and the
model file come as package data, not from a source checkout.

The fresh venv gets its dependencies (torch, TorchServe, ...) through a path entry to the
project venv's site-packages, so the test does not copy gigabytes; visionline itself is
installed from a wheel and the commands run outside the repository, where no `src/` or
`handlers/` could be picked up by accident.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.support.ports import serve_ports

pytestmark = [pytest.mark.slow, pytest.mark.torchserve]


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # dependencies only: a path entry's own .pth files (the editable install) are not run
    (Path(site) / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheels = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            str(REPO),
        ],
        check=True,
        timeout=600,
    )
    wheel = next(wheels.glob("visionline-*.whl"))
    subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=600
    )
    return venv


def test_installed_package_packages_and_serves(fresh_venv, trained_digits, tmp_path):
    from visionline.evaluation.gate import gate_run

    store, run_id, cfg, _ = trained_digits
    assert gate_run(store, run_id).passed
    ports = serve_ports()
    served_cfg = cfg.with_overrides(
        **ports, **{"deploy.workdir": str(tmp_path / "serve"), "serve.model_name": "installed"}
    )
    config = tmp_path / "cfg.yaml"
    config.write_text(served_cfg.to_yaml())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    visionline = str(fresh_venv / "bin" / "visionline")

    where = subprocess.run(
        [
            str(fresh_venv / "bin" / "python"),
            "-c",
            "import visionline, visionline_handlers; print(visionline.__file__); "
            "print(visionline_handlers.__file__)",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=True,
    ).stdout
    assert str(REPO) not in where and str(fresh_venv) in where, where

    def cli(*args):
        return subprocess.run(
            [visionline, "--config", str(config), *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=600,
        )

    pkg = cli("package", run_id, "--name", "installed")
    assert pkg.returncode == 0, pkg.stdout + pkg.stderr
    assert "packaged run" in pkg.stdout
    try:
        served = cli("serve", "installed:1")
        assert served.returncode == 0, served.stdout + served.stderr
        assert "serving installed:1" in served.stdout
        status = cli("status")
        assert status.returncode == 0 and "ready: yes" in status.stdout, status.stdout
    finally:
        stopped = cli("serve", "--stop")
        assert stopped.returncode == 0 and "stopped" in stopped.stdout
