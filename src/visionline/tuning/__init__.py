"""Model selection: a search over architectures and hyperparameters (Optuna, ask-and-tell).

Only this process talks to the study. Each trial is an ordinary training run: its
config is the pipeline config with the trial's parameters applied, so its run id (from
the run plan) derives from those parameters and a trial whose run already finished is
reused, not retrained. Trials are launched through the compute backend the caller
passes in (``visionline.backends.compute_backend(cfg)``: local processes or Kubernetes
Jobs), several at once; the tuner reads each run's ``metrics.jsonl`` as epochs land,
reports them to the study and stops hopeless runs (median or Hyperband pruner). A
stopped run is recorded as pruned, and it keeps its checkpoints: it could be resumed
like any run.

The study lives in the artifact store as Optuna's journal (``tuning/<study>/journal.jsonl``),
so a search that dies is resumed by starting it again: finished trials stay finished,
trials that were running are launched again and their runs resume from their checkpoints.

Outputs, under ``tuning/<study>/``: ``report.md`` (every trial: parameters, metric,
epochs run, state, wall time), ``trials.json``, ``best_config.yaml`` (the best trial's
complete config, trainable with ``visionline train --config``), ``best.json``,
``optimization_history.png`` and ``param_importances.png``.

    space.py   the search space: trial parameters and the config they make
    study.py   the study in the store: its keys (StudyPaths), name and journal
    search.py  the search: launching, following and pruning trials; ``tune()``
    report.py  the outputs: trials table, report.md, best config, plots
"""

from visionline.tuning.report import (
    TuneResult,
    param_importances,
    plot_history,
    plot_importances,
    render_report,
    trials_markdown,
    write_outputs,
)
from visionline.tuning.search import (
    POLL_S,
    budget_overrides,
    default_parallel,
    report_epochs,
    tune,
)
from visionline.tuning.space import (
    PARAMS,
    base_params,
    suggest,
    trial_config,
    trial_overrides,
)
from visionline.tuning.study import (
    StoreJournal,
    StudyPaths,
    load_study,
    open_study,
    study_in_store,
    study_name,
)

__all__ = [
    "PARAMS",
    "POLL_S",
    "StoreJournal",
    "StudyPaths",
    "TuneResult",
    "base_params",
    "budget_overrides",
    "default_parallel",
    "load_study",
    "open_study",
    "param_importances",
    "plot_history",
    "plot_importances",
    "render_report",
    "report_epochs",
    "study_in_store",
    "study_name",
    "suggest",
    "trial_config",
    "trial_overrides",
    "trials_markdown",
    "tune",
    "write_outputs",
]
