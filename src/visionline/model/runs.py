"""A training run's place in the artifact store, and how to read a finished one back.

    runs/<run_id>/{checkpoints/epoch-NNNN.pt, metrics.jsonl, model.pt, config.yaml,
                   preprocessing.json, classes.json, run.json, evaluation/, decision.json,
                   monitoring/}

``run.json`` is written last by the trainer and marks a run complete. Evaluation, the
gate, packaging, parity and lineage find a run's files here, not in the training loop.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from typing import Any

import torch
import yaml
from torch import nn

from visionline.config import PipelineConfig, parse_config
from visionline.errors import KeyNotFoundError, TrainingError
from visionline.model.architectures import build_model
from visionline.storage import ArtifactStore


@dataclass(frozen=True)
class RunPaths:
    run_id: str

    @property
    def prefix(self) -> str:
        return f"runs/{self.run_id}"

    def checkpoint(self, epoch: int) -> str:
        return f"{self.prefix}/checkpoints/epoch-{epoch:04d}.pt"

    @property
    def checkpoints(self) -> str:
        return f"{self.prefix}/checkpoints/"

    @property
    def metrics(self) -> str:
        return f"{self.prefix}/metrics.jsonl"

    @property
    def model(self) -> str:
        return f"{self.prefix}/model.pt"

    @property
    def config(self) -> str:
        return f"{self.prefix}/config.yaml"

    @property
    def preprocessing(self) -> str:
        return f"{self.prefix}/preprocessing.json"

    @property
    def classes(self) -> str:
        return f"{self.prefix}/classes.json"

    @property
    def run_info(self) -> str:
        return f"{self.prefix}/run.json"

    @property
    def evaluation(self) -> str:
        return f"{self.prefix}/evaluation"

    @property
    def evaluation_metrics(self) -> str:
        return f"{self.evaluation}/metrics.json"

    @property
    def predictions(self) -> str:
        return f"{self.evaluation}/predictions.parquet"

    @property
    def decision(self) -> str:
        return f"{self.prefix}/decision.json"

    @property
    def monitoring(self) -> str:
        """Where monitoring keeps the run's reference (``visionline.monitoring.reference``)."""
        return f"{self.prefix}/monitoring"


def check_run_id(run_id: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", run_id):
        raise TrainingError(f"invalid run id {run_id!r}: letters, digits, '_', '.', '-' only")
    return run_id


def save_torch(store: ArtifactStore, key: str, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    store.put_bytes(key, buf.getvalue())


def load_torch(store: ArtifactStore, key: str) -> Any:
    """A tensor-only object (checkpoint, state_dict): ``weights_only``, never a pickle."""
    return torch.load(
        io.BytesIO(store.get_bytes(key, verify=True)), map_location="cpu", weights_only=True
    )


def is_complete(store: ArtifactStore, run_id: str) -> bool:
    return store.exists(RunPaths(check_run_id(run_id)).run_info)


def load_run_info(store: ArtifactStore, run_id: str) -> dict[str, Any]:
    """``run.json`` of a finished run."""
    paths = RunPaths(check_run_id(run_id))
    if not store.exists(paths.run_info):
        raise KeyNotFoundError(
            f"run {run_id} is not complete in {store.uri} (no {paths.run_info}): "
            f"train it first (visionline train --run-id {run_id})"
        )
    return store.get_json(paths.run_info)


def load_run_config(store: ArtifactStore, run_id: str) -> PipelineConfig:
    """The resolved config a run was trained with (``runs/<id>/config.yaml``)."""
    key = RunPaths(check_run_id(run_id)).config
    if not store.exists(key):
        raise KeyNotFoundError(f"run {run_id} has no config in {store.uri} ({key})")
    return parse_config(yaml.safe_load(store.get_bytes(key)), source=store.url(key))


def read_history(store: ArtifactStore, run_id: str) -> list[dict[str, Any]]:
    """The per-epoch rows of ``metrics.jsonl`` written so far ([] before the first epoch)."""
    key = RunPaths(check_run_id(run_id)).metrics
    if not store.exists(key):
        return []
    return [json.loads(line) for line in store.get_bytes(key).decode().splitlines() if line]


def load_trained_model(
    store: ArtifactStore, run_id: str, device: str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """The best weights of a finished run, rebuilt from its own recorded config."""
    info = load_run_info(store, run_id)
    cfg = load_run_config(store, run_id)
    model = build_model(
        cfg.model.model_copy(update={"pretrained": None}),
        len(info["classes"]),
        cfg.data.channels,
        cfg.data.image_size,
    )
    model.load_state_dict(load_torch(store, RunPaths(run_id).model))
    return model.to(device).eval(), info
