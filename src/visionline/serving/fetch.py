"""The init container of a TorchServe pod: fetch the model archive and check it.

    python -m visionline.serving.fetch --store s3://bucket/prefix --model digits:3 \\
        --sha256 <hex> --dest /work/model-store \\
        [--serve-config /etc/visionline/serve/serve.json --ts-config /work/config.properties]

Downloads ``models/<name>/<version>/<name>.mar`` and checks it against the sha256 the
registry recorded at packaging and, when given, the one pinned in the pod template
(so what a Deployment revision serves is fixed by its template, whatever happens to
the store later). With ``--serve-config`` it also writes TorchServe's
``config.properties`` for the pod: listening on loopback only, its own token auth off,
behind the authenticating nginx front. Exits 0 when the archive is in place, 1 when it
is missing or does not match (the pod then never starts, and the rollout is rolled
back), 78 on bad arguments.

The deployer pins a version in the pod template's environment, not in this command:
``VISIONLINE_PINNED_STORE``, ``VISIONLINE_PINNED_MODEL`` and ``VISIONLINE_PINNED_SHA256``
override ``--store``, ``--model`` and ``--sha256``. The applied manifest (k8s/) never
names them, so ``kubectl apply -k`` after a deploy leaves the pin alone, and every pod of
a ReplicaSet (one the HPA adds later too) fetches the same version instead of resolving
``champion`` at its own start.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from visionline.config import ServeConfig
from visionline.errors import EXIT_CONFIG_ERROR, IntegrityError, VisionlineError
from visionline.registry import ModelRef, Registry, parse_model_ref
from visionline.serving.torchserve import ServedModel, mar_version, render_config
from visionline.storage import ArtifactStore, open_store, sha256_file

log = logging.getLogger("visionline.serving.fetch")

# The deployer's pin (see the module docstring): env name -> the flag it overrides.
PIN_ENV = {
    "VISIONLINE_PINNED_STORE": "store",
    "VISIONLINE_PINNED_MODEL": "model",
    "VISIONLINE_PINNED_SHA256": "sha256",
}

# Where TorchServe listens inside a pod, behind the front (which owns the public ports).
POD_BACKEND_PORTS = {
    "inference_port": 18080,
    "management_port": 18081,
    "metrics_port": 18082,
    "grpc_inference_port": 17070,
    "grpc_management_port": 17071,
}


def fetch_mar(store: ArtifactStore, ref: ModelRef, dest_dir: Path) -> Path:
    """Download the archive and check it against the sha256 recorded at packaging."""
    info = Registry(store, ref.name).info(ref.version)
    dest = store.get_file(
        ref.mar_key, Path(dest_dir) / f"{ref.name}-{ref.version}.mar", verify=True
    )
    if sha256_file(dest) != info["sha256"]:
        raise IntegrityError(f"{store.url(ref.mar_key)} does not match its registered sha256")
    return dest


def fetch(store_uri: str, model: str, dest: Path, sha256: str | None = None) -> Path:
    name, version = parse_model_ref(model)
    if version is None:
        raise VisionlineError(f"--model {model!r}: expected NAME:VERSION or NAME:ALIAS")
    store = open_store(store_uri)
    # an alias (champion, previous) is resolved when the pod starts: what a freshly
    # applied base serves before the first deploy pins a version
    ref = Registry(store, name).resolve(version)
    dest.mkdir(parents=True, exist_ok=True)
    path = fetch_mar(store, ref, dest)
    if sha256 and sha256_file(path) != sha256:
        path.unlink(missing_ok=True)
        raise IntegrityError(
            f"{ref}: the archive in the store does not match the sha256 this pod was "
            f"deployed with ({sha256}): it changed after deployment; deploy again"
        )
    final = dest / f"{name}.mar"
    path.replace(final)
    return final


def pod_torchserve_config(serve_json: Path, model: str, mar: Path) -> str:
    """config.properties for TorchServe inside the pod: loopback ports, auth off."""
    serve = ServeConfig.model_validate({**json.loads(serve_json.read_text()), **POD_BACKEND_PORTS})
    name = model.partition(":")[0]
    served = ServedModel(
        name,
        mar.name,
        serve.batch_size,
        serve.max_batch_delay_ms,
        serve.workers,
        version=mar_version(mar),
    )
    return render_config(serve, mar.parent, [served], token_auth=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m visionline.serving.fetch", description=__doc__)
    ap.add_argument("--store", required=True, help="the artifact store: s3://bucket/prefix")
    ap.add_argument("--model", required=True, help="NAME:VERSION (or NAME:champion)")
    ap.add_argument("--sha256", help="the archive's sha256 pinned by the Deployment")
    ap.add_argument("--dest", required=True, type=Path, help="TorchServe's model store")
    ap.add_argument("--serve-config", type=Path, help="serve settings (JSON, a ConfigMap)")
    ap.add_argument("--ts-config", type=Path, help="where to write config.properties")
    args = ap.parse_args(argv)
    for env, dest in PIN_ENV.items():
        if os.environ.get(env):
            setattr(args, dest, os.environ[env])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if bool(args.serve_config) != bool(args.ts_config):
        print("--serve-config and --ts-config go together", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    try:
        mar = fetch(args.store, args.model, args.dest, args.sha256)
        log.info("fetched %s to %s (sha256 checked)", args.model, mar)
        if args.ts_config:
            args.ts_config.write_text(pod_torchserve_config(args.serve_config, args.model, mar))
            log.info("wrote %s", args.ts_config)
    except (VisionlineError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
