"""``visionline package``, ``models`` and ``lineage``: a gated run into the registry, the
registry itself, and a model's chain back to its data."""

from __future__ import annotations

import argparse
import json

from visionline.backends import deployer
from visionline.cli.common import MODEL_HELP, Command, model_name, model_ref, pipeline_config
from visionline.errors import VisionlineError
from visionline.registry import Registry, resolve_model_ref
from visionline.serving.lineage import lineage
from visionline.serving.packaging import package_run
from visionline.storage import open_store


def package_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run")
    p.add_argument("--name", help="model name (default: serve.model_name)")


def cmd_package(args: argparse.Namespace) -> int:
    # serve and monitor come from this config, not the run's: they belong to the deployment
    cfg = pipeline_config(args)
    store = open_store(cfg.store)
    ref = package_run(store, args.run, name=args.name, cfg=cfg)
    info = Registry(store, ref.name).info(ref.version)
    print(f"packaged run {args.run} as {ref}: {store.url(ref.mar_key)} (sha256 {info['sha256']})")
    return 0


def models_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "show", "promote", "rollback", "log"])
    p.add_argument(
        "model",
        nargs="?",
        help=f"{MODEL_HELP}; a bare VERSION or ALIAS is one of --name's "
        "(list, rollback and log take a NAME)",
    )
    p.add_argument("--name", help="model name (default: serve.model_name)")
    p.add_argument("--reason", help="recorded in the promotion log")


def cmd_models(args: argparse.Namespace) -> int:
    cfg = pipeline_config(args)
    store = open_store(cfg.store)
    default_name = args.name or cfg.serve.model_name
    if args.action == "show":
        ref = resolve_model_ref(store, args.model, default_name)
        reg = Registry(store, ref.name)
        print(json.dumps({**reg.info(ref.version), "aliases": reg.aliases()}, indent=2))
    elif args.action == "promote":
        if not args.model:
            raise VisionlineError("models promote needs a VERSION (or NAME:VERSION)")
        ref = resolve_model_ref(store, args.model, default_name)
        reason = args.reason or "manual promotion"
        print(json.dumps(Registry(store, ref.name).promote(ref.version, reason), indent=2))
    else:
        reg = Registry(store, model_name(args.model, default_name, f"models {args.action}"))
        _registry_action(reg, args.action, args.reason)
    return 0


def _registry_action(reg: Registry, action: str, reason: str | None) -> None:
    if action == "list":
        aliases = reg.aliases()
        for v in reg.versions():
            info = reg.info(v)
            tags = [a for a in ("champion", "previous") if aliases.get(a) == v]
            print(
                f"{reg.name}:{v}  run {info['run_id']}  acc {info['metrics']['accuracy']:.4f}  "
                f"{info['created']}  {' '.join(tags)}"
            )
    elif action == "rollback":
        print(json.dumps(reg.rollback(reason or "manual rollback"), indent=2))
    elif action == "log":
        for e in reg.log():
            print(f"{e['time']}  {e['action']:<9} {e['version']:>4}  {e['actor']}  {e['reason']}")


def lineage_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", nargs="?", help=f"{MODEL_HELP}; default: what is being served, else the champion"
    )


def cmd_lineage(args: argparse.Namespace) -> int:
    cfg = pipeline_config(args)
    store = open_store(cfg.store)
    if args.model:
        ref, source = model_ref(store, args.model, cfg), "registry"
    else:
        # what is actually in service, as the serving side reports it; else the champion
        ref, source = deployer(cfg, store).status().model, "served"
        if ref is None:
            ref, source = model_ref(store, None, cfg), "champion (nothing is being served)"
    print(f"{'from':>10}: {source}")
    for stage, text in lineage(store, ref):
        print(f"{stage:>10}: {text}")
    return 0


COMMANDS = {
    "package": Command(package_arguments, cmd_package),
    "models": Command(models_arguments, cmd_models),
    "lineage": Command(lineage_arguments, cmd_lineage),
}
