"""Lineage: from a registered model archive back to the run, the gate, the dataset and
its validation, as recorded by each stage.

It reads what every stage below wrote, so it lives above them all (the registry it
starts from is on the ground floor and must not import the stages).
"""

from __future__ import annotations

from visionline.data.manifest import DatasetRef
from visionline.model.runs import RunPaths, load_run_info
from visionline.registry import ModelRef, Registry
from visionline.storage import ArtifactStore


def lineage(store: ArtifactStore, ref: ModelRef) -> list[tuple[str, str]]:
    """The chain from a model archive back to its data: (stage, description) pairs.

    The validation result is the one the run trained behind (recorded in its run.json),
    not merely the newest one for that dataset version."""
    m = Registry(store, ref.name).info(ref.version)
    chain = [("model", f"{ref} archive {store.url(ref.mar_key)} sha256 {m['sha256']}")]
    paths = RunPaths(m["run_id"])
    run = load_run_info(store, m["run_id"])
    origin = run.get("origin") or {}
    chain.append(
        (
            "run",
            f"{m['run_id']}: {run['arch']}, {run['epochs_run']} epochs, "
            f"config {run['config_fingerprint']}, code {run['code_version']}"
            + "".join(f", {k} {v}" for k, v in sorted(origin.items())),
        )
    )
    if store.exists(paths.decision):
        d = store.get_json(paths.decision)
        against = f" vs champion {d['champion']}" if d.get("champion") else ""
        chain.append(
            ("gate", f"{'pass' if d['passed'] else 'fail'} ({len(d['checks'])} checks){against}")
        )
    dataset = DatasetRef(run["dataset_name"], run["dataset_version"])
    info = store.get_json(dataset.info_key)
    chain.append(
        (
            "dataset",
            f"{dataset} from {info['source']}, {info['images']} images, ingested {info['created']}",
        )
    )
    prefix = run.get("validation")
    if not prefix:
        chain.append(("validation", "the run trained on a dataset version never validated"))
    else:
        result = store.get_json(f"{prefix}/result.json")
        chain.append(
            (
                "validation",
                f"{'passed' if result['success'] else 'FAILED'} "
                f"({result['evaluated']} expectations) at {result['validated_at']}; "
                f"Data Docs {store.url(f'{prefix}/data_docs/index.html')}",
            )
        )
    return chain
