"""The whole pipeline config: every section, its fingerprint, and loading it from YAML.

The config is immutable (``frozen``) and rejects unknown keys, so a typo in a YAML
file fails loudly with the dotted path of the offending key instead of being ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError, model_validator

from visionline.config.kubernetes import ComputeConfig, DeployConfig
from visionline.config.section import Section
from visionline.config.stages import (
    AugmentConfig,
    DataConfig,
    GateConfig,
    ModelConfig,
    MonitorConfig,
    ServeConfig,
    TrainConfig,
    ValidationConfig,
)
from visionline.config.tuning import TuneConfig
from visionline.errors import ConfigError
from visionline.storage import read_uri

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


class PipelineConfig(Section):
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


# The store every process uses, over the config file's (k8s/base's visionline-settings).
STORE_ENV = "VISIONLINE_STORE"


def parse_config(data: Any, source: str = "<dict>") -> PipelineConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {source}: top level must be a mapping")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from e


def load_config(uri: str | Path) -> PipelineConfig:
    """Load a config from a local path or an ``s3://`` URI. ``VISIONLINE_STORE``, when
    set (the settings ConfigMap sets it in every pod), replaces the file's ``store``."""
    uri = str(uri)
    if uri.startswith("s3://"):
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
    cfg = parse_config(data, source=uri)
    store = os.environ.get(STORE_ENV)
    if store and store != cfg.store:
        # the one place that names the store for every pod: the settings ConfigMap
        cfg = cfg.with_overrides(store=store)
    return cfg
