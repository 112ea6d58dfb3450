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
