from pathlib import Path

import pytest
from pydantic import ValidationError

from visionline.config import load_config, parse_config
from visionline.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_bundled_configs_load():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.data.dataset


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: {dataset: d}\ntrain: {epochs: 3, learning_rate: 0.1}\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "train.learning_rate: unknown key" in str(e.value)
    assert str(p) in str(e.value)


def test_bad_value_is_named():
    with pytest.raises(ConfigError, match=r"train\.optimizer"):
        parse_config({"data": {"dataset": "d"}, "train": {"optimizer": "lion"}})
    with pytest.raises(ConfigError, match=r"data\.split"):
        parse_config({"data": {"dataset": "d", "split": {"train": 0.9, "val": 0.2, "test": 0.1}}})


def test_config_is_immutable_and_overrides_revalidate():
    cfg = parse_config({"data": {"dataset": "d"}})
    with pytest.raises(ValidationError, match="frozen"):
        cfg.train.epochs = 99  # type: ignore[misc]
    assert cfg.with_overrides(**{"train.epochs": 3}).train.epochs == 3
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        cfg.with_overrides(**{"train.epochs": 0})


def test_fingerprint_tracks_content():
    a = parse_config({"data": {"dataset": "d"}})
    assert a.fingerprint() == parse_config({"data": {"dataset": "d"}}).fingerprint()
    assert a.fingerprint() != a.with_overrides(**{"train.lr": 0.5}).fingerprint()


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/config.yaml")


def test_image_work_limits_are_validated():
    base = {"data": {"dataset": "d", "image_size": 224, "crop_ratio": 0.875}}
    cfg = parse_config(base)
    assert cfg.data.resize_to == 256  # what Preprocessing.resize_to computes
    for section in ("data", "serve"):
        with pytest.raises(ConfigError, match=rf"{section}\.max_aspect_ratio"):
            cfg.with_overrides(**{f"{section}.max_aspect_ratio": 0.5})
        # below the model's own resize, every image would be refused: said at load time
        with pytest.raises(
            ConfigError, match=rf"{section}\.max_resized_pixels: 65535 is below 256x256"
        ):
            cfg.with_overrides(**{f"{section}.max_resized_pixels": 65535})
        assert cfg.with_overrides(**{f"{section}.max_resized_pixels": 65536})
    with pytest.raises(ConfigError, match=r"serve\.max_request_bytes"):
        cfg.with_overrides(**{"serve.max_request_bytes": 2 * 1024**3})
