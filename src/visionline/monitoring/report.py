"""The drift report: markdown with pictures (the drifted features, the class
distribution, the embedding when it drifted), stored under

    monitoring/<model>/reports/<time>/{report.md, report.json, *.png}

The same markdown renders as a Prefect artifact with the pictures inline as PNG data
URIs (``render_markdown`` takes how each picture is linked).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from visionline.monitoring.drift import DriftResult, FeatureTest
from visionline.monitoring.estimate import AccuracyEstimate
from visionline.storage import ArtifactStore


@dataclass
class DriftReport:
    model: str
    version: str
    run_id: str
    source: str  # "captures START..END" or "images DIR"
    reference: str  # "<split> of <dataset>"
    result: DriftResult
    created: str = ""
    start: str | None = None
    end: str | None = None
    # accuracy estimated without labels, or why it cannot be (None: not computed)
    accuracy: AccuracyEstimate | None = None

    def __post_init__(self) -> None:
        self.created = self.created or datetime.now(UTC).isoformat()

    @property
    def drifted(self) -> bool | None:
        return self.result.drifted

    @property
    def verdict(self) -> str:
        if self.drifted is None:
            return "NO VERDICT"
        return "DRIFT" if self.drifted else "NO DRIFT"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        r = self.result
        lines = [
            f"drift check of {self.model}:{self.version} (run {self.run_id})",
            f"  window     {self.source}: {r.n_window} records",
            f"  reference  {self.reference}: {r.n_reference} images",
            f"  verdict    {self.verdict}"
            + (f" ({len(r.drifted_tests)} of {len(r.tests)} tests)" if r.tests else "")
            + (f": {r.note}" if r.note else ""),
        ]
        if self.accuracy is not None:
            lines.append(f"  accuracy   {self.accuracy.line()}")
        if r.tests:
            lines.append(f"  {'feature':<16} {'test':<5} {'p (BH)':>9}  {'effect':>18}  verdict")
            for t in r.tests:
                lines.append(
                    f"  {t.feature:<16} {t.test:<5} {t.p_adjusted:>9.2e}  "
                    f"{t.effect_name} {t.effect:>7.4f} / {t.threshold:<5g}  "
                    f"{'DRIFT' if t.drifted else 'ok'}"
                )
        return "\n".join(lines)


def _test_row(t: FeatureTest) -> str:
    return (
        f"| {t.feature} | {t.test} | {t.statistic:.4g} | {t.p_value:.2e} | {t.p_adjusted:.2e} "
        f"| {t.effect_name} {t.effect:.4f} (threshold {t.threshold:g}) "
        f"| {'**DRIFT**' if t.drifted else 'ok'} |"
    )


def _accuracy_lines(a: AccuracyEstimate) -> list[str]:
    """The estimated accuracy (or the refusal) next to the reference accuracy, and every
    estimator's figure, so a reader can see how far they agree."""
    lines = ["", "## Accuracy estimated without labels", ""]
    if a.answered:
        lines.append(
            f"- estimated accuracy: **{a.estimate:.4f}**, {a.interval:.0%} bootstrap interval "
            f"[{a.low:.4f}, {a.high:.4f}] ({a.method})"
        )
    else:
        lines.append(f"- **accuracy cannot be estimated for this window**: {a.declined}")
    lines.append(f"- reference accuracy (validation split): {a.reference_accuracy:.4f}")
    if a.estimates:
        lines.append(
            "- every estimator: " + ", ".join(f"{k} {v:.4f}" for k, v in a.estimates.items())
        )
    if a.checks:
        lines.append("- validity checks: " + ", ".join(f"{k} {v:.4f}" for k, v in a.checks.items()))
    return lines


def render_markdown(report: DriftReport, images: list[str], link: Callable[[str], str]) -> str:
    """``images``: the picture names; ``link(name)`` says where each one is."""
    r = report.result
    lines = [
        f"# Drift check of {report.model}:{report.version}: {report.verdict}",
        "",
        f"- model run: `{report.run_id}`",
        f"- window: {report.source}, {r.n_window} records",
        f"- reference: {report.reference}, {r.n_reference} images",
        f"- checked: {report.created}",
        f"- false discovery rate (Benjamini-Hochberg): {r.alpha:g}; a test flags drift when "
        "its corrected p-value is under it and its effect reaches the threshold",
    ]
    if report.accuracy is not None:
        lines += _accuracy_lines(report.accuracy)
    if r.note:
        lines += ["", f"> {r.note}"]
    if r.tests:
        lines += [
            "",
            "| feature | test | statistic | p | p (BH) | effect | verdict |",
            "| --- | --- | --- | --- | --- | --- | --- |",
            *(_test_row(t) for t in r.tests),
        ]
    lines.append("")
    for name in images:
        lines += [f"![{name.removesuffix('.png')}]({link(name)})", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- pictures
# matplotlib's object API, not pyplot: no backend to choose, no global figure registry
# to close, safe from any thread.
def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def plot_feature(name: str, reference: np.ndarray, window: np.ndarray, test: FeatureTest) -> bytes:
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    both = np.concatenate([reference, window])
    lo, hi = float(np.min(both)), float(np.max(both))
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 31)
    ax.hist(reference, bins=bins, density=True, alpha=0.55, label=f"reference (n={len(reference)})")
    ax.hist(window, bins=bins, density=True, alpha=0.55, label=f"window (n={len(window)})")
    ax.set(
        title=f"{name}: {test.effect_name} {test.effect:.3f}, p (BH) {test.p_adjusted:.1e}",
        xlabel=name,
        ylabel="density",
    )
    ax.legend(fontsize=8)
    return _png(fig)


def plot_classes(counts: dict[str, dict[str, int]], test: FeatureTest | None) -> bytes:
    classes = list(counts["reference"])
    ref = np.array([counts["reference"][c] for c in classes], float)
    cur = np.array([counts["window"].get(c, 0) for c in classes], float)
    x = np.arange(len(classes))
    fig = Figure(figsize=(max(5, 0.5 * len(classes) + 2), 3.6))
    ax = fig.subplots()
    ax.bar(x - 0.2, ref / max(ref.sum(), 1), 0.4, label="reference")
    ax.bar(x + 0.2, cur / max(cur.sum(), 1), 0.4, label="window")
    ax.set_xticks(x, classes, rotation=45 if len(classes) > 12 else 0)
    title = "predicted class distribution"
    if test is not None:
        title += f": PSI {test.effect:.3f}, p (BH) {test.p_adjusted:.1e}"
    ax.set(title=title, ylabel="share")
    ax.legend(fontsize=8)
    return _png(fig)


def plot_embedding(reference: np.ndarray, window: np.ndarray, test: FeatureTest) -> bytes:
    """Both samples on the reference's first two principal components."""
    mu = reference.mean(0)
    _, _, vt = np.linalg.svd(reference - mu, full_matrices=False)
    a, b = (reference - mu) @ vt[:2].T, (window - mu) @ vt[:2].T
    fig = Figure(figsize=(5, 4.5))
    ax = fig.subplots()
    ax.scatter(a[:, 0], a[:, 1], s=6, alpha=0.5, label="reference")
    ax.scatter(b[:, 0], b[:, 1], s=6, alpha=0.5, label="window")
    ax.set(
        title=f"embedding (PCA of the reference): MMD² {test.effect:.4f}",
        xlabel="PC 1",
        ylabel="PC 2",
    )
    ax.legend(fontsize=8)
    return _png(fig)


def report_images(
    report: DriftReport, reference: pd.DataFrame, window: pd.DataFrame
) -> dict[str, bytes]:
    """The class distribution always; each drifted feature; the embedding if it drifted."""
    r = report.result
    by_feature = {t.feature: t for t in r.tests}
    out = {
        "class_distribution.png": plot_classes(r.class_counts, by_feature.get("predicted_class"))
    }
    for t in r.drifted_tests:
        if t.test == "ks":
            out[f"{t.feature}.png"] = plot_feature(
                t.feature,
                reference[t.feature].to_numpy(float),
                window[t.feature].dropna().to_numpy(float),
                t,
            )
        elif t.test == "mmd":
            out["embedding.png"] = plot_embedding(
                np.stack(reference["embedding"].to_numpy()),
                np.stack(window["embedding"].dropna().to_numpy()),
                t,
            )
    return out


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def report_prefix(model: str, created: str) -> str:
    stamp = datetime.fromisoformat(created).strftime("%Y%m%dT%H%M%S%fZ")
    return f"monitoring/{model}/reports/{stamp}"


def store_report(store: ArtifactStore, report: DriftReport, images: dict[str, bytes]) -> str:
    """Write the report; returns the key of its markdown. report.json goes last."""
    prefix = report_prefix(report.model, report.created)
    for name, png in images.items():
        store.put_bytes(f"{prefix}/{name}", png)
    store.put_bytes(
        f"{prefix}/report.md", render_markdown(report, list(images), lambda n: n).encode()
    )
    store.put_json(f"{prefix}/report.json", report.to_dict())
    return f"{prefix}/report.md"
