"""The auth front's preStop hook: a graceful end for nginx in a terminating pod.

    python -m visionline.serving.prestop --drain 10 --inflight 30 \\
        --nginx-conf /etc/visionline/nginx/nginx.conf

A pod being deleted still gets new requests for a while: Services, kube-proxy and
ingresses learn of the endpoint removal some seconds later. So the hook first waits out
``--drain`` seconds, answering as usual; then it asks nginx to quit gracefully (SIGQUIT
to the master named in the config's ``pid`` file: stop accepting, finish what it has)
and waits until the master has exited, at most ``--inflight`` seconds. Only then does
the kubelet send SIGTERM, which nginx takes as a fast shutdown that cuts requests.
TorchServe's own preStop sleeps ``drain + inflight``, so it gets its SIGTERM only once
the front has stopped sending to it (see ``serving.kubernetes.containers``).

Always exits 0: a failing hook changes nothing in the kubelet's sequence but an event.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path

log = logging.getLogger("visionline.serving.prestop")


def nginx_pid(conf: Path) -> int | None:
    """The running master's pid, from the ``pid`` file its config names."""
    m = re.search(r"^\s*pid\s+([^;]+);", conf.read_text(), flags=re.M)
    if not m:
        return None
    try:
        return int(Path(m[1].strip()).read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Running: not gone, and not a zombie waiting for its parent to reap it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: the signal answered
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def quit_nginx(conf: Path, inflight: float) -> bool:
    """SIGQUIT nginx and wait for it to finish its requests; True once it exited."""
    pid = nginx_pid(conf)
    if pid is None or not _alive(pid):
        log.warning("no running nginx for %s: nothing to quit", conf)
        return True
    os.kill(pid, signal.SIGQUIT)
    log.info("asked nginx (pid %d) to quit gracefully", pid)
    deadline = time.monotonic() + inflight
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    log.warning("nginx still had requests after %.0fs: the kubelet's SIGTERM ends them", inflight)
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m visionline.serving.prestop", description=__doc__)
    ap.add_argument("--drain", type=float, required=True, help="seconds to keep answering")
    ap.add_argument("--inflight", type=float, required=True, help="longest wait for requests")
    ap.add_argument("--nginx-conf", type=Path, required=True, help="the front's nginx.conf")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    time.sleep(args.drain)
    try:
        quit_nginx(args.nginx_conf, args.inflight)
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
