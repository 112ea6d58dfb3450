"""Does labelling what the strategy chose pay more than labelling at random?

A labelling queue built with ``--control`` holds two arms of the same captures: the
images the strategy chose and a uniform random sample of the others
(``visionline.monitoring.labels``); ``labels import`` lists each arm's new images in the
new dataset version (``visionline.monitoring.label_import``). This module measures the
arms on equal terms: it trains two models with the served model's own run config, one
on its dataset plus the first ``n`` chosen images (queue order: the most informative
first), one on its dataset plus the first ``n`` control images, ``n`` the smaller arm,
every added image in the train split. Both are evaluated on the base dataset's test
split, where the served model was evaluated, so the three models answer the same
images.

The accuracy gain per label of an arm is (its accuracy - the served model's) / n; the
interval is a paired bootstrap over the test images (the same resampled images for the
three models). It covers which test images were drawn, not which labels were drawn nor
training noise: resampling the label sets would mean training again for each resample,
and a paired test-image bootstrap is what the gate's comparison already uses. The arm
runs are ordinary runs named by their dataset version and config, so a report made
again reuses them.

    monitoring/<model>/label-reports/<time>/{report.json, report.md, gain.png}
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from visionline.config import PipelineConfig, SplitConfig
from visionline.data.ingest import dataset_version
from visionline.data.manifest import DatasetRef, latest_key, manifest_to_bytes, read_manifest
from visionline.errors import MonitoringError
from visionline.evaluation.plots import png
from visionline.evaluation.run import ensure_evaluated, load_predictions
from visionline.model.runs import load_run_config, load_run_info
from visionline.monitoring.check import resolve_model
from visionline.storage import ArtifactStore
from visionline.training.loop import fit
from visionline.training.plan import plan_run

log = logging.getLogger(__name__)

BOOTSTRAP = 2000


@dataclass
class LabelReport:
    model: str
    labelled: DatasetRef  # the imported version whose arms are compared
    result: dict[str, Any]
    prefix: str

    def summary(self) -> str:
        r = self.result
        lines = [
            f"labelling report for {self.model}: {r['labels_per_arm']} labels per arm "
            f"(from {self.labelled}), {r['test_images']} test images",
            f"  served model         accuracy {r['base']['accuracy']:.4f}",
        ]
        for arm in ("chosen", "control"):
            a = r["arms"][arm]
            lo, hi = a["gain_per_label_interval"]
            lines.append(
                f"  + {arm:<8} labels    accuracy {a['accuracy']:.4f}  gain per label "
                f"{a['gain_per_label']:+.5f} [{lo:+.5f}, {hi:+.5f}]  (run {a['run_id']})"
            )
        d = r["difference"]
        lo, hi = d["per_label_interval"]
        lines.append(
            f"  chosen - control     per label {d['per_label']:+.5f} [{lo:+.5f}, {hi:+.5f}] "
            f"(95% paired bootstrap over test images): {d['verdict']}"
        )
        return "\n".join(lines)


def labelled_version(store: ArtifactStore, base: DatasetRef, spec: str | None) -> DatasetRef:
    """The imported version whose arms to compare: ``spec`` (a version), else the newest
    version descending from ``base`` that lists arms."""
    if spec:
        ref = DatasetRef(base.name, spec)
        if not store.exists(ref.info_key) or "arms" not in store.get_json(ref.info_key):
            raise MonitoringError(f"dataset {ref} lists no labelling arms (see labels import)")
        return ref
    version = store.get_bytes(latest_key(base.name)).decode().strip()
    while version and version != base.version:
        info = store.get_json(DatasetRef(base.name, version).info_key)
        if "arms" in info:
            return DatasetRef(base.name, version)
        version = info.get("parent")
    raise MonitoringError(
        f"no labels with a control arm imported into {base.name} since {base} (the served "
        "model's data): run `visionline label-queue MODEL --control 0.2`, label the queue "
        "and `visionline labels import` it first"
    )


def arm_dataset(
    store: ArtifactStore, base: DatasetRef, labelled: pd.DataFrame, shas: list[str], arm: str
) -> DatasetRef:
    """``base`` plus the images ``shas`` (all in the train split), as a dataset version
    that is never the newest: it exists to train one arm."""
    base_info = store.get_json(base.info_key)
    rows = labelled[labelled["sha256"].isin(shas)].drop_duplicates("sha256").copy()
    rows["split"] = "train"
    merged = pd.concat([read_manifest(store, base), rows], ignore_index=True)
    ratios = SplitConfig(**base_info["split_ratios"])
    ref = DatasetRef(base.name, dataset_version(merged, ratios, list(base_info["classes"])))
    if not store.exists(ref.manifest_key):
        info = {k: v for k, v in base_info.items() if k != "arms"}
        info.update(version=ref.version, parent=base.version, arm=arm, added=len(rows))
        info.update(images=len(merged), created=datetime.now(UTC).isoformat())
        store.put_json(ref.info_key, info)
        store.put_bytes(ref.manifest_key, manifest_to_bytes(merged))  # the commit marker
    return ref


def train_arm(store: ArtifactStore, cfg: PipelineConfig, ref: DatasetRef) -> str:
    """One arm's run (trained once; a finished one is recognised), evaluated."""
    plan = plan_run(cfg, store, dataset=ref)
    fit(plan, store)
    ensure_evaluated(store, plan.run_id)
    return plan.run_id


def _correct(store: ArtifactStore, run_id: str) -> pd.Series:
    p = load_predictions(store, run_id)
    return p.set_index("source")["correct"].astype(float)


def compare_arms(base: pd.Series, chosen: pd.Series, control: pd.Series, n: int, seed: int = 0):
    """Accuracies and per-label gains with 95% paired bootstrap intervals over the test
    images (one resample of image indices serves all three models)."""
    frame = pd.concat({"base": base, "chosen": chosen, "control": control}, axis=1).dropna()
    if frame.empty:
        raise MonitoringError("the arm models and the served model share no test image")
    a = frame.to_numpy()  # (images, 3)
    idx = np.random.default_rng(seed).integers(0, len(a), size=(BOOTSTRAP, len(a)))
    acc = a[idx].mean(axis=1)  # (BOOTSTRAP, 3)

    def interval(samples: np.ndarray) -> list[float]:
        return [float(np.quantile(samples, 0.025)), float(np.quantile(samples, 0.975))]

    point = a.mean(axis=0)
    arms = {
        arm: {
            "accuracy": float(point[j]),
            "accuracy_interval": interval(acc[:, j]),
            "gain_per_label": float((point[j] - point[0]) / n),
            "gain_per_label_interval": interval((acc[:, j] - acc[:, 0]) / n),
        }
        for j, arm in ((1, "chosen"), (2, "control"))
    }
    lo, hi = interval((acc[:, 1] - acc[:, 2]) / n)
    verdict = (
        "the chosen labels helped more than random ones"
        if lo > 0
        else "random labels helped more than the chosen ones"
        if hi < 0
        else "no difference shown between chosen and random labels"
    )
    return {
        "test_images": len(a),
        "labels_per_arm": n,
        "base": {"accuracy": float(point[0]), "accuracy_interval": interval(acc[:, 0])},
        "arms": arms,
        "difference": {
            "per_label": float((point[1] - point[2]) / n),
            "per_label_interval": [lo, hi],
            "verdict": verdict,
        },
        "interval": f"95% percentile, paired bootstrap over test images ({BOOTSTRAP} resamples)",
    }


def plot_arms(result: dict[str, Any]) -> bytes:
    """Accuracy of the served model and of each arm, with the bootstrap intervals."""
    names = ["served", "+ chosen", "+ control"]
    parts = [result["base"], result["arms"]["chosen"], result["arms"]["control"]]
    acc = np.array([p["accuracy"] for p in parts])
    err = np.array(
        [
            [a - p["accuracy_interval"][0], p["accuracy_interval"][1] - a]
            for a, p in zip(acc, parts, strict=True)
        ]
    ).T
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    ax.bar(names, acc, yerr=err, capsize=6, color=["#999999", "#1f77b4", "#ff7f0e"])
    ax.set_ylabel("test accuracy")
    ax.set_ylim(max(0.0, float(acc.min()) - 0.2), 1.0)
    ax.set_title(f"{result['labels_per_arm']} labels per arm, {result['test_images']} test images")
    return png(fig)


def label_report(
    store: ArtifactStore, cfg: PipelineConfig, spec: str, dataset_version_: str | None = None
) -> LabelReport:
    """Train both arms of the newest labelled queue (or of ``dataset_version_``), compare
    them with the served model ``spec`` and store the report."""
    ref, info = resolve_model(store, spec)
    run = load_run_info(store, info["run_id"])
    base = DatasetRef(run["dataset_name"], run["dataset_version"])
    labelled = labelled_version(store, base, dataset_version_)
    arms = store.get_json(labelled.info_key)["arms"]
    n = min(len(arms.get("chosen", [])), len(arms.get("control", [])))
    if n == 0:
        raise MonitoringError(
            f"dataset {labelled} has {len(arms.get('chosen', []))} chosen and "
            f"{len(arms.get('control', []))} control labels: both arms need some"
        )
    # the served model's own recipe, run where this config says (store, cache)
    run_cfg = load_run_config(store, info["run_id"]).with_overrides(
        store=cfg.store, **{"data.cache_dir": cfg.data.cache_dir}
    )
    manifest = read_manifest(store, labelled)
    runs = {}
    for arm in ("chosen", "control"):
        data = arm_dataset(store, base, manifest, arms[arm][:n], arm)
        log.info("training arm %s: %s plus %d labels", arm, base, n)
        runs[arm] = train_arm(store, run_cfg, data)
    ensure_evaluated(store, info["run_id"])
    result = compare_arms(
        _correct(store, info["run_id"]),
        _correct(store, runs["chosen"]),
        _correct(store, runs["control"]),
        n,
    )
    for arm, run_id in runs.items():
        result["arms"][arm]["run_id"] = run_id
    result.update(model=str(ref), base_dataset=str(base), labelled_dataset=str(labelled))
    prefix = f"monitoring/{ref.name}/label-reports/{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
    report = LabelReport(str(ref), labelled, result, prefix)
    store.put_bytes(f"{prefix}/gain.png", plot_arms(result))
    store.put_bytes(
        f"{prefix}/report.md", f"```\n{report.summary()}\n```\n\n![](gain.png)\n".encode()
    )
    store.put_bytes(f"{prefix}/report.json", json.dumps(result, indent=2).encode())
    return report
