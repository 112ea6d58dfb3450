"""#18 defect 5, the serving half: TorchServe's container sets `args`, never `command`, in
the objects the deployer builds and in the applied manifest, so the server image's
ENTRYPOINT (tini) stays PID 1 and SIGTERM reaches TorchServe's JVM and workers. A
`command` would replace tini with TorchServe's launcher, which forwards no signal."""

from __future__ import annotations

from tests.conftest import REPO
from tests.support.k8s.runtime import image_config
from tests.support.manifests import find, render
from visionline.config import load_config
from visionline.registry import ModelRef
from visionline.serving.kubernetes import build_objects


def _torchserve(deployment: dict) -> dict:
    return next(
        c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "torchserve"
    )


def test_torchserve_runs_under_the_images_init():
    cfg = load_config(REPO / "configs" / "digits-k8s.yaml")
    _, built, _ = build_objects(cfg, "s3://b/p", ModelRef("digits", "1"), "1" * 64)
    applied = find(render("k8s/overlays/local"), "Deployment", "visionline-torchserve")
    for dep in (built, applied):
        c = _torchserve(dep)
        assert "command" not in c, c.get("command")
        assert c["args"][:2] == ["torchserve", "--foreground"]
    for target in ("server", "server-gpu"):
        assert image_config(target)["entrypoint"][0] == "/usr/bin/tini", target
