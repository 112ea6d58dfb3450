"""The serving Deployment's rollout and termination budgets (issue #18, defects 3 and 8):
a slow but healthy rollout is not failed while its pods still load, a GPU rollout needs
no spare GPU, a terminating pod's TorchServe outlives the front's drain, and every pod of
a ReplicaSet fetches the version its template pins, whatever ``champion`` says by then.
The code-built objects and the k8s/ overlays agree on each."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.support.manifests import find, render, which
from visionline.config import load_config
from visionline.errors import ConfigError
from visionline.registry import ModelRef, Registry
from visionline.serving.kubernetes import build_objects
from visionline.storage import LocalStore, sha256_bytes

SHA = "ab" * 32


def _cfg(**kube):
    cfg = load_config(REPO / "configs" / "digits-k8s.yaml")
    return cfg.with_overrides(**{f"deploy.kubernetes.{k}": v for k, v in kube.items()})


def _deployment(cfg):
    return build_objects(cfg, "s3://bucket/vl", ModelRef("digits", "3"), SHA)[1]


def _container(spec, name):
    return next(c for c in spec["containers"] if c["name"] == name)


def _budgets(dep, k):
    spec = dep["spec"]["template"]["spec"]
    probe = _container(spec, "torchserve")["startupProbe"]
    return dep["spec"]["progressDeadlineSeconds"], probe["periodSeconds"] * probe[
        "failureThreshold"
    ]


def test_progress_deadline_leaves_room_for_node_and_image_pull():
    k = _cfg().deploy.kubernetes
    deadline, startup = _budgets(_deployment(_cfg()), k)
    assert startup >= k.startup_seconds
    assert deadline - startup >= k.pull_allowance_seconds >= 600


@pytest.mark.skipif(which("kubectl") is None, reason="kubectl not found")
@pytest.mark.parametrize("overlay,gpus", [("local", 0), ("gpu", 1)])
def test_overlays_roll_as_the_deployer_does(overlay, gpus):
    """GPU: no surge (a surge pod needs a spare GPU); CPU: surge, none unavailable."""
    dep = find(render(f"k8s/overlays/{overlay}"), "Deployment", "visionline-torchserve")
    built = _deployment(_cfg(gpus=gpus))
    assert dep["spec"]["strategy"]["rollingUpdate"] == built["spec"]["strategy"]["rollingUpdate"]
    want = {"maxSurge": 0, "maxUnavailable": 1} if gpus else {"maxSurge": 1, "maxUnavailable": 0}
    assert built["spec"]["strategy"]["rollingUpdate"] == want
    deadline, startup = _budgets(dep, None)
    assert deadline - startup >= _cfg().deploy.kubernetes.pull_allowance_seconds


def test_torchserve_outlives_the_fronts_drain_and_the_grace_covers_both():
    k = _cfg().deploy.kubernetes
    spec = _deployment(_cfg())["spec"]["template"]["spec"]
    ts_wait = _container(spec, "torchserve")["lifecycle"]["preStop"]["sleep"]["seconds"]
    hook = _container(spec, "auth-proxy")["lifecycle"]["preStop"]["exec"]["command"]
    drain = float(hook[hook.index("--drain") + 1])
    inflight = float(hook[hook.index("--inflight") + 1])
    assert drain >= 5 and ts_wait >= drain + inflight
    assert spec["terminationGracePeriodSeconds"] >= ts_wait + 5 == k.torchserve_prestop_seconds + 5


def test_a_grace_period_too_short_for_the_drain_is_refused():
    with pytest.raises(ConfigError, match="termination_grace_period_seconds 20 is shorter"):
        _cfg(termination_grace_period_seconds=20)


def test_a_pod_started_after_champion_moved_fetches_the_pinned_version(tmp_path):
    """What an HPA-added pod of the ReplicaSet does: its init container, with the
    template's command and environment, fetches version 1 although 2 is champion now."""
    store = LocalStore(tmp_path / "store")
    reg = Registry(store, "digits")
    for v in ("1", "2"):
        ref = ModelRef("digits", v)
        store.put_bytes(ref.mar_key, f"archive {v}".encode())
        reg.register(v, {"run_id": f"r{v}", "sha256": sha256_bytes(f"archive {v}".encode())})
    dep = build_objects(_cfg(), store.uri, ModelRef("digits", "1"), reg.info("1")["sha256"])[1]
    reg.promote("2", "a later deploy's gate")
    fetch = dep["spec"]["template"]["spec"]["initContainers"][0]
    argv = [sys.executable if a == "python" else a for a in fetch["command"]]
    argv = [*argv[: argv.index("--dest")], "--dest", str(tmp_path / "models")]
    env = {e["name"]: e["value"] for e in fetch["env"] if "value" in e}
    env.update(PATH=os.environ["PATH"], PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "models" / "digits.mar").read_bytes() == b"archive 1"
