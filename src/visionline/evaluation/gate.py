"""The promotion gate: absolute thresholds, then a paired comparison with the champion.

The champion comparison uses McNemar's exact test on the two models' per-image
correctness over the same test images: a challenger fails only when it is worse by more
than ``champion_margin`` *and* the paired test says the difference is not noise.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from scipy.stats import binomtest

from visionline.config import GateConfig
from visionline.data.manifest import DatasetRef
from visionline.evaluation.metrics import evaluate_on_test
from visionline.evaluation.run import ensure_evaluated, load_predictions
from visionline.model.predictor import Predictor
from visionline.model.runs import RunPaths, load_run_config, load_run_info
from visionline.registry import Registry
from visionline.storage import ArtifactStore

log = logging.getLogger(__name__)


@dataclass
class GateCheck:
    name: str
    value: float | None
    threshold: float | None
    passed: bool
    detail: str = ""


@dataclass
class Decision:
    run_id: str
    passed: bool
    checks: list[GateCheck] = field(default_factory=list)
    champion: str | None = None
    decided_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"gate for {self.run_id}: {'PASS' if self.passed else 'FAIL'}"]
        for c in self.checks:
            v = "n/a" if c.value is None else f"{c.value:.4f}"
            t = "" if c.threshold is None else f" (threshold {c.threshold:.4f})"
            lines.append(
                f"  [{'pass' if c.passed else 'FAIL'}] {c.name}: {v}{t} {c.detail}".rstrip()
            )
        return "\n".join(lines)


def mcnemar(champion_correct: np.ndarray, challenger_correct: np.ndarray) -> tuple[int, int, float]:
    """Discordant counts (champion-only right, challenger-only right) and the exact p-value."""
    a = np.asarray(champion_correct, dtype=bool)
    b = np.asarray(challenger_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError("paired test needs predictions on the same images")
    only_champion = int((a & ~b).sum())
    only_challenger = int((~a & b).sum())
    n = only_champion + only_challenger
    p = 1.0 if n == 0 else float(binomtest(only_champion, n, 0.5).pvalue)
    return only_champion, only_challenger, p


def threshold_checks(metrics: dict, cfg: GateConfig) -> list[GateCheck]:
    checks = [
        GateCheck(
            "accuracy",
            metrics["accuracy"],
            cfg.min_accuracy,
            metrics["accuracy"] >= cfg.min_accuracy,
        ),
        GateCheck(
            "macro_f1",
            metrics["macro"]["f1"],
            cfg.min_macro_f1,
            metrics["macro"]["f1"] >= cfg.min_macro_f1,
        ),
    ]
    for cls, v in metrics["per_class"].items():
        checks.append(
            GateCheck(
                f"recall[{cls}]",
                v["recall"],
                cfg.min_class_recall,
                v["recall"] >= cfg.min_class_recall,
            )
        )
    return checks


def champion_check(
    challenger_correct: np.ndarray, champion_correct: np.ndarray, cfg: GateConfig, champion: str
) -> GateCheck:
    acc_ch = float(np.mean(challenger_correct))
    acc_champ = float(np.mean(champion_correct))
    diff = acc_ch - acc_champ
    only_champ, only_ch, p = mcnemar(champion_correct, challenger_correct)
    worse = diff < -cfg.champion_margin
    significant = p < cfg.significance
    passed = not (worse and significant)
    detail = (
        f"challenger {acc_ch:.4f} vs champion {champion} {acc_champ:.4f} on the same "
        f"{len(challenger_correct)} images; discordant {only_champ}/{only_ch}, McNemar p={p:.4g}"
    )
    if worse and not significant:
        detail += " (worse, but within noise)"
    return GateCheck("vs_champion_accuracy_diff", diff, -cfg.champion_margin, passed, detail)


def decide(
    run_id: str,
    metrics: dict,
    cfg: GateConfig,
    challenger_correct: np.ndarray | None = None,
    champion_correct: np.ndarray | None = None,
    champion: str | None = None,
) -> Decision:
    checks = threshold_checks(metrics, cfg)
    if champion is not None and champion_correct is not None and challenger_correct is not None:
        checks.append(champion_check(challenger_correct, champion_correct, cfg, champion))
    return Decision(run_id, all(c.passed for c in checks), checks, champion)


def stored_decision(
    store: ArtifactStore, run_id: str, champion_run: str | None, cfg: GateConfig
) -> Decision | None:
    """The decision already stored for the same question (thresholds, champion): the
    same question has the same answer, so it is not decided again."""
    key = RunPaths(run_id).decision
    if not store.exists(key):
        return None
    prior = store.get_json(key)
    if prior.get("champion") != champion_run or prior.get("gate_config") != cfg.model_dump():
        return None
    return Decision(
        prior["run_id"],
        prior["passed"],
        [GateCheck(**c) for c in prior["checks"]],
        prior["champion"],
        prior["decided_at"],
    )


def classes_mismatch(
    run_id: str, metrics: dict, cfg: GateConfig, champion_run: str, theirs: list, ours: list
) -> Decision:
    """A failed decision: a champion with other classes cannot be compared with."""
    mismatch = GateCheck(
        "vs_champion_classes",
        None,
        None,
        False,
        f"champion {champion_run} has classes {theirs}, challenger {ours}: not comparable",
    )
    return Decision(run_id, False, [*threshold_checks(metrics, cfg), mismatch], champion_run)


def gate_run(
    store: ArtifactStore,
    run_id: str,
    champion_run: str | None = None,
    cfg: GateConfig | None = None,
) -> Decision:
    """Gate a finished run (evaluated here if it is not yet); the champion (a run id) is
    re-evaluated on the challenger's own test images so the paired test compares like
    with like."""
    paths = RunPaths(run_id)
    run_cfg = load_run_config(store, run_id)
    cfg = cfg or run_cfg.gate
    if champion_run == run_id:
        champion_run = None  # the champion already is this run (a re-run): nothing to compare
    prior = stored_decision(store, run_id, champion_run, cfg)
    if prior is not None:
        log.info("%s (decided before)", prior.summary())
        return prior
    metrics = ensure_evaluated(store, run_id)
    challenger_correct = champion_correct = None
    if champion_run:
        info = load_run_info(store, run_id)
        champion = Predictor.from_run(store, champion_run)
        if champion.classes != info["classes"]:
            decision = classes_mismatch(
                run_id, metrics, cfg, champion_run, champion.classes, info["classes"]
            )
            store.put_json(paths.decision, {**decision.to_dict(), "gate_config": cfg.model_dump()})
            return decision
        theirs = evaluate_on_test(
            store, champion, run_cfg, DatasetRef(info["dataset_name"], info["dataset_version"])
        ).to_frame()
        paired = load_predictions(store, run_id).merge(
            theirs, on="source", suffixes=("", "_champion")
        )
        challenger_correct = paired["correct"].to_numpy()
        champion_correct = paired["correct_champion"].to_numpy()
    decision = decide(run_id, metrics, cfg, challenger_correct, champion_correct, champion_run)
    store.put_json(paths.decision, {**decision.to_dict(), "gate_config": cfg.model_dump()})
    log.info("%s", decision.summary())
    return decision


def champion_run_id(store: ArtifactStore, model_name: str) -> str | None:
    """The run behind the current champion of ``model_name``, if there is one."""
    reg = Registry(store, model_name)
    version = reg.aliases().get("champion")
    return reg.info(version)["run_id"] if version else None
