"""One typed, validated pipeline config, loaded from YAML and passed down.

``pipeline`` holds the whole (``PipelineConfig``, its fingerprint, loading); the sections
live beside it by what they configure: ``stages`` (data, model, training, gate, serving,
monitoring), ``kubernetes`` (where runs execute and models are served), ``tuning``.
"""

from visionline.config.kubernetes import (
    ComputeConfig,
    DeployConfig,
    KubernetesComputeConfig,
    KubernetesDeployConfig,
    Resources,
    RolloutConfig,
    Toleration,
)
from visionline.config.pipeline import (
    EXECUTION_KEYS,
    SEARCH_KEYS,
    PipelineConfig,
    load_config,
    parse_config,
)
from visionline.config.stages import (
    Arch,
    AspectRatio,
    AugmentConfig,
    CpuInference,
    DataConfig,
    EarlyStoppingConfig,
    GateConfig,
    ModelConfig,
    MonitorConfig,
    Optimizer,
    PixelCount,
    PolicyConfig,
    Scheduler,
    ServeConfig,
    SplitConfig,
    TrainConfig,
    ValidationConfig,
    eval_resize,
)
from visionline.config.tuning import (
    ArchChoice,
    FloatRange,
    PrunerConfig,
    SearchSpace,
    TuneConfig,
)

__all__ = [
    "EXECUTION_KEYS",
    "SEARCH_KEYS",
    "Arch",
    "ArchChoice",
    "AspectRatio",
    "AugmentConfig",
    "ComputeConfig",
    "CpuInference",
    "DataConfig",
    "DeployConfig",
    "EarlyStoppingConfig",
    "FloatRange",
    "GateConfig",
    "KubernetesComputeConfig",
    "KubernetesDeployConfig",
    "ModelConfig",
    "MonitorConfig",
    "Optimizer",
    "PipelineConfig",
    "PixelCount",
    "PolicyConfig",
    "PrunerConfig",
    "Resources",
    "RolloutConfig",
    "Scheduler",
    "SearchSpace",
    "ServeConfig",
    "SplitConfig",
    "Toleration",
    "TrainConfig",
    "TuneConfig",
    "ValidationConfig",
    "eval_resize",
    "load_config",
    "parse_config",
]
