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
    rollout_timeout_seconds: float = Field(600, gt=0)
    poll_seconds: float = Field(2.0, gt=0, le=60)
    termination_grace_period_seconds: int = Field(60, ge=5, le=3600)
    run_as_user: int = Field(10001, ge=1)
    role: str = "visionline-pipeline"

    @model_validator(mode="after")
    def _no_secret_values(self) -> KubernetesDeployConfig:
        _refuse_secret_env(self.env, "s3_secret")
        return self


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


class DeployConfig(Section):
    """Where a packaged model is served."""

    target: Literal["local", "kubernetes"] = "local"
    # the local TorchServe's working directory (config, model store, logs, tokens)
    workdir: str = ".visionline/serve"
    kubernetes: KubernetesDeployConfig = KubernetesDeployConfig()
