from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.s3 import free_port
from visionline.config import PipelineConfig
from visionline.storage import ArtifactStore, LocalStore, S3Store, make_s3_client

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto in server mode: boto3 talks to it over real HTTP, like to S3."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": url,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture
def s3_client(moto_server: str):
    return make_s3_client()


@pytest.fixture
def bucket(s3_client) -> str:
    name = f"vl-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path: Path) -> ArtifactStore:
    """The same test body against both backends."""
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    client = request.getfixturevalue("s3_client")
    bucket = request.getfixturevalue("bucket")
    return S3Store(f"s3://{bucket}/artifacts", client=client)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    from visionline.data.samples import write_digits

    d = tmp_path_factory.mktemp("digits")
    write_digits(d)
    return d


@pytest.fixture(scope="session")
def small_digits_dir(digits_dir, tmp_path_factory) -> Path:
    """20 real digits per class: enough for every split, cheap to snapshot over S3."""
    import shutil

    d = tmp_path_factory.mktemp("small-digits")
    for cls in sorted(p for p in digits_dir.iterdir() if p.is_dir()):
        (d / cls.name).mkdir()
        for f in sorted(cls.iterdir())[:20]:
            shutil.copy(f, d / cls.name / f.name)
    return d


def digits_config(store: str | Path, **overrides) -> PipelineConfig:
    """The digits config pointed at ``store``, with dotted-key overrides."""
    from visionline.config import load_config

    cfg = load_config(REPO / "configs" / "digits.yaml")
    return cfg.with_overrides(
        store=str(store), **{"data.cache_dir": str(Path(store) / ".cache"), **overrides}
    )


@pytest.fixture(scope="session")
def trained_digits(digits_dir, tmp_path_factory):
    """A real model trained on the full digits set, evaluated; shared by later stages."""
    from visionline.data.ingest import ingest
    from visionline.evaluation import evaluate_run
    from visionline.storage import LocalStore
    from visionline.training.loop import fit
    from visionline.training.plan import plan_run

    root = tmp_path_factory.mktemp("trained")
    store = LocalStore(root / "store")
    ingest(store, str(digits_dir), "digits", progress=False)
    from visionline.data.manifest import resolve_dataset
    from visionline.data.validation import validate_dataset

    cfg = digits_config(store.uri, **{"train.epochs": 12, "train.early_stopping": None})
    assert validate_dataset(store, resolve_dataset(store, "digits"), cfg).success
    fit(plan_run(cfg, store, run_id="champ"), store)
    metrics = evaluate_run(store, "champ")
    return store, "champ", cfg, metrics


@pytest.fixture(scope="session")
def packaged_digits(trained_digits):
    """The trained digits model gated, packaged as a .mar and promoted to champion."""
    from visionline.evaluation.gate import gate_run
    from visionline.registry import Registry
    from visionline.serving.packaging import package_run

    store, run_id, cfg, _ = trained_digits
    assert gate_run(store, run_id).passed
    ref = package_run(store, run_id)
    Registry(store, ref.name).promote(ref.version, "test fixture")
    return store, ref, cfg


@pytest.fixture(scope="session")
def prefect_api():
    """A real temporary Prefect API (server + database) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
