"""``visionline train`` and ``tune``: one run on the configured compute backend, or a
search whose best run is evaluated, gated and packaged."""

from __future__ import annotations

import argparse
import sys

import optuna

from visionline.backends import compute_backend, training_manifests
from visionline.cli.common import Command, dry_run_flags, pipeline_config, print_objects
from visionline.errors import EXIT_FAILED, EXIT_PREEMPTED, Preempted, VisionlineError
from visionline.evaluation import ensure_evaluated
from visionline.evaluation.gate import champion_run_id, gate_run
from visionline.model.runs import RunPaths, is_complete, load_run_info
from visionline.serving.packaging import package_run
from visionline.storage import open_store
from visionline.training.plan import plan_run
from visionline.tuning import budget_overrides, trials_markdown, tune


def train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-id", help="default: <name>-<dataset version>-<config hash>")
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument(
        "--backend",
        choices=["local", "kubernetes"],
        help="override compute.backend (kubernetes: a Job, its pod's log streamed here)",
    )
    dry_run_flags(p, "print the Job it would create (kubectl style) and create nothing")


def cmd_train(args: argparse.Namespace) -> int:
    cfg = pipeline_config(args)
    if args.epochs:
        cfg = cfg.with_overrides(**{"train.epochs": args.epochs})
    if args.backend:
        cfg = cfg.with_overrides(**{"compute.backend": args.backend})
    store = open_store(cfg.store)
    plan = plan_run(cfg, store, run_id=args.run_id)
    if args.dry_run:
        if cfg.compute.backend != "kubernetes":
            raise VisionlineError("--dry-run prints the Kubernetes Job: add --backend kubernetes")
        if not store.uri.startswith("s3://"):
            print(
                f"warning: the store {store.uri} is a directory on this machine; a pod cannot "
                "read it (use an s3:// store)",
                file=sys.stderr,
            )
        print_objects(training_manifests(cfg, plan, store), args.output)
        return 0
    already_complete = is_complete(store, plan.run_id)
    try:
        # the backend's log (a pod's, a trainer process's, or this process's) is ours
        compute_backend(cfg).train(plan, store)
    except Preempted as e:
        print(f"{e}: checkpointed; the same command resumes it", file=sys.stderr)
        return EXIT_PREEMPTED
    info = load_run_info(store, plan.run_id)
    state = "already complete" if already_complete else f"trained {info['epochs_run']} epochs"
    print(
        f"run {plan.run_id}: {state}; best epoch {info['best_epoch']} ({info['best_metric']:.4f})"
    )
    print(f"outputs: {store.url(RunPaths(plan.run_id).prefix)}")
    return 0


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
    return _evaluate_gate_package(store, result.best_run_id, cfg.serve.model_name)


def _evaluate_gate_package(store, run_id: str, model_name: str) -> int:
    """The search's best run through the same stages a trained run goes through."""
    m = ensure_evaluated(store, run_id)
    print(f"best run {run_id}: test accuracy {m['accuracy']:.4f}, macro F1 {m['macro']['f1']:.4f}")
    decision = gate_run(store, run_id, champion_run=champion_run_id(store, model_name))
    print(decision.summary())
    if not decision.passed:
        return EXIT_FAILED
    ref = package_run(store, run_id, model_name)
    print(f"packaged run {run_id} as {ref}: {store.url(ref.mar_key)}")
    return 0


COMMANDS = {
    "train": Command(train_arguments, cmd_train),
    "tune": Command(tune_arguments, cmd_tune),
}
