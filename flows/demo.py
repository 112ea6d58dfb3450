"""`make demo`: the whole pipeline on the embedded default (local store, local Prefect,
local training, local TorchServe) with the bundled digits set, then a few predictions and
one monitoring check of the served model's captured traffic.

    python -m flows.demo [--config configs/digits.yaml]
"""

from __future__ import annotations

import argparse
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from flows.training_pipeline import training_pipeline
from visionline.backends import local_server
from visionline.config import load_config
from visionline.data.manifest import read_manifest, resolve_dataset
from visionline.data.samples import write_digits
from visionline.monitoring.capture_windows import wait_for_captures
from visionline.monitoring.check import check_window
from visionline.serving.client import RestClient
from visionline.storage import open_store


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/digits.yaml")
    ap.add_argument(
        "--keep-serving", action="store_true", help="leave TorchServe running at the end"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    start = time.perf_counter()
    config = str(Path(args.config).resolve())
    cfg = load_config(config)
    if cfg.deploy.target != "local" or cfg.compute.backend != "local":
        # it stops what it served at the end: never a cluster's Deployment
        ap.error(
            f"{args.config}: the demo runs on this machine (compute.backend and deploy.target "
            f"local), not {cfg.compute.backend}/{cfg.deploy.target}"
        )
    samples = Path(cfg.data.source or ".visionline/samples/digits")
    if not samples.is_dir():
        print(f"writing the digits sample set to {samples} ...")
        write_digits(samples)

    result = training_pipeline(config=config, source=str(samples), deploy=True)

    store = open_store(cfg.store)
    server = local_server(cfg, store)  # where the pipeline deployed
    try:
        served = server.status()
        assert served.model is not None and served.ready, served.detail
        name = served.model.name
        client = RestClient(server.endpoint(), name, server.token())
        m = read_manifest(store, resolve_dataset(store, result["dataset"]))
        test = m[(m["split"] == "test") & m["decodable"]].sort_values("sha256").head(5)
        print("\n=== visionline demo ===")
        print(f"dataset          {result['dataset']}")
        print(f"run              {result['run_id']}")
        print(f"test accuracy    {result['accuracy']:.4f}")
        print(f"gate             {result['gate']}")
        print(f"model            {result['model']} (champion)")
        grpc = server.endpoints.grpc_inference
        print(f"endpoint         {server.endpoint()}/predictions/{name}  (gRPC {grpc})")
        print(
            f"parity           {result['deployment']['parity_images']} images, max |dp| "
            f"{result['deployment']['parity_max_abs_diff']:.1e}"
        )
        right = 0
        for row in test.itertuples():
            pred = client.predict(store.get_bytes(row.key))
            top = max(pred, key=pred.get)
            right += top == row.label
            print(
                f"predict          {row.source}: true {row.label}, predicted {top} ({pred[top]:.3f})"
            )
        print(f"examples right   {right}/{len(test)}")
        # monitoring: the whole test split through the served model, then one drift check
        since, ref = datetime.now(UTC), served.model
        checked = m[(m["split"] == "test") & m["decodable"]]
        for key in checked["key"]:
            client.predict(store.get_bytes(key))
        expected = int(len(checked) * cfg.monitor.sample_rate)
        wait_for_captures(store, ref.name, ref.version, since, expected, timeout=60)
        outcome = check_window(store, cfg, str(ref), since, datetime.now(UTC))
        print(f"\n{outcome.report.summary()}\nreport           {store.url(outcome.report_key)}")
        print(f"wall time        {time.perf_counter() - start:.0f}s")
    finally:
        if not args.keep_serving:
            server.stop()
            print("TorchServe stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
