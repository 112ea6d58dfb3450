"""Kubelet probes for the TorchServe container: `python3 -I -S probe.py {ready|live} CONFIG`.

ready: TorchServe has at least one model registered and every registered model has a worker
       in state READY. TorchServe's /ping says Healthy as soon as the frontend is up, long
       before a large model has loaded, so it cannot gate traffic.
live:  the frontend answers /ping on its loopback inference address. Any HTTP answer counts,
       "Unhealthy" included: TorchServe restarts its own crashed workers, and killing the
       container for that would only add a JVM start to the outage.

CONFIG is the config.properties TorchServe runs with: the addresses are read from it, so
the probe follows the config. Standard library only, and `-I -S` skips site-packages:
the probe costs a few milliseconds of start-up, not torch's import. Exit 0 passes; any
other exit fails the probe, and what it printed is in the pod's events.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request

TIMEOUT_S = 3


def read_properties(path: str) -> dict[str, str]:
    props = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                props[key.strip()] = value.strip()
    return props


def _get(url: str):
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
        return json.load(resp)


def ready(props: dict[str, str]) -> str | None:
    """None when ready, else why not."""
    base = props.get("management_address", "http://127.0.0.1:8081").rstrip("/")
    names = [m["modelName"] for m in _get(f"{base}/models?limit=1000").get("models", [])]
    if not names:
        return "no model registered yet"
    for name in names:
        versions = _get(f"{base}/models/{urllib.parse.quote(name)}")
        states = [w.get("status") for v in versions for w in v.get("workers", [])]
        if "READY" not in states:
            return f"model {name}: no READY worker (workers: {states or 'none'})"
    return None


def live(props: dict[str, str]) -> str | None:
    base = props.get("inference_address", "http://127.0.0.1:8080").rstrip("/")
    try:
        with urllib.request.urlopen(f"{base}/ping", timeout=TIMEOUT_S):
            return None
    except urllib.error.HTTPError:
        return None  # the frontend answered


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("ready", "live"):
        print("usage: probe.py {ready|live} CONFIG", file=sys.stderr)
        return 2
    try:
        why = (ready if argv[1] == "ready" else live)(read_properties(argv[2]))
    except (OSError, ValueError, KeyError, urllib.error.URLError) as e:
        why = f"{type(e).__name__}: {e}"
    if why:
        print(f"not {argv[1]}: {why}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
