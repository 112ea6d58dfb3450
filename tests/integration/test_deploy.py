"""Deployment: a candidate that fails its parity check never becomes champion, and the
previous champion is put back in service."""

from __future__ import annotations

import pytest

from tests.conftest import digits_config
from tests.support.ports import serve_ports
from visionline.config import GateConfig
from visionline.data.ingest import ingest
from visionline.evaluation import evaluate_run
from visionline.gate import gate_run
from visionline.packaging import package_run
from visionline.registry import Registry
from visionline.serving.deploy import DeploymentError, deploy_checked
from visionline.serving.local import LocalDeployer
from visionline.serving.parity import parity_check
from visionline.storage import LocalStore, sha256_bytes
from visionline.training import fit

pytestmark = [pytest.mark.torchserve, pytest.mark.slow]
LENIENT = GateConfig(min_accuracy=0.0, min_macro_f1=0.0, min_class_recall=0.0)


def _packaged(store, cfg, run_id, epochs):
    fit(cfg.with_overrides(**{"train.epochs": epochs}), store, run_id)
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
