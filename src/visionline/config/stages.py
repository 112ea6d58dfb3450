"""The sections for each lifecycle stage: data, model, training, gate, serving and
monitoring (where runs execute is in ``kubernetes``, the search in ``tuning``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from visionline.config.section import Section

Arch = Literal[
    "simple_cnn", "cnn3", "resnet18", "resnet50", "efficientnet_b0", "mobilenet_v3_small"
]
Optimizer = Literal["sgd", "adam", "adamw", "rmsprop"]
Scheduler = Literal["none", "cosine", "step", "onecycle", "plateau"]


class SplitConfig(Section):
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


class DataConfig(Section):
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


class ValidationConfig(Section):
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


class AugmentConfig(Section):
    random_resized_crop: bool = True
    crop_scale: tuple[float, float] = (0.8, 1.0)
    hflip: float = Field(0.0, ge=0, le=1)
    rotation_degrees: float = Field(10.0, ge=0, le=180)
    color_jitter: float = Field(0.0, ge=0, le=1)


class ModelConfig(Section):
    arch: Arch = "simple_cnn"
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


class EarlyStoppingConfig(Section):
    metric: Literal["val_loss", "val_accuracy"] = "val_loss"
    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.0, ge=0)


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Optimizer = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Scheduler = "cosine"
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


class GateConfig(Section):
    min_accuracy: float = Field(0.9, ge=0, le=1)
    min_macro_f1: float = Field(0.9, ge=0, le=1)
    min_class_recall: float = Field(0.8, ge=0, le=1)
    # A challenger may be at most this much less accurate than the champion...
    champion_margin: float = Field(0.005, ge=0, le=1)
    # ...and "less accurate" is only believed when a paired test says so.
    significance: float = Field(0.05, gt=0, lt=1)


# how a CPU serving worker runs the forward pass; see visionline.serving.inference
CpuInference = Literal["auto", "eager", "fused", "mkldnn"]


class ServeConfig(Section):
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


class PolicyConfig(Section):
    """When monitoring asks for retraining (see visionline.monitoring.policy)."""

    # retrain when this many consecutive checked windows drifted...
    drift_windows: int = Field(3, ge=1)
    # ...or when labelled accuracy falls under min_accuracy, judged on at least min_labels
    min_accuracy: float = Field(0.9, ge=0, le=1)
    min_labels: int = Field(50, ge=1)
    # and never sooner than cooldown_hours after the last retrain, nor more than this a week
    cooldown_hours: float = Field(24.0, ge=0)
    max_retrains_per_week: int = Field(2, ge=0)


EstimateScore = Literal["negative_entropy", "max_softmax"]
EstimateMethod = Literal["atc", "average_confidence", "doc"]


class EstimateConfig(Section):
    """Accuracy estimated without labels (see visionline.monitoring.estimate).

    The defaults are measured, not guessed: benchmarks/estimate.py on Fashion-MNIST
    (benchmarks/results/estimate.json) found the confidence-based estimators far closer
    to the truth than ATC on its corrupted windows; of those, DoC (the validation
    accuracy moved by the change in mean confidence) does not assume a calibrated model
    (label smoothing, as configs/digits.yaml uses, puts the plain average confidence 5
    points under the truth on clean digits). ``rules_measured`` picks the refusal
    thresholds that decline the fewest windows while none it answers is off by more
    than 10 accuracy points."""

    method: EstimateMethod = "doc"  # the figure reported; the others beside it
    score: EstimateScore = "max_softmax"  # ATC's confidence score
    bootstrap: int = Field(200, ge=20, le=10_000)  # resamples for the interval
    interval: float = Field(0.95, gt=0, lt=1)
    # cannot estimate when a cross-validated domain classifier (logistic regression on
    # the embedding, confidence and entropy) tells the window from the reference with
    # an AUC above this (1.0: never); 0.8 kept every answered benchmark window within
    # 10 points in both full runs (0.95 did in one only)...
    max_domain_auc: float = Field(0.8, ge=0.5, le=1)
    # ...or when ATC and the average confidence disagree by more than this (1.0: never;
    # on the benchmark it declined nothing the AUC rule did not)
    max_disagreement: float = Field(1.0, gt=0, le=1)
    min_window: int = Field(30, ge=2)  # fewer records: no estimate


class MonitorConfig(Section):
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
    estimate: EstimateConfig = EstimateConfig()

    @model_validator(mode="after")
    def _flush_fits_queue(self) -> MonitorConfig:
        if self.flush_records > self.queue_size:
            raise ValueError(
                f"flush_records ({self.flush_records}) must not exceed queue_size "
                f"({self.queue_size})"
            )
        return self
