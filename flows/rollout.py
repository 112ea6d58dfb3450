"""The rollout verdict as a flow: what ``visionline rollout status`` says about the
challenger beside the champion, published as Prefect artifacts (the report, and the
checks as a table), and, when asked, the challenger promoted once every check passes.

The training pipeline starts a shadow or canary rollout (``deploy.mode``); this flow,
run on demand or on a schedule, judges it on the traffic and late labels gathered
since. A check that blocks promotion is named, with how many more requests or labels
it needs.

    python -m flows.rollout --config configs/digits.yaml [--workdir DIR] [--promote]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.tasks import IO
from visionline.backends import rollout
from visionline.config import load_config
from visionline.serving.rollout.evidence import format_report
from visionline.storage import open_store


@task(**{**IO, "persist_result": False})  # a verdict is never reused: it looks at "now"
def judge(config: str, workdir: str | None, promote: bool) -> dict[str, Any]:
    """The rollout's report and state; promoted first when asked and allowed."""
    cfg = load_config(config)
    ro = rollout(cfg, open_store(cfg.store), workdir)
    state = ro.state() or ro.last()
    if state is None:
        return {"state": None}
    report = ro.report(state)
    promoted = None
    if promote and state.get("active") and report["_verdict"].promotable:
        report, result = ro.promote()
        promoted = result.endpoint if result is not None else None
        # locally the ended rollout is on record; on Kubernetes nothing of it is left
        state = ro.last() or {**state, "active": False, "outcome": "promote"}
    text = format_report(report)
    report.pop("_verdict")
    return {"state": state, "report": report, "text": text, "promoted": promoted}


def _headline(state: dict[str, Any], report: dict[str, Any]) -> str:
    verdict = "promotable" if report["verdict"]["promotable"] else "not promotable"
    if state.get("active"):
        return (
            f"{state['mode']} rollout of {state['challenger']} beside {state['champion']}"
            f" ({state['percent']:g}%) since {state['started']}: {verdict}"
        )
    return (
        f"{state['mode']} rollout of {state['challenger']} ended {state.get('ended')}:"
        f" {state.get('outcome')} ({state.get('reason') or 'no reason given'})"
    )


@flow(name="rollout-verdict", log_prints=True)
def rollout_verdict(config: str, workdir: str | None = None, promote: bool = False) -> dict:
    judged = judge(config, workdir, promote)
    state = judged["state"]
    if state is None:
        create_markdown_artifact(key="rollout", markdown="# No rollout\n\nNothing to judge.\n")
        print("no rollout: nothing to judge")
        return judged
    report = judged["report"]
    headline = _headline(state, report)
    if judged["promoted"]:
        headline += f"; promoted, serving at {judged['promoted']}"
    print(headline)
    create_markdown_artifact(
        key="rollout",
        description=headline,
        markdown=f"# Rollout\n\n{headline}\n\n```\n{judged['text']}\n```\n",
    )
    create_table_artifact(
        key="rollout-checks",
        description=f"{state['challenger']} against {state['champion']}",
        table=[
            {
                "check": c["name"],
                "passed": c["passed"],
                "detail": c["detail"],
                "needs": c.get("needs") or 0,
            }
            for c in report["verdict"]["checks"]
        ],
    )
    return judged


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/digits.yaml")
    ap.add_argument("--workdir", help="the local server's directory (default: deploy.workdir)")
    ap.add_argument("--promote", action="store_true", help="promote when every check passes")
    a = ap.parse_args()
    out = rollout_verdict(a.config, a.workdir, a.promote)
    print(json.dumps({k: v for k, v in out.items() if k != "text"}, indent=2, default=str))
