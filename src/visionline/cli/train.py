"""``visionline train``: one run on the configured compute backend."""

from __future__ import annotations

import argparse
import sys

from visionline.backends import compute_backend, training_manifests
from visionline.cli.common import Command, dry_run_flags, pipeline_config, print_objects
from visionline.errors import EXIT_PREEMPTED, Preempted, VisionlineError
from visionline.model.runs import RunPaths, is_complete, load_run_info
from visionline.storage import open_store
from visionline.training.plan import plan_run


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


COMMANDS = {
    "train": Command(train_arguments, cmd_train),
}
