"""What a search leaves in its study's folder: the trials table, ``report.md``,
``trials.json``, the best trial's config and ``best.json``, and two plots (how the
metric improved over the trials, and which parameters mattered)."""

from __future__ import annotations

import io
import logging
import math
import warnings
from dataclasses import dataclass

import matplotlib
import matplotlib.pyplot as plt
import optuna
from matplotlib.figure import Figure
from optuna.importance import FanovaImportanceEvaluator, get_param_importances
from optuna.trial import FrozenTrial, TrialState
from optuna.visualization.matplotlib import plot_optimization_history

from visionline.config import PipelineConfig
from visionline.data.manifest import DatasetRef
from visionline.errors import TuningError
from visionline.storage import ArtifactStore
from visionline.tuning.space import PARAMS, format_value, trial_config
from visionline.tuning.study import StudyPaths, metric_direction

log = logging.getLogger(__name__)


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
            + ", ".join(f"{k}={format_value(v)}" for k, v in self.best["params"].items())
        )


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
            *[format_value(r["params"].get(n, "")) for n in names],
            "" if r["value"] is None else f"{r['value']:.4f}",
            str(r["epochs"]),
            f"{r['wall_s']:.0f}",
            f"`{r['run_id']}`" if r["run_id"] else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _failed_lines(trials: list[dict]) -> list[str]:
    failed = [r for r in trials if r["state"] == "FAIL"]
    if not failed:
        return []
    lines = ["## Failed trials", ""]
    for r in failed:
        # a trainer's last words name what went wrong (the exception, the bad key)
        reason = [x for x in (r.get("failure") or "").splitlines() if x.strip()]
        lines.append(
            f"- trial {r['number']} (`{r['run_id']}`): {reason[-1] if reason else 'unknown'}"
        )
    return [*lines, ""]


def render_report(result: TuneResult, cfg: PipelineConfig) -> str:
    best, paths = result.best, result.paths
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
            f"- best config: `{paths.best_config}`",
        ]
    lines += [
        "",
        "## Trials",
        "",
        trials_markdown(result.trials, result.metric, best["number"] if best else None),
        "Pruned trials were stopped early; their value is the last epoch they reported. "
        "Interrupted trials resume from their checkpoints when the search is started again.",
        "",
        *_failed_lines(result.trials),
        "## Plots",
        "",
        f"![optimization history]({paths.relative(paths.history_png)})",
        "",
        f"![parameter importance]({paths.relative(paths.importance_png)})",
        "",
    ]
    return "\n".join(lines)


def _headless() -> None:
    # Plots are written to the store, never shown: no display needed. (force=False: a
    # notebook that already chose its backend keeps it.)
    matplotlib.use("Agg", force=False)


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def plot_history(study: optuna.Study, metric: str) -> bytes:
    _headless()
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
    _headless()
    imp = param_importances(study, seed)
    if imp:
        return _importance_bars(imp, metric)
    return _metric_per_param(study, metric)


def _importance_bars(imp: dict[str, float], metric: str) -> bytes:
    names = list(imp)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.5))
    ax.barh(names, [imp[n] for n in names], color="tab:blue")
    for i, n in enumerate(names):
        ax.text(imp[n], i, f" {imp[n]:.2f}", va="center")
    ax.set_xlabel(f"importance for {metric} (fANOVA)")
    ax.set_title("Parameter importance")
    return _png(fig)


def _metric_per_param(study: optuna.Study, metric: str) -> bytes:
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


def _put_best(
    store: ArtifactStore, study: optuna.Study, paths: StudyPaths, row: dict, cfg: PipelineConfig
) -> None:
    store.put_bytes(paths.best_config, cfg.to_yaml().encode())
    store.put_json(
        paths.best,
        {
            "study": study.study_name,
            "trial": row["number"],
            "run_id": row["run_id"],
            "metric": row["metric"],
            "value": row["value"],
            "params": row["params"],
            "config_fingerprint": cfg.fingerprint(),
        },
    )


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
    result = TuneResult(
        study.study_name,
        dataset,
        metric,
        metric_direction(metric),
        rows,
        best_row,
        best_cfg,
        paths,
        finished,
    )
    if best_cfg is not None and best_row is not None:
        _put_best(store, study, paths, best_row, best_cfg)
    store.put_json(paths.trials, rows)
    store.put_bytes(paths.history_png, plot_history(study, metric))
    store.put_bytes(paths.importance_png, plot_importances(study, metric, cfg.tune.seed))
    store.put_bytes(paths.report, render_report(result, cfg).encode())
    return result
