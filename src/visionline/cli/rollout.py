"""``visionline rollout status | promote | abort | watch``: a challenger beside the
champion (started by ``visionline deploy --shadow`` or ``--canary``), judged by
statistics on the traffic both sides answered."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from visionline.backends import rollout
from visionline.cli.common import Command, pipeline_config, target_flag, with_target
from visionline.config import PipelineConfig
from visionline.errors import EXIT_FAILED, VisionlineError
from visionline.registry import ModelRef
from visionline.serving.kubernetes.rollout import KubernetesRollout
from visionline.serving.rollout.evidence import format_report
from visionline.serving.rollout.watch import watch
from visionline.storage import ArtifactStore, open_store


def deploy_mode(cfg: PipelineConfig, args: argparse.Namespace) -> tuple[str, float]:
    """(mode, percent) from ``--shadow``/``--canary``, else ``deploy.mode``."""
    r = cfg.deploy.rollout
    if args.canary is not None:
        mode, percent = "canary", args.canary
    elif args.shadow is not None:
        mode, percent = "shadow", (r.shadow_percent if args.shadow < 0 else args.shadow)
    else:
        mode = cfg.deploy.mode
        percent = r.canary_percent if mode == "canary" else r.shadow_percent
    if not 0 < percent <= 100:
        raise VisionlineError(f"--{mode} {percent:g}: a percent in (0, 100]")
    return mode, percent


def _watcher(args: argparse.Namespace, workdir: Path, log_dir: Path) -> int:
    """The canary's watchdog as a process of its own, outliving this command."""
    argv = [sys.executable, "-m", "visionline.cli"]
    if args.config:
        argv += ["--config", str(Path(args.config).resolve())]
    if args.store:
        argv += ["--store", args.store]
    argv += ["rollout", "watch", "--workdir", str(workdir)]
    with (log_dir / "watch.log").open("ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True
        )
    return proc.pid


def start_rollout(
    cfg: PipelineConfig,
    store: ArtifactStore,
    ref: ModelRef,
    mode: str,
    percent: float,
    args: argparse.Namespace,
) -> int:
    ro = rollout(cfg, store, args.workdir)
    state = ro.start(ref, mode, percent)
    share = "mirrored to" if mode == "shadow" else "answered by"
    print(f"{mode} rollout: {percent:g}% of predictions {share} {ref}; {state['champion']} is")
    print("still the champion" + (" and answers every user" if mode == "shadow" else ""))
    if mode == "canary" and cfg.deploy.rollout.auto_rollback and isinstance(ro, KubernetesRollout):
        print("no watchdog is started for a rollout on Kubernetes: run")
        print("  visionline rollout watch --target kubernetes")
        print("where it can keep running (it reads the champion pods' front logs), or judge")
        print("it yourself with visionline rollout status")
    elif mode == "canary" and cfg.deploy.rollout.auto_rollback:
        pid = _watcher(args, Path(ro.local.workdir).resolve(), ro.dir)
        print(f"watching it (pid {pid}, {ro.dir / 'watch.log'}): rolled back on its own when")
        print("its error rate or p99 latency exceeds the champion's by the configured margins")
    print("see: visionline rollout status; then visionline rollout promote or abort")
    return 0


def rollout_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["status", "promote", "abort", "watch"])
    target_flag(p)
    p.add_argument("--workdir", help="the local server's directory (default: deploy.workdir)")
    p.add_argument("--json", action="store_true", help="status: the report as JSON")
    p.add_argument("--reason", help="abort: recorded with the rollout's end")
    p.add_argument(
        "--force", action="store_true", help="promote even when a check blocks it (recorded)"
    )
    p.add_argument("--timeout", type=float, help="watch: stop watching after this many seconds")


def cmd_rollout(args: argparse.Namespace) -> int:
    cfg = with_target(pipeline_config(args), args)
    ro = rollout(cfg, open_store(cfg.store), args.workdir)
    if args.action == "status":
        report = ro.report()
        report.pop("_verdict")
        last = ro.last() or {}
        if args.json:
            print(json.dumps({**report, "rollout": last}, indent=1, default=str))
            return 0
        print(_headline(last))
        print(format_report(report))
        return 0
    if args.action == "abort":
        state = ro.end("abort", args.reason or "aborted by " + os.environ.get("USER", "a user"))
        print(f"aborted: {state['challenger']} is no longer served; {state['champion']} answers")
        return 0
    if args.action == "watch":
        reason = watch(ro, cfg.deploy.rollout.watch_interval_s, args.timeout)
        print(f"rolled back: {reason}" if reason else "the rollout ended, or the watch timed out")
        return 0
    return _promote(ro, args.force)


def _headline(state: dict[str, Any]) -> str:
    if state.get("active"):
        return f"{state['mode']} rollout since {state['started']} ({state['percent']:g}%)"
    return (
        f"{state.get('mode')} rollout ended {state.get('ended')}: {state.get('outcome')}"
        f" ({state.get('reason') or 'no reason given'})"
    )


def _promote(ro: Any, force: bool) -> int:
    report, result = ro.promote(force)
    verdict = report["_verdict"]
    if result is None:
        print(f"not promoted: {report['challenger']} stays the challenger", file=sys.stderr)
        for c in verdict.blocking:
            print(f"  blocked by {c.name}: {c.detail}", file=sys.stderr)
        return EXIT_FAILED
    if not verdict.promotable:
        print("promoted with --force although: " + "; ".join(c.name for c in verdict.blocking))
    print(f"promoted: {result.ref} is the champion, serving at {result.endpoint}")
    return 0


COMMANDS = {"rollout": Command(rollout_arguments, cmd_rollout)}
