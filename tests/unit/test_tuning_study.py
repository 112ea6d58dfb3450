"""The search's pieces without training: the tune: config, how trial parameters become
a run's config, the study journal in the store (both backends), reports and plots."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import REPO
from visionline.config import load_config, parse_config
from visionline.data.manifest import DatasetRef
from visionline.errors import ConfigError, TuningError
from visionline.tuning import (
    StoreJournal,
    StudyPaths,
    base_params,
    budget_overrides,
    load_study,
    param_importances,
    plot_history,
    plot_importances,
    report_epochs,
    study_in_store,
    study_name,
    suggest,
    trial_config,
    trial_overrides,
    trials_markdown,
)
from visionline.tuning.study import _pruner

PNG = b"\x89PNG\r\n\x1a\n"
DIGITS = load_config(REPO / "configs" / "digits.yaml")


def _cfg(tune: dict) -> dict:
    return {"data": {"dataset": "d"}, "tune": tune}


@pytest.mark.parametrize(
    ("tune", "where"),
    [
        ({"space": {"lr": {"low": 0.1, "high": 0.01}}}, "tune.space.lr"),
        ({"space": {"lr": {"low": 0, "high": 0.01, "log": True}}}, "tune.space.lr"),
        ({"space": {"weight_decay": {"low": -1, "high": 0.01}}}, "weight_decay"),
        ({"space": {"label_smoothing": {"low": 0, "high": 1.0}}}, "label_smoothing"),
        ({"space": {"architectures": [{"arch": "resnet18"}, {"arch": "resnet18"}]}}, "duplicate"),
        ({"space": {"architectures": []}}, "tune.space.architectures"),
        ({"space": {"architectures": [{"arch": "vgg16"}]}}, "tune.space.architectures.0.arch"),
        ({"space": {"optimizers": ["adam", "lion"]}}, "tune.space.optimizers.1"),
        ({"space": {"batch_sizes": [32, 32]}}, "duplicate"),
        ({"metric": "test_accuracy"}, "tune.metric"),
        ({"pruner": {"kind": "asha"}}, "tune.pruner.kind"),
        ({"n_trials": 0}, "tune.n_trials"),
        ({"timeout_s": 0}, "tune.timeout_s"),
        ({"parallel": 0}, "tune.parallel"),
        ({"trials": 3}, "tune.trials: unknown key"),
    ],
)
def test_bad_tune_section_names_the_key(tune, where):
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        parse_config(_cfg(tune))


def test_budget_from_the_command_line_is_validated_like_the_file():
    with pytest.raises(ConfigError, match=r"tune\.n_trials"):
        DIGITS.with_overrides(**budget_overrides(trials=0))
    cfg = DIGITS.with_overrides(**budget_overrides(trials=3, timeout_s=60.0))
    assert (cfg.tune.n_trials, cfg.tune.timeout_s, cfg.tune.parallel) == (3, 60.0, None)


def test_the_search_is_not_a_training_input():
    """A trial's run id must not move when the search around it changes."""
    other = DIGITS.with_overrides(
        **{"tune.n_trials": 50, "tune.space.lr": None, "compute.threads": 1}
    )
    assert other.fingerprint() == DIGITS.fingerprint()


def test_the_first_trial_is_the_config_as_written():
    params, outside = base_params(DIGITS)
    assert outside == []
    assert params["model"] == "simple_cnn" and params["lr"] == DIGITS.train.lr
    # the same fingerprint, hence the same run id as `visionline train`
    assert trial_config(DIGITS, params).fingerprint() == DIGITS.fingerprint()


def test_base_values_outside_the_space_are_named():
    cfg = DIGITS.with_overrides(
        **{"train.lr": 0.5, "train.optimizer": "rmsprop", "tune.space.batch_sizes": None}
    )
    params, outside = base_params(cfg)
    assert set(outside) == {"lr", "optimizer"}
    assert "lr" not in params and "batch_size" not in params


def test_trial_parameters_become_config_keys():
    cfg = DIGITS.with_overrides(
        **{
            "tune.space.architectures": [
                {"arch": "simple_cnn"},
                {"arch": "resnet18", "pretrained": "/w/r18.pt", "freeze_backbone_epochs": 2},
            ],
            "tune.epochs": 5,
        }
    )
    o = trial_overrides(
        cfg,
        {
            "model": "resnet18+pretrained",
            "optimizer": "sgd",
            "lr": 0.02,
            "batch_size": 32,
            "augment_strength": 0.5,
            "scheduler": "cosine",
        },
    )
    assert o["model.arch"] == "resnet18" and o["model.pretrained"] == "/w/r18.pt"
    assert o["model.freeze_backbone_epochs"] == 2
    assert (o["train.optimizer"], o["train.lr"], o["train.batch_size"]) == ("sgd", 0.02, 32)
    assert o["train.scheduler"] == "cosine" and o["train.epochs"] == 5
    # half the configured augmentation: rotation halved, crop range halved towards 1
    assert o["augment.rotation_degrees"] == pytest.approx(DIGITS.augment.rotation_degrees / 2)
    low = DIGITS.augment.crop_scale[0]
    assert o["augment.crop_scale"][0] == pytest.approx(1 - (1 - low) / 2)
    tc = trial_config(cfg, {"model": "simple_cnn", "augment_strength": 0.0})
    assert tc.augment.rotation_degrees == 0 and tc.augment.crop_scale == (1.0, 1.0)
    with pytest.raises(TuningError, match="resnet50"):
        trial_overrides(cfg, {"model": "resnet50"})


def test_study_name_is_the_search_not_its_budget():
    ref = DatasetRef("digits", "0123456789ab")
    name = study_name(DIGITS, ref)
    assert name.startswith("digits-cnn-0123456789ab-")
    budget = DIGITS.with_overrides(
        **{"tune.n_trials": 99, "tune.timeout_s": 5, "tune.parallel": 3, "store": "/x"}
    )
    assert study_name(budget, ref) == name
    assert study_name(DIGITS.with_overrides(**{"tune.seed": 1}), ref) != name
    assert study_name(DIGITS, DatasetRef("digits", "ba9876543210")) != name


def _study(store, name="s"):
    return study_in_store(
        store,
        name,
        sampler=optuna.samplers.TPESampler(seed=0),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1),
    )


def test_study_journal_in_the_store_survives_the_process(store):
    """Both backends: the study read back by a new tuner is the one written, including a
    trial that was running (it can be continued, reported to and pruned)."""
    space = DIGITS.tune.space
    first = _study(store)
    done = first.ask()
    suggest(done, space)
    for epoch, acc in enumerate([0.5, 0.8, 0.9], start=1):
        done.report(acc, epoch)
    first.tell(done, 0.9)
    running = first.ask()
    params = suggest(running, space)
    running.set_user_attr("run_id", "r-1")
    running.report(0.1, 1)

    again = load_study(store, "s")
    assert [t.state for t in again.trials] == [TrialState.COMPLETE, TrialState.RUNNING]
    assert again.trials[1].params == params and again.trials[1].user_attrs["run_id"] == "r-1"
    assert again.trials[0].intermediate_values == {1: 0.5, 2: 0.8, 3: 0.9}

    resumed = _study(store)
    trial = optuna.Trial(resumed, resumed.trials[1]._trial_id)
    trial.report(0.1, 2)
    assert trial.should_prune()  # 0.1 against the finished trial's 0.8 at epoch 2
    resumed.tell(trial, state=TrialState.PRUNED)
    assert load_study(store, "s").trials[1].state == TrialState.PRUNED


def test_a_second_writer_is_refused_not_interleaved(store):
    a = _study(store)
    b = _study(store)  # another tuner on the same study, started meanwhile
    a.ask()
    before = store.get_bytes(StudyPaths("s").journal)
    with pytest.raises(TuningError, match="changed by another process"):
        b.ask()
    assert store.get_bytes(StudyPaths("s").journal) == before
    assert len(load_study(store, "s").trials) == 1


def test_a_broken_journal_names_its_line(store):
    key = StudyPaths("s").journal
    store.put_bytes(key, b'{"op_code": 0}\n{not json\n')
    with pytest.raises(TuningError, match=r"line 2 is not JSON"):
        StoreJournal(store, key)
    with pytest.raises(TuningError, match="no study 'other'"):
        load_study(store, "other")


def _finished_study(n: int) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    for i in range(n):
        t = study.ask()
        p = suggest(t, DIGITS.tune.space)
        # a made-up response surface: a higher lr and the small CNN are better
        value = 0.5 + 30 * p["lr"] + (0.1 if p["model"] == "simple_cnn" else 0.0)
        t.report(value / 2, 1)
        study.tell(t, value if i % 3 else None, state=None if i % 3 else TrialState.PRUNED)
    return study


def test_plots_with_enough_trials_rank_the_parameters():
    study = _finished_study(12)
    imp = param_importances(study)
    assert max(imp, key=imp.get) == "lr"
    assert plot_importances(study, "val_accuracy").startswith(PNG)
    assert plot_history(study, "val_accuracy").startswith(PNG)


def test_plots_with_too_few_trials_fall_back():
    study = _finished_study(2)  # one pruned, one finished: no importances yet
    assert param_importances(study) == {}
    assert plot_importances(study, "val_accuracy").startswith(PNG)
    assert plot_history(study, "val_accuracy").startswith(PNG)


def test_trials_table_marks_best_base_and_interrupted():
    rows = [
        {
            "number": 0,
            "state": "COMPLETE",
            "params": {"model": "simple_cnn", "lr": 0.003},
            "value": 0.97,
            "epochs": 30,
            "wall_s": 61.0,
            "run_id": "r0",
            "base": True,
        },
        {
            "number": 1,
            "state": "RUNNING",
            "params": {"model": "resnet18", "lr": 0.0004},
            "value": None,
            "epochs": 2,
            "wall_s": 9.0,
            "run_id": "r1",
            "base": False,
        },
    ]
    md = trials_markdown(rows, "val_accuracy", best_number=0)
    lines = md.splitlines()
    assert lines[0].split(" | ")[2:4] == ["model", "lr"]
    assert "0 (base) | complete (best) | simple_cnn | 0.003 | 0.9700 | 30 | 61 | `r0`" in md
    assert "| 1 | interrupted | resnet18 |" in md
    assert json.dumps(rows)  # the table is plain data (also the flow's artifact)


def test_a_write_interrupted_between_hash_and_data_is_not_corruption(tmp_path):
    """A local store writes an object's hash sidecar, then the object: a tuner killed
    between the two leaves the old journal under a new hash. The journal still loads
    and the next search goes on writing it."""
    from visionline.storage import LocalStore

    store = LocalStore(tmp_path)
    study = _study(store)
    study.ask()
    key = StudyPaths("s").journal
    (tmp_path / ".sha256" / key).write_text("0" * 64)  # the hash of a write that never landed
    again = _study(store)
    again.ask()
    assert len(load_study(store, "s").trials) == 2


@pytest.mark.parametrize("kind", ["median", "hyperband"])
def test_configured_pruners_stop_a_hopeless_trial(kind):
    """What the tuner asks of a pruner, per epoch: good trials run on, a trial far
    behind them at the same epoch is stopped."""
    cfg = DIGITS.with_overrides(
        **{"tune.pruner": {"kind": kind, "startup_trials": 1, "warmup_epochs": 1}}
    )
    study = optuna.create_study(
        direction="maximize", pruner=_pruner(cfg.tune, epochs=9), study_name="p"
    )
    # finished trials that learned (enough for each of Hyperband's brackets to have some)
    for _ in range(12):
        t = study.ask()
        rows = [{"epoch": e, "val_accuracy": 0.5 + e * 0.05} for e in range(1, 10)]
        report_epochs(t, rows, "val_accuracy", set())
        study.tell(t, 0.95)
    hopeless = study.ask()
    reported: set[int] = set()
    pruned_at = None
    for epoch in range(1, 10):
        if report_epochs(
            hopeless, [{"epoch": epoch, "val_accuracy": 0.1}], "val_accuracy", reported
        ):
            pruned_at = epoch
            break
    assert pruned_at is not None and pruned_at < 9
    assert study.trials[-1].intermediate_values == {e: 0.1 for e in range(1, pruned_at + 1)}
