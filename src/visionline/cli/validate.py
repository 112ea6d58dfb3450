"""``visionline validate``: the Great Expectations data gate over a dataset version (a
module of its own: loading GX takes seconds that ``samples`` and ``ingest`` do not need)."""

from __future__ import annotations

import argparse

from visionline.cli.common import Command, pipeline_config
from visionline.data.manifest import resolve_dataset
from visionline.data.validation import validate_dataset
from visionline.errors import EXIT_FAILED
from visionline.storage import open_store


def validate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="NAME or NAME:VERSION")


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = pipeline_config(args)
    store = open_store(cfg.store)
    report = validate_dataset(store, resolve_dataset(store, args.dataset), cfg)
    print(report.summary())
    return 0 if report.success else EXIT_FAILED


COMMANDS = {
    "validate": Command(validate_arguments, cmd_validate),
}
