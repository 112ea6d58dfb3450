"""Orchestration overhead of the training pipeline, in seconds, per task.

Runs ``training_pipeline`` on the bundled digits (local store, training in a local
subprocess, local TorchServe) against a temporary Prefect API. Every task's body is
timed inside the task run (``flows.timing``), so what Prefect adds is the rest:

- ``cold_start_s``: starting the Prefect API server with a fresh database (once per
  process that uses an ephemeral server, as ``make demo`` does), reported apart;
- ``overhead_s_excl_cold_start``: the flow's wall time minus the sum of task bodies
  (flow-run creation, task-run state transitions, result persistence, artifacts);
- ``per_task_overhead_s``: for each task, the time between the previous task's body
  ending (or the flow being called: the first task's figure includes creating the flow
  run) and this task's body starting; these and
  ``after_last_task_s`` add up to the overhead. ``per_task`` also has each body and the
  part of the overhead inside the task run (its span from first to final state, from
  Prefect's own records, minus the body);
- ``orchestration_share`` with and without the cold start.

Target: overhead under 5 s per run, excluding the cold start.

About 2.5 minutes on 2 cores (the config's 30 epochs; ``--epochs`` changes the wall time
and so the share, not the overhead in seconds).

    python benchmarks/pipeline.py [--epochs N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import REPO, add_common_args, write_digits_sample, write_result
from tests.support.ports import serve_ports
from visionline.config import PipelineConfig, load_config
from visionline.serving.local import LocalDeployer
from visionline.storage import LocalStore

SMOKE = {
    "train.epochs": 1,
    "train.early_stopping": None,
    "gate.min_accuracy": 0.0,
    "gate.min_macro_f1": 0.0,
    "gate.min_class_recall": 0.0,
    "validation.min_per_class": 1,
}


async def task_run_spans(flow_run_id) -> dict[str, dict]:
    """Each task run of the flow run: name and span, from its state history."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
        out = {}
        for r in runs:
            states = await client.read_task_run_states(r.id)
            stamps = sorted(s.timestamp for s in states)
            out[str(r.id)] = {
                "name": r.name,
                "span_s": (stamps[-1] - stamps[0]).total_seconds() if stamps else None,
                "run_time_s": r.total_run_time.total_seconds(),
                "states": [s.type.value for s in sorted(states, key=lambda s: s.timestamp)],
            }
        return out


def parse_args() -> tuple[argparse.Namespace, dict]:
    """The command line, and the config overrides the run trains with."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=None, help="default: the config's")
    add_common_args(ap)
    args = ap.parse_args()
    overrides = dict(SMOKE) if args.smoke else {}
    if args.epochs:
        overrides["train.epochs"] = args.epochs
    return args, overrides


@dataclass(frozen=True)
class PipelineRun:
    """One timed run of the training pipeline under a fresh Prefect server."""

    cold_start_s: float
    t0: float  # perf_counter when the flow was called
    wall: float
    bodies: list  # flows.timing's record of each task body
    spans: dict[str, dict]
    accuracy: float


def run_pipeline(tmp: Path, cfg: PipelineConfig) -> PipelineRun:
    """Start a Prefect server (timed: the cold start), then run the flow on ``cfg``."""
    # prefect is imported here, after main() has set its environment (no telemetry)
    from prefect.testing.utilities import prefect_test_harness

    from flows.timing import recording
    from flows.training_pipeline import training_pipeline  # imported before the clock

    t = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=180):
        cold_start_s = time.perf_counter() - t
        print(f"Prefect server up in {cold_start_s:.1f} s", flush=True)
        try:
            with recording() as bodies:
                t0 = time.perf_counter()
                state = training_pipeline(
                    config=str(tmp / "cfg.yaml"),
                    source=str(tmp / "digits"),
                    return_state=True,
                )
                wall = time.perf_counter() - t0
        finally:
            # the deploy step started TorchServe and its nginx front: both stop,
            # whatever happened (the folder they run from is about to be deleted)
            LocalDeployer(LocalStore(tmp / "store"), cfg.serve, tmp / "serve").stop()
        if not state.is_completed():
            raise SystemExit(f"the pipeline did not complete: {state.message}")
        spans = asyncio.run(task_run_spans(state.state_details.flow_run_id))
        accuracy = state.result()["accuracy"]
    return PipelineRun(cold_start_s, t0, wall, bodies, spans, accuracy)


def per_task_overhead(run: PipelineRun) -> tuple[dict[str, dict], float]:
    """Each task's gap before its body, body and span; and the time after the last body."""
    # The flow calls its tasks one after another, so the flow's wall time is the task
    # bodies plus the gaps between them: each gap is what Prefect spent between one
    # step's code finishing and the next one's starting (result persistence and state
    # changes of the one, cache-key hashing, creation and state changes of the next).
    per_task, previous_end = {}, run.t0
    for b in sorted(run.bodies, key=lambda b: b.started):
        task_run = run.spans.get(b.task_run_id or "", {})
        span = task_run.get("span_s")
        name = b.task if b.task not in per_task else f"{b.task}-{len(per_task)}"
        per_task[name] = {
            "task_run": task_run.get("name"),
            "overhead_s": round(b.started - previous_end, 3),
            "body_s": round(b.seconds, 3),
            "span_s": round(span, 3) if span is not None else None,
            "overhead_within_run_s": round(span - b.seconds, 3) if span is not None else None,
        }
        previous_end = b.started + b.seconds
    return per_task, run.t0 + run.wall - previous_end


def main() -> None:
    args, overrides = parse_args()
    # no telemetry from a benchmark (the Makefile sets this too)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_digits_sample(tmp / "digits", 30 if args.smoke else None)
        cfg = load_config(REPO / "configs" / "digits.yaml").with_overrides(
            store=str(tmp / "store"),
            **{"data.cache_dir": str(tmp / "cache"), "deploy.workdir": str(tmp / "serve")},
            **serve_ports(),
            **overrides,
        )
        (tmp / "cfg.yaml").write_text(cfg.to_yaml())
        run = run_pipeline(tmp, cfg)

    body_s = sum(b.seconds for b in run.bodies)
    wall, cold_start_s = run.wall, run.cold_start_s
    overhead = wall - body_s
    per_task, after_last = per_task_overhead(run)
    write_result(
        "pipeline",
        {
            "overhead_s_excl_cold_start": round(overhead, 2),
            "cold_start_s": round(cold_start_s, 2),
            "wall_s": round(wall, 2),
            "task_bodies_s": round(body_s, 2),
            "orchestration_share": round(overhead / wall, 4),
            "orchestration_share_incl_cold_start": round(
                (overhead + cold_start_s) / (wall + cold_start_s), 4
            ),
            "per_task_overhead_s": {k: v["overhead_s"] for k, v in per_task.items()},
            "after_last_task_s": round(after_last, 3),
            "per_task": per_task,
            "untimed_task_runs": sorted(
                v["name"]
                for k, v in run.spans.items()
                if k not in {b.task_run_id for b in run.bodies}
            ),
            "epochs": cfg.train.epochs,
            "accuracy": run.accuracy,
            "target": "overhead_s_excl_cold_start < 5",
        },
        args.results_dir,
        smoke=args.smoke,
    )


if __name__ == "__main__":
    main()
