"""The digits model served as a user serves it: ``visionline serve`` on free ports."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.ports import serve_ports
from visionline.registry import Registry


def visionline_cli(cfg_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``visionline --config CFG ARGS...`` as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "visionline.cli", "--config", str(cfg_path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@contextmanager
def served_digits(packaged_digits: Any, work: Path) -> Iterator[dict[str, Any]]:
    """The packaged digits model under ``visionline serve`` (batch 4, 50 ms delay) with
    its config in ``work``; ``visionline serve --stop`` afterwards."""
    store, ref, cfg = packaged_digits
    ports = serve_ports(prefix="")
    served = cfg.with_overrides(
        **{f"serve.{k}": v for k, v in ports.items()},
        **{"serve.batch_size": 4, "serve.max_batch_delay_ms": 50},
    )
    cfg_path = work / "config.yaml"
    cfg_path.write_text(served.to_yaml())
    tsdir = work / "ts"
    # stopped whatever happens: a failed start or a failed test must not leave TorchServe
    # and its nginx front running
    try:
        started = visionline_cli(cfg_path, "serve", "--workdir", str(tsdir))
        assert started.returncode == 0, started.stdout + started.stderr
        info = Registry(store, ref.name).info(ref.version)
        yield {
            "cfg": served,
            "cfg_path": cfg_path,
            "tsdir": tsdir,
            "stdout": started.stdout,
            "keys": json.loads((tsdir / "key_file.json").read_text()),
            "ports": ports,
            "root": f"http://127.0.0.1:{ports['inference_port']}",
            "name": ref.name,
            "store": store,
            "info": info,
            "good": store.get_bytes(info["parity_keys"][0]),
        }
    finally:
        stopped = visionline_cli(cfg_path, "serve", "--stop", "--workdir", str(tsdir))
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr
