"""Model references as users type them: NAME, NAME:VERSION and NAME:ALIAS, read by one
function for every command, and refused with what was expected and what exists."""

from __future__ import annotations

import json

import pytest

from visionline.cli import main
from visionline.errors import KeyNotFoundError
from visionline.registry import (
    ModelRef,
    Registry,
    RegistryError,
    parse_model_ref,
    resolve_model_ref,
)
from visionline.storage import LocalStore

EXPECTED = "expected NAME, NAME:VERSION or NAME:ALIAS"


@pytest.fixture
def store(tmp_path) -> LocalStore:
    """digits 1, 2 and 3; 1 then 2 promoted (champion 2, previous 1)."""
    store = LocalStore(tmp_path / "store")
    reg = Registry(store, "digits")
    for v in ("1", "2", "3"):
        reg.register(
            v,
            {"run_id": f"run-{v}", "metrics": {"accuracy": 0.9}, "created": "2025-01-0{v}"},
        )
    reg.promote("1")
    reg.promote("2")
    return store


@pytest.mark.parametrize(
    ("spec", "default", "parsed"),
    [
        ("digits", None, ("digits", None)),
        ("digits:3", None, ("digits", "3")),
        ("digits:champion", None, ("digits", "champion")),
        ("digits:previous", "other", ("digits", "previous")),
        # a bare version or alias is one of the default model's (`models show 2`)
        ("2", "digits", ("digits", "2")),
        ("previous", "digits", ("digits", "previous")),
        ("shapes", "digits", ("shapes", None)),
    ],
)
def test_parse(spec, default, parsed):
    assert parse_model_ref(spec, default) == parsed


@pytest.mark.parametrize("spec", ["digits:", ":2", "digits:2:3", "dig its", "../x", ""])
def test_parse_refuses_what_is_no_reference(spec):
    with pytest.raises(RegistryError, match=EXPECTED):
        parse_model_ref(spec)


def test_every_form_resolves_alike(store):
    assert resolve_model_ref(store, "digits") == ModelRef("digits", "2")
    assert resolve_model_ref(store, "digits:champion") == ModelRef("digits", "2")
    assert resolve_model_ref(store, "digits:previous") == ModelRef("digits", "1")
    assert resolve_model_ref(store, "digits:3") == ModelRef("digits", "3")
    assert resolve_model_ref(store, None, "digits") == ModelRef("digits", "2")
    assert resolve_model_ref(store, "3", "digits") == ModelRef("digits", "3")


def test_a_missing_version_says_what_exists(store):
    with pytest.raises(KeyNotFoundError) as e:
        resolve_model_ref(store, "digits:7")
    assert str(e.value) == (
        "model digits:7 does not exist: model 'digits' has versions 1, 2, 3 and aliases "
        f"champion, previous; {EXPECTED}"
    )
    with pytest.raises(KeyNotFoundError, match="model digits:latest does not exist: model"):
        resolve_model_ref(store, "digits:latest")


def test_a_missing_model_names_the_models_there(store):
    with pytest.raises(KeyNotFoundError) as e:
        resolve_model_ref(store, "shapes:1")
    assert f"no model 'shapes' in {store.uri}; models there: digits; {EXPECTED}" in str(e.value)


def test_no_champion_yet_says_what_exists(tmp_path):
    store = LocalStore(tmp_path / "s")
    Registry(store, "fresh").register("1", {"run_id": "r"})
    with pytest.raises(KeyNotFoundError) as e:
        resolve_model_ref(store, "fresh")
    assert "has no champion yet" in str(e.value)
    assert "model 'fresh' has versions 1 and no aliases yet" in str(e.value)


def _cli(store, *args: str) -> list[str]:
    return ["--store", store.uri, *args]


def test_models_show_takes_a_name_a_version_or_both(store, capsys):
    """`models show digits` once read "digits" as a version of digits."""
    for spec, version in (("digits", "2"), ("digits:3", "3"), ("digits:previous", "1"), ("3", "3")):
        assert main(_cli(store, "models", "show", spec)) == 0, spec
        assert json.loads(capsys.readouterr().out)["version"] == version, spec


def test_a_wrong_reference_exits_2_with_what_exists(store, capsys):
    assert main(_cli(store, "models", "show", "digits:9")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model digits:9 does not exist: model 'digits' has versions")
    assert "aliases champion, previous" in err and EXPECTED in err
    assert main(_cli(store, "lineage", "digits:nine")) == 2
    assert "model digits:nine does not exist" in capsys.readouterr().err


def test_models_promote_accepts_name_version(store, capsys):
    assert main(_cli(store, "models", "promote", "digits:3", "--reason", "test")) == 0
    assert json.loads(capsys.readouterr().out)["champion"] == "3"
    assert Registry(store, "digits").aliases()["previous"] == "2"


def test_commands_about_a_whole_model_refuse_a_version(store, capsys):
    assert main(_cli(store, "models", "log", "digits:2")) == 2
    assert "models log acts on a whole model: expected NAME, not 'digits:2'" in (
        capsys.readouterr().err
    )
    assert main(_cli(store, "models", "list", "digits")) == 0
    assert "digits:3" in capsys.readouterr().out
    assert main(_cli(store, "rollback", "digits:2")) == 2
    assert "expected NAME, not 'digits:2'" in capsys.readouterr().err
