"""The commands of the operator guide (docs/kubernetes.md), run as typed where
they need no cluster; where they do, kubectl runs them client-side (--dry-run=client,
patch --local) and what they would send is checked."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from tests.support.manifests import (
    KUBERNETES_VERSION,
    KUSTOMIZATIONS,
    REPO,
    containers,
    pod_spec,
    render,
    sh,
    tool_env,
    which,
)

pytestmark = pytest.mark.skipif(
    which("kubectl") is None, reason="kubectl not found: run `make tools`"
)


def _page() -> str:
    return (REPO / "docs" / "kubernetes.md").read_text()


def _blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", _page(), re.S)


def _commands(block: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, comments dropped."""
    joined = block.replace("\\\n", " ")
    return [
        re.sub(r"\s+", " ", line).strip()
        for line in joined.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def _all_commands() -> list[str]:
    return [c for b in _blocks() for c in _commands(b)]


def test_every_kustomization_check_runs_as_documented():
    checks = [c for c in _all_commands() if c.startswith("kubectl kustomize")]
    assert {c.split()[2] for c in checks} == set(KUSTOMIZATIONS)
    for command in checks:
        assert command.endswith(f"kubernetes-validate -k {KUBERNETES_VERSION} --strict -")
        proc = sh(command)
        assert proc.returncode == 0, command + "\n" + proc.stdout + proc.stderr


def test_hadolint_command_runs_as_documented():
    command = next(c for c in _all_commands() if c.startswith("hadolint"))
    proc = sh(command)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_documented_make_targets_exist():
    makefile = (REPO / "Makefile").read_text()
    for command in _all_commands():
        if command.startswith("make "):
            assert re.search(rf"^{command.split()[1]}:", makefile, re.M), command


def _client_side(command: str) -> str:
    """A cluster command as kubectl runs it without a cluster."""
    if command.startswith("kubectl") and " create " in command:
        return f"echo --- && {command} --dry-run=client -o yaml"
    if " patch secret visionline-inference-credentials " in command:
        local = command.replace(
            "-n visionline patch secret visionline-inference-credentials",
            "patch --local -f secret.yaml -o yaml",
        )
        return f"{local} > secret.next && mv secret.next secret.yaml"
    return command


def _run_block(block: str, cwd, extra: str = "") -> subprocess.CompletedProcess:
    script = "\n".join(_client_side(c) for c in _commands(block)) + "\n" + extra
    env = {**tool_env(), "KUBECONFIG": str(cwd / "no-cluster")}
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _nginx_token_pattern() -> re.Pattern:
    conf = (REPO / "k8s" / "base" / "serving" / "nginx.conf").read_text()
    pcre = re.search(r'"~\^Bearer \(\?<\w+>(.*?)\)\$"', conf).group(1)
    return re.compile(pcre)


def test_secret_commands_create_what_the_pods_read(tmp_path):
    block = next(b for b in _blocks() if "create secret generic visionline-s3" in b)
    setup = block.split("# 2.", 1)[0]
    (tmp_path / "s3.env").write_text("AWS_ACCESS_KEY_ID=AKIAEXAMPLE\nAWS_SECRET_ACCESS_KEY=x\n")
    proc = _run_block(setup, tmp_path, extra='printf %s "$TOKEN" > token')
    assert proc.returncode == 0, proc.stderr
    objects = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("Namespace", "visionline"),
        ("Secret", "visionline-s3"),
        ("Secret", "visionline-inference-credentials"),
    ]
    validated = subprocess.run(
        ["kubernetes-validate", "-k", KUBERNETES_VERSION, "--strict", "-"],
        input=proc.stdout,
        capture_output=True,
        text=True,
        env=tool_env(),
        timeout=120,
    )
    assert validated.returncode == 0, validated.stdout + validated.stderr

    # The S3 Secret's keys are the ones the pods reference.
    s3 = objects[1]
    referenced = {
        e["valueFrom"]["secretKeyRef"]["key"]
        for o in render("k8s/overlays/local")
        if pod_spec(o)
        for c in containers(pod_spec(o))
        for e in c.get("env", [])
        if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "visionline-s3"
    }
    assert (
        set(s3["data"]) <= referenced
        and {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= referenced
    )

    # The token is the Secret's key, and one the auth front accepts.
    token = (tmp_path / "token").read_text()
    credentials = objects[2]
    assert list(credentials["data"]) == [token]
    assert _nginx_token_pattern().fullmatch(token)
    assert len(token) >= 32


def test_rotation_commands_leave_only_the_new_token(tmp_path):
    setup = next(b for b in _blocks() if "create secret generic visionline-s3" in b)
    rotate = next(b for b in _blocks() if "patch secret visionline-inference-credentials" in b)
    (tmp_path / "s3.env").write_text("AWS_ACCESS_KEY_ID=a\nAWS_SECRET_ACCESS_KEY=b\n")
    create_token = [
        c for c in _commands(setup.split("# 2.", 1)[0]) if "TOKEN" in c
    ]  # the token and its Secret, kept for the rotation
    script = "\n".join(create_token[:1]) + "\n" + _client_side(create_token[1]) + " > secret.yaml"
    script += '\nprintf %s "$TOKEN" > old\n'
    script += "\n".join(_client_side(c) for c in _commands(rotate))
    script += '\nprintf %s "$NEW" > new\n'
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env={**tool_env(), "KUBECONFIG": str(tmp_path / "no-cluster")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    secret = yaml.safe_load((tmp_path / "secret.yaml").read_text())
    old, new = (tmp_path / "old").read_text(), (tmp_path / "new").read_text()
    # What the API server would store: data plus stringData, the old token removed.
    keys = set(secret.get("data", {})) | set(secret.get("stringData", {}))
    assert keys == {new} and old != new
    assert _nginx_token_pattern().fullmatch(new)
