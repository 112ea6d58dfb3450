"""``KubernetesBackend``: the ComputeBackend that runs each training run as a Kubernetes
Job, or as a JobSet (``kind: jobset``, workloads.py). It publishes the run's config to
the store, creates the run's objects (attaching to the same run's Job or JobSet when one
is still there, replacing it when it failed, waiting for it when it is still being
deleted) and hands back a ``KubernetesRun`` to watch."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from visionline.compute import config_key, publish_config
from visionline.compute.kubernetes.jobset import build_jobset
from visionline.compute.kubernetes.manifest import build_manifests, owned_by_job
from visionline.compute.kubernetes.owner import flow_run_owner
from visionline.compute.kubernetes.watch import KubernetesRun
from visionline.compute.kubernetes.workloads import JobSetWorkload, JobWorkload, uses_jobset
from visionline.errors import ConfigError, TrainingError
from visionline.kube import KubeAccess, KubernetesConflictError
from visionline.model.runs import RunPaths

if TYPE_CHECKING:
    from visionline.config import PipelineConfig
    from visionline.storage import ArtifactStore
    from visionline.training.plan import RunPlan

log = logging.getLogger(__name__)

# How much longer than its pods' grace period a Job's (JobSet's) deletion may take: the
# kubelet confirms each pod's end, then the garbage collector removes the Job.
DELETION_MARGIN_SECONDS = 60


class KubernetesBackend(KubeAccess):
    """ComputeBackend that runs each training run as a Kubernetes Job (or JobSet)."""

    def __init__(self, cfg: PipelineConfig, api_client: Any | None = None) -> None:
        self.cfg = cfg
        self.k = cfg.compute.kubernetes
        self._client = api_client
        # what a run is on the cluster: its API calls and status words
        self.workload = JobSetWorkload(self) if uses_jobset(self.k) else JobWorkload(self)
        # the longest submit waits for the same run's Job to be deleted
        self.deletion_timeout = self.k.termination_grace_period_seconds + DELETION_MARGIN_SECONDS

    def manifests(
        self, plan: RunPlan, store: ArtifactStore, origin: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """The objects ``submit`` would create, without writing anything anywhere."""
        cfg = plan.cfg.model_copy(update={"compute": self.cfg.compute})
        config_uri = store.url(config_key(plan.cfg))
        owner = flow_run_owner(self.k.namespace)  # a cancelled flow run takes its Job along
        if uses_jobset(self.k):
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
        run_id = plan.run_id
        done = _finished(store, run_id, plan.cfg)
        name = self.workload.name(run_id)
        if done:
            log.info("training run %s is already complete: nothing to create", run_id)
            return KubernetesRun(self, run_id, name, already_done=True)
        publish_config(plan.cfg, store)
        objects = self.manifests(plan, store, origin)
        kind = self.workload.kind
        created = self._create(next(o for o in objects if o["kind"] == kind), run_id)
        for obj in objects:
            if obj["kind"] == "Service":
                # after the Job, whose uid it names: it is garbage-collected with the Job
                # (kept when the same run's Service is there); a JobSet makes its own
                self._create_if_absent(owned_by_job(obj, created))
        return KubernetesRun(self, run_id, name)

    def train(
        self, plan: RunPlan, store: ArtifactStore, origin: dict[str, str] | None = None
    ) -> None:
        self.submit(plan, store, origin).wait()

    def _create(self, obj: dict[str, Any], run_id: str) -> dict[str, Any]:
        """Create the run's Job (JobSet), or attach to the one there; as the server has it."""
        w, ns = self.workload, self.k.namespace
        name = obj["metadata"]["name"]
        for _ in range(3):
            try:
                created = w.create(obj)
                log.info(
                    "training run %s: created %s %s/%s (watch it: kubectl -n %s get pods -l %s -w)",
                    run_id,
                    w.kind,
                    ns,
                    name,
                    ns,
                    w.pod_selector(name),
                )
                return created
            except KubernetesConflictError:
                existing = w.read(name)
                if existing is None:
                    continue  # deleted meanwhile: create it anew
                if existing["metadata"].get("deletionTimestamp"):
                    # a cancelled (or replaced) run's Job whose pods are still stopping:
                    # attaching would only watch it vanish
                    log.info(
                        "training run %s: %s %s is still being deleted (its pods are "
                        "stopping); waiting up to %.0fs to create it anew",
                        run_id,
                        w.kind,
                        name,
                        self.deletion_timeout,
                    )
                    self._wait_gone(name)
                    continue
                if not w.failed(existing):
                    # still running (or done): never start a second pod for one run
                    log.info(
                        "training run %s: attaching to the existing %s %s", run_id, w.kind, name
                    )
                    return existing
                log.info("training run %s: replacing the failed %s %s", run_id, w.kind, name)
                w.delete(name)
                self._wait_gone(name)
        raise TrainingError(f"could not create {w.kind} {name} for run {run_id}: it keeps existing")

    def _wait_gone(self, name: str) -> None:
        """Wait (at most ``deletion_timeout``) until the Job being deleted is gone."""
        w, ns = self.workload, self.k.namespace
        deadline = time.monotonic() + self.deletion_timeout
        while w.read(name) is not None:
            if time.monotonic() >= deadline:
                raise TrainingError(
                    f"{w.kind} {ns}/{name} is still being deleted after "
                    f"{self.deletion_timeout:.0f}s (its pods have not stopped), so this run "
                    f"cannot start again yet. See what holds it: kubectl -n {ns} get pods -l "
                    f"{w.pod_selector(name)}; a pod stuck Terminating on a lost "
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
