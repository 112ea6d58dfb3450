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
    # Normalisation statistics; None means "compute from the train split".
    mean: list[float] | None = None
    std: list[float] | None = None
    cache_dir: str = ".visionline/cache"
    ingest_workers: int = Field(16, ge=1, le=256)


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
    max_request_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    cpu_inference: CpuInference = "auto"  # measured at load (auto) or forced


class KubernetesComputeConfig(_Section):
    """Training as a Kubernetes Job (``compute.backend: kubernetes``)."""

    namespace: str = "visionline"


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


class KubernetesDeployConfig(_Section):
    """Serving as a TorchServe Deployment behind Services (``deploy.target: kubernetes``)."""

    namespace: str = "visionline"


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
)
# Nor is the search around a run one of its inputs: a trial's run id must not change
# when the search space, budget or trial count does.
SEARCH_KEYS = ("tune",)


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
    tune: TuneConfig = TuneConfig()

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
