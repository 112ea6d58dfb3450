"""The evaluation and the gate decision in markdown: the run's report, and the tables
the model card and the Prefect artifacts show."""

from __future__ import annotations

from typing import Any


def metrics_markdown(m: dict) -> str:
    """The headline metrics as a markdown table (report, model card, Prefect artifact)."""

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    return "\n".join(
        [
            "| metric | value |",
            "| --- | --- |",
            f"| accuracy | {fmt(m['accuracy'])} |",
            f"| balanced accuracy | {fmt(m['balanced_accuracy'])} |",
            f"| macro precision / recall / F1 | {fmt(m['macro']['precision'])} / {fmt(m['macro']['recall'])} / {fmt(m['macro']['f1'])} |",
            f"| weighted F1 | {fmt(m['weighted']['f1'])} |",
            f"| macro ROC AUC (one vs rest) | {fmt(m['roc_auc']['macro'])} |",
            f"| macro PR AUC | {fmt(m['pr_auc']['macro'])} |",
            f"| test images | {m['n']} |",
            "",
        ]
    )


def render_report(run_id: str, info: dict, m: dict) -> str:
    """`report.md` beside the pictures `evaluate_run` stores (linked by file name)."""
    lines = [
        f"# Evaluation of run `{run_id}`",
        "",
        f"- dataset: `{info['dataset']}`, architecture `{info['arch']}`, code `{info['code_version']}`",
        f"- test images: {m['n']}",
        "",
        metrics_markdown(m),
        "| class | precision | recall | F1 | support |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c, v in m["per_class"].items():
        lines.append(
            f"| {c} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {v['support']} |"
        )
    lines += [
        "",
        "![confusion matrix](confusion_matrix.png)",
        "![ROC curves](roc.png)",
        "![PR curves](pr.png)",
        "![training curves](training_curves.png)",
        "",
    ]
    return "\n".join(lines)


def decision_markdown(decision: dict[str, Any]) -> str:
    """A decision (as stored in decision.json) as a markdown table."""
    rows = []
    for c in decision["checks"]:
        value = "n/a" if c["value"] is None else f"{c['value']:.4f}"
        threshold = "" if c["threshold"] is None else f"{c['threshold']:.4f}"
        verdict = "pass" if c["passed"] else "**FAIL**"
        rows.append(f"| {c['name']} | {value} | {threshold} | {verdict} | {c['detail']} |")
    head = f"## Gate decision: {'PASS' if decision['passed'] else 'FAIL'}\n\n"
    return (
        head
        + "| check | value | threshold | verdict | detail |\n| --- | --- | --- | --- | --- |\n"
        + "\n".join(rows)
        + "\n"
    )
