"""Deployment: a candidate that fails its parity check never becomes champion, and the
previous champion is put back in service."""

from __future__ import annotations

import pytest

from tests.conftest import digits_config
from tests.support.ports import serve_ports
from visionline.config import GateConfig
from visionline.data.ingest import ingest
from visionline.evaluation import evaluate_run
from visionline.evaluation.gate import gate_run
from visionline.registry import Registry
from visionline.serving.deploy import DeploymentError, deploy_checked
from visionline.serving.local import LocalDeployer
from visionline.serving.packaging import package_run
from visionline.serving.parity import parity_check
from visionline.storage import LocalStore, sha256_bytes
from visionline.training.loop import fit
from visionline.training.plan import plan_run

pytestmark = [pytest.mark.torchserve, pytest.mark.slow]
LENIENT = GateConfig(min_accuracy=0.0, min_macro_f1=0.0, min_class_recall=0.0)


def _packaged(store, cfg, run_id, epochs):
    fit(plan_run(cfg.with_overrides(**{"train.epochs": epochs}), store, run_id=run_id), store)
    evaluate_run(store, run_id)
    assert gate_run(store, run_id, cfg=LENIENT).passed
    return package_run(store, run_id)


def test_failed_parity_keeps_the_previous_champion_serving(small_digits_dir, tmp_path):
    store = LocalStore(tmp_path / "store")
    ingest(store, str(small_digits_dir), "digits", progress=False)
    cfg = digits_config(store.uri, **{"train.early_stopping": None}, **serve_ports())
    v1 = _packaged(store, cfg, "good", epochs=4)
    v2 = _packaged(store, cfg, "other", epochs=1)
    reg = Registry(store, v1.name)

    # v2's archive is swapped for v1's (sha kept consistent, as a bad build would be):
    # the served model is no longer the model of v2's run, which parity must catch.
    mar = store.get_bytes(v1.mar_key)
    store.put_bytes(v2.mar_key, mar)
    store.put_json(f"{v2.prefix}/model.json", {**reg.info(v2.version), "sha256": sha256_bytes(mar)})

    deployer = LocalDeployer(store, cfg.serve, tmp_path / "serve")
    try:
        first = deploy_checked(deployer, store, v1)
        assert first.parity.ok and reg.aliases()["champion"] == v1.version

        with pytest.raises(DeploymentError, match="parity FAILED"):
            deploy_checked(deployer, store, v2)
        assert reg.aliases()["champion"] == v1.version  # not promoted
        assert "promote" not in [e["action"] for e in reg.log() if e["version"] == v2.version]

        # the previous champion is back in service, answering exactly as v1's model does
        from visionline.serving.client import RestClient

        client = RestClient(deployer.endpoint(), v1.name, deployer.token())
        assert parity_check(client, store, reg.info(v1.version)).ok
        status = deployer.status()
        assert status.model == v1 and status.ready, status
    finally:
        deployer.stop()


def test_the_local_front_carries_rest_and_status_watches_it(packaged_digits, tmp_path):
    """Locally REST goes through the nginx front on serve.inference_port; TorchServe's
    own REST listener moves to another loopback port. A front that died makes the
    deployment not ready; stop() stops both; local_front: none serves TorchServe direct."""
    import requests

    from visionline.errors import ServingError
    from visionline.serving import local

    store, ref, cfg0 = packaged_digits
    cfg = cfg0.with_overrides(**serve_ports())
    image = store.get_bytes(Registry(store, ref.name).info(ref.version)["parity_keys"][0])
    deployer = LocalDeployer(store, cfg.serve, tmp_path / "serve")
    try:
        client = deployer.deploy(ref)
        assert deployer.endpoint() == f"http://127.0.0.1:{cfg.serve.inference_port}"
        assert deployer.front.is_running() and deployer.status().ready
        backend = deployer.server.endpoints.inference
        assert backend != deployer.endpoint() and backend.startswith("http://127.0.0.1:")
        form = {
            "Authorization": f"Bearer {deployer.token()}",
            "Content-Type": "application/x-www-form-urlencoded",
        }
        url = f"{deployer.endpoint()}/predictions/{ref.name}"
        r = requests.post(url, data=image, headers=form, timeout=30)
        assert r.status_code == 200 and r.json() == client.predict(image), r.text
        # TorchServe's token is still checked, by TorchServe, behind the front
        r = requests.post(
            url, data=image, headers={**form, "Authorization": "Bearer x"}, timeout=30
        )
        assert r.status_code == 400 and "Token Authorization failed" in r.text

        # the front is part of the deployment: without it nothing answers on the endpoint
        deployer.front.stop()
        status = LocalDeployer(store, cfg.serve, tmp_path / "serve").status()  # any process
        assert not status.ready and "front" in status.detail, status
    finally:
        deployer.stop()
    assert not deployer.front.is_running() and not deployer.server.is_running()

    direct = cfg.serve.model_copy(update={"local_front": "none"})
    deployer = LocalDeployer(store, direct, tmp_path / "direct")
    try:
        deployer.deploy(ref)
        assert deployer.server.endpoints.inference == deployer.endpoint()
        assert not deployer.front.is_running() and deployer.status().ready
    finally:
        deployer.stop()

    with pytest.MonkeyPatch.context() as mp:  # a machine without nginx
        mp.setattr(local, "nginx_binary", lambda: None)
        required = cfg.serve.model_copy(update={"local_front": "nginx"})
        with pytest.raises(ServingError, match="nginx is not installed"):
            LocalDeployer(store, required, tmp_path / "required").deploy(ref)
