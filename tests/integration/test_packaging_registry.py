"""Archives, the registry's versions, aliases and log, and lineage."""

import hashlib
import json
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import digits_config
from visionline.errors import GateFailedError
from visionline.evaluation.gate import gate_run
from visionline.registry import Registry, RegistryError
from visionline.serving.lineage import lineage
from visionline.serving.packaging import package_run
from visionline.storage import LocalStore


def test_archive_contents_and_sha(packaged_digits, tmp_path):
    store, ref, _ = packaged_digits
    info = Registry(store, ref.name).info(ref.version)
    mar = store.get_file(ref.mar_key, tmp_path / "m.mar")
    assert hashlib.sha256(mar.read_bytes()).hexdigest() == info["sha256"]
    assert store.get_bytes(f"{ref.prefix}/sha256").decode().split()[0] == info["sha256"]
    with zipfile.ZipFile(mar) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read("MAR-INF/MANIFEST.json"))
        labels = json.loads(z.read("index_to_name.json"))
        serving = json.loads(z.read("serving.json"))
    assert {
        "model.pt",
        "visionline_model.py",
        "image_classifier.py",
        "index_to_name.json",
        "serving.json",
        "model_spec.json",
    } <= names
    assert manifest["model"]["handler"] == "image_classifier.py"
    assert labels == {str(i): str(i) for i in range(10)}
    assert serving["preprocessing"]["channels"] == 1 and serving["top_k"] == 3
    card = store.get_bytes(f"{ref.prefix}/model_card.md").decode()
    assert info["dataset"] in card and "Gate decision: PASS" in card and info["sha256"] in card


def test_packaging_is_idempotent_per_run(packaged_digits):
    store, ref, _ = packaged_digits
    assert package_run(store, Registry(store, ref.name).info(ref.version)["run_id"]) == ref


def test_failed_gate_packages_nothing(small_digits_dir, tmp_path):
    from visionline.data.ingest import ingest
    from visionline.evaluation import evaluate_run
    from visionline.training.loop import fit
    from visionline.training.plan import plan_run

    store = LocalStore(tmp_path / "store")
    ingest(store, str(small_digits_dir), "digits", progress=False)
    cfg = digits_config(
        store.uri,
        **{
            "train.epochs": 1,
            "train.lr": 1e-6,
            "train.optimizer": "sgd",
            "train.scheduler": "none",
            "train.early_stopping": None,
        },
    )
    fit(plan_run(cfg, store, run_id="weak"), store)
    evaluate_run(store, "weak")
    with pytest.raises(GateFailedError, match="no gate decision"):
        package_run(store, "weak")
    assert not gate_run(store, "weak").passed
    before = set(store.list(""))
    with pytest.raises(GateFailedError, match="failed its gate"):
        package_run(store, "weak")
    assert set(store.list("")) == before and not list(store.list("models/"))


def test_aliases_promotion_log_and_rollback(tmp_path):
    store = LocalStore(tmp_path)
    reg = Registry(store, "m")
    for v in ("1", "2", "3"):
        reg.register(v, {"run_id": f"r{v}"})
    with pytest.raises(RegistryError, match="no previous champion"):
        reg.rollback()
    reg.promote("1", "first")
    reg.promote("2", "better")
    a = reg.promote("3", "best")
    assert (a["champion"], a["previous"]) == ("3", "2")
    a = reg.rollback("3 misbehaves")
    assert (a["champion"], a["previous"]) == ("2", "1")
    assert reg.resolve().version == "2" and reg.resolve("previous").version == "1"
    actions = [(e["action"], e["version"]) for e in reg.log()]
    assert actions[-4:] == [("promote", "1"), ("promote", "2"), ("promote", "3"), ("rollback", "2")]
    assert reg.log()[-1]["demoted"] == "3" and reg.log()[-1]["reason"] == "3 misbehaves"
    assert reg.next_version() == "4" and reg.find_by_run("r2") == "2"


def test_lineage_reaches_the_dataset_and_its_validation(packaged_digits):
    store, ref, _ = packaged_digits
    chain = dict(lineage(store, ref))
    info = Registry(store, ref.name).info(ref.version)
    assert info["sha256"] in chain["model"]
    assert info["run_id"] in chain["run"]
    assert info["dataset"] in chain["dataset"]
    assert (
        chain["validation"].startswith("passed") and "data_docs/index.html" in chain["validation"]
    )
    assert chain["gate"].startswith("pass")


def test_models_cli(packaged_digits, tmp_path):
    _, ref, cfg = packaged_digits
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(cfg.to_yaml())

    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "visionline.cli", "--config", str(cfg_path), *args],
            capture_output=True,
            text=True,
        )

    listed = run("models", "list")
    assert (
        listed.returncode == 0
        and f"{ref.name}:{ref.version}" in listed.stdout
        and "champion" in listed.stdout
    )
    lin = run("lineage", f"{ref.name}:{ref.version}")
    assert lin.returncode == 0 and "validation:" in lin.stdout and "dataset:" in lin.stdout
    bad = run("models", "rollback")
    assert bad.returncode == 2 and "no previous champion" in bad.stderr
