"""``visionline samples`` and ``ingest``: images into the store."""

from __future__ import annotations

import argparse

from visionline.cli.common import Command, pipeline_config
from visionline.data.ingest import ingest
from visionline.data.samples import write_digits, write_shapes
from visionline.storage import open_store


def samples_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=["digits", "shapes"])
    p.add_argument("dir")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--format", default="png", choices=["png", "jpg"])
    p.add_argument("--seed", type=int, default=0)


def cmd_samples(args: argparse.Namespace) -> int:
    if args.kind == "digits":
        n = write_digits(args.dir)
    else:
        n = write_shapes(args.dir, args.classes, args.per_class, args.size, args.format, args.seed)
    print(f"wrote {n} {args.kind} images to {args.dir}")
    return 0


def ingest_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src")
    p.add_argument("--dataset", required=True)
    p.add_argument(
        "--allow-outside",
        action="append",
        metavar="PATH_OR_PREFIX",
        help="a folder or s3://bucket/prefix that files listed in a CSV (or symlinks in a "
        "folder) may come from besides the source's own folder; repeatable",
    )


def cmd_ingest(args: argparse.Namespace) -> int:
    cfg = pipeline_config(args, dataset=args.dataset)
    store = open_store(cfg.store)
    res = ingest(
        store,
        args.src,
        cfg.data.dataset,
        ratios=cfg.data.split,
        max_pixels=cfg.data.max_image_pixels,
        workers=cfg.data.ingest_workers,
        allow_outside=args.allow_outside or (),
    )
    state = "ingested" if res.created else "already present, nothing written:"
    print(
        f"{state} {res.ref} ({res.images} files, {res.undecodable} refused as not usable "
        f"images and not copied) in {store.uri}"
    )
    return 0


COMMANDS = {
    "samples": Command(samples_arguments, cmd_samples),
    "ingest": Command(ingest_arguments, cmd_ingest),
}
