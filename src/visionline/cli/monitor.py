"""``visionline monitor``, ``labels`` and ``label-queue``: drift checks and the retraining
decisions, late labels, and which captured images to label next."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from visionline.cli.common import MODEL_HELP, Command, model_name, model_ref, pipeline_config
from visionline.errors import EXIT_DRIFT, VisionlineError
from visionline.monitoring.capture_windows import parse_window
from visionline.monitoring.check import check_images, check_window
from visionline.monitoring.label_import import import_labels
from visionline.monitoring.label_report import label_report
from visionline.monitoring.labels import (
    DEFAULT_STRATEGY,
    STRATEGIES,
    build_label_queue,
    labelled_quality,
    read_feedback_file,
    record_feedback,
)
from visionline.monitoring.policy import decision_log
from visionline.registry import Registry
from visionline.storage import ArtifactStore, open_store


def _window(text: str | None) -> tuple[datetime | None, datetime | None]:
    return parse_window(text) if text else (None, None)


def monitor_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["check", "log"])
    p.add_argument("model", nargs="?", help=f"{MODEL_HELP}; default version: the champion")
    p.add_argument("--images", help="check a folder of images (run through the model here)")
    p.add_argument("--window", help="check captures in START..END (ISO times, now, now-6h, now-7d)")


def cmd_monitor(args: argparse.Namespace) -> int:
    cfg = pipeline_config(args)
    store = open_store(cfg.store)
    if args.action == "log":
        name = model_name(args.model, cfg.serve.model_name, "monitor log")
        entries = decision_log(store, name)
        for d in entries:
            head = "RETRAIN" if d["retrain"] else "hold   "
            print(f"{d['time']}  {d['model']}:{d['version']}  {head}  {'; '.join(d['reasons'])}")
            if d.get("evidence"):  # decisions logged before estimates have none
                print(f"    evidence used: {'; '.join(d['evidence'])}")
        if not entries:
            print(f"no decisions yet for {name}")
        return 0
    if not args.model or bool(args.images) == bool(args.window):
        raise VisionlineError(
            "monitor check needs MODEL and one of --images DIR or --window START..END"
        )
    spec = str(model_ref(store, args.model, cfg))
    if args.images:
        outcome = check_images(store, cfg, spec, args.images)
    else:
        start, end = _window(args.window)
        outcome = check_window(store, cfg, spec, start, end)
    for name, why in outcome.skipped:
        print(f"skipped {name}: {why}", file=sys.stderr)
    print(outcome.report.summary())
    if outcome.report_key:
        print(f"report: {store.url(outcome.report_key)}")
    if outcome.report.drifted is None:
        raise VisionlineError(outcome.report.result.note)
    return EXIT_DRIFT if outcome.report.drifted else 0


def labels_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["feedback", "import", "report"])
    p.add_argument(
        "file",
        help="feedback: CSV request_id,label; import: queue CSV or Label Studio JSON; "
        f"report: the served model ({MODEL_HELP})",
    )
    p.add_argument("--model", help=f"feedback: {MODEL_HELP} (default: serve.model_name)")
    p.add_argument("--window", help="feedback: join captures in START..END only")
    p.add_argument("--dataset", help="import: the dataset to extend (default: data.dataset)")
    p.add_argument(
        "--labelled",
        metavar="VERSION",
        help="report: the imported dataset version whose arms to compare (default: the newest)",
    )


def cmd_labels(args: argparse.Namespace) -> int:
    cfg = pipeline_config(args)
    store = open_store(cfg.store)
    if args.action == "report":
        spec = str(model_ref(store, args.file, cfg))
        print("training both arms (a finished arm is reused) ...", flush=True)
        report = label_report(store, cfg, spec, args.labelled)
        print(report.summary())
        print(f"report: {store.url(report.prefix + '/report.json')} (and report.md, gain.png)")
        return 0
    if args.action == "import":
        res = import_labels(store, cfg, args.file, args.dataset)
        print(
            f"{res.added} labelled images new, {res.already_present} already in {res.parent}, "
            f"{res.unlabelled} without a label"
        )
        if res.ref is None:
            print(f"nothing to import: {res.parent} stays the newest version")
            return 0
        state = "created" if res.created else "already present:"
        print(f"{state} {res.ref} (parent {res.parent.version})")
        print(res.validation.summary())
        return 0 if res.validation.success else 1
    ref = model_ref(store, args.model, cfg)
    classes = Registry(store, ref.name).info(ref.version)["classes"]
    frame = read_feedback_file(args.file, classes)
    key, created = record_feedback(store, ref.name, frame)
    print(f"{len(frame)} labels {'stored' if created else 'already stored'}: {store.url(key)}")
    _print_quality(store, ref.name, classes, args.window)
    return 0


def _print_quality(store: ArtifactStore, name: str, classes: list[str], window: str | None) -> None:
    """Accuracy on the captures the labels joined, overall, per version and per class."""
    start, end = _window(window)
    q = labelled_quality(store, name, None, start, end)
    print(f"joined to captures: {q['n']} ({q['unmatched']} labels match no capture in the window)")
    if not q["n"]:
        return
    print(f"accuracy {q['accuracy']:.4f}")
    for version, v in q["by_version"].items():
        print(f"  {name}:{version}  accuracy {v['accuracy']:.4f} on {v['n']}")
    print("per-class recall:")
    for c in classes:
        if c in q["per_class"]:
            r = q["per_class"][c]
            print(f"  {c:<12} {r['recall']:.4f}  ({r['support']} labels)")


def label_queue_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=f"{MODEL_HELP}; default version: the champion")
    p.add_argument("--k", type=int, default=50, help="how many images (default 50)")
    p.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=DEFAULT_STRATEGY,  # the best measured: see labels.DEFAULT_STRATEGY
        help=f"how images are ranked (default {DEFAULT_STRATEGY}: the best measured, "
        "docs/monitoring.md)",
    )
    p.add_argument("--window", help="captures in START..END only")
    p.add_argument(
        "--dedup",
        type=float,
        default=0.1,
        help="near-duplicate distance, as a fraction of the median embedding distance",
    )
    p.add_argument(
        "--control",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="also queue round(FRACTION x K) random captures, the control arm that "
        "`labels report` compares the chosen ones with (default 0: none)",
    )
    p.add_argument("--seed", type=int, default=0, help="of the control arm's random draw")


def cmd_label_queue(args: argparse.Namespace) -> int:
    cfg = pipeline_config(args)
    store = open_store(cfg.store)
    spec = str(model_ref(store, args.model, cfg))
    start, end = _window(args.window)
    q = build_label_queue(
        store, spec, args.k, args.strategy, start, end, args.dedup, args.control, args.seed
    )
    control = int((q.rows["arm"] == "control").sum())
    print(
        f"{len(q.rows) - control} images queued by {args.strategy} and {control} at random "
        f"(control) from {q.candidates} unlabelled captures "
        f"({q.near_duplicates} near-duplicates skipped)"
    )
    for r in q.rows.itertuples():
        print(
            f"  {r.request_id}: {r.arm:<7} predicted {r.predicted} ({r.confidence:.3f}), "
            f"score {r.score:.4f}"
        )
    print(f"queue:        {store.url(q.prefix + '/queue.csv')}")
    print(f"Label Studio: {store.url(q.prefix + '/tasks.json')} (config label_config.xml)")
    return 0


COMMANDS = {
    "monitor": Command(monitor_arguments, cmd_monitor),
    "labels": Command(labels_arguments, cmd_labels),
    "label-queue": Command(label_queue_arguments, cmd_label_queue),
}
