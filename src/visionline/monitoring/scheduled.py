"""One scheduled monitoring pass: the latest window of the champion's captures against
its reference, its labelled accuracy, and the retraining decision, recorded. The
caller (the Prefect flow) acts on the decision; nothing here starts a retrain."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from visionline.config import PipelineConfig
from visionline.monitoring.check import CheckOutcome, check_window, resolve_model
from visionline.monitoring.labels import labelled_quality
from visionline.monitoring.policy import Decision, decide, decision_log, record_decision
from visionline.monitoring.report import data_uri, render_markdown
from visionline.storage import ArtifactStore


@dataclass
class MonitorPass:
    outcome: CheckOutcome
    decision: Decision
    decision_key: str

    def markdown_inline(self) -> str:
        """The report with its pictures inline (PNG data URIs: Prefect's UI renders
        them), followed by the decision and its reasons."""
        uris = {name: data_uri(png) for name, png in self.outcome.images.items()}
        d = self.decision
        return (
            render_markdown(self.outcome.report, list(uris), uris.__getitem__)
            + f"\n## Retraining decision: {'RETRAIN' if d.retrain else 'hold'}\n\n"
            + "\n".join(f"- {r}" for r in d.reasons)
            + "\n\nEvidence used:\n\n"
            + "\n".join(f"- {e}" for e in d.evidence)
            + "\n"
        )


def scheduled_check(
    store: ArtifactStore,
    cfg: PipelineConfig,
    now: datetime | None = None,
    window_hours: float | None = None,
    model: str | None = None,
) -> MonitorPass:
    """Check the window ending ``now`` (``monitor.window_hours`` long) of the champion
    of ``model`` (default ``serve.model_name``), then apply the policy and log it."""
    now = now or datetime.now(UTC)
    start = now - timedelta(hours=window_hours or cfg.monitor.window_hours)
    ref, _ = resolve_model(store, model or cfg.serve.model_name)
    outcome = check_window(store, cfg, str(ref), start, now)
    quality = labelled_quality(store, ref.name, ref.version)
    decision = decide(
        cfg.monitor.policy,
        now,
        ref.name,
        ref.version,
        outcome.report.drifted,
        {"n": quality["n"], "accuracy": quality["accuracy"]},
        decision_log(store, ref.name),
        report=outcome.report_key,
        window=(start, now),
        accuracy=outcome.report.accuracy.to_dict() if outcome.report.accuracy else None,
    )
    return MonitorPass(outcome, decision, record_decision(store, decision))
