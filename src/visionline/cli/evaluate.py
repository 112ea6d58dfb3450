"""``visionline evaluate`` and ``gate``: a finished run on its test split, and whether it
may be promoted."""

from __future__ import annotations

import argparse

from visionline.cli.common import Command, pipeline_config
from visionline.evaluation import evaluate_run
from visionline.evaluation.gate import gate_run
from visionline.model.runs import RunPaths
from visionline.storage import open_store


def evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")


def cmd_evaluate(args: argparse.Namespace) -> int:
    store = open_store(pipeline_config(args).store)
    m = evaluate_run(store, args.run)
    print(
        f"run {args.run}: accuracy {m['accuracy']:.4f}, macro F1 {m['macro']['f1']:.4f}, "
        f"macro ROC AUC {m['roc_auc']['macro']:.4f} on {m['n']} test images"
    )
    print(f"report: {store.url(f'{RunPaths(args.run).evaluation}/report.md')}")
    return 0


def gate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("--champion", help="run id of the current champion to compare against")


def cmd_gate(args: argparse.Namespace) -> int:
    cfg = pipeline_config(args)
    # an explicit --config asks its own gate question; otherwise the run's recorded one
    thresholds = cfg.gate if args.config else None
    decision = gate_run(open_store(cfg.store), args.run, args.champion, thresholds)
    print(decision.summary())
    return 0 if decision.passed else 1


COMMANDS = {
    "evaluate": Command(evaluate_arguments, cmd_evaluate),
    "gate": Command(gate_arguments, cmd_gate),
}
