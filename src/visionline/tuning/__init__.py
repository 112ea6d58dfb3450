"""Model selection: a search over architectures and hyperparameters (Optuna, ask-and-tell).

Only this process talks to the study. Each trial is an ordinary training run: its
config is the pipeline config with the trial's parameters applied, so its run id (from
the run plan) derives from those parameters and a trial whose run already finished is
reused, not retrained. Trials are launched through the configured compute backend
(local processes or Kubernetes Jobs), several at once; the tuner reads each run's
``metrics.jsonl`` as epochs land, reports them to the study and stops hopeless runs
(median or Hyperband pruner). A stopped run is recorded as pruned, and it keeps its
checkpoints: it could be resumed like any run.

The study lives in the artifact store as Optuna's journal (``tuning/<study>/journal.jsonl``),
so a search that dies is resumed by starting it again: finished trials stay finished,
trials that were running are launched again and their runs resume from their checkpoints.

Outputs, under ``tuning/<study>/``: ``report.md`` (every trial: parameters, metric,
epochs run, state, wall time), ``trials.json``, ``best_config.yaml`` (the best trial's
complete config, trainable with ``visionline train --config``), ``best.json``,
``optimization_history.png`` and ``param_importances.png``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend
from optuna.trial import FrozenTrial, TrialState

from visionline.config import PipelineConfig, SearchSpace, TuneConfig
from visionline.data.manifest import DatasetRef
from visionline.errors import TuningError
from visionline.storage import ArtifactStore

log = logging.getLogger(__name__)

# How often the tuner reads each running trial's metrics.jsonl: a pruned run is stopped
# within about this long of the epoch that condemned it.
POLL_S = 0.5
# The columns of the trials table, in order (parameters go between "state" and "value").
PARAMS = (
    "model",
    "optimizer",
    "lr",
    "weight_decay",
    "batch_size",
    "label_smoothing",
    "augment_strength",
    "scheduler",
)


# --------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class StudyPaths:
    study: str

    @property
    def prefix(self) -> str:
        return f"tuning/{self.study}"

    @property
    def journal(self) -> str:
        return f"{self.prefix}/journal.jsonl"

    @property
    def report(self) -> str:
        return f"{self.prefix}/report.md"

    @property
    def trials(self) -> str:
        return f"{self.prefix}/trials.json"

    @property
    def best(self) -> str:
        return f"{self.prefix}/best.json"

    @property
    def best_config(self) -> str:
        return f"{self.prefix}/best_config.yaml"

    @property
    def history_png(self) -> str:
        return f"{self.prefix}/optimization_history.png"

    @property
    def importance_png(self) -> str:
        return f"{self.prefix}/param_importances.png"


def study_name(cfg: PipelineConfig, dataset: DatasetRef) -> str:
    """The same search (training inputs, data, space, metric, pruner, seed) has the same
    name, so starting it again continues it. How many trials, how long and how many at
    once are not part of it: ``--trials 12`` after ``--trials 8`` adds four trials."""
    tune = cfg.tune.model_dump(
        mode="json", exclude={"n_trials", "timeout_s", "parallel", "threads_per_trial"}
    )
    blob = json.dumps(
        {"base": cfg.fingerprint(), "dataset": str(dataset), "tune": tune}, sort_keys=True
    ).encode()
    return f"{cfg.name}-{dataset.version}-{hashlib.sha256(blob).hexdigest()[:8]}"


# --------------------------------------------------------------------------- journal
class StoreJournal(BaseJournalBackend):
    """Optuna's journal as one object in the artifact store (a directory or S3).

    This process is the study's only writer, so the log in memory is the truth and each
    append rewrites the object (atomically: a reader, or a restarted tuner, sees the old
    journal or the new one, never half a line). Before writing, the stored journal is
    compared with what this process last wrote: a second tuner on the same study is
    refused instead of silently overwriting the first one's trials.
    """

    def __init__(self, store: ArtifactStore, key: str) -> None:
        self.store = store
        self.key = key
        self._logs: list[dict[str, Any]] = []
        self._blob = b""
        if store.exists(key):
            # Not verify=True: the journal is rewritten while a search runs, and a local
            # store's hash sidecar and data are two renames, so a reader (or a tuner
            # killed between them) can see one new and one old. Each line is checked
            # instead: an atomic rewrite never leaves half of one.
            self._blob = store.get_bytes(key)
            for n, line in enumerate(self._blob.decode().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    self._logs.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise TuningError(
                        f"study journal {store.url(key)} line {n} is not JSON ({e}): "
                        "restore it or delete the study's folder to start the search afresh"
                    ) from e
        self._digest = hashlib.sha256(self._blob).hexdigest() if self._blob else None

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        return self._logs[log_number_from:]

    def _unchanged(self) -> bool:
        if not self.store.exists(self.key):
            return self._digest is None
        if self.store.sha256(self.key) == self._digest:
            return True
        # A recorded hash that disagrees may be a sidecar left by an interrupted write:
        # the content decides.
        return self.store.get_bytes(self.key) == self._blob

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        if not self._unchanged():
            raise TuningError(
                f"study journal {self.store.url(self.key)} was changed by another process: "
                "run one search per study at a time"
            )
        blob = self._blob + "".join(json.dumps(entry) + "\n" for entry in logs).encode()
        self._digest = self.store.put_bytes(self.key, blob)
        self._blob = blob
        self._logs.extend(logs)


# --------------------------------------------------------------------------- space
def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Ask the trial for a value of every searched dimension."""
    p: dict[str, Any] = {}
    if space.architectures:
        p["model"] = trial.suggest_categorical("model", [a.label for a in space.architectures])
    if space.optimizers:
        p["optimizer"] = trial.suggest_categorical("optimizer", list(space.optimizers))
    for name in ("lr", "weight_decay"):
        rng = getattr(space, name)
        if rng is not None:
            p[name] = trial.suggest_float(name, rng.low, rng.high, log=rng.log)
    if space.batch_sizes:
        p["batch_size"] = trial.suggest_categorical("batch_size", list(space.batch_sizes))
    for name in ("label_smoothing", "augment_strength"):
        rng = getattr(space, name)
        if rng is not None:
            p[name] = trial.suggest_float(name, rng.low, rng.high, log=rng.log)
    if space.schedulers:
        p["scheduler"] = trial.suggest_categorical("scheduler", list(space.schedulers))
    return p


def base_params(cfg: PipelineConfig) -> tuple[dict[str, Any], list[str]]:
    """The config as written, as trial parameters; and the dimensions where it lies
    outside the search space (those the first trial samples instead)."""
    space, t, m = cfg.tune.space, cfg.train, cfg.model
    params: dict[str, Any] = {}
    outside: list[str] = []

    def pick(name: str, value: Any, allowed: bool) -> None:
        if allowed:
            params[name] = value
        else:
            outside.append(name)

    if space.architectures:
        match = [
            a.label
            for a in space.architectures
            if a.arch == m.arch
            and a.pretrained == m.pretrained
            and a.freeze_backbone_epochs in (None, m.freeze_backbone_epochs)
        ]
        pick("model", match[0] if match else None, bool(match))
    if space.optimizers:
        pick("optimizer", t.optimizer, t.optimizer in space.optimizers)
    if space.lr:
        pick("lr", t.lr, space.lr.contains(t.lr))
    if space.weight_decay:
        pick("weight_decay", t.weight_decay, space.weight_decay.contains(t.weight_decay))
    if space.batch_sizes:
        pick("batch_size", t.batch_size, t.batch_size in space.batch_sizes)
    if space.label_smoothing:
        pick(
            "label_smoothing", t.label_smoothing, space.label_smoothing.contains(t.label_smoothing)
        )
    if space.augment_strength:
        pick("augment_strength", 1.0, space.augment_strength.contains(1.0))
    if space.schedulers:
        pick("scheduler", t.scheduler, t.scheduler in space.schedulers)
    return params, outside


def trial_overrides(cfg: PipelineConfig, params: dict[str, Any]) -> dict[str, Any]:
    """Dotted-key overrides that turn the pipeline config into a trial's config."""
    o: dict[str, Any] = {}
    space = cfg.tune.space
    if "model" in params:
        choice = next((a for a in space.architectures or [] if a.label == params["model"]), None)
        if choice is None:
            raise TuningError(f"trial model {params['model']!r} is not in tune.space.architectures")
        o["model.arch"] = choice.arch
        o["model.pretrained"] = choice.pretrained
        if choice.freeze_backbone_epochs is not None:
            o["model.freeze_backbone_epochs"] = choice.freeze_backbone_epochs
    for name, key in (
        ("optimizer", "train.optimizer"),
        ("lr", "train.lr"),
        ("weight_decay", "train.weight_decay"),
        ("batch_size", "train.batch_size"),
        ("label_smoothing", "train.label_smoothing"),
        ("scheduler", "train.scheduler"),
    ):
        if name in params:
            o[key] = params[name]
    s = params.get("augment_strength")
    if s is not None and s != 1.0:
        a = cfg.augment
        low, high = a.crop_scale
        o["augment.rotation_degrees"] = min(180.0, a.rotation_degrees * s)
        o["augment.crop_scale"] = [min(high, max(0.05, 1 - (1 - low) * s)), high]
        o["augment.color_jitter"] = min(1.0, a.color_jitter * s)
    if cfg.tune.epochs is not None:
        o["train.epochs"] = cfg.tune.epochs
    return o


def trial_config(cfg: PipelineConfig, params: dict[str, Any]) -> PipelineConfig:
    overrides = trial_overrides(cfg, params)
    return cfg.with_overrides(**overrides) if overrides else cfg


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


def _pruner(tune: TuneConfig, epochs: int) -> optuna.pruners.BasePruner:
    p = tune.pruner
    if p.kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.startup_trials, n_warmup_steps=p.warmup_epochs
        )
    if p.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_epochs,
            max_resource=max(epochs, p.min_epochs),
            reduction_factor=p.reduction_factor,
        )
    return optuna.pruners.NopPruner()


# --------------------------------------------------------------------------- results
@dataclass
class TuneResult:
    study: str
    dataset: DatasetRef
    metric: str
    direction: str
    trials: list[dict]
    best: dict | None
    best_config: PipelineConfig | None
    paths: StudyPaths
    finished: bool  # the study holds n_trials finished trials

    @property
    def best_run_id(self) -> str:
        if not self.best:
            raise TuningError(f"study {self.study}: no trial has finished yet")
        return self.best["run_id"]

    def count(self, state: str) -> int:
        return sum(1 for t in self.trials if t["state"] == state)

    def summary(self) -> str:
        counts = ", ".join(
            f"{self.count(s)} {s.lower()}"
            for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")
            if self.count(s)
        )
        head = f"study {self.study} on {self.dataset}: {len(self.trials)} trials ({counts})"
        if not self.best:
            return head + "; no finished trial yet"
        return (
            f"{head}\nbest: trial {self.best['number']} ({self.best['run_id']}), "
            f"{self.metric} {self.best['value']:.4f}\n"
            + ", ".join(f"{k}={_fmt(v)}" for k, v in self.best["params"].items())
        )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _trial_row(t: FrozenTrial, metric: str) -> dict:
    value = t.value if t.state in (TrialState.COMPLETE, TrialState.PRUNED) else None
    if t.state == TrialState.PRUNED and value is None and t.intermediate_values:
        value = t.intermediate_values[max(t.intermediate_values)]
    return {
        "number": t.number,
        "state": "RUNNING" if t.state == TrialState.RUNNING else t.state.name,
        "params": dict(t.params),
        "value": value,
        "metric": metric,
        "epochs": t.user_attrs.get("epochs", len(t.intermediate_values)),
        "wall_s": round(float(t.user_attrs.get("wall_s", 0.0)), 1),
        "run_id": t.user_attrs.get("run_id"),
        "base": bool(t.user_attrs.get("base", False)),
        "failure": t.user_attrs.get("failure"),
    }


def trials_markdown(rows: list[dict], metric: str, best_number: int | None) -> str:
    names = [p for p in PARAMS if any(p in r["params"] for r in rows)]
    head = ["trial", "state", *names, metric, "epochs", "wall s", "run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        state = r["state"].lower() + (" (best)" if r["number"] == best_number else "")
        state = state.replace("running", "interrupted")
        cells = [
            str(r["number"]) + (" (base)" if r["base"] else ""),
            state,
            *[_fmt(r["params"].get(n, "")) for n in names],
            "" if r["value"] is None else f"{r['value']:.4f}",
            str(r["epochs"]),
            f"{r['wall_s']:.0f}",
            f"`{r['run_id']}`" if r["run_id"] else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_report(result: TuneResult, cfg: PipelineConfig) -> str:
    best = result.best
    lines = [
        f"# Model selection: {result.study}",
        "",
        f"- dataset: `{result.dataset}`",
        f"- metric: {result.metric} on the validation split ({result.direction})",
        f"- trials: {sum(t['state'] != 'RUNNING' for t in result.trials)} of "
        f"{cfg.tune.n_trials} finished"
        + ("" if result.finished else " (not finished: start the search again to continue)"),
        f"- pruner: {cfg.tune.pruner.kind}",
    ]
    if best:
        lines += [
            f"- best: trial {best['number']}, {result.metric} {best['value']:.4f}, "
            f"run `{best['run_id']}`",
            f"- best config: `{result.paths.best_config}`",
        ]
    lines += [
        "",
        "## Trials",
        "",
        trials_markdown(result.trials, result.metric, best["number"] if best else None),
        "Pruned trials were stopped early; their value is the last epoch they reported. "
        "Interrupted trials resume from their checkpoints when the search is started again.",
        "",
    ]
    failed = [r for r in result.trials if r["state"] == "FAIL"]
    if failed:
        lines += ["## Failed trials", ""]
        for r in failed:
            # a trainer's last words name what went wrong (the exception, the bad key)
            reason = [x for x in (r.get("failure") or "").splitlines() if x.strip()]
            lines.append(
                f"- trial {r['number']} (`{r['run_id']}`): {reason[-1] if reason else 'unknown'}"
            )
        lines.append("")
    lines += [
        "## Plots",
        "",
        "![optimization history](optimization_history.png)",
        "",
        "![parameter importance](param_importances.png)",
        "",
    ]
    return "\n".join(lines)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def plot_history(study: optuna.Study, metric: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_optimization_history

    # Optuna's plots switch pyplot's global style: keep that inside this figure.
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # (before any trial finished there is nothing to label: an empty plot is right)
        warnings.filterwarnings("ignore", "No artists with labels", UserWarning)
        ax = plot_optimization_history(study, target_name=metric)
        fig = ax.figure if ax.figure is not None else plt.gcf()
        fig.set_size_inches(7, 4.5)
        return _png(fig)


def param_importances(study: optuna.Study, seed: int = 0) -> dict[str, float]:
    """fANOVA importances over the finished trials; {} when there are too few of them
    (fewer than two, or no parameter that varied)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed))
    except (RuntimeError, ValueError) as e:
        log.info("parameter importance not computable yet: %s", e)
        return {}
    return {k: float(v) for k, v in out.items() if not math.isnan(v)}


def plot_importances(study: optuna.Study, metric: str, seed: int = 0) -> bytes:
    """Parameter importance as bars; with too few finished trials for that, the metric
    of each trial against each parameter, which is what one can read from few trials."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    imp = param_importances(study, seed)
    if imp:
        names = list(imp)[::-1]
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.5))
        ax.barh(names, [imp[n] for n in names], color="tab:blue")
        for i, n in enumerate(names):
            ax.text(imp[n], i, f" {imp[n]:.2f}", va="center")
        ax.set_xlabel(f"importance for {metric} (fANOVA)")
        ax.set_title("Parameter importance")
        return _png(fig)
    trials = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.params
    ]
    names = [p for p in PARAMS if any(p in t.params for t in trials)] or ["(none)"]
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        for state, colour in ((TrialState.COMPLETE, "tab:blue"), (TrialState.PRUNED, "tab:gray")):
            pts = [
                (t.params[name], _value(t))
                for t in trials
                if t.state == state and name in t.params and _value(t) is not None
            ]
            if pts:
                xs = [str(x) if isinstance(x, str) else x for x, _ in pts]
                ax.scatter(xs, [y for _, y in pts], color=colour, label=state.name.lower())
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        if isinstance(next((t.params.get(name) for t in trials if name in t.params), ""), float):
            rng = [t.params[name] for t in trials if name in t.params]
            if min(rng) > 0 and max(rng) / min(rng) > 20:
                ax.set_xscale("log")
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(
        f"{metric} per parameter ({len(trials)} trials: too few finished for importances)",
        fontsize=10,
    )
    return _png(fig)


def _value(t: FrozenTrial) -> float | None:
    if t.value is not None:
        return t.value
    if t.intermediate_values:
        return t.intermediate_values[max(t.intermediate_values)]
    return None


# --------------------------------------------------------------------------- search
@dataclass
class _Active:
    """A trial whose run is in flight."""

    trial: optuna.Trial
    run_id: str
    handle: Any  # RunHandle; None when the run had already finished
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
    from visionline.model.runs import load_run_info

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
        backend: Any,
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
        self.epochs = cfg.tune.epochs or cfg.train.epochs
        self.parallel = cfg.tune.parallel or default_parallel(cfg, cfg.tune.n_trials)
        self.deadline = time.monotonic() + cfg.tune.timeout_s
        self.active: dict[int, _Active] = {}

    # -- launching
    def plan(self, params: dict[str, Any]) -> Any:
        from visionline.training.plan import plan_run

        trial_cfg = trial_config(self.pinned, params).with_overrides(
            **{"compute.threads": self.tune.threads_per_trial}
        )
        return plan_run(trial_cfg, self.store, self.dataset)

    def launch(self, trial: optuna.Trial, params: dict[str, Any], wall_before: float) -> _Active:
        from visionline.model.runs import is_complete

        plan = self.plan(params)
        trial.set_user_attr("run_id", plan.run_id)
        label = " ".join(f"{k}={_fmt(v)}" for k, v in params.items())
        same = next((a for a in self.active.values() if a.run_id == plan.run_id), None)
        if is_complete(self.store, plan.run_id):
            handle = None
            self.say(f"trial {trial.number}: run {plan.run_id} already finished, reused ({label})")
        elif same is not None:
            # Two trials with the same parameters are one run: follow it, don't race it.
            handle = same.handle
            self.say(f"trial {trial.number}: same run as trial {same.number} ({plan.run_id})")
        else:
            handle = self.backend.submit(
                plan, self.store, origin={"tuning_study": self.study.study_name}
            )
            self.say(f"trial {trial.number} started: run {plan.run_id} ({label})")
        a = _Active(
            trial,
            plan.run_id,
            handle,
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
        from visionline.compute import FAILED, SUCCEEDED
        from visionline.model.runs import read_history

        # Status first: a run seen finished has all its epochs in metrics.jsonl.
        status = a.handle.poll() if a.handle is not None else SUCCEEDED
        rows = read_history(self.store, a.run_id)
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
                if time.monotonic() - last_progress >= 30:
                    self.progress()
                    last_progress = time.monotonic()
                if self.active:
                    time.sleep(poll_s)
        finally:
            # However this ends (an error, Ctrl-C), no training run goes on unobserved;
            # the trials stay RUNNING and resume with the next search.
            for a in list(self.active.values()):
                try:
                    self.stop_run(a)
                except Exception as e:  # best effort while unwinding: stop the others too
                    log.warning("could not stop run %s: %s", a.run_id, e)


def open_study(
    cfg: PipelineConfig, store: ArtifactStore, dataset: DatasetRef
) -> tuple[optuna.Study, StudyPaths]:
    """The search's study in the store: created (with the config as written as its
    first trial) or loaded to be continued."""
    name = study_name(cfg, dataset)
    study = study_in_store(
        store,
        name,
        direction="maximize" if cfg.tune.metric == "val_accuracy" else "minimize",
        sampler=optuna.samplers.TPESampler(seed=cfg.tune.seed),
        pruner=_pruner(cfg.tune, cfg.tune.epochs or cfg.train.epochs),
    )
    if not study.trials:
        study.set_user_attr("dataset", str(dataset))
        study.set_user_attr("metric", cfg.tune.metric)
        if cfg.tune.include_base:
            params, outside = base_params(cfg)
            if outside:
                log.warning(
                    "the first trial differs from the config as written in %s "
                    "(outside the search space)",
                    ", ".join(outside),
                )
            study.enqueue_trial(params, user_attrs={"base": not outside})
    return study, StudyPaths(name)


def tune(
    cfg: PipelineConfig,
    store: ArtifactStore,
    dataset: DatasetRef | None = None,
    *,
    backend: Any | None = None,
    poll_s: float = POLL_S,
    on_event: Callable[[str], None] | None = None,
) -> TuneResult:
    """Run (or continue) the search described by ``cfg.tune`` and write its report.

    Returns when the study holds ``tune.n_trials`` finished trials or ``tune.timeout_s``
    is spent (trials still running then are stopped; they resume when the search is
    started again). ``on_event`` receives the progress lines (default: this module's log).
    """
    from visionline.backends import compute_backend
    from visionline.training.plan import plan_run

    base = plan_run(cfg, store, dataset)
    # Trials apply their parameters to the pinned config: all train on this version.
    study, paths = open_study(cfg, store, base.dataset)
    search = _Search(
        cfg,
        store,
        study,
        base.cfg,
        base.dataset,
        backend or compute_backend(cfg),
        on_event or (lambda msg: log.info("%s", msg)),
    )
    search.run(poll_s)
    return write_outputs(study, store, cfg, base.cfg, base.dataset, paths, cfg.tune.n_trials)


def write_outputs(
    study: optuna.Study,
    store: ArtifactStore,
    cfg: PipelineConfig,
    pinned: PipelineConfig,
    dataset: DatasetRef,
    paths: StudyPaths,
    n_trials: int,
) -> TuneResult:
    """Report, trials table, best config and plots of the study as it stands."""
    metric = cfg.tune.metric
    trials = study.get_trials(deepcopy=False)
    rows = [_trial_row(t, metric) for t in trials if t.state != TrialState.WAITING]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best_row = best_cfg = None
    if complete:
        best_trial = study.best_trial
        best_row = next(r for r in rows if r["number"] == best_trial.number)
        best_cfg = trial_config(pinned, dict(best_trial.params))
    finished = sum(t.state.is_finished() for t in trials) >= n_trials
    direction = "maximize" if metric == "val_accuracy" else "minimize"
    result = TuneResult(
        study.study_name, dataset, metric, direction, rows, best_row, best_cfg, paths, finished
    )
    if best_cfg is not None and best_row is not None:
        store.put_bytes(paths.best_config, best_cfg.to_yaml().encode())
        store.put_json(
            paths.best,
            {
                "study": study.study_name,
                "trial": best_row["number"],
                "run_id": best_row["run_id"],
                "metric": metric,
                "value": best_row["value"],
                "params": best_row["params"],
                "config_fingerprint": best_cfg.fingerprint(),
            },
        )
    store.put_json(paths.trials, rows)
    store.put_bytes(paths.history_png, plot_history(study, metric))
    store.put_bytes(paths.importance_png, plot_importances(study, metric, cfg.tune.seed))
    store.put_bytes(paths.report, render_report(result, cfg).encode())
    return result


def study_in_store(
    store: ArtifactStore,
    name: str,
    *,
    direction: str = "maximize",
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """The study ``name`` in the store's journal, created if it is not there yet.
    (Loading writes nothing: create_study(load_if_exists=True) would log a second
    create-study entry on every resume.)"""
    storage = JournalStorage(StoreJournal(store, StudyPaths(name).journal))
    if any(s.study_name == name for s in storage.get_all_studies()):
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    return optuna.create_study(
        study_name=name, storage=storage, direction=direction, sampler=sampler, pruner=pruner
    )


def load_study(store: ArtifactStore, name: str) -> optuna.Study:
    """A stored study, to read (reports, notebooks)."""
    if not store.exists(StudyPaths(name).journal):
        raise TuningError(f"no study {name!r} in {store.uri}")
    return study_in_store(store, name)
