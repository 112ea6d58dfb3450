"""What the Prefect UI shows for a pipeline run: markdown and table artifacts."""

from __future__ import annotations

import base64

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.timing import task
from visionline.config import PipelineConfig
from visionline.data.manifest import DatasetRef
from visionline.evaluation.report import decision_markdown, metrics_markdown
from visionline.model.runs import RunPaths
from visionline.registry import ModelRef
from visionline.storage import ArtifactStore, open_store
from visionline.tuning import trials_markdown


def _link(store: ArtifactStore, key: str, name: str) -> str:
    """A link a browser opens (S3: presigned), else the location as plain text."""
    url = store.browser_url(key)
    return f"[{name}]({url})" if url else f"{name}: `{store.url(key)}`"


def _inline_png(store: ArtifactStore, key: str, alt: str) -> str:
    # Prefect's UI renders data-URI images inline: the pictures travel with the artifact.
    data = base64.b64encode(store.get_bytes(key)).decode()
    return f"![{alt}](data:image/png;base64,{data})"


@task
def publish(
    cfg: PipelineConfig,
    dataset: DatasetRef,
    validation: dict,
    run_id: str,
    metrics: dict,
    decision: dict,
    model: ModelRef | None,
) -> None:
    store = open_store(cfg.store)
    ev = RunPaths(run_id).evaluation
    links = "\n".join(
        f"- {_link(store, f'{ev}/{name}', name)}"
        for name in (
            "report.md",
            "confusion_matrix.png",
            "roc.png",
            "pr.png",
            "training_curves.png",
        )
    )
    docs = validation.get("docs_key")
    docs_line = (
        _link(store, docs, "Data Docs") if docs else f"Data Docs: {validation.get('docs_url')}"
    )
    create_markdown_artifact(
        key="pipeline-summary",
        description=f"{dataset} / {cfg.model.arch}",
        markdown=(
            f"# {cfg.name}: {dataset}, {cfg.model.arch}\n\n{metrics_markdown(metrics)}\n"
            f"{decision_markdown(decision)}\n"
            f"{_inline_png(store, f'{ev}/confusion_matrix.png', 'confusion matrix')}\n\n"
            f"{_inline_png(store, f'{ev}/training_curves.png', 'training curves')}\n\n"
            f"## Links\n\n- {docs_line}\n{links}\n- model: {model or 'not packaged'}\n"
        ),
    )
    create_table_artifact(
        key="per-class-metrics",
        description=f"per-class test metrics of {run_id}",
        table=[
            {"class": c, **{k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()}}
            for c, m in metrics["per_class"].items()
        ],
    )


@task
def publish_search(search: dict, metrics: dict, decision: dict, model: ModelRef | None) -> None:
    """The trials table and a summary of the search's outcome."""

    best = search["best"]
    create_table_artifact(
        key="tuning-trials",
        description=f"every trial of study {search['study']} ({search['metric']})",
        table=[
            {
                "trial": t["number"],
                "state": t["state"].lower(),
                **t["params"],
                search["metric"]: None if t["value"] is None else round(t["value"], 4),
                "epochs": t["epochs"],
                "wall_s": t["wall_s"],
                "run_id": t["run_id"],
            }
            for t in search["trials"]
        ],
    )
    plots = "\n".join(f"- [{url.rsplit('/', 1)[-1]}]({url})" for url in search["plots"])
    create_markdown_artifact(
        key="tuning-summary",
        description=f"study {search['study']}",
        markdown=(
            f"# Model selection: {search['study']}\n\n"
            f"Best: trial {best['number']}, {search['metric']} {best['value']:.4f}, run "
            f"`{best['run_id']}`"
            + ("" if search["finished"] else " (search not finished: run the flow again)")
            + f"\n\n{trials_markdown(search['trials'], search['metric'], best['number'])}\n"
            f"{metrics_markdown(metrics)}\n{decision_markdown(decision)}\n## Links\n\n"
            f"- [report.md]({search['report']})\n- [best config]({search['best_config']})\n"
            f"{plots}\n- model: {model or 'not packaged'}\n"
        ),
    )
