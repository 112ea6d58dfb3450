"""The run plan: one function turns (config, store, dataset) into the pinned config and run id."""

from __future__ import annotations

import pytest

from tests.conftest import digits_config
from visionline.config import EXECUTION_KEYS
from visionline.data.manifest import DatasetRef, latest_key
from visionline.errors import KeyNotFoundError
from visionline.storage import LocalStore
from visionline.training.plan import dataset_spec, default_run_id, plan_run


@pytest.fixture
def store(tmp_path):
    """A store with one dataset version, as far as the plan looks (LATEST + manifest)."""
    s = LocalStore(tmp_path / "store")
    s.put_bytes("datasets/digits/abcdef012345/manifest.parquet", b"stand-in")
    s.put_bytes(latest_key("digits"), b"abcdef012345")
    return s


def test_execution_settings_do_not_change_the_fingerprint(tmp_path):
    base = digits_config(tmp_path / "a")
    elsewhere = base.with_overrides(
        store="s3://bucket/prefix",
        **{
            "compute.backend": "kubernetes",
            "compute.nproc": 4,
            "deploy.target": "kubernetes",
            "deploy.workdir": "/srv",
            "data.cache_dir": "/cache",
            "data.source": "/data",
            "data.ingest_workers": 3,
            "train.num_workers": 2,
            "train.log_every": 7,
            "monitor.sample_rate": 0.5,
            "monitor.policy.drift_windows": 9,
            "serve.local_front": "none",
        },
    )
    assert elsewhere.fingerprint() == base.fingerprint()
    assert len(EXECUTION_KEYS) == 10
    # what a run learns from does change it
    assert base.with_overrides(**{"train.lr": 0.5}).fingerprint() != base.fingerprint()
    assert base.with_overrides(**{"data.version": "0" * 12}).fingerprint() != base.fingerprint()


def test_plan_pins_the_newest_version_and_derives_the_run_id(store, tmp_path):
    cfg = digits_config(store.uri)
    assert cfg.data.version is None and dataset_spec(cfg) == "digits"
    plan = plan_run(cfg, store)
    assert plan.dataset == DatasetRef("digits", "abcdef012345")
    assert plan.cfg.data.version == "abcdef012345"
    assert plan.run_id == default_run_id(plan.cfg, "abcdef012345")
    assert plan.run_id.startswith("digits-cnn-abcdef012345-")
    # planning the pinned config again, or from another store path, finds the same run
    assert plan_run(plan.cfg, store).run_id == plan.run_id
    moved = cfg.with_overrides(store=str(tmp_path / "elsewhere"))
    assert plan_run(moved, store).run_id == plan.run_id


def test_plan_takes_an_explicit_run_id_and_dataset(store):
    cfg = digits_config(store.uri)
    plan = plan_run(cfg, store, DatasetRef("digits", "abcdef012345"), run_id="mine")
    assert plan.run_id == "mine" and plan.cfg.data.version == "abcdef012345"
    with pytest.raises(Exception, match="invalid run id"):
        plan_run(cfg, store, run_id="../escape")


def test_plan_of_a_missing_dataset_says_what_to_do(tmp_path):
    cfg = digits_config(tmp_path / "empty")
    with pytest.raises(KeyNotFoundError, match="ingest it first"):
        plan_run(cfg, LocalStore(tmp_path / "empty"))
