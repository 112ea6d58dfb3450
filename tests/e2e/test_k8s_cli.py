"""The Kubernetes dry runs as a user types them: no cluster needed, and what they print
passes ``kubernetes-validate -k 1.31.0 --strict`` (the tool itself, run on the output)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import digits_config
from visionline.data.ingest import ingest
from visionline.registry import Registry
from visionline.storage import LocalStore

VALIDATE = Path(sys.executable).parent / "kubernetes-validate"


def _cli(cfg_path, *args):
    return subprocess.run(
        [sys.executable, "-m", "visionline.cli", "--config", str(cfg_path), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _validates(text: str, tmp_path: Path) -> list[dict]:
    out = tmp_path / "objects.yaml"
    out.write_text(text)
    checked = subprocess.run(
        [str(VALIDATE), "-k", "1.31.0", "--strict", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return list(yaml.safe_load_all(text))


def test_train_dry_run_prints_a_valid_job(small_digits_dir, tmp_path):
    store = LocalStore(tmp_path / "store")
    ingest(store, str(small_digits_dir), "digits", progress=False)
    cfg = digits_config(store.uri).with_overrides(
        **{"compute.kubernetes.gpus": 1, "compute.kubernetes.queue_name": "gpu"}
    )
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(cfg.to_yaml())
    r = _cli(cfg_path, "train", "--backend", "kubernetes", "--dry-run", "-o", "yaml")
    assert r.returncode == 0, r.stderr
    [job] = _validates(r.stdout, tmp_path)
    assert job["kind"] == "Job"
    assert (
        job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
        == "1"
    )
    assert "a pod cannot read it" in r.stderr  # a local store: said, not hidden
    assert not list(store.list("configs/"))  # a dry run writes nothing


def test_deploy_dry_run_prints_valid_objects(tmp_path):
    store = LocalStore(tmp_path / "store")
    reg = Registry(store, "digits")
    reg.register("1", {"run_id": "r1", "sha256": "ab" * 32, "parity_keys": []})
    reg.promote("1", "test")
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(digits_config(store.uri).to_yaml())
    r = _cli(cfg_path, "deploy", "digits", "--target", "kubernetes", "--dry-run", "-o", "yaml")
    assert r.returncode == 0, r.stderr
    # printed as kubectl prints objects: the containers' shared env and probes written out,
    # not as YAML anchors
    assert "&id" not in r.stdout and "*id" not in r.stdout
    objects = _validates(r.stdout, tmp_path)
    assert [o["kind"] for o in objects] == ["ConfigMap", "Deployment", "Service"]
    svc = objects[2]
    assert sorted(p["port"] for p in svc["spec"]["ports"]) == [7070, 8080]
    tpl = objects[1]["spec"]["template"]
    assert tpl["metadata"]["annotations"]["visionline.io/model"] == "digits:1"
    assert reg.aliases()["champion"] == "1"  # nothing promoted, nothing deployed


def test_dry_run_needs_the_kubernetes_target(tmp_path):
    store = LocalStore(tmp_path / "store")
    reg = Registry(store, "digits")
    reg.register("1", {"run_id": "r1", "sha256": "ab" * 32, "parity_keys": []})
    reg.promote("1", "test")
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(digits_config(store.uri).to_yaml())
    r = _cli(cfg_path, "deploy", "digits", "--dry-run")
    assert r.returncode == 2 and "--target kubernetes" in r.stderr
