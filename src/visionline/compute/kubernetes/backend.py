"""``KubernetesBackend``: the ComputeBackend that runs each training run as a Kubernetes
Job. It publishes the run's config to the store, creates the run's objects (attaching to
the same run's Job when one is still there, replacing it when it failed) and hands back a
``KubernetesRun`` to watch."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from visionline.compute import config_key, publish_config
from visionline.compute.kubernetes.diagnosis import true_condition
from visionline.compute.kubernetes.manifest import build_manifests, job_name
from visionline.compute.kubernetes.watch import KubernetesRun
from visionline.errors import ConfigError, TrainingError
from visionline.kube import KubeAccess, KubernetesConflictError, KubernetesNotFoundError, as_dict
from visionline.model.runs import RunPaths

if TYPE_CHECKING:
    from visionline.config import PipelineConfig
    from visionline.storage import ArtifactStore
    from visionline.training.plan import RunPlan

log = logging.getLogger(__name__)


class KubernetesBackend(KubeAccess):
    """ComputeBackend that runs each training run as a Kubernetes Job."""

    def __init__(self, cfg: PipelineConfig, api_client: Any | None = None) -> None:
        self.cfg = cfg
        self.k = cfg.compute.kubernetes
        self._client = api_client

    def manifests(
        self, plan: RunPlan, store: ArtifactStore, origin: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """The objects ``submit`` would create, without writing anything anywhere."""
        cfg = plan.cfg.model_copy(update={"compute": self.cfg.compute})
        config_uri = store.url(config_key(plan.cfg))
        return build_manifests(cfg, plan.run_id, config_uri, store.uri, origin)

    def _check_store(self, store: ArtifactStore) -> None:
        if not store.uri.startswith("s3://"):
            raise ConfigError(
                f"compute.backend kubernetes needs an s3:// store that pods can reach; "
                f"{store.uri} is a directory on this machine (set store: s3://bucket/prefix)"
            )

    def submit(
        self, plan: RunPlan, store: ArtifactStore, origin: dict[str, str] | None = None
    ) -> KubernetesRun:
        self._check_store(store)
        run_id = plan.run_id
        done = _finished(store, run_id, plan.cfg)
        name = job_name(run_id)
        if done:
            log.info("training run %s is already complete: no Job needed", run_id)
            return KubernetesRun(self, run_id, name, already_done=True)
        publish_config(plan.cfg, store)
        objects = self.manifests(plan, store, origin)
        for obj in objects:
            if obj["kind"] == "Service":
                self._create_if_absent(obj)  # kept when the same run's Service is there
        job = objects[-1]
        self._create_job(job, run_id)
        return KubernetesRun(self, run_id, name)

    def train(
        self, plan: RunPlan, store: ArtifactStore, origin: dict[str, str] | None = None
    ) -> None:
        self.submit(plan, store, origin).wait()

    def _create_job(self, job: dict[str, Any], run_id: str) -> None:
        name = job["metadata"]["name"]
        for _ in range(3):
            try:
                with self._call("create", "jobs"):
                    self.batch.create_namespaced_job(self.k.namespace, job)
                log.info(
                    "training run %s: created Job %s/%s (watch it: kubectl -n %s get pods "
                    "-l batch.kubernetes.io/job-name=%s -w)",
                    run_id,
                    self.k.namespace,
                    name,
                    self.k.namespace,
                    name,
                )
                return
            except KubernetesConflictError:
                with self._call("get", "jobs"):
                    existing = as_dict(
                        self.client, self.batch.read_namespaced_job(name, self.k.namespace)
                    )
                if not true_condition(existing, "Failed"):
                    # still running (or done): never start a second pod for one run
                    log.info("training run %s: attaching to the existing Job %s", run_id, name)
                    return
                log.info("training run %s: replacing the failed Job %s", run_id, name)
                with self._call("delete", "jobs"):
                    self.batch.delete_namespaced_job(
                        name, self.k.namespace, propagation_policy="Foreground"
                    )
                self._wait_gone(name)
        raise TrainingError(f"could not create Job {name} for run {run_id}: it keeps existing")

    def _wait_gone(self, name: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with self._call("get", "jobs"):
                    self.batch.read_namespaced_job(name, self.k.namespace)
            except KubernetesNotFoundError:
                return
            time.sleep(self.k.poll_seconds)
        raise TrainingError(f"the failed Job {name} was not deleted within {timeout:.0f}s")


def _finished(store: ArtifactStore, run_id: str, cfg: PipelineConfig) -> bool:
    """True when the run already finished with this config: submitting it needs no Job."""
    key = RunPaths(run_id).run_info
    if not store.exists(key):
        return False
    info = store.get_json(key)
    if info.get("config_fingerprint") != cfg.fingerprint():
        raise TrainingError(f"run {run_id} already finished with another config: use a new run id")
    return True
