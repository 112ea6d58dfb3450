"""The search: ask the study for trials, launch each as a training run through the
compute backend the caller chose, follow its ``metrics.jsonl`` as epochs land, stop
the hopeless ones, tell the study, and write the report at the end."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from visionline.compute import FAILED, SUCCEEDED, ComputeBackend, RunHandle
from visionline.config import PipelineConfig
from visionline.data.manifest import DatasetRef
from visionline.errors import TuningError
from visionline.model.runs import is_complete, load_run_info, read_history
from visionline.storage import ArtifactStore
from visionline.training.plan import RunPlan, plan_run
from visionline.tuning.report import TuneResult, write_outputs
from visionline.tuning.space import format_value, suggest, trial_config, trial_epochs
from visionline.tuning.study import open_study

log = logging.getLogger(__name__)

# How often the tuner reads each running trial's metrics.jsonl: a pruned run is stopped
# within about this long of the epoch that condemned it.
POLL_S = 0.5
# How often (seconds) the search says how far it has got.
PROGRESS_S = 30


def default_parallel(cfg: PipelineConfig, n_trials: int) -> int:
    """As many trials at once as the machine allows: local runs share this machine's
    CPUs; on a cluster every trial is a Job and the scheduler queues what it can't place."""
    if cfg.compute.backend != "local":
        return max(1, n_trials)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // cfg.tune.threads_per_trial)


def budget_overrides(
    trials: int | None = None, timeout_s: float | None = None, parallel: int | None = None
) -> dict[str, Any]:
    """Command-line / flow-parameter budget as dotted config overrides, so the config's
    own validation judges them (``tune.n_trials: Input should be greater than...``)."""
    given = {"n_trials": trials, "timeout_s": timeout_s, "parallel": parallel}
    return {f"tune.{k}": v for k, v in given.items() if v is not None}


@dataclass
class _Active:
    """A trial whose run is in flight."""

    trial: optuna.Trial
    run_id: str
    handle: RunHandle | None  # None when the run had already finished
    started: float
    wall_before: float  # seconds it ran in earlier invocations of the search
    label: str
    base: bool = False
    reported: set[int] = field(default_factory=set)

    @property
    def number(self) -> int:
        return self.trial.number

    def wall(self) -> float:
        return round(self.wall_before + time.monotonic() - self.started, 1)


def _trial_value(row: dict, metric: str) -> float:
    v = row.get(metric)
    if v is None:
        raise TuningError(f"metrics row of epoch {row.get('epoch')} has no {metric}")
    return float(v)


def report_epochs(trial: optuna.Trial, rows: list[dict], metric: str, reported: set[int]) -> bool:
    """Report the epochs the study has not seen yet; True when the pruner calls the
    trial hopeless. The pruner is asked after every epoch, also when its answer will not
    be acted on (a run that already finished, the base trial): Hyperband keeps its
    rungs' standings from those answers."""
    hopeless = False
    for row in rows:
        epoch = int(row["epoch"])
        if epoch in reported:
            continue
        trial.report(_trial_value(row, metric), epoch)
        reported.add(epoch)
        hopeless = trial.should_prune() or hopeless
    return hopeless


def _final_value(store: ArtifactStore, run_id: str, metric: str) -> tuple[float, int]:
    """The metric of the weights the run kept (its best epoch), and the epochs it ran:
    the trial is judged by the model that would ship, not by its luckiest epoch."""
    info = load_run_info(store, run_id)
    history = info.get("history") or []
    rows = [r for r in history if r.get("epoch") == info.get("best_epoch")] or history[-1:]
    if not rows:
        raise TuningError(f"run {run_id} finished without a single epoch of metrics")
    return _trial_value(rows[0], metric), int(info.get("epochs_run") or len(history))


class _Search:
    """The tuner's loop: launch trials, follow their metrics, prune, tell the study."""

    def __init__(
        self,
        cfg: PipelineConfig,
        store: ArtifactStore,
        study: optuna.Study,
        pinned: PipelineConfig,
        dataset: DatasetRef,
        backend: ComputeBackend,
        say: Callable[[str], None],
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.study = study
        self.pinned = pinned  # the config with the dataset version every trial trains on
        self.dataset = dataset
        self.backend = backend
        self.say = say
        self.tune = cfg.tune
        self.metric = cfg.tune.metric
        self.epochs = trial_epochs(cfg)
        self.parallel = cfg.tune.parallel or default_parallel(cfg, cfg.tune.n_trials)
        self.deadline = time.monotonic() + cfg.tune.timeout_s
        self.active: dict[int, _Active] = {}

    # -- launching
    def plan(self, params: dict[str, Any]) -> RunPlan:
        trial_cfg = trial_config(self.pinned, params).with_overrides(
            **{"compute.threads": self.tune.threads_per_trial}
        )
        return plan_run(trial_cfg, self.store, self.dataset)

    def _handle(self, trial: optuna.Trial, plan: RunPlan, label: str) -> RunHandle | None:
        """The run to follow for this trial: none when it already finished, the run of
        a trial with the same parameters, or a newly submitted one."""
        if is_complete(self.store, plan.run_id):
            self.say(f"trial {trial.number}: run {plan.run_id} already finished, reused ({label})")
            return None
        same = next((a for a in self.active.values() if a.run_id == plan.run_id), None)
        if same is not None:
            # Two trials with the same parameters are one run: follow it, don't race it.
            self.say(f"trial {trial.number}: same run as trial {same.number} ({plan.run_id})")
            return same.handle
        handle = self.backend.submit(
            plan, self.store, origin={"tuning_study": self.study.study_name}
        )
        self.say(f"trial {trial.number} started: run {plan.run_id} ({label})")
        return handle

    def launch(self, trial: optuna.Trial, params: dict[str, Any], wall_before: float) -> _Active:
        plan = self.plan(params)
        trial.set_user_attr("run_id", plan.run_id)
        label = " ".join(f"{k}={format_value(v)}" for k, v in params.items())
        a = _Active(
            trial,
            plan.run_id,
            self._handle(trial, plan, label),
            time.monotonic(),
            wall_before,
            label,
            base=bool(trial.user_attrs.get("base")),
        )
        self.active[trial.number] = a
        return a

    def resume_interrupted(self) -> None:
        """Trials that were running when an earlier search died: launch their runs again
        (each resumes from its last checkpoint) under the same trial numbers."""
        for ft in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            # Re-attach to the stored trial; Optuna's own optimize() never needs this.
            trial = optuna.Trial(self.study, ft._trial_id)
            if "run_id" not in ft.user_attrs:
                self.study.tell(trial, state=TrialState.FAIL)
                self.say(f"trial {ft.number}: interrupted before its run was planned: failed")
                continue
            self.say(f"trial {ft.number}: resuming run {ft.user_attrs['run_id']}")
            a = self.launch(trial, dict(ft.params), float(ft.user_attrs.get("wall_s", 0.0)))
            a.reported.update(ft.intermediate_values)

    def fill(self) -> None:
        issued = sum(
            1 for t in self.study.get_trials(deepcopy=False) if t.state != TrialState.WAITING
        )
        while (
            len(self.active) < self.parallel
            and issued < self.tune.n_trials
            and time.monotonic() < self.deadline
        ):
            trial = self.study.ask()
            self.launch(trial, suggest(trial, self.tune.space), 0.0)
            issued += 1

    # -- following
    def stop_run(self, a: _Active) -> None:
        shared = any(b.handle is a.handle for b in self.active.values() if b is not a)
        if a.handle is not None and not shared:
            a.handle.cancel()

    def finish(self, a: _Active, state: TrialState, value: float | None, **attrs: Any) -> None:
        for k, v in {"wall_s": a.wall(), **attrs}.items():
            a.trial.set_user_attr(k, v)
        if state == TrialState.COMPLETE:
            self.study.tell(a.trial, value)
        else:
            self.study.tell(a.trial, state=state)
        del self.active[a.number]

    def step(self, a: _Active) -> None:
        # Status first: a run seen finished has all its epochs in metrics.jsonl.
        status = a.handle.poll() if a.handle is not None else SUCCEEDED
        rows = read_history(self.store, a.run_id)
        hopeless = self._report_new(a, rows)
        if status == SUCCEEDED:
            value, ran = _final_value(self.store, a.run_id, self.metric)
            self.finish(a, TrialState.COMPLETE, value, epochs=ran)
            self.say(f"trial {a.number} finished: {self.metric} {value:.4f} after {ran} epochs")
        elif status == FAILED:
            reason = (getattr(a.handle, "failure", None) or "training failed")[-2000:]
            self.finish(a, TrialState.FAIL, None, failure=reason, epochs=len(rows))
            self.say(f"trial {a.number} failed: {reason.strip().splitlines()[0]}")
        elif hopeless and not a.base:
            # (the config as written always runs to the end: it is the yardstick)
            self.stop_run(a)
            self.finish(a, TrialState.PRUNED, None, epochs=len(rows))
            self.say(f"trial {a.number} pruned after {len(rows)} epochs ({a.label})")

    def _report_new(self, a: _Active, rows: list[dict]) -> bool:
        """Tell the study the epochs it has not seen; True when the pruner says stop."""
        new = [r for r in rows if int(r["epoch"]) not in a.reported]
        hopeless = report_epochs(a.trial, new, self.metric, a.reported)
        if new:
            a.trial.set_user_attr("wall_s", a.wall())
            a.trial.set_user_attr("epochs", len(rows))
            last = new[-1]
            self.say(
                f"trial {a.number} epoch {last['epoch']}/{self.epochs}: "
                f"{self.metric} {_trial_value(last, self.metric):.4f}"
            )
        return hopeless

    def progress(self) -> None:
        states = [t.state for t in self.study.get_trials(deepcopy=False)]
        self.say(
            f"{sum(s.is_finished() for s in states)}/{self.tune.n_trials} trials finished "
            f"({states.count(TrialState.PRUNED)} pruned), {len(self.active)} running, "
            f"{max(0.0, self.deadline - time.monotonic()):.0f} s of budget left"
        )

    def out_of_time(self) -> None:
        """Stop what still runs; the trials stay RUNNING in the study, so the next
        search resumes them (from their checkpoints) instead of starting over."""
        for a in list(self.active.values()):
            a.trial.set_user_attr("wall_s", a.wall())
            self.stop_run(a)
        self.say(
            f"time budget of {self.tune.timeout_s:.0f} s spent: stopped trials "
            f"{sorted(self.active)}; they resume when the search is started again"
        )
        self.active.clear()

    def run(self, poll_s: float) -> None:
        try:
            self.resume_interrupted()
            last_progress = time.monotonic()
            while True:
                self.fill()
                if not self.active:
                    return
                if time.monotonic() >= self.deadline:
                    self.out_of_time()
                    return
                for a in list(self.active.values()):
                    self.step(a)
                if time.monotonic() - last_progress >= PROGRESS_S:
                    self.progress()
                    last_progress = time.monotonic()
                if self.active:
                    time.sleep(poll_s)
        finally:
            self.stop_all()

    def stop_all(self) -> None:
        """However the search ends (an error, Ctrl-C), no training run goes on
        unobserved; the trials stay RUNNING and resume with the next search."""
        for a in list(self.active.values()):
            try:
                self.stop_run(a)
            except Exception as e:  # best effort while unwinding: stop the others too
                log.warning("could not stop run %s: %s", a.run_id, e)


def tune(
    cfg: PipelineConfig,
    store: ArtifactStore,
    dataset: DatasetRef | None = None,
    *,
    backend: ComputeBackend,
    poll_s: float = POLL_S,
    on_event: Callable[[str], None] | None = None,
) -> TuneResult:
    """Run (or continue) the search described by ``cfg.tune`` and write its report.

    Trials train through ``backend``, which the caller builds from the config
    (``visionline.backends.compute_backend(cfg)``): the one place a backend is chosen.
    Returns when the study holds ``tune.n_trials`` finished trials or ``tune.timeout_s``
    is spent (trials still running then are stopped; they resume when the search is
    started again). ``on_event`` receives the progress lines (default: this module's log).
    """
    base = plan_run(cfg, store, dataset)
    # Trials apply their parameters to the pinned config: all train on this version.
    study, paths = open_study(cfg, store, base.dataset)
    search = _Search(
        cfg,
        store,
        study,
        base.cfg,
        base.dataset,
        backend,
        on_event or (lambda msg: log.info("%s", msg)),
    )
    search.run(poll_s)
    return write_outputs(study, store, cfg, base.cfg, base.dataset, paths, cfg.tune.n_trials)
