"""``KubernetesBackend``: the ComputeBackend that runs each training run as a Kubernetes
Job. It publishes the run's config to the store, creates the run's objects (attaching to
the same run's Job when one is still there, replacing it when it failed, waiting for it
when it is still being deleted) and hands back a ``KubernetesRun`` to watch."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from visionline.compute import config_key, publish_config
from visionline.compute.kubernetes.diagnosis import true_condition
from visionline.compute.kubernetes.jobset import build_jobset
from visionline.compute.kubernetes.manifest import build_manifests, job_name, owned_by_job
from visionline.compute.kubernetes.owner import flow_run_owner
from visionline.compute.kubernetes.watch import KubernetesRun
from visionline.errors import ConfigError, TrainingError
from visionline.kube import KubeAccess, KubernetesConflictError, KubernetesNotFoundError, as_dict
from visionline.model.runs import RunPaths

if TYPE_CHECKING:
    from visionline.config import PipelineConfig
    from visionline.storage import ArtifactStore
    from visionline.training.plan import RunPlan

log = logging.getLogger(__name__)

# How much longer than its pods' grace period a Job's deletion may take: the kubelet
# confirms each pod's end, then the garbage collector removes the Job.
DELETION_MARGIN_SECONDS = 60


class KubernetesBackend(KubeAccess):
    """ComputeBackend that runs each training run as a Kubernetes Job."""

    def __init__(self, cfg: PipelineConfig, api_client: Any | None = None) -> None:
        self.cfg = cfg
        self.k = cfg.compute.kubernetes
        self._client = api_client
        # the longest submit waits for the same run's Job to be deleted
        self.deletion_timeout = self.k.termination_grace_period_seconds + DELETION_MARGIN_SECONDS

    def manifests(
        self, plan: RunPlan, store: ArtifactStore, origin: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """The objects ``submit`` would create, without writing anything anywhere."""
        cfg = plan.cfg.model_copy(update={"compute": self.cfg.compute})
        config_uri = store.url(config_key(plan.cfg))
        owner = flow_run_owner(self.k.namespace)  # a cancelled flow run takes its Job along
        if self.k.kind == "jobset" and self.k.nodes > 1:
            return [build_jobset(cfg, plan.run_id, config_uri, store.uri, origin, owner)]
        return build_manifests(cfg, plan.run_id, config_uri, store.uri, origin, owner)

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
        if self.k.kind == "jobset" and self.k.nodes > 1:
            # built and validated (manifests, --dry-run), not yet submitted and watched
            raise ConfigError(
                "compute.kubernetes.kind: jobset: the pipeline does not submit JobSets yet; "
                "print the JobSet with --dry-run and apply it with kubectl, or use kind: job"
            )
        run_id = plan.run_id
        done = _finished(store, run_id, plan.cfg)
        name = job_name(run_id)
        if done:
            log.info("training run %s is already complete: no Job needed", run_id)
            return KubernetesRun(self, run_id, name, already_done=True)
        publish_config(plan.cfg, store)
        objects = self.manifests(plan, store, origin)
        job = self._create_job(next(o for o in objects if o["kind"] == "Job"), run_id)
        for obj in objects:
            if obj["kind"] == "Service":
                # after the Job, whose uid it names: it is garbage-collected with the Job
                # (kept when the same run's Service is there)
                self._create_if_absent(owned_by_job(obj, job))
        return KubernetesRun(self, run_id, name)

    def train(
        self, plan: RunPlan, store: ArtifactStore, origin: dict[str, str] | None = None
    ) -> None:
        self.submit(plan, store, origin).wait()

    def _create_job(self, job: dict[str, Any], run_id: str) -> dict[str, Any]:
        """Create the run's Job, or attach to the one there; the Job as the server has it."""
        name = job["metadata"]["name"]
        for _ in range(3):
            try:
                with self._call("create", "jobs"):
                    created = self.batch.create_namespaced_job(self.k.namespace, job)
                log.info(
                    "training run %s: created Job %s/%s (watch it: kubectl -n %s get pods "
                    "-l batch.kubernetes.io/job-name=%s -w)",
                    run_id,
                    self.k.namespace,
                    name,
                    self.k.namespace,
                    name,
                )
                return as_dict(self.client, created)
            except KubernetesConflictError:
                existing = self._read_job(name)
                if existing is None:
                    continue  # deleted meanwhile: create it anew
                if existing["metadata"].get("deletionTimestamp"):
                    # a cancelled (or replaced) run's Job whose pods are still stopping:
                    # attaching would only watch it vanish
                    log.info(
                        "training run %s: Job %s is still being deleted (its pods are "
                        "stopping); waiting up to %.0fs to create it anew",
                        run_id,
                        name,
                        self.deletion_timeout,
                    )
                    self._wait_gone(name)
                    continue
                if not true_condition(existing, "Failed"):
                    # still running (or done): never start a second pod for one run
                    log.info("training run %s: attaching to the existing Job %s", run_id, name)
                    return existing
                log.info("training run %s: replacing the failed Job %s", run_id, name)
                try:
                    with self._call("delete", "jobs"):
                        self.batch.delete_namespaced_job(
                            name, self.k.namespace, propagation_policy="Foreground"
                        )
                except KubernetesNotFoundError:
                    pass
                self._wait_gone(name)
        raise TrainingError(f"could not create Job {name} for run {run_id}: it keeps existing")

    def _read_job(self, name: str) -> dict[str, Any] | None:
        try:
            with self._call("get", "jobs"):
                return as_dict(self.client, self.batch.read_namespaced_job(name, self.k.namespace))
        except KubernetesNotFoundError:
            return None

    def _wait_gone(self, name: str) -> None:
        """Wait (at most ``deletion_timeout``) until the Job being deleted is gone."""
        deadline = time.monotonic() + self.deletion_timeout
        while self._read_job(name) is not None:
            if time.monotonic() >= deadline:
                ns = self.k.namespace
                raise TrainingError(
                    f"Job {ns}/{name} is still being deleted after "
                    f"{self.deletion_timeout:.0f}s (its pods have not stopped), so this run "
                    f"cannot start again yet. See what holds it: kubectl -n {ns} get pods -l "
                    f"batch.kubernetes.io/job-name={name}; a pod stuck Terminating on a lost "
                    f"node goes with kubectl -n {ns} delete pod <pod> --grace-period=0 "
                    "--force. Then submit the run again"
                )
            time.sleep(self.k.poll_seconds)


def _finished(store: ArtifactStore, run_id: str, cfg: PipelineConfig) -> bool:
    """True when the run already finished with this config: submitting it needs no Job."""
    key = RunPaths(run_id).run_info
    if not store.exists(key):
        return False
    info = store.get_json(key)
    if info.get("config_fingerprint") != cfg.fingerprint():
        raise TrainingError(f"run {run_id} already finished with another config: use a new run id")
    return True
