"""checkov on the rendered manifests and hadolint on the Dockerfile, from the tools venv
(`make tools`; `make test` creates it first, so CI always runs these)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.manifests import KUSTOMIZATIONS, REPO, TOOLS_BIN, render, sh, which

pytestmark = [
    pytest.mark.tools,
    pytest.mark.skipif(
        not (TOOLS_BIN / "checkov").exists() or not (TOOLS_BIN / "hadolint").exists(),
        reason="no tools venv: run `make tools`",
    ),
]


def _checkov(*args: str) -> subprocess.CompletedProcess:
    # --skip-download: checkov otherwise calls its vendor's API for check metadata.
    return subprocess.run(
        [str(TOOLS_BIN / "checkov"), "--framework", "kubernetes", "--skip-download", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def rendered_dir(tmp_path_factory) -> Path:
    import yaml

    d = tmp_path_factory.mktemp("rendered")
    for k in KUSTOMIZATIONS:
        (d / (k.replace("/", "-") + ".yaml")).write_text(yaml.safe_dump_all(render(k)))
    return d


def test_checkov_findings_are_fixed_or_skipped_with_a_reason(rendered_dir):
    proc = _checkov("-d", str(rendered_dir), "-o", "json")
    report = json.loads(proc.stdout)
    results = report["results"]
    failed = [(c["check_id"], c["resource"]) for c in results["failed_checks"]]
    assert failed == [], failed
    assert report["summary"]["passed"] > 100  # it really checked
    assert results["skipped_checks"], "the skips below are expected to be seen"
    for c in results["skipped_checks"]:
        reason = c["check_result"].get("suppress_comment") or ""
        # A reason a reviewer can judge, not a bare id.
        assert len(reason.split()) >= 8, (c["check_id"], c["resource"], reason)


def test_checkov_catches_what_the_manifests_avoid(tmp_path):
    """The same run fails a pod that runs privileged: the check is live."""
    import yaml

    dep = next(
        o
        for o in render("k8s/overlays/local")
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "visionline-torchserve"
    )
    dep["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = True
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(dep))
    proc = _checkov("-d", str(tmp_path), "-o", "json", "--quiet")
    failed = {c["check_id"] for c in json.loads(proc.stdout)["results"]["failed_checks"]}
    assert "CKV_K8S_16" in failed  # "Container should not be privileged"


def test_hadolint_is_clean_at_warning_level():
    proc = sh("hadolint --failure-threshold warning Dockerfile")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_flags_an_unpinned_package(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text((REPO / "Dockerfile").read_text().replace("tini=0.19.0-1+b3", "tini"))
    proc = subprocess.run(
        [str(TOOLS_BIN / "hadolint"), "--failure-threshold", "warning", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "DL3008" in proc.stdout


@pytest.mark.skipif(which("make") is None, reason="make not installed")
def test_make_lint_k8s():
    """`make lint-k8s` as docs/kubernetes.md documents it. From a checkout whose .venv is not the
    one running the tests (a shared venv), make must neither build nor reinstall a venv:
    `-o` marks the setup targets done and VENV names the venv in use."""
    venv = Path(sys.executable).parent.parent
    command = "make lint-k8s"
    if venv.resolve() != (REPO / ".venv").resolve():
        command += f" -o install -o tools VENV={venv}"
    proc = sh(command, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Failed checks: 0" in proc.stdout
