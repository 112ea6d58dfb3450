"""The serving objects built in Python: valid against the 1.31 schemas (strict), locked
down, the credential referenced and never copied; the nginx config they carry is one
nginx accepts; the init container's fetch checks what it fetched."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO
from tests.support.front import nginx_binary
from tests.support.k8s import validate
from visionline.config import load_config
from visionline.errors import ServingError
from visionline.registry import ModelRef, Registry
from visionline.serving.kubernetes import build_objects, config_map
from visionline.serving.nginx import is_token, new_token
from visionline.serving.torchserve import parse_config, render_config
from visionline.storage import LocalStore, sha256_bytes

REF = ModelRef("digits", "3")
SHA = "ab" * 32


def _cfg(**kube):
    cfg = load_config(REPO / "configs" / "digits.yaml")
    return cfg.with_overrides(**{f"deploy.kubernetes.{k}": v for k, v in kube.items()})


def test_objects_validate_and_are_locked_down():
    cm, dep, svc = build_objects(_cfg(gpus=1), "s3://bucket/vl", REF, SHA)
    for obj in (cm, dep, svc):
        validate(obj)
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod["initContainers"] + pod["containers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["allowPrivilegeEscalation"] is False
    ts = next(c for c in pod["containers"] if c["name"] == "torchserve")
    assert ts["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "ports" not in ts  # TorchServe listens on the pod's loopback only
    ready = ts["readinessProbe"]["exec"]["command"]
    assert ready[2:5] == ["visionline.serving.probe", "ready", "--model"]
    proxy = next(c for c in pod["containers"] if c["name"] == "auth-proxy")
    assert {p["containerPort"] for p in proxy["ports"]} == {8080, 7070, 8082}
    assert sorted(p["port"] for p in svc["spec"]["ports"]) == [7070, 8080]
    cred = next(v for v in pod["volumes"] if v["name"] == "credentials")
    assert cred["secret"]["secretName"] == "visionline-inference-credentials"
    # a GPU replica rolls without a spare GPU: one goes first, none surges
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels(dep).items()


def pod_labels(dep):
    return dep["spec"]["template"]["metadata"]["labels"]


def test_the_template_pins_the_archive():
    _, dep, _ = build_objects(_cfg(), "s3://bucket/vl", REF, SHA)
    fetch = dep["spec"]["template"]["spec"]["initContainers"][0]
    assert fetch["command"][:3] == ["python", "-m", "visionline.serving.fetch"]
    env = {e["name"]: e.get("value") for e in fetch["env"]}
    assert env["VISIONLINE_PINNED_MODEL"] == "digits:3"
    assert env["VISIONLINE_PINNED_SHA256"] == SHA
    assert env["VISIONLINE_PINNED_STORE"] == "s3://bucket/vl"
    assert pod_labels(dep)["visionline.io/model-version"] == "3"


def test_config_map_is_named_by_its_content():
    a = config_map(_cfg())
    b = config_map(_cfg())
    c = config_map(_cfg().with_overrides(**{"serve.batch_size": 16}))
    assert a["metadata"]["name"] == b["metadata"]["name"] != c["metadata"]["name"]
    assert a["immutable"] is True
    assert json.loads(c["data"]["serve.json"])["batch_size"] == 16


@pytest.mark.skipif(
    nginx_binary() is None,
    reason="nginx not installed (make test installs it: tools/system-deps.sh)",
)
def test_the_pods_nginx_config_is_accepted_by_nginx(tmp_path):
    conf = tmp_path / "nginx.conf"
    text = config_map(_cfg())["data"]["nginx.conf"]
    # as in the pod, but with the writable directory this machine offers
    conf.write_text(text.replace("/tmp/nginx", str(tmp_path)))
    r = subprocess.run(
        [nginx_binary(), "-t", "-e", "stderr", "-c", str(conf)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert "listen 0.0.0.0:8080;" in text and "listen 0.0.0.0:7070 http2;" in text
    assert "grpc_pass grpc://127.0.0.1:" in text and "auth_request /_visionline_auth" in text


def test_token_auth_off_only_on_loopback(tmp_path):
    serve = _cfg().serve
    off = parse_config(render_config(serve, tmp_path, [], token_auth=False))
    assert off["disable_token_authorization"] == "true"
    assert off["inference_address"].startswith("http://127.0.0.1:")
    with pytest.raises(ServingError, match="only when it listens on loopback"):
        render_config(serve, tmp_path, [], inference_host="0.0.0.0", token_auth=False)


def test_tokens_are_valid_secret_keys():
    t = new_token()
    assert is_token(t) and len(t) >= 43
    assert not is_token("..data") and not is_token("../etc/passwd") and not is_token("short")


def _fake_mar(version: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelVersion": version}}))
    return buf.getvalue()


def test_fetch_checks_the_archive_and_writes_torchserves_config(tmp_path):
    store = LocalStore(tmp_path / "store")
    mar = _fake_mar("3")
    store.put_bytes(REF.mar_key, mar)
    Registry(store, "digits").register("3", {"run_id": "r", "sha256": sha256_bytes(mar)})
    serve_json = tmp_path / "serve.json"
    serve_json.write_text(json.dumps(_cfg().serve.model_dump(mode="json")))
    base = [sys.executable, "-m", "visionline.serving.fetch", "--store", store.uri]
    base += ["--model", "digits:3", "--dest", str(tmp_path / "models")]
    ok = subprocess.run(
        [
            *base,
            "--sha256",
            sha256_bytes(mar),
            "--serve-config",
            str(serve_json),
            "--ts-config",
            str(tmp_path / "config.properties"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "models" / "digits.mar").read_bytes() == mar
    props = parse_config((tmp_path / "config.properties").read_text())
    assert props["disable_token_authorization"] == "true"
    assert props["inference_address"] == "http://127.0.0.1:18080"
    assert '"3"' in props["models"]  # per-model settings under the archive's own version
    # the template pinned other bytes than the store now holds: refuse
    bad = subprocess.run([*base, "--sha256", "0" * 64], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "changed after deployment" in bad.stderr
