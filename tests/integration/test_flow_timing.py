"""flows.timing: task bodies timed inside real Prefect task runs (temporary Prefect API)."""

from __future__ import annotations

import asyncio
import inspect
import time

import prefect
import pytest

from flows import timing


def _slow(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


def _fails() -> None:
    raise ValueError("boom")


async def _task_run_names(flow_run_id) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {str(r.id): r.name for r in runs}


@pytest.mark.slow  # the temporary Prefect API takes a while to start
def test_bodies_are_timed_inside_their_task_runs(prefect_api):
    slow = timing.task(_slow)
    fails = timing.task(retries=0)(_fails)

    @prefect.flow
    def pipeline() -> str:
        out = slow(0.3)
        with pytest.raises(ValueError, match="boom"):
            fails()
        return out

    timing.timed(_slow)(0.0)  # outside a recording: nothing is kept
    with timing.recording() as bodies:
        state = pipeline(return_state=True)
    assert state.result() == "done"
    assert [(b.task, b.ok) for b in bodies] == [("_slow", True), ("_fails", False)]
    assert 0.3 <= bodies[0].seconds < 5
    names = asyncio.run(_task_run_names(state.state_details.flow_run_id))
    assert names[bodies[0].task_run_id].startswith("_slow-")
    assert names[bodies[1].task_run_id].startswith("_fails-")


def test_timed_task_is_the_same_task_to_prefect():
    """Name, parameters and task key (hence cache keys) come from the function itself."""
    timed, plain = timing.task(_slow), prefect.task(_slow)
    assert timed.name == plain.name == "_slow"
    assert timed.task_key == plain.task_key
    assert timed.retries == 0 and timing.task(retries=2)(_slow).retries == 2
    assert inspect.signature(timed.fn) == inspect.signature(_slow)
    assert inspect.getsource(timed.fn) == inspect.getsource(_slow)
