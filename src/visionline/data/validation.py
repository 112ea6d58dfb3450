"""The data gate: a Great Expectations (GX Core 1.x) suite over a dataset manifest.

Three batches are validated by one checkpoint:

- ``images``: one row per file (decodable, labels, sizes, modes, duplicates, leakage);
- ``split_counts``: one row per (split, class), zeros included, for ``min_per_class``;
- ``class_counts``: one row per class, for the imbalance ratio.

GX renders Data Docs (HTML); both they and the raw result are stored under
``reports/validation/<dataset>/<version>/<run>/`` in the artifact store (the layout and
the result types are in ``validation_results``, which does not import GX).
"""

from __future__ import annotations

import json
import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig

from visionline.config import PipelineConfig
from visionline.data.images import is_convertible
from visionline.data.manifest import SPLITS, DatasetRef, read_manifest
from visionline.data.validation_results import (
    Failure,
    ValidationReport,
    latest_result_prefix,
    reports_prefix,
    validation_fingerprint,
)
from visionline.storage import ArtifactStore

log = logging.getLogger(__name__)


def validation_frames(
    manifest: pd.DataFrame, classes: list[str], cfg: PipelineConfig
) -> dict[str, pd.DataFrame]:
    """The tables the suite runs on, derived from the manifest."""
    images = manifest.copy()
    v = cfg.validation
    allowed = set(v.modes)
    # A refused file fails "every file decodable" and only that: it has no key (it was
    # not copied, by design), no mode, and its bytes are no image to be a duplicate of.
    usable = images["decodable"].astype(bool)
    images["mode_ok"] = [
        ((m in allowed) or (v.allow_convertible and is_convertible(m))) if ok else None
        for m, ok in zip(images["mode"], usable, strict=True)
    ]
    images.loc[~usable, "key"] = "(refused, not copied)"
    images["split_sha256"] = (images["split"] + "/" + images["sha256"]).where(usable)
    # How many distinct splits hold each image's bytes: > 1 is train/test leakage.
    images["sha256_split_count"] = (
        images[usable].groupby("sha256")["split"].transform("nunique").reindex(images.index)
    )

    labels = sorted(set(classes) | set(images["label"]))
    grid = pd.MultiIndex.from_product([SPLITS, labels], names=["split", "label"])
    counts = (
        images[images["decodable"]]
        .groupby(["split", "label"])
        .size()
        .reindex(grid, fill_value=0)
        .rename("count")
        .reset_index()
    )
    counts["group"] = counts["split"] + "/" + counts["label"]

    per_class = (
        images[images["decodable"]]
        .groupby("label")
        .size()
        .reindex(labels, fill_value=0)
        .rename("count")
        .reset_index()
    )
    biggest = max(int(per_class["count"].max()), 1)
    # max/count; an empty class is "infinitely" imbalanced, written as a big finite number.
    per_class["imbalance_ratio"] = [biggest / c if c else 1e9 for c in per_class["count"]]
    return {"images": images, "split_counts": counts, "class_counts": per_class}


def _suites(cfg: PipelineConfig, classes: list[str]) -> dict[str, list[tuple[str, Any]]]:
    v = cfg.validation
    images = [
        ("no null keys", gxe.ExpectColumnValuesToNotBeNull(column="key")),
        ("no null labels", gxe.ExpectColumnValuesToNotBeNull(column="label")),
        (
            "every file decodable",
            gxe.ExpectColumnValuesToBeInSet(column="decodable", value_set=[True]),
        ),
        (
            "labels in the class set",
            gxe.ExpectColumnValuesToBeInSet(column="label", value_set=classes),
        ),
        (
            "width within bounds",
            gxe.ExpectColumnValuesToBeBetween(
                column="width", min_value=v.min_width, max_value=v.max_width
            ),
        ),
        (
            "height within bounds",
            gxe.ExpectColumnValuesToBeBetween(
                column="height", min_value=v.min_height, max_value=v.max_height
            ),
        ),
        (
            "image mode as configured",
            gxe.ExpectColumnValuesToBeInSet(column="mode_ok", value_set=[True]),
        ),
        (
            "no duplicate image inside a split",
            gxe.ExpectColumnValuesToBeUnique(column="split_sha256"),
        ),
        (
            "no image shared between splits (leakage)",
            gxe.ExpectColumnValuesToBeBetween(column="sha256_split_count", max_value=1),
        ),
    ]
    split_counts = [
        (
            f"at least {v.min_per_class} images per class in every split",
            gxe.ExpectColumnValuesToBeBetween(column="count", min_value=v.min_per_class),
        )
    ]
    class_counts = [
        (
            f"class imbalance ratio at most {v.max_imbalance_ratio:g}",
            gxe.ExpectColumnValuesToBeBetween(
                column="imbalance_ratio", max_value=v.max_imbalance_ratio
            ),
        )
    ]
    return {"images": images, "split_counts": split_counts, "class_counts": class_counts}


_INDEX_COLUMN = {"images": "source", "split_counts": "group", "class_counts": "label"}


def run_suite(
    frames: dict[str, pd.DataFrame], cfg: PipelineConfig, classes: list[str], docs_dir: Path
) -> tuple[bool, int, list[Failure], Path | None]:
    """Run the GX checkpoint in a throwaway file context rooted at ``docs_dir``."""
    ctx = gx.get_context(mode="file", project_root_dir=str(docs_dir))
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    ctx.enable_analytics(False)  # no phoning home from pipelines; this also saves variables

    source = ctx.data_sources.add_pandas("manifest")
    docs = gx.checkpoint.UpdateDataDocsAction(name="data-docs")
    failures: list[Failure] = []
    evaluated = 0
    for table, expectations in _suites(cfg, classes).items():
        asset = source.add_dataframe_asset(table)
        batch = asset.add_batch_definition_whole_dataframe(f"{table}-all")
        suite = ctx.suites.add(gx.ExpectationSuite(name=f"visionline-{table}"))
        for check, exp in expectations:
            exp.meta = {"check": check, "table": table}
            suite.add_expectation(exp)
        definition = ctx.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate-{table}", data=batch, suite=suite)
        )
        index_col = _INDEX_COLUMN[table]
        # One checkpoint per table: a checkpoint hands the same batch parameters (here,
        # the dataframe) to all its definitions, and each table is a different frame.
        checkpoint = ctx.checkpoints.add(
            gx.Checkpoint(
                name=f"visionline-{table}",
                validation_definitions=[definition],
                actions=[docs],
                result_format={
                    "result_format": "COMPLETE",
                    "unexpected_index_column_names": [index_col],
                },
            )
        )
        outcome = checkpoint.run(batch_parameters={"dataframe": frames[table]})
        for run_result in outcome.run_results.values():
            for r in run_result.results:
                evaluated += 1
                if r.success:
                    continue
                rows = r.result.get("unexpected_index_list") or []
                names = list(dict.fromkeys(str(row.get(index_col)) for row in rows))
                failures.append(
                    Failure(
                        check=r.expectation_config.meta["check"],
                        expectation=r.expectation_config.type,
                        column=r.expectation_config.kwargs.get("column"),
                        unexpected_count=int(r.result.get("unexpected_count") or len(names)),
                        offending=names,
                    )
                )
    site = docs_dir / "gx" / "uncommitted" / "data_docs" / "local_site"
    return not failures, evaluated, failures, site if site.is_dir() else None


def _classes_for(
    store: ArtifactStore, ref: DatasetRef, cfg: PipelineConfig, manifest: pd.DataFrame | None = None
) -> list[str]:
    if cfg.data.classes:
        return list(cfg.data.classes)
    info = store.get_json(ref.info_key) if store.exists(ref.info_key) else {}
    if info.get("classes"):
        return list(info["classes"])
    manifest = manifest if manifest is not None else read_manifest(store, ref)
    return sorted(manifest["label"].unique())


def ensure_validated(
    store: ArtifactStore, ref: DatasetRef, cfg: PipelineConfig
) -> ValidationReport:
    """Reuse the stored result for this dataset version and these expectations, if any;
    otherwise validate. Raises DataValidationError when the data fails."""
    prefix = latest_result_prefix(store, ref)
    if prefix is not None:
        prior = store.get_json(f"{prefix}/result.json")
        if prior.get("validation_fingerprint") == validation_fingerprint(
            cfg, _classes_for(store, ref, cfg)
        ):
            report = ValidationReport(
                str(ref),
                prior["success"],
                prior["evaluated"],
                [Failure(**f) for f in prior["failures"]],
                prefix,
                store.url(f"{prefix}/data_docs/index.html"),
            )
            report.raise_for_failure()
            return report
    report = validate_dataset(store, ref, cfg)
    report.raise_for_failure()
    return report


def validate_dataset(
    store: ArtifactStore, ref: DatasetRef, cfg: PipelineConfig, store_report: bool = True
) -> ValidationReport:
    """Validate dataset ``ref`` against the config's expectations; store results + Data Docs."""
    manifest = read_manifest(store, ref)
    classes = _classes_for(store, ref, cfg, manifest)
    frames = validation_frames(manifest, classes, cfg)
    with tempfile.TemporaryDirectory(prefix="visionline-gx-") as tmp:
        success, evaluated, failures, site = run_suite(frames, cfg, classes, Path(tmp))
        report = ValidationReport(str(ref), success, evaluated, failures)
        if store_report:
            run = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            prefix = f"{reports_prefix(ref)}/{run}"
            if site is not None:
                store.copy_tree_from(site, f"{prefix}/data_docs")
                report.docs_url = store.url(f"{prefix}/data_docs/index.html")
            report.report_prefix = prefix
            store.put_json(
                f"{prefix}/result.json",
                {
                    "dataset": str(ref),
                    "success": success,
                    "evaluated": evaluated,
                    "failures": [f.__dict__ for f in failures],
                    "classes": classes,
                    "config_fingerprint": cfg.fingerprint(),
                    "validation_fingerprint": validation_fingerprint(cfg, classes),
                    "validated_at": run,
                },
            )
            # The newest result per dataset version, for lineage and for the flows.
            store.put_bytes(f"{reports_prefix(ref)}/LATEST", run.encode())
    log.info("%s", json.dumps({"dataset": str(ref), "success": success}))
    return report
