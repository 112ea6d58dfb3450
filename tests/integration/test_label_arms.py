"""Labelling with a control arm, end to end on the small digits (issue #19, item 4):
a model trained and packaged to capture images, traffic through the handler's real
capture path, then the commands docs/monitoring.md shows, as a user types them:
``label-queue --control``, the queue labelled from the ground truth, ``labels import``,
and ``labels report``, which trains one model per arm and compares them."""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
import sys

import pandas as pd
import pytest

from tests.conftest import REPO, digits_config
from tests.support.handler import extract_mar, handle, load_handler
from tests.support.serving import visionline_cli
from visionline.config import GateConfig
from visionline.data.ingest import ingest
from visionline.data.manifest import DatasetRef, read_manifest, resolve_dataset
from visionline.evaluation import evaluate_run
from visionline.evaluation.gate import gate_run
from visionline.evaluation.run import load_predictions
from visionline.model.runs import load_run_info
from visionline.monitoring.labels import DEFAULT_STRATEGY
from visionline.registry import Registry
from visionline.serving.packaging import package_run
from visionline.storage import LocalStore
from visionline.training.loop import fit
from visionline.training.plan import plan_run

PER_CLASS = 25  # requests per class, none of them in the training data


def _documented_commands() -> list[list[str]]:
    """The control-arm block of docs/monitoring.md, each command without `visionline`."""
    text = (REPO / "docs" / "monitoring.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "--control" in b)
    return [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("visionline")]


def _served(store: LocalStore, tmp_path, digits_dir, small_digits_dir) -> dict[str, str]:
    """Digits the model never saw, through the handler's capture; request id -> label."""
    ref = Registry(store, "digits").resolve("champion")
    model_dir = tmp_path / "model"
    manifest = extract_mar(store.get_file(ref.mar_key, tmp_path / "m.mar"), model_dir)
    seen = {f.name for f in small_digits_dir.rglob("*.png")}
    truth, bodies = {}, []
    for cls in sorted(p for p in digits_dir.iterdir() if p.is_dir()):
        for f in [f for f in sorted(cls.iterdir()) if f.name not in seen][:PER_CLASS]:
            truth[f"{cls.name}-{f.stem}"] = cls.name
            bodies.append(f.read_bytes())
    ids = list(truth)
    sys.path.insert(0, str(model_dir))
    handler, ctx = load_handler(model_dir, manifest)
    try:
        for i in range(0, len(bodies), 8):
            handle(handler, ctx, bodies[i : i + 8], ids[i : i + 8])
        assert handler.capture.sink.flush(timeout=60) and handler.capture.sink.dropped == 0
    finally:
        handler.capture.sink.close()
        sys.path.remove(str(model_dir))
    return truth


def _check_report(store: LocalStore, key: str, info: dict, control: int) -> dict:
    """The stored report against the runs it names and the data they were trained on."""
    result = json.loads(store.get_bytes(key))
    assert store.get_bytes(key.replace("report.json", "gain.png"))[:4] == b"\x89PNG"
    base = read_manifest(store, DatasetRef("digits", info["parent"]))
    base_test = base[base["split"] == "test"]
    assert result["test_images"] == len(base_test)
    for arm, shas in info["arms"].items():
        run_id = result["arms"][arm]["run_id"]
        trained_on = read_manifest(
            store, DatasetRef("digits", load_run_info(store, run_id)["dataset_version"])
        )
        added = trained_on[~trained_on["sha256"].isin(base["sha256"])]
        # each arm: the served model's data plus the first n labels of its arm, all trained on
        assert list(added["split"].unique()) == ["train"]
        assert set(added["sha256"]) == set(shas[:control])
        # the accuracies are those of the arm runs on the served model's test images
        preds = load_predictions(store, run_id)
        assert result["arms"][arm]["accuracy"] == float(preds["correct"].mean())
        assert set(preds["source"]) == set(base_test["source"])
        lo, hi = result["arms"][arm]["gain_per_label_interval"]
        assert lo <= result["arms"][arm]["gain_per_label"] <= hi
    base_acc = float(load_predictions(store, "base")["correct"].mean())
    assert result["base"]["accuracy"] == base_acc
    gain = pd.Series({a: result["arms"][a]["accuracy"] - base_acc for a in info["arms"]}) / control
    assert abs(result["difference"]["per_label"] - (gain["chosen"] - gain["control"])) < 1e-12
    return result


@pytest.mark.slow  # trains three small models and runs the CLI four times
def test_control_arm_from_queue_to_report(small_digits_dir, digits_dir, tmp_path):
    store = LocalStore(tmp_path / "store")
    ingest(store, str(small_digits_dir), "digits", progress=False)
    cfg = digits_config(
        store.uri,
        **{
            "train.epochs": 3,
            "train.early_stopping": None,
            "validation.max_imbalance_ratio": 10.0,
            "validation.min_per_class": 1,  # 20 images a class: 3 in val and in test
            "monitor.capture_images": True,
            "monitor.flush_interval_s": 1.0,
        },
    )
    fit(plan_run(cfg, store, run_id="base"), store)
    evaluate_run(store, "base")
    # a model trained on 140 images is judged by this test, not by the gate's bar
    bar = GateConfig(min_accuracy=0, min_macro_f1=0, min_class_recall=0)
    assert gate_run(store, "base", cfg=bar).passed
    ref = package_run(store, "base", cfg=cfg)
    Registry(store, ref.name).promote(ref.version, "test")
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(cfg.to_yaml())
    truth = _served(store, tmp_path, digits_dir, small_digits_dir)

    queue_cmd, import_cmd, report_cmd = _documented_commands()
    assert queue_cmd[:1] == ["label-queue"] and "--control" in queue_cmd
    out = visionline_cli(cfg_path, *queue_cmd)
    assert out.returncode == 0, out.stderr
    k = int(queue_cmd[queue_cmd.index("--k") + 1])
    control = round(float(queue_cmd[queue_cmd.index("--control") + 1]) * k)
    # the documented command takes the default strategy, the best measured one
    assert f"{k} images queued by {DEFAULT_STRATEGY} and {control} at random" in out.stdout
    queue_key = out.stdout.split("queue:")[1].split()[0][len(store.uri) + 1 :]
    rows = list(csv.DictReader(io.StringIO(store.get_bytes(queue_key).decode())))
    arms = [r["arm"] for r in rows]
    assert arms == ["chosen"] * k + ["control"] * control
    # the control arm is drawn from the same captures, not from the top of the ranking
    scores = {a: [float(r["score"]) for r in rows if r["arm"] == a] for a in ("chosen", "control")}
    assert min(scores["chosen"]) >= max(scores["control"])
    tasks = json.loads(store.get_bytes(queue_key.replace("queue.csv", "tasks.json")))
    assert [t["data"]["arm"] for t in tasks] == arms

    # the labeller fills the label column (here: the ground truth)
    filled = tmp_path / import_cmd[-1]
    with filled.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "label": truth[r["request_id"]]} for r in rows)
    imported = visionline_cli(cfg_path, *import_cmd[:-1], str(filled))
    assert imported.returncode == 0, imported.stdout + imported.stderr
    labelled = resolve_dataset(store, "digits")
    info = store.get_json(labelled.info_key)
    assert [len(info["arms"][a]) for a in ("chosen", "control")] == [k, control]

    report = visionline_cli(cfg_path, *report_cmd)
    assert report.returncode == 0, report.stdout + report.stderr
    assert f"{control} labels per arm" in report.stdout
    assert re.search(
        r"chosen - control\s+per label [+-]\d\.\d+ \[[+-]\d\.\d+, [+-]\d", report.stdout
    )
    key = report.stdout.split("report: ")[1].split()[0][len(store.uri) + 1 :]
    result = _check_report(store, key, info, control)
    # made again, the report reuses both arm runs
    again = visionline_cli(cfg_path, *report_cmd)
    assert again.returncode == 0 and result["arms"]["chosen"]["run_id"] in again.stdout
