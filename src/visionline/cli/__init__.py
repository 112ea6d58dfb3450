"""The ``visionline`` command. Each subcommand is a thin call into one stage module."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from visionline.config import DataConfig, PipelineConfig, load_config
from visionline.errors import EXIT_DRIFT, VisionlineError

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
        allow_outside=args.allow_outside or (),
    )
    state = "ingested" if res.created else "already present, nothing written:"
    print(
        f"{state} {res.ref} ({res.images} files, {res.undecodable} refused as not usable "
        f"images and not copied) in {store.uri}"
    )
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from visionline.data.manifest import resolve_dataset
    from visionline.data.validation import validate_dataset
    from visionline.storage import open_store

    cfg = _config(args)
    store = open_store(cfg.store)
    report = validate_dataset(store, resolve_dataset(store, args.dataset), cfg)
    print(report.summary())
    return 0 if report.success else 1


def _print_objects(objects: list[dict], output: str) -> None:
    """Kubernetes objects as kubectl prints them (``-o yaml`` / ``-o json``)."""
    import json

    from visionline.kube import dump_yaml

    if output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=2))
    else:
        print(dump_yaml(objects), end="")


def _with_target(cfg: PipelineConfig, args: argparse.Namespace) -> PipelineConfig:
    target = getattr(args, "target", None)
    return cfg.with_overrides(**{"deploy.target": target}) if target else cfg


def cmd_train(args: argparse.Namespace) -> int:
    from visionline.model.runs import RunPaths
    from visionline.storage import open_store
    from visionline.training import fit
    from visionline.training.plan import plan_run

    cfg = _config(args)
    if args.epochs:
        cfg = cfg.with_overrides(**{"train.epochs": args.epochs})
    if args.backend:
        cfg = cfg.with_overrides(**{"compute.backend": args.backend})
    store = open_store(cfg.store)
    plan = plan_run(cfg, store, run_id=args.run_id)
    if args.dry_run:
        if cfg.compute.backend != "kubernetes":
            raise VisionlineError("--dry-run prints the Kubernetes Job: add --backend kubernetes")
        from visionline.compute.kubernetes import KubernetesBackend

        if not store.uri.startswith("s3://"):
            print(
                f"warning: the store {store.uri} is a directory on this machine; a pod cannot "
                "read it (use an s3:// store)",
                file=sys.stderr,
            )
        _print_objects(KubernetesBackend(cfg).manifests(plan, store), args.output)
        return 0
    if cfg.compute.backend == "kubernetes":
        from visionline.backends import compute_backend

        compute_backend(cfg).train(plan, store)  # the pod's log streams into ours
        print(f"run {plan.run_id}: trained on Kubernetes")
        print(f"outputs: {store.url(RunPaths(plan.run_id).prefix)}")
        return 0
    from visionline.errors import EXIT_PREEMPTED
    from visionline.training.resume import Preempted

    try:
        res = fit(plan.cfg, store, plan.run_id)
    except Preempted as e:
        print(f"{e}: checkpointed; the same command resumes it", file=sys.stderr)
        return EXIT_PREEMPTED
    state = "already complete" if res.already_complete else f"trained {res.epochs_run} epochs"
    print(f"run {plan.run_id}: {state}; best epoch {res.best_epoch} ({res.best_metric:.4f})")
    print(f"outputs: {store.url(RunPaths(plan.run_id).prefix)}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    import optuna

    from visionline.evaluation import ensure_evaluated
    from visionline.evaluation.gate import champion_run_id, gate_run
    from visionline.serving.packaging import package_run
    from visionline.storage import open_store
    from visionline.tuning import budget_overrides, trials_markdown, tune

    # Our own progress lines say what each trial does; Optuna's repeat them.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = _config(args)
    overrides = budget_overrides(args.trials, args.timeout, args.parallel)
    cfg = cfg.with_overrides(**overrides) if overrides else cfg
    store = open_store(cfg.store)
    result = tune(cfg, store)
    best_number = result.best["number"] if result.best else None
    print(trials_markdown(result.trials, result.metric, best_number))
    print(result.summary())
    print(f"report: {store.url(result.paths.report)}")
    if not result.finished:
        print("the search is not finished: run the same command again to continue it")
    if result.best_config is None:
        print("error: no trial finished: nothing to evaluate", file=sys.stderr)
        return 1
    print(f"best config: {store.url(result.paths.best_config)}")
    print(result.best_config.to_yaml())
    if args.no_package:
        return 0
    run_id = result.best_run_id
    m = ensure_evaluated(store, run_id)
    print(f"best run {run_id}: test accuracy {m['accuracy']:.4f}, macro F1 {m['macro']['f1']:.4f}")
    decision = gate_run(store, run_id, champion_run=champion_run_id(store, cfg.serve.model_name))
    print(decision.summary())
    if not decision.passed:
        return 1
    ref = package_run(store, run_id, cfg.serve.model_name)
    print(f"packaged run {run_id} as {ref}: {store.url(ref.mar_key)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from visionline.evaluation import evaluate_run
    from visionline.model.runs import RunPaths
    from visionline.storage import open_store

    store = open_store(_config(args).store)
    m = evaluate_run(store, args.run)
    print(
        f"run {args.run}: accuracy {m['accuracy']:.4f}, macro F1 {m['macro']['f1']:.4f}, "
        f"macro ROC AUC {m['roc_auc']['macro']:.4f} on {m['n']} test images"
    )
    print(f"report: {store.url(f'{RunPaths(args.run).evaluation}/report.md')}")
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    from visionline.evaluation.gate import gate_run
    from visionline.storage import open_store

    cfg = _config(args)
    # an explicit --config asks its own gate question; otherwise the run's recorded one
    thresholds = cfg.gate if args.config else None
    decision = gate_run(open_store(cfg.store), args.run, args.champion, thresholds)
    print(decision.summary())
    return 0 if decision.passed else 1


def cmd_package(args: argparse.Namespace) -> int:
    from visionline.registry import Registry
    from visionline.serving.packaging import package_run
    from visionline.storage import open_store

    store = open_store(_config(args).store)
    ref = package_run(store, args.run, name=args.name)
    info = Registry(store, ref.name).info(ref.version)
    print(f"packaged run {args.run} as {ref}: {store.url(ref.mar_key)} (sha256 {info['sha256']})")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import json

    from visionline.registry import Registry
    from visionline.storage import open_store

    cfg = _config(args)
    reg = Registry(open_store(cfg.store), args.name or cfg.serve.model_name)
    if args.action == "list":
        aliases = reg.aliases()
        for v in reg.versions():
            info = reg.info(v)
            tags = [a for a in ("champion", "previous") if aliases.get(a) == v]
            print(
                f"{reg.name}:{v}  run {info['run_id']}  acc {info['metrics']['accuracy']:.4f}  "
                f"{info['created']}  {' '.join(tags)}"
            )
    elif args.action == "show":
        ref = reg.resolve(args.version)
        print(json.dumps({**reg.info(ref.version), "aliases": reg.aliases()}, indent=2))
    elif args.action == "promote":
        if not args.version:
            raise VisionlineError("models promote needs a VERSION")
        print(json.dumps(reg.promote(args.version, args.reason or "manual promotion"), indent=2))
    elif args.action == "rollback":
        print(json.dumps(reg.rollback(args.reason or "manual rollback"), indent=2))
    elif args.action == "log":
        for e in reg.log():
            print(f"{e['time']}  {e['action']:<9} {e['version']:>4}  {e['actor']}  {e['reason']}")
    return 0


def _model_ref(spec: str | None, cfg: PipelineConfig):
    """``NAME[:VERSION]`` (default: serve.model_name's champion) -> a registered ModelRef."""
    from visionline.registry import Registry
    from visionline.storage import open_store

    name, _, version = (spec or cfg.serve.model_name).partition(":")
    return Registry(open_store(cfg.store), name).resolve(version or None)


def cmd_lineage(args: argparse.Namespace) -> int:
    from visionline.backends import deployer
    from visionline.serving.lineage import lineage
    from visionline.storage import open_store

    cfg = _config(args)
    store = open_store(cfg.store)
    if args.model:
        ref, source = _model_ref(args.model, cfg), "registry"
    else:
        # what is actually in service, as the serving side reports it; else the champion
        ref, source = deployer(cfg, store).status().model, "served"
        if ref is None:
            ref, source = _model_ref(None, cfg), "champion (nothing is being served)"
    print(f"{'from':>10}: {source}")
    for stage, text in lineage(store, ref):
        print(f"{stage:>10}: {text}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from visionline.serving.local import LocalDeployer
    from visionline.storage import open_store

    cfg = _config(args)
    workdir = args.workdir or cfg.deploy.workdir
    store = open_store(cfg.store)
    if args.stop:
        local = LocalDeployer(store, cfg.serve, workdir)
        was_running = local.server.is_running()
        local.stop()
        print("stopped" if was_running else "no server was running")
        return 0
    ref = _model_ref(args.model, cfg)
    local = LocalDeployer(store, cfg.serve, workdir)
    local.deploy(ref)
    e = local.endpoints
    print(f"serving {ref}")
    print(f"  REST inference  {e.inference}/predictions/{ref.name}")
    print(f"  gRPC inference  {e.grpc_inference}")
    print(f"  management      {e.management} (loopback only)")
    print(f"  metrics         {e.metrics} (loopback only)")
    print(f"  tokens          {local.key_file} (inference key: Authorization: Bearer <key>)")
    print("stop with: visionline serve --stop")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from visionline.backends import deployer
    from visionline.serving.deploy import deploy_checked
    from visionline.storage import open_store

    cfg = _with_target(_config(args), args)
    store = open_store(cfg.store)
    ref = _model_ref(args.model, cfg)
    if args.dry_run:
        if cfg.deploy.target != "kubernetes":
            raise VisionlineError("--dry-run prints Kubernetes objects: add --target kubernetes")
        from visionline.serving.kubernetes import KubernetesDeployer

        _print_objects(KubernetesDeployer(cfg, store).manifests(ref), args.output)
        return 0
    result = deploy_checked(deployer(cfg, store), store, ref)
    print(f"deployed {result.ref} at {result.endpoint}: {result.parity.summary()}")
    print(f"{result.ref} is now the champion")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from visionline.backends import deployer
    from visionline.serving.deploy import rollback_champion
    from visionline.storage import open_store

    cfg = _with_target(_config(args), args)
    store = open_store(cfg.store)
    name = args.model or cfg.serve.model_name
    result = rollback_champion(deployer(cfg, store), store, name, args.reason or "")
    print(f"rolled back: {result.ref} is serving at {result.endpoint} and is the champion again")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from visionline.backends import deployer
    from visionline.storage import open_store

    cfg = _with_target(_config(args), args)
    st = deployer(cfg, open_store(cfg.store)).status()
    print(f"{cfg.deploy.target}: {st.model or 'nothing served'} at {st.endpoint}")
    print(f"ready: {'yes' if st.ready else 'no'} ({st.detail})")
    return 0 if st.ready else 1


def cmd_predict(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path as P

    from visionline.serving.client import GrpcClient, RestClient

    cfg = _config(args)
    token = args.token
    if token is None:
        key_file = P(args.workdir) / "key_file.json"
        if key_file.is_file():
            token = json.loads(key_file.read_text())["inference"]["key"]
    model = args.model or cfg.serve.model_name
    # The default endpoint is the local server this config describes: the gRPC client
    # takes host:port, the REST one a URL.
    if args.grpc:
        endpoint = args.endpoint or f"127.0.0.1:{cfg.serve.grpc_inference_port}"
        if "://" in endpoint:
            print(f"--grpc takes host:port, not a URL: {endpoint}", file=sys.stderr)
            return 2
        client = GrpcClient(endpoint, model, token)
    else:
        endpoint = args.endpoint or f"http://127.0.0.1:{cfg.serve.inference_port}"
        client = RestClient(endpoint, model, token)
    failed = 0
    for image in args.images:
        try:
            result = client.predict(P(image).read_bytes())
            print(f"{image}: " + ", ".join(f"{k}={v:.4f}" for k, v in result.items()))
        except (OSError, VisionlineError) as e:
            failed += 1
            print(f"{image}: error: {e}", file=sys.stderr)
    return 1 if failed else 0


def _window(text: str | None):
    from visionline.monitoring.capture import parse_window

    return parse_window(text) if text else (None, None)


def cmd_monitor(args: argparse.Namespace) -> int:
    from visionline.storage import open_store

    cfg = _config(args)
    store = open_store(cfg.store)
    if args.action == "log":
        from visionline.monitoring.policy import decision_log

        name = (args.model or cfg.serve.model_name).partition(":")[0]
        entries = decision_log(store, name)
        for d in entries:
            head = "RETRAIN" if d["retrain"] else "hold   "
            print(f"{d['time']}  {d['model']}:{d['version']}  {head}  {'; '.join(d['reasons'])}")
        if not entries:
            print(f"no decisions yet for {name}")
        return 0

    from visionline.monitoring.check import check_images, check_window

    if not args.model or bool(args.images) == bool(args.window):
        raise VisionlineError(
            "monitor check needs MODEL and one of --images DIR or --window START..END"
        )
    if args.images:
        outcome = check_images(store, cfg, args.model, args.images)
    else:
        start, end = _window(args.window)
        outcome = check_window(store, cfg, args.model, start, end)
    for name, why in outcome.skipped:
        print(f"skipped {name}: {why}", file=sys.stderr)
    print(outcome.report.summary())
    if outcome.report_key:
        print(f"report: {store.url(outcome.report_key)}")
    if outcome.report.drifted is None:
        raise VisionlineError(outcome.report.result.note)
    return EXIT_DRIFT if outcome.report.drifted else 0


def cmd_labels(args: argparse.Namespace) -> int:
    from visionline.storage import open_store

    cfg = _config(args)
    store = open_store(cfg.store)
    if args.action == "import":
        from visionline.monitoring.labels import import_labels

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

    from visionline.monitoring.check import resolve_model
    from visionline.monitoring.labels import labelled_quality, read_feedback_file, record_feedback

    ref, info = resolve_model(store, args.model or cfg.serve.model_name)
    frame = read_feedback_file(args.file, info["classes"])
    key, created = record_feedback(store, ref.name, frame)
    print(f"{len(frame)} labels {'stored' if created else 'already stored'}: {store.url(key)}")
    start, end = _window(args.window)
    q = labelled_quality(store, ref.name, None, start, end)
    print(f"joined to captures: {q['n']} ({q['unmatched']} labels match no capture in the window)")
    if q["n"]:
        print(f"accuracy {q['accuracy']:.4f}")
        for version, v in q["by_version"].items():
            print(f"  {ref.name}:{version}  accuracy {v['accuracy']:.4f} on {v['n']}")
        print("per-class recall:")
        for c in info["classes"]:
            if c in q["per_class"]:
                r = q["per_class"][c]
                print(f"  {c:<12} {r['recall']:.4f}  ({r['support']} labels)")
    return 0


def cmd_label_queue(args: argparse.Namespace) -> int:
    from visionline.monitoring.labels import build_label_queue
    from visionline.storage import open_store

    store = open_store(_config(args).store)
    start, end = _window(args.window)
    q = build_label_queue(store, args.model, args.k, args.strategy, start, end, args.dedup)
    print(
        f"{len(q.rows)} images queued by {args.strategy} from {q.candidates} unlabelled captures "
        f"({q.near_duplicates} near-duplicates skipped)"
    )
    for r in q.rows.itertuples():
        print(
            f"  {r.request_id}: predicted {r.predicted} ({r.confidence:.3f}), score {r.score:.4f}"
        )
    print(f"queue:        {store.url(q.prefix + '/queue.csv')}")
    print(f"Label Studio: {store.url(q.prefix + '/tasks.json')} (config label_config.xml)")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from visionline.cli.doctor import run_doctor

    cfg = _config(args)
    checks = run_doctor(cfg, cfg.store)
    for c in checks:
        print(c.line())
    return 0 if all(c.ok or not c.required for c in checks) else 1


def _target_flag(s: argparse.ArgumentParser) -> None:
    s.add_argument("--target", choices=["local", "kubernetes"], help="override deploy.target")


def _dry_run_flags(s: argparse.ArgumentParser, what: str) -> None:
    s.add_argument("--dry-run", action="store_true", help=what)
    s.add_argument(
        "-o", "--output", choices=["yaml", "json"], default="yaml", help="with --dry-run"
    )


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
    s.add_argument(
        "--allow-outside",
        action="append",
        metavar="PATH_OR_PREFIX",
        help="a folder or s3://bucket/prefix that files listed in a CSV (or symlinks in a "
        "folder) may come from besides the source's own folder; repeatable",
    )
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("validate", help="run the Great Expectations data gate")
    s.add_argument("dataset", help="NAME or NAME:VERSION")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser(
        "train", help="train (or resume) a run in this process, or as a Kubernetes Job"
    )
    s.add_argument("--run-id", help="default: <name>-<dataset version>-<config hash>")
    s.add_argument("--epochs", type=int, help="override train.epochs")
    s.add_argument(
        "--backend",
        choices=["local", "kubernetes"],
        help="override compute.backend (kubernetes: a Job, its pod's log streamed here)",
    )
    _dry_run_flags(s, "print the Job it would create (kubectl style) and create nothing")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser(
        "tune",
        help="search architectures and hyperparameters (the config's tune: section); the "
        "best run is evaluated, gated and packaged",
    )
    s.add_argument("--trials", type=int, help="the study's total trials (default tune.n_trials)")
    s.add_argument("--timeout", type=float, help="seconds for this search (tune.timeout_s)")
    s.add_argument("--parallel", type=int, help="trials at once (default: what the machine allows)")
    s.add_argument(
        "--no-package", action="store_true", help="stop after the search: no evaluate/gate/package"
    )
    s.set_defaults(func=cmd_tune)

    s = sub.add_parser("evaluate", help="evaluate a finished run on its test split")
    s.add_argument("run")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("gate", help="decide whether a run may be promoted")
    s.add_argument("run")
    s.add_argument("--champion", help="run id of the current champion to compare against")
    s.set_defaults(func=cmd_gate)

    s = sub.add_parser("package", help="build the .mar of a gated run and register it")
    s.add_argument("run")
    s.add_argument("--name", help="model name (default: serve.model_name)")
    s.set_defaults(func=cmd_package)

    s = sub.add_parser("models", help="the model registry")
    s.add_argument("action", choices=["list", "show", "promote", "rollback", "log"])
    s.add_argument("version", nargs="?", help="a version number, champion or previous")
    s.add_argument("--name", help="model name (default: serve.model_name)")
    s.add_argument("--reason", help="recorded in the promotion log")
    s.set_defaults(func=cmd_models)

    s = sub.add_parser("lineage", help="from a served archive back to its dataset and validation")
    s.add_argument(
        "model", nargs="?", help="NAME[:VERSION]; default: what is being served, else the champion"
    )
    s.set_defaults(func=cmd_lineage)

    s = sub.add_parser("serve", help="serve a registered model with a local TorchServe")
    s.add_argument(
        "model", nargs="?", help="NAME[:VERSION]; default: the champion of serve.model_name"
    )
    s.add_argument("--stop", action="store_true", help="stop the local server")
    s.add_argument("--workdir", help="the server's directory (default: deploy.workdir)")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser(
        "deploy", help="put a model in service on deploy.target, check it, make it champion"
    )
    s.add_argument("model", nargs="?", help="NAME[:VERSION]; default: the champion")
    _target_flag(s)
    _dry_run_flags(s, "print the objects it would apply (kubectl style) and change nothing")
    s.set_defaults(func=cmd_deploy)

    s = sub.add_parser("rollback", help="serve the previous champion again and make it champion")
    s.add_argument("model", nargs="?", help="NAME (default: serve.model_name)")
    s.add_argument("--reason", help="recorded in the promotion log")
    _target_flag(s)
    s.set_defaults(func=cmd_rollback)

    s = sub.add_parser("status", help="what deploy.target is serving, and whether it is ready")
    _target_flag(s)
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("predict", help="send images to a served model (REST or gRPC)")
    s.add_argument("images", nargs="+")
    s.add_argument(
        "--endpoint",
        help="REST base URL, or host:port with --grpc (default: 127.0.0.1 and "
        "serve.inference_port, or serve.grpc_inference_port with --grpc)",
    )
    s.add_argument("--grpc", action="store_true")
    s.add_argument("--model", help="default: serve.model_name")
    s.add_argument(
        "--token", help="inference token (default: read from the local server's key file)"
    )
    s.add_argument("--workdir", default=".visionline/serve")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("monitor", help="drift checks and the retraining decision log")
    s.add_argument("action", choices=["check", "log"])
    s.add_argument("model", nargs="?", help="NAME[:VERSION]; default version: the champion")
    s.add_argument("--images", help="check a folder of images (run through the model here)")
    s.add_argument("--window", help="check captures in START..END (ISO times, now, now-6h, now-7d)")
    s.set_defaults(func=cmd_monitor)

    s = sub.add_parser("labels", help="late labels: feedback on captures, or import to a dataset")
    s.add_argument("action", choices=["feedback", "import"])
    s.add_argument(
        "file", help="feedback: CSV request_id,label; import: queue CSV or Label Studio JSON"
    )
    s.add_argument("--model", help="feedback: NAME[:VERSION] (default: serve.model_name)")
    s.add_argument("--window", help="feedback: join captures in START..END only")
    s.add_argument("--dataset", help="import: the dataset to extend (default: data.dataset)")
    s.set_defaults(func=cmd_labels)

    s = sub.add_parser("label-queue", help="queue the most informative captured images")
    s.add_argument("model", help="NAME[:VERSION]; default version: the champion")
    s.add_argument("--k", type=int, default=50, help="how many images (default 50)")
    s.add_argument(
        "--strategy", choices=["least-confidence", "margin", "entropy"], default="least-confidence"
    )
    s.add_argument("--window", help="captures in START..END only")
    s.add_argument(
        "--dedup",
        type=float,
        default=0.1,
        help="near-duplicate distance, as a fraction of the median embedding distance",
    )
    s.set_defaults(func=cmd_label_queue)

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
