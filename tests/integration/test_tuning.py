"""Model selection on real digits: every trial is a real training subprocess launched
through the configured compute backend, pruned trials are really stopped, the study
lives in the artifact store; the Prefect flow and the CLI (killed with SIGKILL and
started again) take the best run through evaluate -> gate -> package."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from optuna.trial import TrialState

from tests.conftest import digits_config
from visionline.backends import compute_backend
from visionline.config import load_config
from visionline.data.ingest import ingest
from visionline.model.runs import (
    RunPaths,
    is_complete,
    load_run_config,
    load_run_info,
    read_history,
)
from visionline.registry import Registry
from visionline.storage import LocalStore
from visionline.training.plan import plan_run
from visionline.tuning import StudyPaths, load_study, study_name, tune

pytestmark = pytest.mark.slow
VISIONLINE = [sys.executable, "-m", "visionline.cli"]
EPOCHS = 4
SEARCH = {
    "train.epochs": EPOCHS,
    "train.early_stopping": None,
    "tune.n_trials": 6,
    "tune.parallel": 2,
    "tune.seed": 0,
    "tune.pruner": {"kind": "median", "startup_trials": 1, "warmup_epochs": 1},
    "tune.space.architectures": [{"arch": "simple_cnn"}, {"arch": "resnet18"}],
    # Down to learning rates that cannot learn ten classes in four epochs: hopeless
    # trials that the pruner has to stop.
    "tune.space.lr": {"low": 1e-6, "high": 1e-2, "log": True},
    # 20 images per class: a few test images per class, so looser thresholds
    "gate.min_accuracy": 0.5,
    "gate.min_macro_f1": 0.5,
    "gate.min_class_recall": 0.0,
    "validation.min_per_class": 1,
}
PNG = b"\x89PNG\r\n\x1a\n"


class CountingBackend:
    """The configured backend, with a record of what was submitted to it."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.submitted: list[str] = []
        self.handles: list = []

    def submit(self, plan, store, origin=None):
        self.submitted.append(plan.run_id)
        self.handles.append(self.inner.submit(plan, store, origin))
        return self.handles[-1]


def _finished_runs(store) -> dict[str, bytes]:
    return {k: store.get_bytes(k) for k in store.list("runs/") if k.endswith("/run.json")}


@pytest.fixture(scope="module")
def searched(small_digits_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    store = LocalStore(root / "store")
    ingest(store, str(small_digits_dir), "digits", progress=False)
    cfg = digits_config(store.uri, **SEARCH)
    backend = CountingBackend(compute_backend(cfg))
    events: list[str] = []
    result = tune(cfg, store, backend=backend, poll_s=0.2, on_event=events.append)
    return SimpleNamespace(
        root=root, store=store, cfg=cfg, result=result, backend=backend, events=events
    )


def test_search_over_two_architectures_prunes_hopeless_trials(searched):
    store, result = searched.store, searched.result
    study = load_study(store, result.study)
    trials = study.trials
    assert len(trials) == 6 and result.finished
    states = [t.state for t in trials]
    assert TrialState.FAIL not in states and TrialState.RUNNING not in states
    assert {t.params["model"] for t in trials} == {"simple_cnn", "resnet18"}
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, f"nothing pruned: {[(t.params, t.intermediate_values) for t in trials]}"
    assert any(max(t.intermediate_values) < EPOCHS for t in pruned)
    # really stopped, not just marked: the run went no further than it had to
    stopped = [t for t in pruned if not is_complete(store, t.user_attrs["run_id"])]
    assert stopped, "every pruned run finished anyway: pruning stopped nothing"
    assert sorted(searched.backend.submitted) == sorted(t.user_attrs["run_id"] for t in trials)

    for t in trials:
        run_id = t.user_attrs["run_id"]
        history = {r["epoch"]: r for r in read_history(store, run_id)}
        # what the study was told is what the run wrote, epoch by epoch
        assert t.intermediate_values == {
            e: history[e]["val_accuracy"] for e in t.intermediate_values
        }
        if t.state == TrialState.COMPLETE:
            info = load_run_info(store, run_id)
            assert t.value == history[info["best_epoch"]]["val_accuracy"]
            assert t.user_attrs["epochs"] == info["epochs_run"] == EPOCHS
        else:  # judged on the last epoch it reported
            assert t.value == t.intermediate_values[max(t.intermediate_values)]
    for t in stopped:  # resumable like any run
        assert list(store.list(RunPaths(t.user_attrs["run_id"]).checkpoints))
    # and the point of it: epochs that were never trained
    assert any(len(read_history(store, t.user_attrs["run_id"])) < EPOCHS for t in stopped)

    # The first trial is the config as written: the run `visionline train` would make.
    assert result.trials[0]["base"]
    assert result.trials[0]["run_id"] == plan_run(searched.cfg, store).run_id
    assert trials[0].state == TrialState.COMPLETE

    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert result.best_run_id == best.user_attrs["run_id"]
    assert result.best["value"] == best.value
    best_cfg = load_config(store.url(StudyPaths(result.study).best_config))
    assert best_cfg.fingerprint() == load_run_config(store, result.best_run_id).fingerprint()
    assert plan_run(best_cfg, store).run_id == result.best_run_id

    paths = StudyPaths(result.study)
    report = store.get_bytes(paths.report).decode()
    for t in result.trials:
        assert t["run_id"] in report
    assert "pruned" in report and "complete (best)" in report
    assert store.get_json(paths.trials) == result.trials
    assert store.get_bytes(paths.history_png).startswith(PNG)
    assert store.get_bytes(paths.importance_png).startswith(PNG)
    assert any("pruned after" in e for e in searched.events)


def test_rerun_of_the_same_search_reuses_finished_trials(searched):
    before = _finished_runs(searched.store)
    backend = CountingBackend(compute_backend(searched.cfg))
    again = tune(searched.cfg, searched.store, backend=backend, on_event=lambda _: None)
    assert backend.submitted == []
    assert again.study == searched.result.study
    assert again.trials == searched.result.trials
    assert _finished_runs(searched.store) == before

    # a bigger budget continues the same study: one more trial, not seven
    more = searched.cfg.with_overrides(**{"tune.n_trials": 7})
    extended = tune(more, searched.store, backend=backend, on_event=lambda _: None)
    assert extended.study == searched.result.study and len(extended.trials) == 7
    assert len(backend.submitted) <= 1  # (none if its parameters matched a finished run)
    assert extended.trials[:6] == searched.result.trials


def test_time_budget_stops_running_trials_for_later(searched):
    """Out of time: the running trials' processes are stopped and the trials stay
    running in the study (the next search resumes them); the report says so."""
    cfg = searched.cfg.with_overrides(
        **{"tune.seed": 1, "tune.n_trials": 2, "tune.timeout_s": 3, "tune.include_base": False}
    )
    backend = CountingBackend(compute_backend(cfg))
    result = tune(cfg, searched.store, backend=backend, on_event=lambda _: None)
    assert result.study != searched.result.study
    assert not result.finished and result.best is None
    assert [t["state"] for t in result.trials] == ["RUNNING", "RUNNING"]
    assert len(backend.handles) == 2
    assert all(h.poll() is not None for h in backend.handles)  # no process left behind
    report = searched.store.get_bytes(result.paths.report).decode()
    assert report.count("| interrupted |") == 2 and "not finished" in report


def test_a_trial_that_cannot_train_is_recorded_failed_with_its_reason(small_digits_dir, tmp_path):
    store = LocalStore(tmp_path / "store")
    ingest(store, str(small_digits_dir), "digits", progress=False)
    missing = tmp_path / "no-such-weights.pt"
    cfg = digits_config(
        store.uri,
        **{
            **SEARCH,
            "tune.n_trials": 1,
            "tune.include_base": False,
            "tune.space.architectures": [{"arch": "simple_cnn", "pretrained": str(missing)}],
        },
    )
    result = tune(cfg, store, backend=compute_backend(cfg), on_event=lambda _: None)
    assert [t["state"] for t in result.trials] == ["FAIL"]
    assert str(missing) in result.trials[0]["failure"]
    assert result.best is None and result.best_config is None
    report = store.get_bytes(result.paths.report).decode()
    assert "| fail |" in report and "## Failed trials" in report and str(missing) in report


def test_tune_flow_gates_and_packages_the_best_run(searched, prefect_api):
    from prefect.client.orchestration import get_client

    from flows.tune import tune as tune_flow

    config = searched.root / "digits-tune.yaml"
    config.write_text(searched.cfg.to_yaml())
    before = _finished_runs(searched.store)
    state = tune_flow(config=str(config), return_state=True)
    assert state.is_completed(), state.message
    out = state.result()
    assert out["best_run_id"] == searched.result.best_run_id
    assert out["gate"] == "pass" and out["model"] == "digits:1"
    stored = load_study(searched.store, searched.result.study).trials
    assert out["trials"] == len(stored) >= 6
    assert out["pruned"] == sum(t.state == TrialState.PRUNED for t in stored)
    assert _finished_runs(searched.store) == before  # the stored study, not a new search
    registry = Registry(searched.store, "digits")
    assert registry.info("1")["run_id"] == searched.result.best_run_id

    async def artifacts():
        async with get_client() as client:
            return {a.key: a for a in await client.read_latest_artifacts()}

    found = asyncio.run(artifacts())
    table = found["tuning-trials"].data
    assert all(str(t["run_id"]) in table for t in searched.result.trials)
    assert "Gate decision: PASS" in found["tuning-summary"].data


def _wait_for_a_running_trial(store, name: str, proc, log: Path, timeout: float = 900):
    """Until one trial has finished and another has a checkpoint and more to do."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, (
            f"the search ended before it could be killed:\n{log.read_text()}"
        )
        if store.exists(StudyPaths(name).journal):
            trials = load_study(store, name).trials
            done = [t for t in trials if t.state == TrialState.COMPLETE]
            running = [
                t
                for t in trials
                if t.state == TrialState.RUNNING
                and t.intermediate_values
                and max(t.intermediate_values) < EPOCHS
                and list(store.list(RunPaths(t.user_attrs["run_id"]).checkpoints))
            ]
            if done and running:
                return done, running
        time.sleep(0.3)
    raise AssertionError(f"no trial to interrupt within {timeout} s:\n{log.read_text()}")


def test_killed_search_resumes_where_it_stopped(small_digits_dir, tmp_path):
    """`visionline tune`, as a user types it, killed (SIGKILL, trainers included, as
    when its machine goes) and typed again: finished trials are reused, interrupted ones
    go on from their checkpoints under the same trial numbers; the best run is gated
    and packaged."""
    store = LocalStore(tmp_path / "store")
    ref = ingest(store, str(small_digits_dir), "digits", progress=False).ref
    cfg = digits_config(store.uri, **{**SEARCH, "tune.pruner": {"kind": "none"}})
    config = tmp_path / "digits.yaml"
    config.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    name = study_name(cfg, ref)
    command = [*VISIONLINE, "--config", str(config), "tune", "--trials", "3"]

    log = tmp_path / "first.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            done, running = _wait_for_a_running_trial(store, name, proc, log)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    finished_before = _finished_runs(store)
    interrupted = {t.number: t for t in load_study(store, name).trials if t.state.name == "RUNNING"}
    assert {t.number for t in running} <= set(interrupted)

    second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout + second.stderr
    trials = load_study(store, name).trials
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    for number, before in interrupted.items():
        run_id = before.user_attrs["run_id"]
        assert trials[number].user_attrs["run_id"] == run_id  # the same trial, continued
        assert f"trial {number}: resuming run {run_id}" in second.stderr
        if before.intermediate_values:
            assert f"resuming run {run_id} from" in second.stderr  # from its checkpoint
            assert load_run_info(store, run_id)["resumed_from"] is not None
    for t in done:  # finished before the kill: not trained again
        key = RunPaths(t.user_attrs["run_id"]).run_info
        assert _finished_runs(store)[key] == finished_before[key]
    assert "packaged run" in second.stdout and "PASS" in second.stdout

    # the best config it printed trains into the very run the search picked
    best_config = store.url(StudyPaths(name).best_config)
    assert f"best config: {best_config}" in second.stdout
    again = subprocess.run(
        [*VISIONLINE, "--config", best_config, "train"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    best_run = load_study(store, name).best_trial.user_attrs["run_id"]
    assert f"run {best_run}: already complete" in again.stdout
