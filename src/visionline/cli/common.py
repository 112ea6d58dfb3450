"""What several commands share: the config the global options select, model references,
and Kubernetes objects printed as kubectl prints them."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from visionline.config import DataConfig, PipelineConfig, load_config
from visionline.errors import VisionlineError
from visionline.kube import dump_yaml
from visionline.registry import ModelRef, parse_model_ref, resolve_model_ref
from visionline.storage import ArtifactStore

DEFAULT_CONFIG = "configs/digits.yaml"
MODEL_HELP = "NAME, NAME:VERSION or NAME:ALIAS (champion, previous)"


class Command(NamedTuple):
    """One subcommand: what adds its arguments, and what runs it (returns the exit code)."""

    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def pipeline_config(args: argparse.Namespace, dataset: str | None = None) -> PipelineConfig:
    """The config ``--config`` names (else configs/digits.yaml where it exists), with
    ``--store`` and ``dataset`` applied."""
    path = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).is_file() else None)
    if path:
        cfg = load_config(path)
    else:
        cfg = PipelineConfig(data=DataConfig(dataset=dataset or "dataset"))
    overrides = {}
    if args.store:
        overrides["store"] = args.store
    if dataset:
        overrides["data.dataset"] = dataset
    return cfg.with_overrides(**overrides) if overrides else cfg


def with_target(cfg: PipelineConfig, args: argparse.Namespace) -> PipelineConfig:
    target = getattr(args, "target", None)
    return cfg.with_overrides(**{"deploy.target": target}) if target else cfg


def model_ref(store: ArtifactStore, spec: str | None, cfg: PipelineConfig) -> ModelRef:
    """A model as the user typed it (default: the champion of serve.model_name)."""
    return resolve_model_ref(store, spec, cfg.serve.model_name)


def model_name(spec: str | None, default_name: str, what: str) -> str:
    """A command about a model as a whole takes a NAME (default ``default_name``): a
    version or alias is refused with the reason, never dropped unseen."""
    if not spec:
        return default_name
    name, selector = parse_model_ref(spec, default_name)
    if selector is not None:
        raise VisionlineError(f"{what} acts on a whole model: expected NAME, not {spec!r}")
    return name


def print_objects(objects: list[dict], output: str) -> None:
    """Kubernetes objects as kubectl prints them (``-o yaml`` / ``-o json``)."""
    if output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2))
    else:
        print(dump_yaml(objects), end="")


def target_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", choices=["local", "kubernetes"], help="override deploy.target")


def dry_run_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--dry-run", action="store_true", help=what)
    p.add_argument(
        "-o", "--output", choices=["yaml", "json"], default="yaml", help="with --dry-run"
    )
