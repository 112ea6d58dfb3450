"""Evaluation with scikit-learn's metrics and the promotion gate, on real trained models."""

import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import digits_config
from visionline.config import GateConfig
from visionline.evaluation import compute_metrics, evaluate_run
from visionline.evaluation.gate import decide, gate_run, mcnemar
from visionline.model.runs import RunPaths
from visionline.training.loop import fit
from visionline.training.plan import plan_run


def test_evaluation_outputs(trained_digits):
    store, run_id, _, m = trained_digits
    assert m["accuracy"] >= 0.97
    cm = np.asarray(m["confusion_matrix"])
    assert cm.sum() == m["n"] and np.trace(cm) / m["n"] == pytest.approx(m["accuracy"])
    assert set(m["per_class"]) == {str(i) for i in range(10)}
    assert 0.97 <= m["roc_auc"]["macro"] <= 1.0 and 0.9 <= m["pr_auc"]["macro"] <= 1.0
    out = RunPaths(run_id).evaluation
    for name in ("confusion_matrix.png", "roc.png", "pr.png", "training_curves.png"):
        im = Image.open(io.BytesIO(store.get_bytes(f"{out}/{name}")))
        assert im.format == "PNG" and im.width > 300
    report = store.get_bytes(f"{out}/report.md").decode()
    assert f"| accuracy | {m['accuracy']:.4f} |" in report and "confusion_matrix.png" in report


def test_metrics_on_a_known_case():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [
            [0.9, 0.1, 0],
            [0.2, 0.7, 0.1],
            [0.1, 0.8, 0.1],
            [0.1, 0.6, 0.3],
            [0, 0.2, 0.8],
            [0.5, 0, 0.5],
        ]
    )
    m = compute_metrics(y, probs, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    # the last row ties 0.5/0.5 and argmax takes class a: a is predicted twice, right once
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_gate_passes_a_good_model(trained_digits):
    store, run_id, _, _ = trained_digits
    d = gate_run(store, run_id)
    assert d.passed, d.summary()
    saved = store.get_json(RunPaths(run_id).decision)
    assert saved["passed"] is True and {c["name"] for c in saved["checks"]} >= {
        "accuracy",
        "macro_f1",
        "recall[0]",
    }
    assert all({"value", "threshold", "passed"} <= set(c) for c in saved["checks"])


def _train_weak(store, run_id, epochs, lr):
    cfg = digits_config(
        store.uri,
        **{
            "train.epochs": epochs,
            "train.lr": lr,
            "train.scheduler": "none",
            "train.early_stopping": None,
            "train.optimizer": "sgd",
            "train.momentum": 0.0,
        },
    )
    fit(plan_run(cfg, store, run_id=run_id), store)
    return evaluate_run(store, run_id)


def test_gate_fails_a_weak_model(trained_digits):
    store, *_ = trained_digits
    _train_weak(store, "weak", epochs=1, lr=1e-4)
    d = gate_run(store, "weak")
    assert not d.passed
    failed = {c.name for c in d.checks if not c.passed}
    assert {"accuracy", "macro_f1"} <= failed


def test_worse_challenger_fails_even_when_it_clears_thresholds(trained_digits):
    store, champion, _, champ_metrics = trained_digits
    m = _train_weak(store, "meh", epochs=2, lr=0.05)
    lenient = GateConfig(
        min_accuracy=0.5, min_macro_f1=0.5, min_class_recall=0.0, champion_margin=0.005
    )
    assert m["accuracy"] >= 0.5 and m["accuracy"] < champ_metrics["accuracy"] - 0.02
    alone = gate_run(store, "meh", cfg=lenient)
    assert alone.passed  # clears every threshold...
    against = gate_run(store, "meh", champion_run=champion, cfg=lenient)
    assert not against.passed  # ...but is significantly worse than the champion
    check = next(c for c in against.checks if c.name == "vs_champion_accuracy_diff")
    assert not check.passed and "McNemar" in check.detail


def test_paired_test_lets_noise_pass():
    rng = np.random.default_rng(0)
    champion = rng.random(300) < 0.97
    challenger = champion.copy()
    flip = np.flatnonzero(champion)[:3]  # three more mistakes out of 300: noise
    challenger[flip] = False
    only_champ, only_ch, p = mcnemar(champion, challenger)
    assert (only_champ, only_ch) == (3, 0) and p > 0.05
    metrics = {"accuracy": challenger.mean(), "macro": {"f1": 0.96}, "per_class": {}}
    d = decide(
        "r",
        metrics,
        GateConfig(min_accuracy=0.9, min_macro_f1=0.9, champion_margin=0.005),
        challenger,
        champion,
        champion="c",
    )
    assert d.passed and "within noise" in d.checks[-1].detail
