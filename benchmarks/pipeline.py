"""Orchestration overhead of the demo pipeline.

Runs training_pipeline on the bundled digits (local store, local training, local
TorchServe) against a temporary Prefect API, then reads the task runs back from Prefect:
``stages_s`` is the sum of their run times, ``orchestration_share`` is
(wall - stages) / wall. Target: at most 0.10.

    python benchmarks/pipeline.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_result
from tests.support.ports import serve_ports
from visionline.config import load_config
from visionline.data.samples import write_digits
from visionline.serving.torchserve import TorchServe

REPO = Path(__file__).resolve().parents[1]


async def task_runs(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        return await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )


def main() -> None:
    from prefect.testing.utilities import prefect_test_harness

    from flows.training_pipeline import training_pipeline

    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=180):
        tmp = Path(tmp)
        write_digits(tmp / "digits")
        ports = serve_ports()
        cfg = load_config(REPO / "configs" / "digits.yaml").with_overrides(
            store=str(tmp / "store"),
            **{"data.cache_dir": str(tmp / "cache"), "deploy.workdir": str(tmp / "serve")},
            **ports,
        )
        (tmp / "cfg.yaml").write_text(cfg.to_yaml())
        t = time.perf_counter()
        state = training_pipeline(
            config=str(tmp / "cfg.yaml"),
            source=str(tmp / "digits"),
            return_state=True,
        )
        wall = time.perf_counter() - t
        TorchServe(tmp / "serve", cfg.serve).stop()
        assert state.is_completed(), state.message
        runs = asyncio.run(task_runs(state.state_details.flow_run_id))
    stages = {r.name: r.total_run_time.total_seconds() for r in runs}
    stages_s = sum(stages.values())
    write_result(
        "pipeline",
        {
            "wall_s": round(wall, 2),
            "stages_s": round(stages_s, 2),
            "orchestration_share": round((wall - stages_s) / wall, 4),
            "per_stage_s": {k: round(v, 2) for k, v in sorted(stages.items())},
            "accuracy": state.result()["accuracy"],
        },
    )


if __name__ == "__main__":
    main()
