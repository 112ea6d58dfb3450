"""The process of a flow-run pod in the test cluster, for the cancellation tests: the
training pipeline's ``train`` task body, as the Prefect engine runs it in the flow-run
pod (``python -m tests.support.flow_run_pod CONFIG DATASET:VERSION``). It reaches the
cluster through ``KUBECONFIG`` and the store through the ``AWS_*`` of its env, and knows
its own pod and Job from the downward API of the work pool's template."""

from __future__ import annotations

import logging
import sys

from flows import tasks
from visionline.config import load_config
from visionline.data.manifest import DatasetRef


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(sys.argv[1])
    name, _, version = sys.argv[2].partition(":")
    print("flow run: training", flush=True)
    tasks.train.fn(cfg, DatasetRef(name, version))
    print("flow run: trained", flush=True)


if __name__ == "__main__":
    main()
