"""What both sides of a rollout answered, read back and joined by request id.

- the front's request log (one JSON line per answered request and side: status and
  latency, ``serving.nginx.RolloutFront``),
- the captures of the champion's and the challenger's versions (their top class),
- the late labels sent for those requests (``visionline labels feedback``),

turned into the inputs of ``verdict`` and a report.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from visionline.monitoring.capture_windows import read_captures
from visionline.monitoring.labels import read_feedback
from visionline.registry import ModelRef
from visionline.serving.rollout.verdict import (
    Margins,
    SideStats,
    decide,
    disagreement,
    labelled_comparison,
    side_stats,
)
from visionline.storage import ArtifactStore


def parse_request_log(text: str) -> list[dict[str, Any]]:
    """The front's rollout lines in ``text``; any other line (the front's plain access
    log in a pod's log, a line being written and cut short) is skipped."""
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "side" in rec:
            out.append(rec)
    return out


def read_request_log(path: Path) -> list[dict[str, Any]]:
    """The front's rollout log file (none yet: no line)."""
    return parse_request_log(path.read_text(errors="replace")) if path.is_file() else []


def _latency(rec: dict[str, Any]) -> float:
    """The backend's time when it answered (both sides compare like with like), else
    the front's (a timeout, a refused connection)."""
    try:
        return float(str(rec.get("upstream_time", "")).split(",")[-1].strip())
    except ValueError:
        return float(rec.get("request_time", 0.0))


def sides(records: list[dict[str, Any]]) -> dict[str, SideStats]:
    """Per side, every answered request (nginx's 499, the client gone, is left out)."""
    return {
        side: side_stats(
            (int(r["status"]), _latency(r))
            for r in records
            if r.get("side") == side and int(r.get("status", 0)) != 499
        )
        for side in ("champion", "challenger")
    }


def joined_answers(
    store: ArtifactStore, champion: ModelRef, challenger: ModelRef, since: datetime
) -> pd.DataFrame:
    """request_id, champion, challenger (top classes) for requests both captured."""
    cols = ["request_id", "label"]
    a, b = (
        read_captures(store, ref.name, ref.version, since, None, columns=[*cols, "time"])
        for ref in (champion, challenger)
    )
    if a.empty or b.empty:
        return pd.DataFrame(columns=["request_id", "champion", "challenger"])
    a = a.drop_duplicates("request_id", keep="last")[cols].rename(columns={"label": "champion"})
    b = b.drop_duplicates("request_id", keep="last")[cols].rename(columns={"label": "challenger"})
    return a.merge(b, on="request_id")


def rollout_report(
    store: ArtifactStore,
    champion: ModelRef,
    challenger: ModelRef,
    since: datetime,
    records: list[dict[str, Any]],
    margins: Margins,
) -> dict[str, Any]:
    """Everything ``visionline rollout status`` shows, and the verdict; ``records``: the
    front's request log (``read_request_log``)."""
    stats = sides(records)
    answers = joined_answers(store, champion, challenger, since)
    agreement = disagreement(
        zip(answers["champion"], answers["challenger"], strict=True), margins.confidence
    )
    labels = read_feedback(store, champion.name)
    lab = answers.merge(labels, on="request_id") if not labels.empty else answers.iloc[0:0]
    labelled = labelled_comparison(
        zip(lab.get("label", []), lab.get("champion", []), lab.get("challenger", []), strict=True),
        margins.confidence,
    )
    verdict = decide(stats["champion"], stats["challenger"], agreement, labelled, margins)
    return {
        "champion": str(champion),
        "challenger": str(challenger),
        "sides": {k: {**v.__dict__, "error_rate": v.error_rate} for k, v in stats.items()},
        "disagreement": agreement,
        "labelled": labelled,
        "verdict": verdict.to_dict(),
        "_verdict": verdict,
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as ``visionline rollout status`` prints it."""
    lines = [f"champion {report['champion']}  challenger {report['challenger']}"]
    lines += report.get("objects") or []  # where it runs (Kubernetes)
    for side, s in report["sides"].items():
        p50 = "-" if s["p50_ms"] is None else f"{s['p50_ms']:.0f} ms"
        p99 = "-" if s["p99_ms"] is None else f"{s['p99_ms']:.0f} ms"
        lines.append(
            f"  {side:<10} {s['requests']:>6} requests  errors {s['error_rate']:.2%}  "
            f"p50 {p50}  p99 {p99}"
        )
    if "request_log" in report:
        lines += _log_source(report["request_log"])
    d = report["disagreement"]
    if d["n"]:
        lo, hi = d["interval"]
        lines.append(
            f"disagreement {d['rate']:.2%} on {d['n']} requests both sides captured "
            f"(95% Wilson interval {lo:.2%} .. {hi:.2%})"
        )
        for c, v in d["per_class"].items():
            lines.append(f"  class {c:<8} {v['disagree']:>4}/{v['n']:<5} {v['rate']:.2%}")
    else:
        lines.append("disagreement: no request captured by both sides yet")
    lab = report["labelled"]
    if lab["n"]:
        lines.append(
            f"labelled {lab['n']}: champion {lab['champion_accuracy']:.2%}, challenger "
            f"{lab['challenger_accuracy']:.2%}; McNemar p = {lab['mcnemar_p']:.3g} "
            f"({lab['champion_only_right']} only the champion got right, "
            f"{lab['challenger_only_right']} only the challenger)"
        )
    v = report["verdict"]
    lines.append("decision: " + ("promotable" if v["promotable"] else "not promotable"))
    for c in v["checks"]:
        lines.append(f"  [{'pass' if c['passed'] else 'FAIL'}] {c['name']}: {c['detail']}")
    return "\n".join(lines)


def _log_source(src: dict[str, Any]) -> list[str]:
    """Where the request counts above came from, on Kubernetes: the champion pods' fronts."""
    if src["pods"]:
        lines = [
            f"request log: {src['lines']} lines from the front (auth-proxy) of "
            f"{len(src['pods'])} champion pod(s) ({', '.join(src['pods'])}); requests "
            "answered by pods that are gone since are not counted"
        ]
    else:
        lines = [
            "request log: none could be read (no champion pod runs the rollout front, or "
            "its front's log is unreadable): the counts above say nothing about the traffic"
        ]
    return lines + [f"  could not read {pod}: {why}" for pod, why in src["unreadable"].items()]
