"""Where training runs and where a model is served: ``compute`` and ``deploy``, each local
or on Kubernetes, and the Kubernetes sections behind them."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from visionline.config.section import Section

# Kubernetes names: DNS-1123 labels (namespace, Service, ConfigMap, Secret, account names).
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
# A resource quantity as Kubernetes writes it: 500m, 2, 1.5, 8Gi, 100M.
# TorchServe's own shutdown after its SIGTERM (workers stop, the JVM exits).
TORCHSERVE_SHUTDOWN_SECONDS = 5
_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"


class Toleration(Section):
    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Exists"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _value_only_with_equal(self) -> Toleration:
        if self.operator == "Exists" and self.value is not None:
            raise ValueError("a toleration with operator Exists takes no value")
        return self


class Resources(Section):
    """Container requests and limits (Kubernetes quantities). GPUs are not set here:
    ``gpus`` adds ``nvidia.com/gpu`` to the limits."""

    requests: dict[str, str] = {"cpu": "2", "memory": "8Gi"}
    limits: dict[str, str] = {"memory": "8Gi"}

    @model_validator(mode="after")
    def _quantities(self) -> Resources:
        for part, values in (("requests", self.requests), ("limits", self.limits)):
            for name, q in values.items():
                if not re.fullmatch(_QUANTITY, q):
                    raise ValueError(f"{part}.{name}: {q!r} is not a Kubernetes quantity")
                if name == "nvidia.com/gpu":
                    raise ValueError(f"{part}.{name}: set compute.kubernetes.gpus instead")
        return self


def _refuse_secret_env(env: dict[str, str], secret_field: str) -> None:
    for name in env:
        if re.search(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE", name, re.I):
            raise ValueError(
                f"env.{name}: a secret value must not be written into a pod spec; put it "
                f"in a Kubernetes Secret and name that Secret in {secret_field}"
            )


class KubernetesComputeConfig(Section):
    """How a training run becomes a Kubernetes Job (``compute.backend: kubernetes``)."""

    namespace: str = Field("visionline", pattern=_DNS_LABEL)
    # None: the current kubeconfig context, or the pod's own service account in-cluster.
    context: str | None = None
    # the image k8s/ names (Dockerfile, target trainer)
    image: str = "ghcr.io/visionline/visionline-trainer:0.1.0"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "Always"
    image_pull_secrets: list[str] = []
    service_account: str = Field("visionline-trainer", pattern=_DNS_LABEL)
    # GPUs per pod (per node); 0 trains on CPU. More than one runs torchrun, one process each.
    gpus: int = Field(0, ge=0, le=16)
    # None: one process per GPU (or one on CPU).
    nproc_per_node: int | None = Field(None, ge=1, le=64)
    # More than one: an Indexed Job plus a headless Service for torchrun's rendezvous.
    nodes: int = Field(1, ge=1, le=128)
    # What submits a multi-node run: an Indexed Job (plus its headless Service), or a
    # JobSet (jobset.x-k8s.io/v1alpha2) where the cluster runs the JobSet controller.
    kind: Literal["job", "jobset"] = "job"
    # torchrun's elastic (c10d) rendezvous listens here on the first pod of the group.
    rendezvous_port: int = Field(29500, ge=1024, le=65535)
    # How often torchrun restarts the whole worker group (every node's processes, from
    # the last checkpoint) after a node is lost and replaced, before the pod fails.
    max_restarts: int = Field(3, ge=0, le=100)
    resources: Resources = Resources()
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    priority_class: str | None = None
    # Kueue's LocalQueue: the Job is created suspended and Kueue admits it.
    queue_name: str | None = Field(None, pattern=_DNS_LABEL)
    # Secret holding AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and optionally
    # AWS_SESSION_TOKEN): referenced, never copied into the Job. None: the pod gets its
    # S3 access otherwise (IRSA, workload identity).
    s3_secret: str | None = Field("visionline-s3", pattern=_DNS_LABEL)
    # Plain, non-secret environment (AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, ...).
    env: dict[str, str] = {}
    # The settings ConfigMap every visionline pod reads (envFrom, optional):
    # VISIONLINE_STORE, AWS_DEFAULT_REGION, ... (k8s/base/kustomization.yaml). None: none.
    settings_config_map: str | None = Field("visionline-settings", pattern=_DNS_LABEL)
    backoff_limit: int = Field(3, ge=0, le=100)
    active_deadline_seconds: int = Field(7 * 24 * 3600, ge=60)
    ttl_seconds_after_finished: int | None = Field(7 * 24 * 3600, ge=0)
    # SIGTERM -> the trainer checkpoints at the next batch boundary, then exits: this is
    # how long it has before SIGKILL.
    termination_grace_period_seconds: int = Field(120, ge=10, le=3600)
    shm_size: str | None = Field("2Gi", pattern=_QUANTITY)
    run_as_user: int = Field(10001, ge=1)
    # Give up on a pod that cannot pull its image for this long (it never fails by itself).
    image_pull_timeout_seconds: float = Field(300, gt=0)
    # Give up on a pod the scheduler cannot place for this long; None waits (a cluster
    # autoscaler or Kueue may add capacity) until active_deadline_seconds.
    unschedulable_timeout_seconds: float | None = Field(None, gt=0)
    poll_seconds: float = Field(5.0, gt=0, le=300)
    # The Role an operator fixes when the API refuses us (named in the error).
    role: str = "visionline-pipeline"

    @model_validator(mode="after")
    def _consistent(self) -> KubernetesComputeConfig:
        if self.nproc_per_node and self.gpus and self.nproc_per_node != self.gpus:
            raise ValueError(
                f"nproc_per_node {self.nproc_per_node} must equal gpus {self.gpus} "
                "(one process per GPU)"
            )
        return self

    @model_validator(mode="after")
    def _no_secret_values(self) -> KubernetesComputeConfig:
        _refuse_secret_env(self.env, "s3_secret")
        return self

    @property
    def processes_per_node(self) -> int:
        return self.nproc_per_node or max(self.gpus, 1)


class KubernetesDeployConfig(Section):
    """How a model is served on Kubernetes (``deploy.target: kubernetes``): one TorchServe
    Deployment behind an authenticating nginx in the same pod, rolled by patching its
    pod template."""

    namespace: str = Field("visionline", pattern=_DNS_LABEL)
    context: str | None = None
    deployment: str = Field("visionline-torchserve", pattern=_DNS_LABEL)
    service: str = Field("visionline-torchserve", pattern=_DNS_LABEL)
    # the image k8s/base/serving/deployment.yaml names (Dockerfile, target server)
    image: str = "ghcr.io/visionline/visionline-server:0.1.0"
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "Always"
    image_pull_secrets: list[str] = []
    service_account: str = Field("visionline-server", pattern=_DNS_LABEL)
    replicas: int = Field(2, ge=1, le=100)
    resources: Resources = Resources(
        requests={"cpu": "1", "memory": "2Gi"}, limits={"memory": "2Gi"}
    )
    gpus: int = Field(0, ge=0, le=16)
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    s3_secret: str | None = Field("visionline-s3", pattern=_DNS_LABEL)
    env: dict[str, str] = {}
    # Secret whose keys are the accepted bearer tokens (one, or two while rotating);
    # mounted into nginx, which checks every request against it.
    credential_secret: str = Field("visionline-inference-credentials", pattern=_DNS_LABEL)
    # Where deploy's smoke and parity checks reach the Service; None: the in-cluster DNS
    # name (http://<service>.<namespace>.svc:<port>). Set it when deploying from outside
    # the cluster (kubectl port-forward svc/visionline-torchserve 8080).
    endpoint: str | None = None
    # Environment variable holding the inference credential for deploy's checks; when
    # unset the deployer reads the first key of credential_secret through the API.
    credential_env: str = "VISIONLINE_INFERENCE_TOKEN"
    # A rollout's budget. A new pod may wait for a GPU node to be provisioned and pull a
    # multi-GB image (pull_allowance_seconds) before TorchServe loads the model
    # (startup_seconds: the startup probe's budget). progressDeadlineSeconds is their sum,
    # so a slow but healthy rollout is never declared failed while its pods still load.
    startup_seconds: int = Field(600, ge=10, le=3600)
    pull_allowance_seconds: int = Field(900, ge=0, le=7200)
    # How long deploy waits for the rollout; None: the progress deadline and a minute.
    rollout_timeout_seconds: float | None = Field(None, gt=0)
    # The rolling update. None derives them from gpus: on GPU nodes a surge pod needs a
    # spare GPU, so one replica goes first (surge 0, unavailable 1); on CPU a new replica
    # is ready before an old one leaves (surge 1, unavailable 0).
    max_surge: int | None = Field(None, ge=0, le=100)
    max_unavailable: int | None = Field(None, ge=0, le=100)
    poll_seconds: float = Field(2.0, gt=0, le=60)
    # A terminating pod: it keeps answering for drain_seconds while Services and
    # ingresses stop sending to it, then nginx quits gracefully, waiting up to
    # inflight_seconds for the requests it has; TorchServe gets its SIGTERM only after
    # both. The grace period must cover them and TorchServe's own shutdown.
    drain_seconds: int = Field(10, ge=0, le=300)
    inflight_seconds: int = Field(30, ge=1, le=600)
    termination_grace_period_seconds: int = Field(60, ge=5, le=3600)
    run_as_user: int = Field(10001, ge=1)
    role: str = "visionline-pipeline"

    @model_validator(mode="after")
    def _no_secret_values(self) -> KubernetesDeployConfig:
        _refuse_secret_env(self.env, "s3_secret")
        return self

    @model_validator(mode="after")
    def _rollout_consistent(self) -> KubernetesDeployConfig:
        need = self.torchserve_prestop_seconds + TORCHSERVE_SHUTDOWN_SECONDS
        if self.termination_grace_period_seconds < need:
            raise ValueError(
                f"termination_grace_period_seconds {self.termination_grace_period_seconds} "
                f"is shorter than drain_seconds {self.drain_seconds} + inflight_seconds "
                f"{self.inflight_seconds} + {TORCHSERVE_SHUTDOWN_SECONDS} (TorchServe's own "
                f"shutdown): raise it to at least {need}, or in-flight requests are cut"
            )
        if self.rolling_update == {"maxSurge": 0, "maxUnavailable": 0}:
            raise ValueError("max_surge and max_unavailable cannot both be 0")
        return self

    @property
    def torchserve_prestop_seconds(self) -> int:
        """TorchServe waits out the front's drain and its in-flight requests."""
        return self.drain_seconds + self.inflight_seconds

    @property
    def progress_deadline_seconds(self) -> int:
        return self.startup_seconds + self.pull_allowance_seconds

    @property
    def rollout_wait_seconds(self) -> float:
        return self.rollout_timeout_seconds or self.progress_deadline_seconds + 60

    @property
    def rolling_update(self) -> dict[str, int]:
        gpu = self.gpus > 0
        surge = self.max_surge if self.max_surge is not None else (0 if gpu else 1)
        down = self.max_unavailable if self.max_unavailable is not None else (1 if gpu else 0)
        return {"maxSurge": surge, "maxUnavailable": down}


class ComputeConfig(Section):
    """Where training runs. Not part of a run's fingerprint: a run started on one backend
    resumes on another from the same checkpoints."""

    backend: Literal["local", "kubernetes"] = "local"
    # processes per node (torchrun); 1 runs the trainer directly
    nproc: int = Field(1, ge=1, le=64)
    # The bound on how long a training process waits for the others of its group: the
    # gloo/NCCL process-group timeout (a collective whose peer is gone fails after it,
    # so no survivor holds its GPU longer), and on Kubernetes torchrun's rendezvous join
    # timeout (how long survivors wait for a lost node's replacement).
    group_timeout_seconds: int = Field(300, ge=5, le=24 * 3600)
    # torch's intra-op threads per training process; None: torch's default (all cores).
    # A search running trials side by side gives each its share of the machine.
    threads: int | None = Field(None, ge=1)
    kubernetes: KubernetesComputeConfig = KubernetesComputeConfig()


class RolloutConfig(Section):
    """How a challenger is judged beside the champion (``visionline deploy --shadow`` /
    ``--canary``, ``visionline rollout``): the shares it gets and the margins that decide
    whether it is rolled back or may be promoted."""

    # percent of predictions mirrored to a shadow challenger (users never see its answer)
    shadow_percent: float = Field(100.0, gt=0, le=100)
    # percent of predictions a canary challenger answers for real
    canary_percent: float = Field(10.0, gt=0, le=100)
    # the longest a shadow challenger may take; a slower answer is logged as a 504
    challenger_timeout_s: float = Field(10.0, gt=0, le=600)
    # on Kubernetes: the challenger Deployment's replicas (it has no HPA)
    challenger_replicas: int = Field(1, ge=1, le=100)
    # requests each side must have answered (shadow: joined by request id) before a verdict
    min_requests: int = Field(200, ge=1)
    # labelled shadowed requests needed before the accuracy check can pass
    min_labelled: int = Field(100, ge=1)
    # non-inferiority: the challenger's accuracy may be at most this much below the
    # champion's (lower confidence bound of the paired difference)
    accuracy_margin: float = Field(0.02, ge=0, le=1)
    # the challenger's error rate (5xx, timeouts) may exceed the champion's by this much
    error_margin: float = Field(0.01, ge=0, le=1)
    # its p99 latency may exceed the champion's by this fraction plus latency_slack_ms
    latency_margin: float = Field(0.5, ge=0)
    latency_slack_ms: float = Field(50.0, ge=0)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    # a canary is watched and rolled back on its own when error rate or p99 exceed the margins
    auto_rollback: bool = True
    watch_interval_s: float = Field(5.0, gt=0)


class DeployConfig(Section):
    """Where a packaged model is served."""

    target: Literal["local", "kubernetes"] = "local"
    # replace: the new model takes all traffic once checked; shadow/canary: it runs as a
    # challenger beside the champion (``rollout``) until promoted or aborted
    mode: Literal["replace", "shadow", "canary"] = "replace"
    rollout: RolloutConfig = RolloutConfig()
    # the local TorchServe's working directory (config, model store, logs, tokens)
    workdir: str = ".visionline/serve"
    kubernetes: KubernetesDeployConfig = KubernetesDeployConfig()
