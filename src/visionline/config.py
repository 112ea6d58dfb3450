"""One typed, validated pipeline config, loaded from YAML and passed down.

The config is immutable (``frozen``) and rejects unknown keys, so a typo in a YAML
file fails loudly with the dotted path of the offending key instead of being ignored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from visionline.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(_Section):
    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, ge=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> SplitConfig:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1.0, got {total:g}")
        return self


def eval_resize(image_size: int, crop_ratio: float) -> int:
    """The shorter edge the eval transform resizes to before its centre crop."""
    return max(image_size, round(image_size / crop_ratio))


# Bounds on the work one image may cause, applied from its header before any pixel is
# decoded (see visionline.data.images): the declared pixel count, the aspect ratio,
# and the size the eval resize would make of it.
AspectRatio = Annotated[float, Field(ge=1.0)]
PixelCount = Annotated[int, Field(ge=64)]


class DataConfig(_Section):
    dataset: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    # A pinned dataset version; None trains on the newest (datasets/<name>/LATEST).
    version: str | None = Field(None, pattern=r"^[0-9a-f]{12}$")
    source: str | None = None
    classes: list[str] | None = None
    image_size: int = Field(32, ge=8, le=1024)
    # Eval resize is image_size / crop_ratio then a centre crop of image_size
    # (0.875 is the ImageNet convention: 256 -> 224); 1.0 resizes straight to size.
    crop_ratio: float = Field(1.0, gt=0.1, le=1.0)
    channels: Literal[1, 3] = 3
    split: SplitConfig = SplitConfig()
    # Header-declared pixel count above which a file is refused without decoding
    # (decompression-bomb guard); 64 MP is far above any real training image.
    max_image_pixels: int = Field(64_000_000, ge=1)
    max_aspect_ratio: AspectRatio = 32.0
    max_resized_pixels: PixelCount = 16_000_000
    # Normalisation statistics; None means "compute from the train split".
    mean: list[float] | None = None
    std: list[float] | None = None
    cache_dir: str = ".visionline/cache"
    ingest_workers: int = Field(16, ge=1, le=256)

    @property
    def resize_to(self) -> int:
        return eval_resize(self.image_size, self.crop_ratio)


class ValidationConfig(_Section):
    min_per_class: int = Field(1, ge=0)
    min_width: int = Field(8, ge=1)
    max_width: int = Field(4096, ge=1)
    min_height: int = Field(8, ge=1)
    max_height: int = Field(4096, ge=1)
    # Modes accepted as-is; anything PIL can convert to RGB/L is also fine when
    # allow_convertible is set.
    modes: list[str] = ["L", "RGB"]
    allow_convertible: bool = True
    max_imbalance_ratio: float = Field(10.0, ge=1.0)


class AugmentConfig(_Section):
    random_resized_crop: bool = True
    crop_scale: tuple[float, float] = (0.8, 1.0)
    hflip: float = Field(0.0, ge=0, le=1)
    rotation_degrees: float = Field(10.0, ge=0, le=180)
    color_jitter: float = Field(0.0, ge=0, le=1)


class ModelConfig(_Section):
    arch: Literal["simple_cnn", "resnet18", "resnet50", "efficientnet_b0", "mobilenet_v3_small"] = (
        "simple_cnn"
    )
    # File path or s3:// URI of a state_dict; nothing is ever downloaded from a hub.
    pretrained: str | None = None
    freeze_backbone_epochs: int = Field(0, ge=0)
    dropout: float = Field(0.25, ge=0, lt=1)
    # ResNet first layers. "imagenet" (torchvision's): 7x7 stride-2 conv + max-pool, a 4x
    # reduction that leaves 32x32 inputs 1x1 at the last stage. "cifar": 3x3 stride-1 conv,
    # no max-pool, the usual stem for small images (CIFAR ResNets).
    stem: Literal["imagenet", "cifar"] = "imagenet"

    @model_validator(mode="after")
    def _stem_fits_arch(self) -> ModelConfig:
        if self.stem != "imagenet" and self.arch not in ("resnet18", "resnet50"):
            raise ValueError(
                f"stem {self.stem!r} applies to resnet18 and resnet50, not {self.arch}"
            )
        return self


class EarlyStoppingConfig(_Section):
    metric: Literal["val_loss", "val_accuracy"] = "val_loss"
    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.0, ge=0)


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["none", "cosine", "step", "onecycle", "plateau"] = "cosine"
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    warmup_epochs: int = Field(0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    early_stopping: EarlyStoppingConfig | None = None
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    channels_last: bool = True
    log_every: int = Field(20, ge=1)


class GateConfig(_Section):
    min_accuracy: float = Field(0.9, ge=0, le=1)
    min_macro_f1: float = Field(0.9, ge=0, le=1)
    min_class_recall: float = Field(0.8, ge=0, le=1)
    # A challenger may be at most this much less accurate than the champion...
    champion_margin: float = Field(0.005, ge=0, le=1)
    # ...and "less accurate" is only believed when a paired test says so.
    significance: float = Field(0.05, gt=0, lt=1)


# how a CPU serving worker runs the forward pass; see visionline.serving.inference
CpuInference = Literal["auto", "eager", "fused", "mkldnn"]


class ServeConfig(_Section):
    model_name: str = Field("visionline", pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
    inference_port: int = Field(8080, ge=1, le=65535)
    management_port: int = Field(8081, ge=1, le=65535)
    metrics_port: int = Field(8082, ge=1, le=65535)
    grpc_inference_port: int = Field(7070, ge=1, le=65535)
    grpc_management_port: int = Field(7071, ge=1, le=65535)
    batch_size: int = Field(8, ge=1)
    max_batch_delay_ms: int = Field(20, ge=0)
    workers: int = Field(1, ge=1)
    top_k: int = Field(3, ge=1)
    # The largest image a request may carry (raw, multipart file or base64-decoded);
    # TorchServe's own body limit is derived from it (serving.torchserve.max_body_bytes).
    max_request_bytes: int = Field(10 * 1024 * 1024, ge=1024, le=1024**3)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_aspect_ratio: AspectRatio = 32.0
    max_resized_pixels: PixelCount = 16_000_000
    cpu_inference: CpuInference = "auto"  # measured at load (auto) or forced
    # On one machine, REST goes through the same nginx front as in the pod (it keeps
    # curl --data-binary working): auto = when nginx is installed, else TorchServe direct.
    local_front: Literal["auto", "nginx", "none"] = "auto"


# --------------------------------------------------------------------------- Kubernetes
# Kubernetes names: DNS-1123 labels (namespace, Service, ConfigMap, Secret, account names).
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
# A resource quantity as Kubernetes writes it: 500m, 2, 1.5, 8Gi, 100M.
_QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"


class Toleration(_Section):
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


class Resources(_Section):
    """Container requests and limits (Kubernetes quantities). GPUs are not set here:
    ``gpus`` adds ``nvidia.com/gpu`` to the limits."""

    requests: dict[str, str] = {"cpu": "2", "memory": "8Gi"}
    limits: dict[str, str] = {"memory": "8Gi"}

    @model_validator(mode="after")
    def _quantities(self) -> Resources:
        import re

        for part, values in (("requests", self.requests), ("limits", self.limits)):
            for name, q in values.items():
                if not re.fullmatch(_QUANTITY, q):
                    raise ValueError(f"{part}.{name}: {q!r} is not a Kubernetes quantity")
                if name == "nvidia.com/gpu":
                    raise ValueError(f"{part}.{name}: set compute.kubernetes.gpus instead")
        return self


def _refuse_secret_env(env: dict[str, str], secret_field: str) -> None:
    import re

    for name in env:
        if re.search(r"SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|PRIVATE", name, re.I):
            raise ValueError(
                f"env.{name}: a secret value must not be written into a pod spec; put it "
                f"in a Kubernetes Secret and name that Secret in {secret_field}"
            )


class KubernetesComputeConfig(_Section):
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


class KubernetesDeployConfig(_Section):
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


class ComputeConfig(_Section):
    """Where training runs. Not part of a run's fingerprint: a run started on one backend
    resumes on another from the same checkpoints."""

    backend: Literal["local", "kubernetes"] = "local"
    # processes per node (torchrun); 1 runs the trainer directly
    nproc: int = Field(1, ge=1, le=64)
    # torch's intra-op threads per training process; None: torch's default (all cores).
    # A search running trials side by side gives each its share of the machine.
    threads: int | None = Field(None, ge=1)
    kubernetes: KubernetesComputeConfig = KubernetesComputeConfig()


class DeployConfig(_Section):
    """Where a packaged model is served."""

    target: Literal["local", "kubernetes"] = "local"
    # the local TorchServe's working directory (config, model store, logs, tokens)
    workdir: str = ".visionline/serve"
    kubernetes: KubernetesDeployConfig = KubernetesDeployConfig()


class FloatRange(_Section):
    """A searched float: uniform in [low, high], or log-uniform with ``log``."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) must not exceed high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low:g}")
        return self

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


Arch = Literal["simple_cnn", "resnet18", "resnet50", "efficientnet_b0", "mobilenet_v3_small"]


class ArchChoice(_Section):
    """One candidate architecture, optionally starting from a checkpoint."""

    arch: Arch
    # File path or s3:// URI of a state_dict (see model.pretrained).
    pretrained: str | None = None
    freeze_backbone_epochs: int | None = Field(None, ge=0)
    # The name trials and reports use; default: the arch, "+pretrained" when it has one.
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")

    @property
    def label(self) -> str:
        return self.name or (self.arch + ("+pretrained" if self.pretrained else ""))


Optimizer = Literal["sgd", "adam", "adamw", "rmsprop"]
Scheduler = Literal["none", "cosine", "step", "onecycle", "plateau"]


class SearchSpace(_Section):
    """What a trial may change; a dimension left out (null) keeps the config's value."""

    architectures: list[ArchChoice] | None = Field(
        default_factory=lambda: [ArchChoice(arch="simple_cnn"), ArchChoice(arch="resnet18")],
        min_length=1,
    )
    optimizers: list[Optimizer] | None = Field(
        default_factory=lambda: ["adam", "adamw", "sgd"], min_length=1
    )
    lr: FloatRange | None = FloatRange(low=1e-4, high=1e-2, log=True)
    weight_decay: FloatRange | None = FloatRange(low=1e-6, high=1e-3, log=True)
    batch_sizes: list[Annotated[int, Field(ge=1)]] | None = Field(
        default_factory=lambda: [32, 64, 128], min_length=1
    )
    label_smoothing: FloatRange | None = FloatRange(low=0.0, high=0.1)
    # A factor on the config's augmentation (rotation, crop range, colour jitter):
    # 0 turns it off, 1 is the config as written.
    augment_strength: FloatRange | None = FloatRange(low=0.0, high=1.5)
    schedulers: list[Scheduler] | None = Field(
        default_factory=lambda: ["cosine", "onecycle"], min_length=1
    )

    @model_validator(mode="after")
    def _distinct(self) -> SearchSpace:
        for key in ("optimizers", "batch_sizes", "schedulers"):
            values = getattr(self, key)
            if values is not None and len(set(values)) != len(values):
                raise ValueError(f"{key}: duplicate choices {values}")
        if self.architectures is not None:
            labels = [a.label for a in self.architectures]
            if len(set(labels)) != len(labels):
                raise ValueError(
                    f"architectures: duplicate names {labels}; give each a distinct `name`"
                )
        if self.label_smoothing is not None and not (
            self.label_smoothing.low >= 0 and self.label_smoothing.high < 1
        ):
            rng = self.label_smoothing
            raise ValueError(
                f"label_smoothing: must lie in [0, 1), got [{rng.low:g}, {rng.high:g}]"
            )
        if self.lr is not None and self.lr.low <= 0:
            raise ValueError(f"lr: must be > 0, got low {self.lr.low:g}")
        for key in ("weight_decay", "augment_strength"):
            rng = getattr(self, key)
            if rng is not None and rng.low < 0:
                raise ValueError(f"{key}: must not be negative, got low {rng.low:g}")
        return self


class PrunerConfig(_Section):
    """Stops hopeless trials early, from the per-epoch validation metric."""

    kind: Literal["median", "hyperband", "none"] = "median"
    # median: prune only once this many trials have finished...
    startup_trials: int = Field(2, ge=0)
    # ...and not before a trial has run this many epochs.
    warmup_epochs: int = Field(2, ge=0)
    # hyperband: the fewest epochs a trial runs, and the fraction (1/factor) kept per rung.
    min_epochs: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2)


class TuneConfig(_Section):
    """Model selection: a search over the space above, each trial an ordinary run."""

    # The study's total: finished trials of an earlier invocation count.
    n_trials: int = Field(8, ge=1)
    # This invocation's budget; trials still running then are stopped and resume next time.
    timeout_s: float = Field(3600.0, gt=0)
    metric: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    pruner: PrunerConfig = PrunerConfig()
    # Trials at once; None: as many as the machine allows (CPUs // threads_per_trial)
    # for local training, n_trials on a cluster (it queues what it cannot place).
    parallel: int | None = Field(None, ge=1)
    threads_per_trial: int = Field(1, ge=1)
    # Epochs per trial; None: train.epochs.
    epochs: int | None = Field(None, ge=1)
    # The first trial is the config as written (where its values lie in the space), so
    # the search never ends below what a plain `visionline train` gives.
    include_base: bool = True
    seed: int = 0
    space: SearchSpace = SearchSpace()


# Keys that say where or how a run executes, not what it learns: the same training
# inputs must give the same run id from the CLI, a flow, a local process or a pod.
EXECUTION_KEYS = (
    "store",
    "compute",
    "deploy",
    "data.source",
    "data.cache_dir",
    "data.ingest_workers",
    "train.num_workers",
    "train.log_every",
    # how the served model is watched: tuning a drift threshold must not retrain it
    "monitor",
    # how a local server is fronted (nginx or not) changes nothing a run learns
    "serve.local_front",
)
# Nor is the search around a run one of its inputs: a trial's run id must not change
# when the search space, budget or trial count does.
SEARCH_KEYS = ("tune",)


class PolicyConfig(_Section):
    """When monitoring asks for retraining (see visionline.monitoring.policy)."""

    # retrain when this many consecutive checked windows drifted...
    drift_windows: int = Field(3, ge=1)
    # ...or when labelled accuracy falls under min_accuracy, judged on at least min_labels
    min_accuracy: float = Field(0.9, ge=0, le=1)
    min_labels: int = Field(50, ge=1)
    # and never sooner than cooldown_hours after the last retrain, nor more than this a week
    cooldown_hours: float = Field(24.0, ge=0)
    max_retrains_per_week: int = Field(2, ge=0)


class MonitorConfig(_Section):
    """Request capture in the served model, and the drift checks over what it captured."""

    sample_rate: float = Field(0.1, ge=0, le=1)  # fraction of requests captured
    capture_images: bool = False  # keep the image bytes too (for the labelling queue)
    embedding_dims: int = Field(32, ge=2, le=512)  # penultimate features, randomly projected
    projection_seed: int = 0
    # where captures are written; None: the pipeline's store. The serving environment
    # may override it with VISIONLINE_CAPTURE_STORE.
    store: str | None = None
    queue_size: int = Field(4096, ge=1)  # records held in memory at most, per worker
    max_queue_mb: float = Field(64.0, gt=0)  # and megabytes (images count by their size)
    flush_records: int = Field(512, ge=1)  # a Parquet file per this many records...
    flush_interval_s: float = Field(10.0, gt=0)  # ...or this often, whichever comes first
    window_hours: float = Field(1.0, gt=0)  # the window the scheduled check looks at
    min_window: int = Field(50, ge=2)  # fewer captures than this: no verdict
    reference_size: int = Field(2000, ge=10)  # validation images in the reference, at most
    # false discovery rate across one report's tests (Benjamini-Hochberg)
    alpha: float = Field(0.05, gt=0, lt=1)
    # a significant test flags drift only when the shift is also this large: with big
    # windows every test is significant and only the effect size tells what matters
    psi_threshold: float = Field(0.2, gt=0)
    mmd_threshold: float = Field(0.01, gt=0)
    permutations: int = Field(200, ge=19, le=10_000)
    max_mmd_samples: int = Field(1000, ge=10)  # per side; MMD is quadratic in the sample
    policy: PolicyConfig = PolicyConfig()

    @model_validator(mode="after")
    def _flush_fits_queue(self) -> MonitorConfig:
        if self.flush_records > self.queue_size:
            raise ValueError(
                f"flush_records ({self.flush_records}) must not exceed queue_size "
                f"({self.queue_size})"
            )
        return self


class PipelineConfig(_Section):
    name: str = "visionline"
    store: str = ".visionline/store"
    data: DataConfig
    validation: ValidationConfig = ValidationConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    gate: GateConfig = GateConfig()
    serve: ServeConfig = ServeConfig()
    compute: ComputeConfig = ComputeConfig()
    deploy: DeployConfig = DeployConfig()
    monitor: MonitorConfig = MonitorConfig()
    tune: TuneConfig = TuneConfig()

    @model_validator(mode="after")
    def _resize_fits_the_limits(self) -> PipelineConfig:
        # A limit below the model's own resize would refuse every image, square ones too.
        side = self.data.resize_to
        for section in ("data", "serve"):
            limit = getattr(self, section).max_resized_pixels
            if limit < side * side:
                raise ValueError(
                    f"{section}.max_resized_pixels: {limit} is below {side}x{side} = "
                    f"{side * side}, the eval resize of data.image_size {self.data.image_size} "
                    f"(crop_ratio {self.data.crop_ratio:g}): every image would be refused"
                )
        return self

    def fingerprint(self) -> str:
        """Stable hash of what a run learns from (``EXECUTION_KEYS`` and ``SEARCH_KEYS``
        left out): what an artifact records as its origin and what a run id is derived
        from."""
        data = self.model_dump(mode="json")
        for dotted in (*EXECUTION_KEYS, *SEARCH_KEYS):
            *parents, leaf = dotted.split(".")
            node = data
            for part in parents:
                node = node[part]
            node.pop(leaf, None)
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def with_overrides(self, **dotted: Any) -> PipelineConfig:
        """A new config with dotted-key overrides (``train.epochs=3``), re-validated."""
        data = self.model_dump(mode="json")
        for dotted_key, value in dotted.items():
            node = data
            *parents, leaf = dotted_key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return parse_config(data, source="<overrides>")


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<dict>") -> PipelineConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: top level must be a mapping")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from e


def load_config(uri: str | Path) -> PipelineConfig:
    """Load a config from a local path or an ``s3://`` URI."""
    uri = str(uri)
    if uri.startswith("s3://"):
        from visionline.storage import read_uri

        text = read_uri(uri).decode()
    else:
        path = Path(uri)
        if not path.is_file():
            raise ConfigError(f"config file not found: {uri}")
        text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML in {uri}: {e}") from e
    return parse_config(data, source=uri)
