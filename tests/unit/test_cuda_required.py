"""A trainer that must use the GPU and cannot fails at once (issue 18, defect 6): no silent
training on the CPU while holding a GPU. ``train.device: cuda``, or ``auto`` in a
Kubernetes pod with GPUs, on a node whose driver cannot run this torch's CUDA build (here:
no driver at all, or an old one) exits 78 before reading any data, naming both versions."""

from __future__ import annotations

import pytest
import torch
import yaml

from tests.conftest import REPO
from visionline.config import load_config
from visionline.errors import EXIT_CONFIG_ERROR, ConfigError
from visionline.training.devices import MIN_DRIVER, check_cuda, needs_cuda
from visionline.training.entry import main

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a usable GPU")
OLD_DRIVER = (
    "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n"
)


def _cfg(**overrides):
    return load_config(REPO / "configs" / "digits.yaml").with_overrides(**overrides)


def test_the_gpu_is_required_where_asked_for_or_held():
    assert needs_cuda(_cfg(**{"train.device": "cuda"}))
    held = {"compute.backend": "kubernetes", "compute.kubernetes.gpus": 1, "store": "s3://b/p"}
    assert needs_cuda(_cfg(**held))  # auto, in a pod holding a GPU
    assert not needs_cuda(_cfg(**{**held, "train.device": "cpu"}))
    assert not needs_cuda(_cfg())  # auto, locally: the CPU will do


def test_a_driver_mismatch_names_both_versions(tmp_path):
    build = torch.version.cuda
    driver = tmp_path / "version"
    driver.write_text(OLD_DRIVER)
    with pytest.raises(ConfigError) as e:
        check_cuda(_cfg(**{"train.device": "cuda"}), driver_file=driver)
    text = str(e.value)
    assert "535.104.05" in text
    if build:
        assert f"CUDA {build}" in text and MIN_DRIVER[build.split(".")[0]] in text
    with pytest.raises(ConfigError, match=r"driver is not loaded"):
        check_cuda(_cfg(**{"train.device": "cuda"}), driver_file=tmp_path / "absent")


def test_the_trainer_exits_78_before_reading_data(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    cfg = _cfg(**{"train.device": "cuda", "store": str(tmp_path / "empty-store")})
    config.write_text(yaml.safe_dump(yaml.safe_load(cfg.to_yaml())))
    assert main(["--config", str(config), "--run-id", "digits-cnn-cuda-check"]) == EXIT_CONFIG_ERROR
    assert "needs CUDA" in capsys.readouterr().err


def test_a_gpu_job_is_placed_by_its_limit_and_the_standard_toleration():
    from tests.support.k8s import validate
    from tests.unit.test_k8s_jobs import RUN, STORE, URI
    from tests.unit.test_k8s_jobs import _cfg as kube_cfg
    from visionline.compute.kubernetes import build_manifests

    [job] = build_manifests(kube_cfg(gpus=1), RUN, URI, STORE)
    validate(job)
    pod = job["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    for ref in ("job.yaml", "multinode.yaml"):
        text = (REPO / "k8s" / "training" / ref).read_text()
        assert "gpu.present: " not in text, ref
