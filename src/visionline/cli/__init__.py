"""The ``visionline`` command. Each subcommand is a thin call into one stage module."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from visionline.cli.common import DEFAULT_CONFIG, Command
from visionline.errors import EXIT_USAGE, VisionlineError

# command -> (the module beside this one that parses and runs it, its line in --help).
# Only the chosen command's module is imported: the stages behind the others (torch,
# Great Expectations, Optuna) cost seconds to load and are not needed.
COMMANDS: dict[str, tuple[str, str]] = {
    "samples": ("data", "write a sample image set as an ImageFolder"),
    "ingest": ("data", "ingest an ImageFolder, s3:// prefix or CSV"),
    "validate": ("validate", "run the Great Expectations data gate"),
    "train": (
        "train",
        "train (or resume) a run on compute.backend: on this machine, or as a Kubernetes Job",
    ),
    "tune": (
        "tune",
        "search architectures and hyperparameters (the config's tune: section); the "
        "best run is evaluated, gated and packaged",
    ),
    "evaluate": ("evaluate", "evaluate a finished run on its test split"),
    "gate": ("evaluate", "decide whether a run may be promoted"),
    "package": ("models", "build the .mar of a gated run and register it"),
    "models": ("models", "the model registry"),
    "lineage": ("models", "from a served archive back to its dataset and validation"),
    "serve": ("serve", "serve a registered model with a local TorchServe"),
    "deploy": ("serve", "put a model in service on deploy.target, check it, make it champion"),
    "rollback": ("serve", "serve the previous champion again and make it champion"),
    "status": ("serve", "what deploy.target is serving, and whether it is ready"),
    "rollout": (
        "rollout",
        "a shadow or canary challenger: its verdict (status), promote or abort it",
    ),
    "predict": ("serve", "send images to a served model (REST or gRPC)"),
    "monitor": ("monitor", "drift checks and the retraining decision log"),
    "labels": ("monitor", "late labels: feedback on captures, or import to a dataset"),
    "label-queue": ("monitor", "queue the most informative captured images"),
    "doctor": ("doctor", "check the environment"),
}


def _global_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help=f"pipeline config YAML (default {DEFAULT_CONFIG})")
    p.add_argument("--store", help="artifact store: a directory or s3://bucket/prefix")
    p.add_argument("-v", "--verbose", action="store_true")


def chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names (None: none, or one that does not exist), read the
    way the full parser reads it, so a global option's value is never taken for one."""
    pre = argparse.ArgumentParser(add_help=False)
    _global_options(pre)
    pre.add_argument("command", nargs="?")
    known, _ = pre.parse_known_args(argv)
    return known.command if known.command in COMMANDS else None


def load_command(name: str) -> Command:
    module, _ = COMMANDS[name]
    return importlib.import_module(f"visionline.cli.{module}").COMMANDS[name]


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """Every command is listed (``--help``, a mistyped name); only the one ``argv``
    chooses gets its arguments, and with them its module."""
    p = argparse.ArgumentParser(prog="visionline", description=__doc__)
    _global_options(p)
    sub = p.add_subparsers(dest="command", required=True)
    chosen = chosen_command(argv)
    for name, (_, help_line) in COMMANDS.items():
        s = sub.add_parser(name, help=help_line)
        if name == chosen:
            command = load_command(name)
            command.arguments(s)
            s.set_defaults(func=command.run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    # Our own INFO lines are useful; third-party INFO (GX, Prefect, botocore) is noise.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("visionline").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except VisionlineError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
