"""``visionline serve``, ``deploy``, ``rollback``, ``status`` and ``predict``: a model in
service (a local TorchServe, or deploy.target), and requests to it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from visionline.backends import (
    deployer,
    ensure_no_rollout,
    local_server,
    rollout_manifests,
    serving_manifests,
)
from visionline.cli.common import (
    MODEL_HELP,
    Command,
    dry_run_flags,
    model_name,
    model_ref,
    pipeline_config,
    print_objects,
    target_flag,
    with_target,
)
from visionline.cli.rollout import deploy_mode, start_rollout
from visionline.config import PipelineConfig
from visionline.errors import EXIT_FAILED, EXIT_USAGE, VisionlineError
from visionline.registry import ModelRef, Registry
from visionline.serving.client import GrpcClient, RestClient
from visionline.serving.deploy import deploy_checked, rollback_champion
from visionline.serving.packaging import deployment_differences
from visionline.serving.torchserve import key_file_path, read_tokens
from visionline.storage import ArtifactStore, open_store


def warn_if_packaged_otherwise(store: ArtifactStore, ref: ModelRef, cfg: PipelineConfig) -> None:
    """An archive serves and captures as it was packaged: say so when this config's
    ``serve``/``monitor`` settings differ, and how to serve with them instead."""
    info = Registry(store, ref.name).info(ref.version)
    diff = deployment_differences(info, cfg, store.uri)
    if diff:
        print(
            f"warning: {ref} was packaged with other serving or capture settings than this "
            f"config ({'; '.join(diff[:4])}{'; ...' if len(diff) > 4 else ''}): it serves as "
            f"packaged. To serve with this config's, package its run with it "
            f"(visionline --config CONFIG package {info['run_id']}) and deploy that version, "
            "or set VISIONLINE_CAPTURE_* in the serving environment",
            file=sys.stderr,
        )


def serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", nargs="?", help=f"{MODEL_HELP}; default: the champion of serve.model_name"
    )
    p.add_argument("--stop", action="store_true", help="stop the local server")
    p.add_argument("--workdir", help="the server's directory (default: deploy.workdir)")


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = pipeline_config(args)
    store = open_store(cfg.store)
    if args.stop:
        local = local_server(cfg, store, args.workdir)
        was_running = local.server.is_running()
        local.stop()
        print("stopped" if was_running else "no server was running")
        return 0
    ref = model_ref(store, args.model, cfg)
    warn_if_packaged_otherwise(store, ref, cfg)
    local = local_server(cfg, store, args.workdir)
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


def deploy_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help=f"{MODEL_HELP}; default: the champion")
    target_flag(p)
    dry_run_flags(p, "print the objects it would apply (kubectl style) and change nothing")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--shadow",
        nargs="?",
        type=float,
        const=-1.0,
        metavar="PERCENT",
        help="serve it as a challenger beside the champion and mirror PERCENT of the "
        "predictions to it (default deploy.rollout.shadow_percent); users get the "
        "champion's answers only",
    )
    mode.add_argument(
        "--canary",
        type=float,
        metavar="PERCENT",
        help="let it answer PERCENT of the predictions for real, rolled back on its own "
        "when its errors or p99 latency exceed the champion's by the configured margins",
    )
    p.add_argument("--workdir", help="the local server's directory (default: deploy.workdir)")


def cmd_deploy(args: argparse.Namespace) -> int:
    cfg = with_target(pipeline_config(args), args)
    store = open_store(cfg.store)
    ref = model_ref(store, args.model, cfg)
    warn_if_packaged_otherwise(store, ref, cfg)
    mode, percent = deploy_mode(cfg, args)
    if args.dry_run:
        if cfg.deploy.target != "kubernetes":
            raise VisionlineError("--dry-run prints Kubernetes objects: add --target kubernetes")
        objects = (
            serving_manifests(cfg, store, ref)
            if mode == "replace"
            else rollout_manifests(cfg, store, ref, mode, percent)
        )
        print_objects(objects, args.output)
        return 0
    if mode != "replace":
        return start_rollout(cfg, store, ref, mode, percent, args)
    if args.workdir:
        cfg = cfg.with_overrides(**{"deploy.workdir": args.workdir})
    ensure_no_rollout(cfg, store)
    result = deploy_checked(deployer(cfg, store), store, ref)
    print(f"deployed {result.ref} at {result.endpoint}: {result.parity.summary()}")
    print(f"{result.ref} is now the champion")
    return 0


def rollback_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="NAME (default: serve.model_name)")
    p.add_argument("--reason", help="recorded in the promotion log")
    target_flag(p)


def cmd_rollback(args: argparse.Namespace) -> int:
    cfg = with_target(pipeline_config(args), args)
    store = open_store(cfg.store)
    name = model_name(args.model, cfg.serve.model_name, "rollback")
    result = rollback_champion(deployer(cfg, store), store, name, args.reason or "")
    print(f"rolled back: {result.ref} is serving at {result.endpoint} and is the champion again")
    return 0


def status_arguments(p: argparse.ArgumentParser) -> None:
    target_flag(p)


def cmd_status(args: argparse.Namespace) -> int:
    cfg = with_target(pipeline_config(args), args)
    st = deployer(cfg, open_store(cfg.store)).status()
    print(f"{cfg.deploy.target}: {st.model or 'nothing served'} at {st.endpoint}")
    print(f"ready: {'yes' if st.ready else 'no'} ({st.detail})")
    return 0 if st.ready else 1


def predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+")
    p.add_argument(
        "--endpoint",
        help="REST base URL, or host:port with --grpc (default: 127.0.0.1 and "
        "serve.inference_port, or serve.grpc_inference_port with --grpc)",
    )
    p.add_argument("--grpc", action="store_true")
    p.add_argument("--model", help="NAME of the served model (default: serve.model_name)")
    p.add_argument(
        "--token", help="inference token (default: read from the local server's key file)"
    )
    p.add_argument("--workdir", default=".visionline/serve")


def cmd_predict(args: argparse.Namespace) -> int:
    cfg = pipeline_config(args)
    token = args.token
    if token is None and key_file_path(args.workdir).is_file():
        token = read_tokens(key_file_path(args.workdir))["inference"]
    model = model_name(args.model, cfg.serve.model_name, "predict (it asks the served model)")
    # The default endpoint is the local server this config describes: the gRPC client
    # takes host:port, the REST one a URL.
    if args.grpc:
        endpoint = args.endpoint or f"127.0.0.1:{cfg.serve.grpc_inference_port}"
        if "://" in endpoint:
            print(f"--grpc takes host:port, not a URL: {endpoint}", file=sys.stderr)
            return EXIT_USAGE
        client = GrpcClient(endpoint, model, token)
    else:
        endpoint = args.endpoint or f"http://127.0.0.1:{cfg.serve.inference_port}"
        client = RestClient(endpoint, model, token)
    failed = 0
    for image in args.images:
        try:
            result = client.predict(Path(image).read_bytes())
            print(f"{image}: " + ", ".join(f"{k}={v:.4f}" for k, v in result.items()))
        except (OSError, VisionlineError) as e:
            failed += 1
            print(f"{image}: error: {e}", file=sys.stderr)
    return EXIT_FAILED if failed else 0


COMMANDS = {
    "serve": Command(serve_arguments, cmd_serve),
    "deploy": Command(deploy_arguments, cmd_deploy),
    "rollback": Command(rollback_arguments, cmd_rollback),
    "status": Command(status_arguments, cmd_status),
    "predict": Command(predict_arguments, cmd_predict),
}
