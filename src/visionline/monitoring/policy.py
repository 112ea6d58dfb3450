"""The retraining policy, and the decision log every check appends to.

A retrain is asked for when either trigger holds:

- drift in ``policy.drift_windows`` consecutive checked windows of the served version
  (a window without a verdict neither extends nor breaks the run; a retrain starts the
  count again);
- labelled accuracy of the served version under ``policy.min_accuracy``, judged only on
  at least ``policy.min_labels`` labels;
- estimated accuracy (no labels, visionline.monitoring.estimate) whose interval's upper
  bound is under ``policy.min_accuracy`` in ``policy.drift_windows`` consecutive
  windows. A window whose accuracy cannot be estimated is logged as such and counts
  towards this run only when the drift tests flag it too; otherwise it neither extends
  nor breaks the run (nothing is known of its accuracy);

and neither brake does:

- the last retrain (of any version) was less than ``policy.cooldown_hours`` ago;
- ``policy.max_retrains_per_week`` retrains were already asked for in the last 7 days.

Every decision, retrain or hold, is stored with all its reasons and ``evidence``: the
evidence it used (drift tests, estimated accuracy, labelled accuracy), each in words:

    monitoring/<model>/decisions/<time>-<retrain|hold>.json
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from visionline.config import PolicyConfig
from visionline.storage import ArtifactStore


@dataclass
class Decision:
    time: str
    model: str
    version: str
    retrain: bool
    reasons: list[str]
    drifted: bool | None
    drift_streak: int
    labelled: dict[str, Any] | None = None
    report: str | None = None
    window: list[str | None] = field(default_factory=list)
    # the estimate of this window (AccuracyEstimate.to_dict()), None when not computed
    accuracy: dict[str, Any] | None = None
    # True: this window counts as low accuracy (upper bound under min_accuracy, or not
    # estimable and drifted); False: estimated and not low; None: unknown
    accuracy_low: bool | None = None
    accuracy_streak: int = 0
    evidence: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        head = "RETRAIN" if self.retrain else "hold"
        return "\n".join(
            [
                f"{self.time}  {self.model}:{self.version}  {head}",
                *(f"  - {r}" for r in self.reasons),
                "  evidence used: " + "; ".join(self.evidence),
            ]
        )


def _t(d: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(d["time"])


def drift_streak(
    history: list[dict[str, Any]], version: str, drifted: bool | None, key: str = "drifted"
) -> int:
    """Consecutive windows of ``version`` up to now, this one included, whose ``key``
    (``drifted`` or ``accuracy_low``) is true; a None neither extends nor breaks it."""
    if drifted is False:
        return 0
    streak = 1 if drifted else 0
    for d in sorted(history, key=_t, reverse=True):
        if d["retrain"]:
            break
        if d["version"] != version or d.get(key) is None:
            continue
        if not d[key]:
            break
        streak += 1
    return streak


def accuracy_evidence(
    accuracy: dict[str, Any] | None, drifted: bool | None, min_accuracy: float
) -> tuple[bool | None, str]:
    """(counts as low accuracy?, the evidence in words) for one window's estimate."""
    if accuracy is None:
        return None, "estimated accuracy: not computed"
    if accuracy.get("declined"):
        why = f"estimated accuracy: cannot be estimated ({accuracy['declined']})"
        if drifted:
            return True, why + "; counted as low accuracy because the drift tests flag it"
        return None, why + "; not counted: the drift tests do not flag it"
    est, high = float(accuracy["estimate"]), float(accuracy["high"])
    text = f"estimated accuracy {est:.4f} [{float(accuracy['low']):.4f}, {high:.4f}]"
    if high < min_accuracy:
        return True, f"{text}: upper bound under {min_accuracy:g}"
    return False, f"{text}: upper bound reaches {min_accuracy:g}"


def _judge_estimate(
    policy: PolicyConfig,
    streak: int,
    said: str,
    estimated: bool,
    triggers: list[str],
    notes: list[str],
) -> None:
    """The estimated-accuracy trigger: a run of ``drift_windows`` low windows."""
    if streak >= policy.drift_windows:
        triggers.append(
            f"estimated accuracy low in {streak} consecutive windows (upper bound under "
            f"{policy.min_accuracy:g}, policy: {policy.drift_windows}); this window: {said}"
        )
    elif estimated:
        notes.append(f"{said}; {streak} consecutive low window(s)")


def _judge_labels(
    policy: PolicyConfig,
    labelled: dict[str, Any] | None,
    triggers: list[str],
    notes: list[str],
) -> str:
    """The labelled-accuracy trigger; returns the evidence in words."""
    n = int(labelled["n"]) if labelled else 0
    evidence_text = (
        f"labelled accuracy: {labelled['accuracy']:.4f} on {n} labels"
        if labelled and n
        else "labelled accuracy: no labels"
    )
    if n >= policy.min_labels:
        acc = float(labelled["accuracy"])  # type: ignore[index]
        if acc < policy.min_accuracy:
            triggers.append(
                f"labelled accuracy {acc:.4f} on {n} labels is under {policy.min_accuracy:g}"
            )
        else:
            notes.append(f"labelled accuracy {acc:.4f} on {n} labels (>= {policy.min_accuracy:g})")
    else:
        notes.append(f"{n} labels, fewer than {policy.min_labels}: accuracy not judged")
    return evidence_text


def decide(
    policy: PolicyConfig,
    now: datetime,
    model: str,
    version: str,
    drifted: bool | None,
    labelled: dict[str, Any] | None,
    history: list[dict[str, Any]],
    report: str | None = None,
    window: tuple[datetime, datetime] | None = None,
    accuracy: dict[str, Any] | None = None,
) -> Decision:
    """Apply the policy to this check (``drifted``: the window's verdict, None when it
    had too few records; ``labelled``: ``{"n", "accuracy"}`` of the served version;
    ``accuracy``: the window's AccuracyEstimate as a dict) and the earlier decisions
    for this model."""
    triggers: list[str] = []
    notes: list[str] = []
    streak = drift_streak(history, version, drifted)
    verdict = {True: "drift", False: "no drift", None: "no verdict"}[drifted]
    evidence = [f"drift tests: {verdict}"]
    if streak >= policy.drift_windows:
        triggers.append(f"drift in {streak} consecutive windows (policy: {policy.drift_windows})")
    else:
        notes.append(
            f"this window: {verdict}; {streak} consecutive drifted window(s), "
            f"retrain at {policy.drift_windows}"
        )
    low, said = accuracy_evidence(accuracy, drifted, policy.min_accuracy)
    evidence.append(said)
    acc_streak = drift_streak(history, version, low, key="accuracy_low")
    _judge_estimate(policy, acc_streak, said, accuracy is not None, triggers, notes)
    evidence.append(_judge_labels(policy, labelled, triggers, notes))

    brakes: list[str] = []
    if triggers:
        retrains = sorted((d for d in history if d["retrain"]), key=_t)
        if retrains:
            last = _t(retrains[-1])
            if now - last < timedelta(hours=policy.cooldown_hours):
                hours = (now - last).total_seconds() / 3600
                brakes.append(
                    f"cooldown: the last retrain was {hours:.1f} h ago "
                    f"(policy: {policy.cooldown_hours:g} h)"
                )
        week = [d for d in retrains if now - _t(d) < timedelta(days=7)]
        if len(week) >= policy.max_retrains_per_week:
            brakes.append(
                f"{len(week)} retrains in the last 7 days "
                f"(policy: at most {policy.max_retrains_per_week})"
            )
    return Decision(
        time=now.astimezone(UTC).isoformat(),
        model=model,
        version=version,
        retrain=bool(triggers) and not brakes,
        reasons=triggers + brakes + notes,
        drifted=drifted,
        drift_streak=streak,
        labelled=labelled,
        report=report,
        window=[w.isoformat() for w in window] if window else [],
        accuracy=accuracy,
        accuracy_low=low,
        accuracy_streak=acc_streak,
        evidence=evidence,
    )


def decisions_prefix(model: str) -> str:
    return f"monitoring/{model}/decisions/"


def record_decision(store: ArtifactStore, decision: Decision) -> str:
    stamp = datetime.fromisoformat(decision.time).strftime("%Y%m%dT%H%M%S%fZ")
    key = f"{decisions_prefix(decision.model)}{stamp}-{'retrain' if decision.retrain else 'hold'}.json"
    store.put_json(key, decision.to_dict())
    return key


def decision_log(store: ArtifactStore, model: str) -> list[dict[str, Any]]:
    """Every decision for ``model``, oldest first."""
    return [store.get_json(k) for k in store.list(decisions_prefix(model)) if k.endswith(".json")]
