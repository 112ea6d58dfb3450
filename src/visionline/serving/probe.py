"""Kubernetes probes for a TorchServe container, asked over the pod's loopback:

    python -m visionline.serving.probe ready --model NAME   # a worker of NAME is READY
    python -m visionline.serving.probe live                 # the frontend answers /ping

TorchServe's ``/ping`` says "Healthy" before a large model has loaded (and, with token
auth on, answers 401 to a probe), so readiness asks the management API for the model's
workers instead: the pod receives traffic only once a worker can answer. Kept to the
standard library: the kubelet runs it every few seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

MANAGEMENT = "http://127.0.0.1:8081"
INFERENCE = "http://127.0.0.1:8080"


def _get(url: str, timeout: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


def ready(model: str, management: str = MANAGEMENT, timeout: float = 3) -> tuple[bool, str]:
    """(a worker of ``model`` is READY, what was seen)."""
    try:
        status, body = _get(f"{management.rstrip('/')}/models/{model}", timeout)
    except (OSError, urllib.error.URLError) as e:
        return False, f"management API unreachable: {e}"
    if status != 200:
        return False, f"describe {model}: HTTP {status} {body[:200]}"
    try:
        workers = json.loads(body)[0].get("workers", [])
    except (ValueError, IndexError, AttributeError):
        return False, f"describe {model}: unexpected answer {body[:200]!r}"
    states = [w.get("status") for w in workers]
    return "READY" in states, f"{model} workers: {', '.join(map(str, states)) or 'none'}"


def live(inference: str = INFERENCE, timeout: float = 3) -> tuple[bool, str]:
    try:
        status, body = _get(f"{inference.rstrip('/')}/ping", timeout)
    except (OSError, urllib.error.URLError) as e:
        return False, f"inference API unreachable: {e}"
    return status == 200, f"/ping: HTTP {status} {body.strip()[:200]}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m visionline.serving.probe", description=__doc__)
    sub = ap.add_subparsers(dest="probe", required=True)
    r = sub.add_parser("ready", help="exit 0 when a worker of the model is READY")
    r.add_argument("--model", required=True)
    r.add_argument("--management", default=MANAGEMENT)
    lv = sub.add_parser("live", help="exit 0 when TorchServe's frontend answers /ping")
    lv.add_argument("--inference", default=INFERENCE)
    for p in (r, lv):
        p.add_argument("--timeout", type=float, default=3)
    args = ap.parse_args(argv)
    if args.probe == "ready":
        ok, detail = ready(args.model, args.management, args.timeout)
    else:
        ok, detail = live(args.inference, args.timeout)
    print(detail, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
