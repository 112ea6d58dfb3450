"""``visionline tune``: a search over the config's ``tune:`` space, whose best run goes
through the stages a trained run goes through (evaluate, gate, package)."""

from __future__ import annotations

import argparse
import sys

import optuna

from visionline.backends import compute_backend
from visionline.cli.common import Command, pipeline_config
from visionline.config import PipelineConfig
from visionline.errors import EXIT_FAILED
from visionline.evaluation import ensure_evaluated
from visionline.evaluation.gate import champion_run_id, gate_run
from visionline.serving.packaging import package_run
from visionline.storage import ArtifactStore, open_store
from visionline.tuning import budget_overrides, trials_markdown, tune


def tune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trials", type=int, help="the study's total trials (default tune.n_trials)")
    p.add_argument("--timeout", type=float, help="seconds for this search (tune.timeout_s)")
    p.add_argument("--parallel", type=int, help="trials at once (default: what the machine allows)")
    p.add_argument(
        "--no-package", action="store_true", help="stop after the search: no evaluate/gate/package"
    )


def cmd_tune(args: argparse.Namespace) -> int:
    # Our own progress lines say what each trial does; Optuna's repeat them.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = pipeline_config(args)
    overrides = budget_overrides(args.trials, args.timeout, args.parallel)
    cfg = cfg.with_overrides(**overrides) if overrides else cfg
    store = open_store(cfg.store)
    result = tune(cfg, store, backend=compute_backend(cfg))
    best_number = result.best["number"] if result.best else None
    print(trials_markdown(result.trials, result.metric, best_number))
    print(result.summary())
    print(f"report: {store.url(result.paths.report)}")
    if not result.finished:
        print("the search is not finished: run the same command again to continue it")
    if result.best_config is None:
        print("error: no trial finished: nothing to evaluate", file=sys.stderr)
        return EXIT_FAILED
    print(f"best config: {store.url(result.paths.best_config)}")
    print(result.best_config.to_yaml())
    if args.no_package:
        return 0
    return _evaluate_gate_package(store, result.best_run_id, cfg)


def _evaluate_gate_package(store: ArtifactStore, run_id: str, cfg: PipelineConfig) -> int:
    """The search's best run through the same stages a trained run goes through."""
    m = ensure_evaluated(store, run_id)
    print(f"best run {run_id}: test accuracy {m['accuracy']:.4f}, macro F1 {m['macro']['f1']:.4f}")
    model_name = cfg.serve.model_name
    decision = gate_run(store, run_id, champion_run=champion_run_id(store, model_name))
    print(decision.summary())
    if not decision.passed:
        return EXIT_FAILED
    ref = package_run(store, run_id, model_name, cfg)
    print(f"packaged run {run_id} as {ref}: {store.url(ref.mar_key)}")
    return 0


COMMANDS = {
    "tune": Command(tune_arguments, cmd_tune),
}
