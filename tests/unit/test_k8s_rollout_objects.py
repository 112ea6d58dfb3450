"""A rollout's objects on Kubernetes (issue 20), as ``visionline deploy NAME:VERSION
--shadow/--canary --target kubernetes --dry-run`` prints them: valid against the 1.31
schemas (strict); a challenger Deployment and Service of their own that the champion's
Service never selects; the champion's front reconfigured from the same nginx templates
as the local rollout, in a form nginx accepts; and the NetworkPolicies letting the
champion's front, and nothing else, reach the challenger."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO
from tests.support.front import nginx_binary
from tests.support.k8s import validate
from tests.support.manifests import find, render, which
from tests.support.netpol import Destination, egress_allowed
from visionline.config import load_config
from visionline.registry import ModelRef, Registry
from visionline.serving.kubernetes import build_objects
from visionline.serving.kubernetes.challenger import with_front, without_front
from visionline.storage import LocalStore

CONFIG = REPO / "configs" / "digits-k8s.yaml"
CHALLENGER = "visionline-torchserve-challenger"
HOST = f"{CHALLENGER}.visionline.svc"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = LocalStore(tmp_path_factory.mktemp("store"))
    reg = Registry(store, "digits")
    for v in ("1", "2"):
        reg.register(v, {"run_id": f"run-{v}", "sha256": v * 64, "parity_keys": ["k"]})
    reg.promote("1", "fixture")
    return store


_printed: dict[tuple, list[dict]] = {}


def _dry_run(store, *flags: str, output: str = "yaml") -> list[dict]:
    """What the command prints, as objects (each command line run once per module)."""
    key = (store.uri, flags, output)
    if key in _printed:
        return _printed[key]
    argv = [sys.executable, "-m", "visionline.cli", "--config", str(CONFIG)]
    argv += ["--store", store.uri, "deploy", "digits:2", *flags]
    argv += ["--target", "kubernetes", "--dry-run", "-o", output]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    if output == "json":
        _printed[key] = json.loads(proc.stdout)["items"]
    else:
        _printed[key] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return _printed[key]


def _by_kind(objects: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


@pytest.mark.parametrize(
    ("flags", "mode"), [(["--shadow", "25"], "shadow"), (["--canary", "25"], "canary")]
)
def test_dry_run_prints_valid_challenger_objects(store, flags, mode):
    objects = _dry_run(store, *flags)
    for obj in objects:
        validate(obj)  # 1.31, strict
    got = _by_kind(objects)
    champion = got[("Deployment", "visionline-torchserve")]
    challenger = got[("Deployment", CHALLENGER)]
    svc = got[("Service", CHALLENGER)]
    [cm] = [o for o in objects if o["kind"] == "ConfigMap"]
    assert len(objects) == 4

    # the challenger: the champion's pod shape, the challenger's version, its own labels
    ctpl, ptpl = challenger["spec"]["template"], champion["spec"]["template"]
    assert challenger["spec"]["replicas"] == 1
    labels = ctpl["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "challenger"
    assert labels["visionline.io/model-version"] == "2"
    assert challenger["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"] == challenger["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["type"] == "ClusterIP"
    pin = {e["name"]: e.get("value") for e in ctpl["spec"]["initContainers"][0]["env"]}
    assert pin["VISIONLINE_PINNED_MODEL"] == "digits:2"
    assert [c["name"] for c in ctpl["spec"]["containers"]] == ["torchserve", "auth-proxy"]
    assert ctpl["spec"]["containers"][0]["resources"] == ptpl["spec"]["containers"][0]["resources"]
    state = json.loads(challenger["metadata"]["annotations"]["visionline.io/rollout"])
    assert state == {
        "mode": mode,
        "percent": 25.0,
        "champion": "digits:1",
        "challenger": "digits:2",
    }

    # neither the champion's Service nor its Deployment selects a challenger pod
    plain = _by_kind(
        build_objects(load_config(CONFIG), store.uri, ModelRef("digits", "1"), "1" * 64)
    )
    champion_selector = plain[("Service", "visionline-torchserve")]["spec"]["selector"]
    assert not champion_selector.items() <= labels.items()
    assert not champion["spec"]["selector"]["matchLabels"].items() <= labels.items()

    # the champion's front mounts the rollout's nginx.conf; the challenger's stays plain
    def proxy_mount(tpl):
        proxy = next(c for c in tpl["spec"]["containers"] if c["name"] == "auth-proxy")
        return next(
            m["name"] for m in proxy["volumeMounts"] if m["mountPath"] == "/etc/visionline/nginx"
        )

    front = next(v for v in ptpl["spec"]["volumes"] if v["name"] == proxy_mount(ptpl))
    assert front["configMap"]["name"] == cm["metadata"]["name"] and cm["immutable"] is True
    assert proxy_mount(ctpl) == "serve"
    assert without_front(ptpl) == plain[("Deployment", "visionline-torchserve")]["spec"]["template"]
    conf = cm["data"]["nginx.conf"]
    assert "25% challenger;" in conf and f"http://{HOST}:8080" in conf
    assert "access_log /dev/stdout visionline_rollout;" in conf  # read back as the pod's log
    if mode == "shadow":
        assert "mirror /_visionline_mirror;" in conf and "proxy_read_timeout 10s;" in conf
    else:
        assert "mirror /_visionline_" not in conf and "/_visionline_canary$1 last" in conf
        assert "$http_x_client_id" in conf  # sticky per client


def test_json_output_and_config_percent(store):
    objects = _dry_run(store, "--shadow", output="json")  # deploy.rollout.shadow_percent
    cm = next(o for o in objects if o["kind"] == "ConfigMap")
    assert "100% challenger;" in cm["data"]["nginx.conf"]


@pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed")
@pytest.mark.parametrize("mode", ["--shadow", "--canary"])
def test_nginx_accepts_the_champions_rollout_front(store, tmp_path, mode):
    cm = next(o for o in _dry_run(store, mode, "25") if o["kind"] == "ConfigMap")
    # as in the pod, but with this machine's writable directory, and the challenger's
    # Service name (resolved when nginx starts) as an address this machine has
    text = cm["data"]["nginx.conf"].replace("/tmp/nginx", str(tmp_path)).replace(HOST, "127.0.0.1")
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)
    checked = subprocess.run(
        [nginx_binary(), "-t", "-e", "stderr", "-c", str(conf)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr


def test_the_front_comes_and_goes_exactly():
    _, dep, _ = build_objects(load_config(CONFIG), "s3://b/vl", ModelRef("digits", "1"), "1" * 64)
    tpl = dep["spec"]["template"]
    assert without_front(with_front(tpl, "front-abc")) == tpl
    assert without_front(tpl) == tpl
    twice = with_front(with_front(tpl, "front-old"), "front-new")
    assert [v["name"] for v in twice["spec"]["volumes"]].count("rollout-front") == 1


def test_a_dry_run_without_a_champion_says_so(tmp_path):
    store = LocalStore(tmp_path / "store")
    Registry(store, "digits").register("2", {"run_id": "r", "sha256": "2" * 64, "parity_keys": []})
    argv = [sys.executable, "-m", "visionline.cli", "--config", str(CONFIG), "--store", store.uri]
    argv += ["deploy", "digits:2", "--canary", "5", "--target", "kubernetes", "--dry-run"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no champion to roll digits:2 out beside" in proc.stderr


@pytest.mark.skipif(which("kubectl") is None, reason="kubectl not found: run `make tools`")
def test_only_the_champions_front_reaches_the_challenger(store):
    objects = render("k8s/overlays/local")
    ours = _by_kind(_dry_run(store, "--canary", "25"))
    challenger = ours[("Deployment", CHALLENGER)]["spec"]["template"]["metadata"]["labels"]
    champion = find(objects, "Deployment", "visionline-torchserve")["spec"]["template"]
    ns = {"kubernetes.io/metadata.name": "visionline"}

    def to(labels, port):
        return Destination("10.244.2.5", port, pod_labels=labels, namespace_labels=ns)

    serving = champion["metadata"]["labels"]
    assert egress_allowed(objects, serving, to(challenger, 8080))
    assert not egress_allowed(objects, serving, to(challenger, 8081))
    # the challenger fetches its archive from the store, and reaches nothing of ours
    assert egress_allowed(objects, challenger, Destination("52.216.8.1", 443))
    assert not egress_allowed(objects, challenger, to(serving, 8080))
    ingress = find(objects, "NetworkPolicy", CHALLENGER)["spec"]
    assert ingress["podSelector"]["matchLabels"].items() <= challenger.items()
    sources = [p["podSelector"]["matchLabels"] for r in ingress["ingress"] for p in r["from"]]
    assert sources[0].items() <= serving.items()
