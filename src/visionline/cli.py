"""The ``visionline`` command. Each subcommand is a thin call into one stage module."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from visionline.config import DataConfig, PipelineConfig, load_config
from visionline.errors import VisionlineError

DEFAULT_CONFIG = "configs/digits.yaml"


def _config(args: argparse.Namespace, dataset: str | None = None) -> PipelineConfig:
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


def cmd_samples(args: argparse.Namespace) -> int:
    from visionline.data.samples import write_digits, write_shapes

    if args.kind == "digits":
        n = write_digits(args.dir)
    else:
        n = write_shapes(args.dir, args.classes, args.per_class, args.size, args.format, args.seed)
    print(f"wrote {n} {args.kind} images to {args.dir}")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    from visionline.data.ingest import ingest
    from visionline.storage import open_store

    cfg = _config(args, dataset=args.dataset)
    store = open_store(cfg.store)
    res = ingest(
        store,
        args.src,
        cfg.data.dataset,
        ratios=cfg.data.split,
        max_pixels=cfg.data.max_image_pixels,
        workers=cfg.data.ingest_workers,
    )
    state = "ingested" if res.created else "already present, nothing written:"
    print(f"{state} {res.ref} ({res.images} images, {res.undecodable} undecodable) in {store.uri}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from visionline.data.manifest import resolve_dataset
    from visionline.storage import open_store
    from visionline.validation import validate_dataset

    cfg = _config(args)
    store = open_store(cfg.store)
    report = validate_dataset(store, resolve_dataset(store, args.dataset), cfg)
    print(report.summary())
    return 0 if report.success else 1


def cmd_train(args: argparse.Namespace) -> int:
    from visionline.data.manifest import resolve_dataset
    from visionline.storage import open_store
    from visionline.training import default_run_id, fit

    cfg = _config(args)
    if args.epochs:
        cfg = cfg.with_overrides(**{"train.epochs": args.epochs})
    store = open_store(cfg.store)
    spec = cfg.data.dataset + (f":{cfg.data.version}" if cfg.data.version else "")
    run_id = args.run_id or default_run_id(cfg, resolve_dataset(store, spec).version)
    res = fit(cfg, store, run_id)
    state = "already complete" if res.already_complete else f"trained {res.epochs_run} epochs"
    print(f"run {run_id}: {state}; best epoch {res.best_epoch} ({res.best_metric:.4f})")
    print(f"outputs: {store.url(f'runs/{run_id}/')}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from visionline.evaluation import evaluate_run
    from visionline.storage import open_store

    store = open_store(_config(args).store)
    m = evaluate_run(store, args.run)
    print(
        f"run {args.run}: accuracy {m['accuracy']:.4f}, macro F1 {m['macro']['f1']:.4f}, "
        f"macro ROC AUC {m['roc_auc']['macro']:.4f} on {m['n']} test images"
    )
    print(f"report: {store.url(f'runs/{args.run}/evaluation/report.md')}")
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from visionline.gate import gate_run
    from visionline.storage import open_store

    store = open_store(_config(args).store)
    decision = gate_run(store, args.run, champion_run=args.champion)
    print(decision.summary())
    return 0 if decision.passed else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    from visionline.doctor import run_doctor

    cfg = _config(args)
    checks = run_doctor(cfg, cfg.store)
    for c in checks:
        print(c.line())
    return 0 if all(c.ok or not c.required for c in checks) else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="visionline", description=__doc__)
    p.add_argument("--config", "-c", help=f"pipeline config YAML (default {DEFAULT_CONFIG})")
    p.add_argument("--store", help="artifact store: a directory or s3://bucket/prefix")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("samples", help="write a sample image set as an ImageFolder")
    s.add_argument("kind", choices=["digits", "shapes"])
    s.add_argument("dir")
    s.add_argument("--classes", type=int, default=4)
    s.add_argument("--per-class", type=int, default=50)
    s.add_argument("--size", type=int, default=32)
    s.add_argument("--format", default="png", choices=["png", "jpg"])
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_samples)

    s = sub.add_parser("ingest", help="ingest an ImageFolder, s3:// prefix or CSV")
    s.add_argument("src")
    s.add_argument("--dataset", required=True)
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("validate", help="run the Great Expectations data gate")
    s.add_argument("dataset", help="NAME or NAME:VERSION")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("train", help="train (or resume) a run in this process")
    s.add_argument("--run-id", help="default: <name>-<dataset version>-<config hash>")
    s.add_argument("--epochs", type=int, help="override train.epochs")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="evaluate a finished run on its test split")
    s.add_argument("run")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("gate", help="decide whether a run may be promoted")
    s.add_argument("run")
    s.add_argument("--champion", help="run id of the current champion to compare against")
    s.set_defaults(func=cmd_gate)

    s = sub.add_parser("doctor", help="check the environment")
    s.set_defaults(func=cmd_doctor)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Our own INFO lines are useful; third-party INFO (GX, Prefect, botocore) is noise.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("visionline").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except VisionlineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
