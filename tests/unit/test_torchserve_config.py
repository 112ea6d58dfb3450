"""The generated TorchServe config, without starting TorchServe."""

import json
import zipfile

import pytest

from visionline.config import ServeConfig
from visionline.errors import ServingError
from visionline.serving.torchserve import (
    ServedModel,
    management_is_loopback_only,
    mar_version,
    parse_config,
    render_config,
)


def test_per_model_settings_are_keyed_by_the_archive_version(tmp_path):
    text = render_config(
        ServeConfig(),
        tmp_path,
        [ServedModel("digits", "digits.mar", batch_size=8, max_batch_delay_ms=5, version="7")],
    )
    models = json.loads(parse_config(text)["models"])
    assert models == {
        "digits": {
            "7": {
                "defaultVersion": True,
                "marName": "digits.mar",
                "minWorkers": 1,
                "maxWorkers": 1,
                "batchSize": 8,
                "maxBatchDelay": 5,
                "responseTimeout": 120,
            }
        }
    }
    assert management_is_loopback_only(text)


def test_mar_version_reads_the_manifest_and_names_a_bad_archive(tmp_path):
    good = tmp_path / "m.mar"
    with zipfile.ZipFile(good, "w") as z:
        z.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelVersion": "12"}}))
    assert mar_version(good) == "12"
    bad = tmp_path / "not-a.mar"
    bad.write_bytes(b"junk")
    with pytest.raises(ServingError, match=r"not-a\.mar: not a model archive"):
        mar_version(bad)


def test_torchserve_body_limit_lets_the_largest_image_through_as_base64(tmp_path):
    import base64

    cfg = ServeConfig(max_request_bytes=1_000_000)
    body_limit = int(parse_config(render_config(cfg, tmp_path, []))["max_request_size"])
    largest = b'{"data": "' + base64.b64encode(b"\0" * cfg.max_request_bytes) + b'"}'
    assert len(largest) <= body_limit  # our own 413 answers anything between
    assert body_limit < 2 * cfg.max_request_bytes  # and the frontend still bounds a body
