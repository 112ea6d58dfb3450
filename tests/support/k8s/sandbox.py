"""A pod's own network namespace, as its sandbox gives it one: a pause process holds a
new network namespace (``unshare --net``, root), whose loopback is brought up. Every
container of the pod starts inside it (``preexec``), so each pod has its own
127.0.0.1 and the same ports in every pod, as in a cluster; a test thread reaches a
pod the way kube-proxy does, by entering it (``call``) for one connection."""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class Sandbox:
    """The pod's network namespace, held by its pause process."""

    def __init__(self) -> None:
        self.pause = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
        path, own = f"/proc/{self.pause.pid}/ns/net", os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 10
        while os.readlink(path) == own:  # unshare has not switched yet
            if time.monotonic() > deadline or self.pause.poll() is not None:
                raise RuntimeError("unshare --net did not start (this needs root)")
            time.sleep(0.01)
        self.fd = os.open(path, os.O_RDONLY)
        subprocess.run(["ip", "link", "set", "lo", "up"], preexec_fn=self.enter, check=True)

    def enter(self) -> None:
        """Move the calling thread (or a child before its exec) into the pod's network."""
        _setns(self.fd)

    def preexec(self) -> None:
        """A container process: in the pod's network, in its own session."""
        self.enter()
        os.setsid()

    def call(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on a thread inside the pod's network (its connections are the pod's)."""
        out: dict[str, Any] = {}

        def run() -> None:
            try:
                self.enter()
                out["value"] = fn()
            except BaseException as e:
                out["error"] = e

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join()
        if "error" in out:
            raise out["error"]
        return out["value"]

    def close(self) -> None:
        os.close(self.fd)
        self.pause.kill()
        self.pause.wait(timeout=10)
