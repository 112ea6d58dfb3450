"""Packaging a gated run into a TorchServe model archive (.mar) and registering it.

The archive holds a model file that rebuilds the architecture (visionline_model.py),
the state_dict, our handler, ``index_to_name.json``, ``model_spec.json`` and
``serving.json`` (the preprocessing and request limits the handler applies).

What the model is (architecture, classes, preprocessing) comes from the run; how it is
served (``serve``: model name, top-k, request limits, CPU plan) and watched (``monitor``:
the capture settings) come from the config packaging is given, because they belong to
the deployment: ``monitor`` is not part of a run's id, so training again with new
capture settings reuses the run, and the only way to change them is to package again.
The registry records them (``deployment`` in ``model.json``): packaging a run again
with the same settings returns the existing version, with other settings a new one.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from visionline.config import PipelineConfig
from visionline.data.manifest import DatasetRef, read_manifest
from visionline.errors import GateFailedError, VisionlineError
from visionline.evaluation.report import decision_markdown, metrics_markdown
from visionline.model.runs import RunPaths, load_run_config, load_run_info, load_torch
from visionline.monitoring.archive import write_archive_files
from visionline.monitoring.capture_settings import CaptureSettings
from visionline.monitoring.reference import ensure_reference
from visionline.registry import ModelRef, Registry
from visionline.storage import ArtifactStore, sha256_file
from visionline.version import code_version

PARITY_IMAGES = 16


def handler_files() -> tuple[Path, Path]:
    """The handler and the archive's model file, as installed (package data of
    ``visionline_handlers``, whose source is the repository's ``handlers/``)."""
    root = files("visionline_handlers")
    handler, model = root / "image_classifier.py", root / "visionline_model.py"
    if not (handler.is_file() and model.is_file()):
        raise PackagingError(f"the TorchServe handler files are missing from {root}: reinstall")
    return Path(str(handler)), Path(str(model))


class PackagingError(VisionlineError):
    pass


def archiver_command() -> list[str]:
    """torch-model-archiver under this interpreter (no reliance on PATH)."""
    if importlib.util.find_spec("model_archiver.model_packaging") is None:
        raise PackagingError(
            "torch-model-archiver not found: pip install torch-model-archiver==0.12.0"
        )
    return [sys.executable, "-m", "model_archiver.model_packaging"]


def parity_keys(store: ArtifactStore, run: dict[str, Any], n: int = PARITY_IMAGES) -> list[str]:
    """Pinned validation images for the parity check: the first n val images by hash."""
    m = read_manifest(store, DatasetRef(run["dataset_name"], run["dataset_version"]))
    val = m[(m["split"] == "val") & m["decodable"] & m["label"].isin(run["classes"])]
    return val.sort_values("sha256")["key"].head(n).tolist()


def model_card(ref: ModelRef, run: dict, metrics: dict, decision: dict, sha: str) -> str:
    pre = run["preprocessing"]
    return f"""# Model card: {ref}

- archive sha256: `{sha}`
- run: `{run["run_id"]}` ({run["arch"]}, {run["epochs_run"]} epochs, best epoch {run["best_epoch"]})
- dataset: `{run["dataset"]}`
- code version: `{run["code_version"]}`, config `{run["config_fingerprint"]}`
- classes: {", ".join(run["classes"])}
- input: {pre["channels"]} channel(s), {pre["image_size"]}px, mean {pre["mean"]}, std {pre["std"]}

## Test metrics

{metrics_markdown(metrics)}
{decision_markdown(decision)}"""


def serving_settings(cfg: PipelineConfig) -> dict[str, Any]:
    """What ``serving.json`` takes from the ``serve`` section (the rest is the run's)."""
    s = cfg.serve
    return {
        "top_k": s.top_k,
        "max_image_pixels": s.max_image_pixels,
        "max_aspect_ratio": s.max_aspect_ratio,
        "max_resized_pixels": s.max_resized_pixels,
        "max_request_bytes": s.max_request_bytes,
        "cpu_inference": s.cpu_inference,
    }


def deployment_settings(cfg: PipelineConfig, store_uri: str) -> dict[str, Any]:
    """The serving and capture settings an archive packaged with ``cfg`` carries, as
    the registry records them (``deployment`` in ``model.json``)."""
    return {
        "serve": serving_settings(cfg),
        "capture": asdict(CaptureSettings.from_config(cfg, store_uri)),
    }


def deployment_differences(info: dict[str, Any], cfg: PipelineConfig, store_uri: str) -> list[str]:
    """``section.key: archive -> config`` for each setting a registered version was
    packaged with that ``cfg`` would set otherwise (all of them for a version packaged
    before the registry recorded them)."""
    recorded = info.get("deployment") or {}
    wanted = deployment_settings(cfg, store_uri)
    return [
        f"{section}.{key}: {recorded.get(section, {}).get(key, '?')} -> {value}"
        for section, values in wanted.items()
        for key, value in values.items()
        if recorded.get(section, {}).get(key, object()) != value
    ]


def build_mar(
    store: ArtifactStore,
    run_id: str,
    name: str,
    version: str,
    cfg: PipelineConfig,
    out_dir: Path,
    deployment: PipelineConfig | None = None,
) -> Path:
    """The archive of ``run_id``'s weights: the model as ``cfg`` (the run's config)
    builds it, served and captured as ``deployment`` says (default: ``cfg``)."""
    deployment = deployment or cfg
    paths = RunPaths(run_id)
    run = load_run_info(store, run_id)
    work = out_dir / "src"
    work.mkdir(parents=True, exist_ok=True)
    state = load_torch(store, paths.model)
    handler, model_file = handler_files()
    torch.save({f"net.{k}": v for k, v in state.items()}, work / "model.pt")
    (work / "model_spec.json").write_text(
        json.dumps(
            {
                "arch": cfg.model.arch,
                "dropout": cfg.model.dropout,
                "stem": cfg.model.stem,
                "num_classes": len(run["classes"]),
                "channels": cfg.data.channels,
                "image_size": cfg.data.image_size,
            }
        )
    )
    (work / "index_to_name.json").write_text(
        json.dumps({str(i): c for i, c in enumerate(run["classes"])})
    )
    (work / "serving.json").write_text(
        json.dumps({"preprocessing": run["preprocessing"], **serving_settings(deployment)})
    )
    extra = ",".join(
        [str(work / f) for f in ("model_spec.json", "index_to_name.json", "serving.json")]
        + [str(p) for p in write_archive_files(store, run_id, deployment, work)]  # request capture
    )
    proc = subprocess.run(
        [
            *archiver_command(),
            "--model-name",
            name,
            "--version",
            version,
            "--model-file",
            str(model_file),
            "--serialized-file",
            str(work / "model.pt"),
            "--handler",
            str(handler),
            "--extra-files",
            extra,
            "--export-path",
            str(out_dir),
            "--force",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise PackagingError(
            f"torch-model-archiver failed for run {run_id}: {proc.stderr.strip()[-2000:]}"
        )
    return out_dir / f"{name}.mar"


def package_run(
    store: ArtifactStore,
    run_id: str,
    name: str | None = None,
    cfg: PipelineConfig | None = None,
) -> ModelRef:
    """Package a run whose gate passed, served and captured as ``cfg`` says (default:
    the run's own config) under ``name`` (default: ``cfg.serve.model_name``).
    Idempotent per run and settings: the same run packaged again with the same
    settings returns the existing version."""
    paths = RunPaths(run_id)
    if not store.exists(paths.decision):
        raise GateFailedError(
            f"run {run_id} has no gate decision: run `visionline gate {run_id}` first"
        )
    decision = store.get_json(paths.decision)
    if not decision["passed"]:
        raise GateFailedError(f"run {run_id} failed its gate: nothing is packaged")
    run_cfg = load_run_config(store, run_id)
    cfg = cfg or run_cfg
    name = name or cfg.serve.model_name
    reg = Registry(store, name)
    deployment = deployment_settings(cfg, store.uri)
    for v in reg.versions():
        info = reg.info(v)
        if info.get("run_id") == run_id and info.get("deployment") == deployment:
            return ModelRef(name, v)
    run = load_run_info(store, run_id)
    metrics = store.get_json(paths.evaluation_metrics)
    # what monitoring compares the served model's windows with, from the first one on
    ensure_reference(store, run_id)
    version = reg.allocate_version(run_id)  # unique even with packagers running at once
    ref = ModelRef(name, version)
    with tempfile.TemporaryDirectory(prefix="visionline-mar-") as tmp:
        mar = build_mar(store, run_id, name, version, run_cfg, Path(tmp), cfg)
        sha = sha256_file(mar)
        store.put_file(ref.mar_key, mar)
    store.put_bytes(f"{ref.prefix}/sha256", f"{sha}  {name}.mar\n".encode())
    store.put_bytes(
        f"{ref.prefix}/model_card.md", model_card(ref, run, metrics, decision, sha).encode()
    )
    return reg.register(
        version,
        {
            "run_id": run_id,
            "sha256": sha,
            "dataset": run["dataset"],
            "code_version": code_version(),
            "config_fingerprint": run["config_fingerprint"],
            "classes": run["classes"],
            "preprocessing": run["preprocessing"],
            "metrics": {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro"]["f1"]},
            "parity_keys": parity_keys(store, run),
            "deployment": deployment,
            "created": datetime.now(UTC).isoformat(),
        },
    )
