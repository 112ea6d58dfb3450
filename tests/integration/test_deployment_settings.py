"""Serving and capture settings belong to the deployment, not to the training run:
``visionline package`` takes ``serve`` and ``monitor`` from the config it is given, so an
already trained run is packaged again to capture images or to serve under another name,
without retraining (issue #19, item 7). Runs the CLI as a user types it, and the
handler's real capture path with TorchServe's own Context."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from tests.support.handler import extract_mar, handle, load_handler
from tests.support.serving import visionline_cli
from visionline.data.manifest import read_manifest, resolve_dataset
from visionline.monitoring.capture_windows import read_captures
from visionline.registry import Registry
from visionline.storage import LocalStore


@pytest.fixture(scope="module")
def copied(packaged_digits, tmp_path_factory):
    """A copy of the packaged digits store (its registry, run and data; no captures), so
    the versions packaged here stay out of the shared one."""
    store0, ref, cfg0 = packaged_digits
    root = tmp_path_factory.mktemp("deployment-settings")
    skip = {".cache", "captures", "monitoring", "label-queue"}
    shutil.copytree(store0.root, root / "store", ignore=lambda _d, names: skip & set(names))
    store = LocalStore(root / "store")
    cfg = cfg0.with_overrides(store=store.uri, **{"data.cache_dir": str(root / "cache")})
    return store, ref, cfg, root


def _config(root: Path, name: str, cfg, **overrides) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(cfg.with_overrides(**overrides).to_yaml())
    return path


def _packaged(out) -> str:
    """The model reference ``visionline package`` printed."""
    assert out.returncode == 0, out.stderr
    return re.search(r" as (\S+:\d+): ", out.stdout).group(1)


def _runs(store: LocalStore) -> set[str]:
    return {k.split("/")[1] for k in store.list("runs/")}


def test_packaging_a_trained_run_with_capture_images_captures_images(copied, tmp_path):
    store, ref, cfg, root = copied
    run_id = Registry(store, ref.name).info(ref.version)["run_id"]
    runs_before = _runs(store)
    capture = _config(
        root,
        "capture",
        cfg,
        **{"monitor.capture_images": True, "monitor.sample_rate": 1.0},
        **{"monitor.flush_interval_s": 1.0},
    )
    out = visionline_cli(capture, "package", run_id)
    name, version = _packaged(out).split(":")
    assert name == "digits"
    new = Registry(store, name).resolve(version)
    assert new.version != ref.version  # new settings: a new version, not the old archive
    assert _runs(store) == runs_before  # and no retraining
    info = Registry(store, "digits").info(new.version)
    assert info["run_id"] == run_id and info["deployment"]["capture"]["capture_images"] is True

    # the archive captures the images of the requests it answers
    model_dir = tmp_path / "model"
    manifest = extract_mar(store.get_file(new.mar_key, tmp_path / "m.mar"), model_dir)
    assert json.loads((model_dir / "monitor.json").read_text())["capture_images"] is True
    m = read_manifest(store, resolve_dataset(store, "digits"))
    pngs = [store.get_bytes(k) for k in m[m["split"] == "test"]["key"].head(4)]
    sys.path.insert(0, str(model_dir))
    handler, ctx = load_handler(model_dir, manifest)
    try:
        assert handler.capture.enabled
        _, status = handle(handler, ctx, pngs, [f"cap-{i}" for i in range(len(pngs))])
        assert status == [200] * len(pngs)
        assert handler.capture.sink.flush(timeout=60)
    finally:
        handler.capture.sink.close()
        sys.path.remove(str(model_dir))
    caps = read_captures(store, "digits", new.version)
    assert sorted(caps["request_id"]) == [f"cap-{i}" for i in range(len(pngs))]
    assert sorted(bytes(b) for b in caps["image"]) == sorted(pngs)

    # the same settings again: the same version
    assert _packaged(visionline_cli(capture, "package", run_id)) == str(new)


def test_packaging_with_another_config_registers_under_its_model_name(copied, tmp_path):
    store, ref, cfg, root = copied
    run_id = Registry(store, ref.name).info(ref.version)["run_id"]
    other = _config(root, "other", cfg, **{"serve.model_name": "other", "serve.top_k": 2})
    assert _packaged(visionline_cli(other, "package", run_id)) == "other:1"
    served = Registry(store, "other").info("1")
    assert served["run_id"] == run_id and served["deployment"]["serve"]["top_k"] == 2
    # the name TorchServe serves it under (what `predict` with this config asks for)
    model_dir = tmp_path / "model"
    mar = store.get_file(Registry(store, "other").resolve("1").mar_key, tmp_path / "m.mar")
    manifest = extract_mar(mar, model_dir)
    assert manifest["model"]["modelName"] == "other"
    assert json.loads((model_dir / "serving.json").read_text())["top_k"] == 2


def test_deploy_says_when_the_archive_was_packaged_otherwise(copied):
    store, ref, cfg, root = copied
    run_id = Registry(store, ref.name).info(ref.version)["run_id"]
    plain = _config(root, "plain", cfg)
    packaged = _packaged(visionline_cli(plain, "package", run_id))
    args = ("deploy", packaged, "--target", "kubernetes", "--dry-run")
    same = visionline_cli(plain, *args)
    assert same.returncode == 0 and "warning" not in same.stderr, same.stderr
    capture = _config(root, "capture-deploy", cfg, **{"monitor.capture_images": True})
    out = visionline_cli(capture, *args)
    assert out.returncode == 0, out.stderr
    assert "capture.capture_images: False -> True" in out.stderr
    assert f"package {run_id}" in out.stderr and "VISIONLINE_CAPTURE_" in out.stderr
