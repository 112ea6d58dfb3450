"""The trainer process, ``python -m visionline.training --config URI --run-id ID
[--store URI] [--origin KEY=VALUE ...]``, that every compute backend starts (once, or
once per rank under ``torchrun``). Exit codes: 0 done, ``EXIT_CONFIG_ERROR`` for a bad
config or run id, ``EXIT_PREEMPTED`` after a SIGTERM stop (checkpointed: running it again
resumes)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

import torch

from visionline.config import load_config
from visionline.errors import (
    EXIT_CONFIG_ERROR,
    EXIT_PREEMPTED,
    ConfigError,
    Preempted,
    TrainingError,
)
from visionline.model.runs import check_run_id
from visionline.storage import open_store
from visionline.training.devices import check_cuda
from visionline.training.loop import fit
from visionline.training.plan import plan_run
from visionline.training.resume import Preemption, SetupInterrupted

log = logging.getLogger("visionline.training")

# what --help says the command does
DESCRIPTION = "Training: ``fit()`` drives ``train_one_epoch()`` and ``evaluate()``."


def _origin(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--origin {pair!r}: expected key=value")
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> int:
    """The trainer's command line; returns the process's exit code. SIGTERM is handled
    from the first line on: before the training loop it ends the process at once with
    ``EXIT_PREEMPTED`` (nothing to checkpoint yet), in the loop it checkpoints first."""
    preemption = Preemption(immediate=True)
    try:
        with preemption:
            return _main(argv, preemption)
    except SetupInterrupted:
        print("stopped on SIGTERM during setup: nothing to checkpoint yet", file=sys.stderr)
        return EXIT_PREEMPTED


def _main(argv: list[str] | None, preemption: Preemption) -> int:
    ap = argparse.ArgumentParser(prog="python -m visionline.training", description=DESCRIPTION)
    ap.add_argument("--config", required=True, help="config YAML: a path or s3:// URI")
    ap.add_argument("--run-id", required=True)
    ap.add_argument("--store", help="override the config's store URI")
    ap.add_argument(
        "--origin",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recorded in run.json (e.g. prefect_flow_run=<id>)",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("visionline").setLevel(logging.INFO)
    log.info("run %s: setting up (config, data, model)", args.run_id)
    try:
        cfg = load_config(args.config)
        if args.store:
            cfg = cfg.with_overrides(store=args.store)
        origin = _origin(args.origin)
        check_run_id(args.run_id)
        check_cuda(cfg)  # a CUDA build the node's driver cannot run fails here, at once
    except (ConfigError, TrainingError) as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    if cfg.compute.threads:
        # Runs sharing one machine (a search's parallel trials) each use their share of it.
        torch.set_num_threads(cfg.compute.threads)
    try:
        store = open_store(cfg.store)
        # a backend's config is already pinned (its plan's); one given by hand is pinned here
        result = fit(plan_run(cfg, store, run_id=args.run_id), store, origin, preemption)
    except Preempted:
        return EXIT_PREEMPTED
    print(
        json.dumps(
            {
                "run_id": result.run_id,
                "epochs_run": result.epochs_run,
                "best_epoch": result.best_epoch,
                "early_stopped": result.early_stopped,
            }
        )
    )
    return 0
