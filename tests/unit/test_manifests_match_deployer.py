"""The serving objects in k8s/ and the ones the serving deployer builds agree: the
deployer patches the applied Deployment in place, so its selector, containers, paths,
ports and commands must be the manifests', and the ConfigMap the overlay applies must be
what the deployer renders for configs/digits-k8s.yaml."""

from __future__ import annotations

import json

import pytest

from tests.support.manifests import REPO, find, render, which

deployer = pytest.importorskip(
    "visionline.serving.kubernetes", reason="the serving deployer is not in this tree"
)
pytestmark = pytest.mark.skipif(which("kubectl") is None, reason="kubectl not found")

PIN_ENV = ("VISIONLINE_PINNED_STORE", "VISIONLINE_PINNED_MODEL", "VISIONLINE_PINNED_SHA256")
IMAGE = "ghcr.io/visionline/visionline-server:0.1.0"


@pytest.fixture(scope="module")
def cfg():
    from visionline.config import load_config

    return load_config(REPO / "configs" / "digits-k8s.yaml")


def test_the_configs_default_images_are_the_manifests(cfg):
    """Out of the box the deployer and the Job backend use the images k8s/ names."""
    from visionline.config import ComputeConfig, DeployConfig

    job_default, serve_default = ComputeConfig().kubernetes, DeployConfig().kubernetes
    assert cfg.deploy.kubernetes.image == serve_default.image == IMAGE
    job = (REPO / "k8s" / "training" / "job.yaml").read_text()
    assert f"image: {job_default.image}\n" in job and "imagePullPolicy: Always" in job
    assert job_default.image_pull_policy == serve_default.image_pull_policy == "Always"


@pytest.fixture(scope="module")
def built(cfg):
    from visionline.registry import ModelRef

    objects = deployer.build_objects(cfg, cfg.store, ModelRef("digits", "champion"), "")
    return {o["kind"]: o for o in objects}


@pytest.fixture(scope="module")
def applied():
    return render("k8s/overlays/local")


def test_configmap_is_what_the_deployer_renders(built):
    data = built["ConfigMap"]["data"]
    for name, text in data.items():
        assert (REPO / "k8s" / "base" / "serving" / name).read_text() == text, (
            f"k8s/base/serving/{name} differs from what the deployer renders: "
            "write the deployer's ConfigMap data there"
        )


def test_selector_and_service(built, applied):
    ours = find(applied, "Deployment", "visionline-torchserve")
    theirs = built["Deployment"]
    assert ours["spec"]["selector"] == theirs["spec"]["selector"]
    labels = ours["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in theirs["spec"]["selector"]["matchLabels"].items())
    service = find(applied, "Service", "visionline-torchserve")
    assert service["spec"]["selector"] == built["Service"]["spec"]["selector"]
    assert service["spec"]["ports"] == built["Service"]["spec"]["ports"]


def _program(c: dict) -> list[str]:
    """What a container runs, from its first option on (``torchserve ...`` and
    ``python -m ts.model_server ...`` are one program), without the pinned sha256."""
    argv = list(c.get("command", [])) + list(c.get("args", []))
    if "--sha256" in argv:
        i = argv.index("--sha256")
        del argv[i : i + 2]
    first = next(i for i, a in enumerate(argv) if a.startswith("-") and a != "-m")
    return argv[first:] if c["name"] == "torchserve" else argv


def _mounts(c: dict) -> dict[str, bool]:
    return {m["mountPath"]: m.get("readOnly", False) for m in c.get("volumeMounts", [])}


def _env_names(c: dict) -> set[str]:
    return {e["name"] for e in c.get("env", [])}


def _volumes(spec: dict) -> dict[str, dict]:
    return {v["name"]: {k: v[k] for k in v if k != "name"} for v in spec["volumes"]}


def test_containers_agree(built, applied):
    ours = find(applied, "Deployment", "visionline-torchserve")["spec"]["template"]["spec"]
    theirs = built["Deployment"]["spec"]["template"]["spec"]
    for part in ("initContainers", "containers"):
        assert [c["name"] for c in ours[part]] == [c["name"] for c in theirs[part]]
        for mine, built_c in zip(ours[part], theirs[part], strict=True):
            where = f"{part}/{mine['name']}"
            assert mine["image"] == built_c["image"], where
            assert _program(mine) == _program(built_c), where
            assert _mounts(mine) == _mounts(built_c), where
            assert mine.get("ports") == built_c.get("ports"), where
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert (probe in mine) == (probe in built_c), (where, probe)
                if "exec" in mine.get(probe, {}):
                    assert mine[probe]["exec"] == built_c[probe]["exec"], (where, probe)
            # the pin is the deployer's alone: a re-apply must never reach it
            assert _env_names(built_c) - set(PIN_ENV) <= _env_names(mine), where
            assert not _env_names(mine) & set(PIN_ENV), where
            assert mine.get("lifecycle") == built_c.get("lifecycle"), where
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                for key in ("periodSeconds", "failureThreshold"):
                    got = (mine.get(probe) or {}).get(key)
                    assert got == (built_c.get(probe) or {}).get(key), (where, probe, key)
    mine_v, theirs_v = _volumes(ours), _volumes(theirs)
    assert set(mine_v) == set(theirs_v)
    assert (
        mine_v["credentials"]["secret"]["secretName"]
        == (theirs_v["credentials"]["secret"]["secretName"])
    )
    assert ours["serviceAccountName"] == theirs["serviceAccountName"]
    assert ours["terminationGracePeriodSeconds"] == theirs["terminationGracePeriodSeconds"]


def test_rollout_settings_agree(built, applied):
    """CPU (local overlay): surge; the progress deadline is the config's budget."""
    ours = find(applied, "Deployment", "visionline-torchserve")["spec"]
    theirs = built["Deployment"]["spec"]
    assert ours["strategy"] == theirs["strategy"]
    assert ours["progressDeadlineSeconds"] == theirs["progressDeadlineSeconds"]


def test_serve_json_is_the_configs_serve_section(cfg):
    settings = json.loads((REPO / "k8s" / "base" / "serving" / "serve.json").read_text())
    assert settings == cfg.serve.model_dump(mode="json")
