"""The LitServe arm's server, started and stopped from the benchmark: ``litserve_app.py``
under the LitServe venv (``make litserve-venv``), on the server's cores, on a free port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
APP = HERE / "litserve_app.py"
VENV_PYTHON = HERE.parent / ".litserve-venv" / "bin" / "python"
# what that venv holds (LitServe's version among it): a change re-measures the arm
REQUIREMENTS = HERE / "litserve-requirements.txt"
API_PATH = "/predictions/litserve"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LitServeServer:
    """One LitServe server: one inference worker (``workers_per_device=1``) batching up
    to ``batch_size`` requests within ``batch_timeout_ms``, like one TorchServe worker."""

    def __init__(
        self,
        workdir: Path,
        state_path: Path,
        classes: list[str],
        batch_size: int,
        batch_timeout_ms: int,
        cores: set[int] | None,
        python: Path = VENV_PYTHON,
    ) -> None:
        if not Path(python).is_file():
            raise SystemExit(
                f"{python}: no LitServe venv; `make litserve-venv` installs {REQUIREMENTS.name}"
            )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}{API_PATH}"
        self.log_path = Path(workdir) / f"litserve-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(python),
            str(APP),
            "--state",
            str(state_path),
            "--port",
            str(self.port),
            "--batch-size",
            str(batch_size),
            "--batch-timeout-ms",
            str(batch_timeout_ms),
            "--threads",
            str(len(cores) if cores else os.cpu_count() or 1),
            "--classes",
            ",".join(classes),
            "--api-path",
            API_PATH,
        ]
        self._cmd, self._cores = cmd, sorted(cores) if cores else None
        self.proc: subprocess.Popen | None = None
        self.start_to_ready_s: float | None = None

    def start(self, timeout: float = 240) -> None:
        """Start it and wait until its health check and a real request answer; the time
        from launch to the first answer is ``start_to_ready_s`` (Python and torch
        imports, the model load, one forward pass)."""
        cores = self._cores

        def pin() -> None:  # the server and every process it forks sit on these cores
            if cores:
                os.sched_setaffinity(0, cores)

        t = time.perf_counter()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self._cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=pin,
                start_new_session=True,  # its own process group: stop() ends all of it
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"LitServe exited ({self.proc.returncode}): {self._tail()}")
            try:
                if requests.get(self.url.replace(API_PATH, "/health"), timeout=2).ok:
                    self.start_to_ready_s = round(time.perf_counter() - t, 2)
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"LitServe not ready in {timeout:.0f} s: {self._tail()}")

    def _tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = os.getpgid(self.proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(10)
        # the workers it forked share its group: make sure none outlives it
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        os.killpg(pgid, signal.SIGKILL)
