"""One place names the store for every pod (issue 18, defect 7): the settings ConfigMap's
VISIONLINE_STORE replaces a config file's ``store`` wherever a config is loaded (flow
runs, the monitor's, the trainer, TorchServe's init container), and the training Jobs
the code builds read that ConfigMap (envFrom), so AWS_DEFAULT_REGION reaches them too."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import REPO
from tests.support.k8s import validate
from tests.support.manifests import find, render, which
from tests.unit.test_k8s_jobs import RUN, STORE, URI, _cfg
from visionline.compute.kubernetes import build_manifests
from visionline.config import load_config


def test_visionline_store_replaces_the_config_files_store(monkeypatch, tmp_path):
    path = REPO / "configs" / "digits-k8s.yaml"
    written = yaml.safe_load(path.read_text())["store"]
    monkeypatch.delenv("VISIONLINE_STORE", raising=False)
    assert load_config(path).store == written
    monkeypatch.setenv("VISIONLINE_STORE", "s3://another-bucket/team-a")
    cfg = load_config(path)
    assert cfg.store == "s3://another-bucket/team-a"
    # the other settings are the file's
    assert cfg.model_copy(update={"store": written}) == load_config(path).model_copy(
        update={"store": written}
    )


def test_training_jobs_read_the_settings_config_map():
    [job] = build_manifests(_cfg(), RUN, URI, STORE)
    validate(job)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [
        {"configMapRef": {"name": "visionline-settings", "optional": True}}
    ]
    [job] = build_manifests(_cfg(settings_config_map=None), RUN, URI, STORE)
    assert "envFrom" not in job["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.skipif(which("kubectl") is None, reason="kubectl not found: run `make tools`")
def test_the_config_map_the_jobs_read_is_the_one_the_base_ships():
    settings = find(render("k8s/overlays/local"), "ConfigMap", "visionline-settings")
    assert {"VISIONLINE_STORE", "AWS_DEFAULT_REGION"} <= set(settings["data"])
    assert _cfg().compute.kubernetes.settings_config_map == "visionline-settings"
