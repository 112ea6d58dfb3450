"""Monitoring with real parts: the trained digits model, the handler's capture path with
TorchServe's own Context, the store, the CLI as a user types it, real TorchServe with an
unreachable capture store, and the Prefect flow on a real temporary API."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import shutil
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image

from tests.support.handler import extract_mar, handle, load_handler
from tests.support.serving import visionline_cli
from visionline.data.manifest import read_manifest, resolve_dataset
from visionline.monitoring.capture_windows import read_captures
from visionline.monitoring.labels import build_label_queue, read_feedback
from visionline.storage import LocalStore

BRIGHTER = 60  # added to every pixel of the shifted digits (0..255)


def brighten(png: bytes, delta: int = BRIGHTER) -> bytes:
    a = np.asarray(Image.open(io.BytesIO(png)), dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(np.clip(a + delta, 0, 255).astype(np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def _not_shared(top: Path):
    def ignore(folder: str, names: list[str]) -> set[str]:
        left_out = {".cache"}
        if Path(folder) == Path(top):
            left_out |= {"captures", "monitoring"}
        return left_out & set(names)

    return ignore


@pytest.fixture(scope="module")
def env(packaged_digits, tmp_path_factory):
    """A copy of the packaged digits store (captures and reports stay out of the shared
    one), its config file, and the test split's images."""
    store0, ref, cfg0 = packaged_digits
    root = tmp_path_factory.mktemp("monitoring")
    # other tests serve the same packaged model and capture into the shared store: only the
    # model, its run and its data come along, so every capture here is one this module sent
    shutil.copytree(store0.root, root / "store", ignore=_not_shared(store0.root))
    store = LocalStore(root / "store")
    cfg = cfg0.with_overrides(
        store=store.uri,
        **{"data.cache_dir": str(root / "cache"), "monitor.min_window": 30},
    )
    cfg_path = root / "config.yaml"
    cfg_path.write_text(cfg.to_yaml())
    m = read_manifest(store, resolve_dataset(store, "digits"))
    test = m[(m["split"] == "test") & m["decodable"]].sort_values("sha256")
    images = {row.sha256[:16]: (row.label, store.get_bytes(row.key)) for row in test.itertuples()}
    return {
        "store": store,
        "packaged_in": store0.uri,
        "cfg": cfg,
        "cfg_path": cfg_path,
        "ref": ref,
        "root": root,
        "test": images,
    }


@pytest.fixture(scope="module")
def captured(env):
    """Traffic through the handler's real capture path: the test split as it is and
    brightened, every request sampled, images kept. Returns request id -> true label."""
    store, root = env["store"], env["root"]
    model_dir = root / "model"
    manifest = extract_mar(store.get_file(env["ref"].mar_key, root / "m.mar"), model_dir)
    settings = json.loads((model_dir / "monitor.json").read_text())
    assert settings["store"] == env["packaged_in"]  # by default captures go where it was packaged
    settings.update(capture_images=True, store=store.uri, flush_interval_s=1.0)
    (model_dir / "monitor.json").write_text(json.dumps(settings))
    sys.path.insert(0, str(model_dir))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONLINE_CAPTURE_SAMPLE_RATE", "1.0")
        handler, ctx = load_handler(model_dir, manifest)
    try:
        assert handler.capture.enabled
        truth: dict[str, str] = {}
        bodies, ids = [], []
        for h, (label, png) in env["test"].items():
            for kind, body in (("plain", png), ("bright", brighten(png))):
                bodies.append(body)
                ids.append(f"{kind}-{h}")
                truth[ids[-1]] = label
        for i in range(0, len(bodies), 8):
            _, status = handle(handler, ctx, bodies[i : i + 8], ids[i : i + 8])
            assert status == [200] * len(status)
        assert handler.capture.sink.flush(timeout=60)
        caps = read_captures(store, "digits", env["ref"].version)
        # the least confident image once more, under another id: a near-duplicate
        worst = caps.sort_values("confidence").iloc[0]["request_id"]
        handle(handler, ctx, [bodies[ids.index(worst)]], ["dup-of-worst"])
        truth["dup-of-worst"] = truth[worst]
        assert handler.capture.sink.flush(timeout=60)
        assert handler.capture.sink.dropped == 0
    finally:
        handler.capture.sink.close()
        sys.path.remove(str(model_dir))
    return {"truth": truth, "worst": worst}


def test_captures_hold_what_the_handler_answered(env, captured):
    caps = read_captures(env["store"], "digits", env["ref"].version)
    assert len(caps) == len(captured["truth"])
    assert set(caps["request_id"]) == set(captured["truth"])
    row = caps.iloc[0]
    assert row["model"] == "digits" and row["model_version"] == env["ref"].version
    assert (row["width"], row["height"]) == (8, 8) and len(row["embedding"]) == 32
    assert 0 < row["confidence"] <= 1 and row["entropy"] >= 0 and row["image"] is not None
    bright = caps["request_id"].str.startswith("bright-")
    assert caps[bright]["mean_0"].mean() > caps[~bright]["mean_0"].mean() + 0.15


def _folder(root: Path, images: dict, shift: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for h, (label, png) in images.items():
        (root / f"{label}-{h}.png").write_bytes(brighten(png, shift) if shift else png)
    return root


def test_brightness_shift_is_flagged_and_an_unshifted_sample_is_not(env):
    plain = _folder(env["root"] / "plain", env["test"], 0)
    bright = _folder(env["root"] / "bright", env["test"], BRIGHTER)
    (plain / "notes.txt").write_text("not an image: ignored")

    same = visionline_cli(env["cfg_path"], "monitor", "check", "digits", "--images", str(plain))
    assert same.returncode == 0, same.stdout + same.stderr
    assert "verdict    NO DRIFT" in same.stdout

    shifted = visionline_cli(
        env["cfg_path"], "monitor", "check", "digits:1", "--images", str(bright)
    )
    assert shifted.returncode == 3, shifted.stdout + shifted.stderr
    assert "verdict    DRIFT" in shifted.stdout
    mean_line = next(ln for ln in shifted.stdout.splitlines() if ln.strip().startswith("mean_0"))
    assert mean_line.rstrip().endswith("DRIFT")
    report_md = shifted.stdout.split("report: ")[1].strip()
    prefix = str(Path(report_md).parent.relative_to(env["store"].uri))
    keys = set(env["store"].list(prefix + "/"))
    assert {
        f"{prefix}/report.md",
        f"{prefix}/mean_0.png",
        f"{prefix}/class_distribution.png",
    } <= keys
    assert env["store"].get_bytes(f"{prefix}/mean_0.png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![mean_0](mean_0.png)" in env["store"].get_bytes(f"{prefix}/report.md").decode()


def test_false_alarms_over_20_unshifted_windows_stay_within_the_rate(env):
    from visionline.model.predictor import Predictor
    from visionline.monitoring.drift import compare
    from visionline.monitoring.features import describe_images
    from visionline.monitoring.reference import ensure_projection, load_reference

    store, cfg = env["store"], env["cfg"]
    reference, meta = load_reference(store, "champ")
    described = describe_images(
        Predictor.from_run(store, "champ"),
        ensure_projection(store, "champ", cfg),
        ((h, png) for h, (_, png) in env["test"].items()),
    ).frame
    rng = np.random.default_rng(0)
    alarms = 0
    for i in range(20):
        window = described.iloc[rng.choice(len(described), 120, replace=False)]
        alarms += bool(compare(reference, window, meta["classes"], 1, cfg.monitor, seed=i).drifted)
    assert alarms <= cfg.monitor.alpha * 20


def test_monitor_check_of_a_window_of_captures(env, captured):
    out = visionline_cli(env["cfg_path"], "monitor", "check", "digits", "--window", "now-1h..now")
    assert out.returncode == 3, out.stdout + out.stderr  # half the traffic is brightened
    assert f"{len(captured['truth'])} records" in out.stdout
    empty = visionline_cli(
        env["cfg_path"], "monitor", "check", "digits", "--window", "2001-01-01..2001-01-02"
    )
    assert empty.returncode == 2 and "fewer than monitor.min_window" in empty.stderr


def test_label_queue_holds_the_least_confident_images(env, captured):
    out = visionline_cli(
        env["cfg_path"], "label-queue", "digits", "--k", "5", "--strategy", "least-confidence"
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 near-duplicates skipped" in out.stdout
    queue_key = out.stdout.split("queue:")[1].split()[0][len(env["store"].uri) + 1 :]
    queue = list(csv.DictReader(io.StringIO(env["store"].get_bytes(queue_key).decode())))
    caps = read_captures(env["store"], "digits", env["ref"].version)
    caps = caps[~caps["request_id"].isin(set(read_feedback(env["store"], "digits")["request_id"]))]
    # one entry per distinct image: the resent one is a duplicate
    unique = caps.assign(h=caps["image"].map(bytes).map(hash)).drop_duplicates("h")
    expected = unique.sort_values("confidence")["confidence"].head(5).round(6).tolist()
    assert [float(r["confidence"]) for r in queue] == expected
    ids = [r["request_id"] for r in queue]
    assert len({captured["worst"], "dup-of-worst"} & set(ids)) == 1
    prefix = queue_key.rsplit("/", 1)[0]
    tasks = json.loads(env["store"].get_bytes(f"{prefix}/tasks.json"))
    assert [t["data"]["request_id"] for t in tasks] == ids
    assert [t["predictions"][0]["result"][0]["value"]["choices"][0] for t in tasks] == [
        r["predicted"] for r in queue
    ]
    for r in queue:
        assert env["store"].get_bytes(r["image"])[:4] == b"\x89PNG"
    assert '<Choice value="7"/>' in env["store"].get_bytes(f"{prefix}/label_config.xml").decode()


def test_feedback_gives_accuracy_and_per_class_recall(env, captured, tmp_path):
    caps = read_captures(env["store"], "digits", env["ref"].version)
    chosen = caps[caps["request_id"].str.startswith("plain-")].head(60)
    fb = tmp_path / "feedback.csv"
    fb.write_text(
        "request_id,label\n"
        + "".join(f"{r},{captured['truth'][r]}\n" for r in chosen["request_id"])
        + "never-captured,3\n"
    )
    out = visionline_cli(env["cfg_path"], "labels", "feedback", str(fb))
    assert out.returncode == 0, out.stdout + out.stderr
    truth = chosen["request_id"].map(captured["truth"])
    accuracy = float((truth == chosen["label"]).mean())
    assert "61 labels stored" in out.stdout
    assert "joined to captures: 60 (1 labels match no capture" in out.stdout
    assert f"accuracy {accuracy:.4f}" in out.stdout
    for label, group in chosen.groupby(truth):
        recall = float((group["label"] == label).mean())
        assert f"  {label:<12} {recall:.4f}  ({len(group)} labels)" in out.stdout
    again = visionline_cli(env["cfg_path"], "labels", "feedback", str(fb))
    assert "61 labels already stored" in again.stdout

    bad = tmp_path / "bad.csv"
    bad.write_text("request_id,label\nplain-x,3\nplain-y,seven\n")
    refused = visionline_cli(env["cfg_path"], "labels", "feedback", str(bad))
    assert refused.returncode == 2 and f"{bad}:3: label 'seven'" in refused.stderr


def test_importing_labels_yields_a_new_dataset_version_that_validates(env, captured, tmp_path):
    from visionline.data.manifest import DatasetRef
    from visionline.monitoring.labels import record_feedback

    store = env["store"]
    parent = resolve_dataset(store, "digits")
    truth = captured["truth"]
    # the unshifted traffic is labelled already, so the queue holds new (brightened) images
    plain = sorted(r for r in truth if r.startswith("plain-"))
    record_feedback(
        store, "digits", pd.DataFrame({"request_id": plain, "label": [truth[r] for r in plain]})
    )
    queue = build_label_queue(store, "digits", 6, "entropy")
    assert not any(r.startswith("plain-") for r in queue.rows["request_id"])
    # a Label Studio export: four tasks annotated, two skipped by the labeller
    tasks = json.loads(store.get_bytes(f"{queue.prefix}/tasks.json"))
    for t in tasks[:4]:
        label = truth[t["data"]["request_id"]]
        t["annotations"] = [{"id": 1, "result": [{"value": {"choices": [label]}}]}]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    first = visionline_cli(env["cfg_path"], "labels", "import", str(export))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "4 labelled images new" in first.stdout and "2 without a label" in first.stdout
    assert "validation of digits:" in first.stdout and "PASSED" in first.stdout
    v1 = resolve_dataset(store, "digits")
    assert v1 != parent and store.get_json(v1.info_key)["parent"] == parent.version

    # then our CSV with every row labelled: four are there already, two are new
    rows = list(csv.DictReader(io.StringIO(store.get_bytes(f"{queue.prefix}/queue.csv").decode())))
    for r in rows:
        r["label"] = truth[r["request_id"]]
    filled = tmp_path / "queue.csv"
    with filled.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    second = visionline_cli(env["cfg_path"], "labels", "import", str(filled))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "2 labelled images new, 4 already in" in second.stdout
    v2 = resolve_dataset(store, "digits")
    info = store.get_json(v2.info_key)
    assert info["parent"] == v1.version and info["added"] == 2
    m0, m2 = read_manifest(store, parent), read_manifest(store, v2)
    assert len(m2) == len(m0) + 6 and set(m0["key"]) <= set(m2["key"])  # nothing copied
    new = m2[~m2["key"].isin(m0["key"])]
    assert all(store.exists(k) for k in new["key"]) and set(new["label"]) <= set(truth.values())
    assert store.get_bytes(f"{DatasetRef('digits', v2.version).prefix}/manifest.parquet")

    bad = tmp_path / "bad.csv"
    bad.write_text(f"image,label\n{rows[0]['image']},eleven\n")
    refused = visionline_cli(env["cfg_path"], "labels", "import", str(bad))
    assert refused.returncode == 2 and f"{bad}:2: label 'eleven'" in refused.stderr
    assert resolve_dataset(store, "digits") == v2  # nothing moved


@pytest.mark.slow
@pytest.mark.torchserve
def test_serving_goes_on_while_the_capture_store_is_unreachable(env, tmp_path, monkeypatch):
    """Capture points at an S3 endpoint that answers 503 after a delay longer than the
    client's request timeout: if a request waited for the store, it would time out."""
    from tests.support.ports import serve_ports
    from tests.support.s3 import FaultProxy, free_port
    from visionline.serving.packaging import build_mar
    from visionline.serving.torchserve import ServedModel, TorchServe

    store = env["store"]
    cfg = env["cfg"].with_overrides(
        **{
            "monitor.store": "s3://captures-down/vl",
            "monitor.sample_rate": 1.0,
            "monitor.queue_size": 4,
            "monitor.flush_records": 2,
            "monitor.flush_interval_s": 0.5,
        },
        **serve_ports(),
    )
    mar = build_mar(store, "champ", "digits", "1", cfg, tmp_path / "mar")
    with FaultProxy(f"http://127.0.0.1:{free_port()}", fail_first=10**6, delay_s=3.0) as proxy:
        for k, v in {
            "AWS_ENDPOINT_URL": proxy.url,
            "AWS_ACCESS_KEY_ID": "x",
            "AWS_SECRET_ACCESS_KEY": "x",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(k, v)
        server = TorchServe(tmp_path / "ts", cfg.serve)
        try:
            server.start([ServedModel("digits", "digits.mar", 4, 5, 1)], {"digits": mar})
            url = f"{server.endpoints.inference}/predictions/digits"
            headers = {"Authorization": f"Bearer {server.tokens()['inference']}"}
            bodies = [png for _, png in list(env["test"].values())[:40]]
            for body in bodies:  # each must answer well inside one store round trip
                r = requests.post(url, data=body, headers=headers, timeout=2.5)
                assert r.status_code == 200 and len(r.json()) == 3
            log = tmp_path / "ts" / "logs" / "model_log.log"
            deadline = time.monotonic() + 90
            while "records dropped so far" not in log.read_text(errors="replace"):
                assert time.monotonic() < deadline, "no dropped-records warning in the worker log"
                time.sleep(1)
            assert proxy.requests >= 1  # capture did try the store
            for body in bodies[:10]:  # and serving goes on
                assert requests.post(url, data=body, headers=headers, timeout=2.5).ok
            assert "capture on: 100.0% of requests to s3://captures-down/vl" in log.read_text()
        finally:
            server.stop()


def test_records_a_worker_holds_when_its_server_stops_are_written(env, tmp_path):
    """TorchServe ends its workers with SIGKILL; a worker still holding records (up to a
    flush interval of them: here far longer than the test) lost them all at every stop,
    scale-down and rollout. Stopping sends the workers SIGTERM first, as tini -g does in
    the pod, and the capture sink writes what it holds before the worker exits."""
    from tests.support.ports import serve_ports
    from visionline.serving.packaging import build_mar
    from visionline.serving.torchserve import ServedModel, TorchServe

    captures = LocalStore(tmp_path / "captures")
    cfg = env["cfg"].with_overrides(
        **{
            "monitor.store": captures.uri,
            "monitor.sample_rate": 1.0,
            "monitor.flush_interval_s": 3600.0,
        },
        **serve_ports(),
    )
    mar = build_mar(env["store"], "champ", "digits", "1", cfg, tmp_path / "mar")
    server = TorchServe(tmp_path / "ts", cfg.serve)
    try:
        server.start([ServedModel("digits", "digits.mar", 4, 5, 1)], {"digits": mar})
        url = f"{server.endpoints.inference}/predictions/digits"
        headers = {"Authorization": f"Bearer {server.tokens()['inference']}"}
        for _, png in list(env["test"].values())[:24]:
            assert requests.post(url, data=png, headers=headers, timeout=30).ok
        assert read_captures(captures, "digits", "1").empty  # all of them still queued
    finally:
        server.stop()
    assert len(read_captures(captures, "digits", "1")) == 24


@pytest.mark.slow
def test_monitoring_flow_reports_and_starts_retrain_after_n_drifted_windows(
    prefect_api, env, captured, tmp_path
):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    from flows.monitoring import monitoring
    from flows.training_pipeline import training_pipeline

    cfg = env["cfg"].with_overrides(
        **{"monitor.policy.drift_windows": 2, "monitor.policy.cooldown_hours": 1}
    )
    config = tmp_path / "config.yaml"
    config.write_text(cfg.to_yaml())
    training_pipeline.to_deployment(name="retrain", parameters={"config": str(config)}).apply()

    first = monitoring(config=str(config))
    assert first["checked"]["verdict"] == "DRIFT"
    assert not first["checked"]["decision"]["retrain"] and first["retrain_run"] is None
    second = monitoring(config=str(config))
    assert second["checked"]["decision"]["retrain"] and second["retrain_run"]
    assert "drift in 2 consecutive windows" in second["checked"]["decision"]["reasons"][0]

    async def look():
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    tags=FlowRunFilterTags(all_=["retrain-by-monitoring"])
                )
            )
            arts = {a.key: a for a in await client.read_latest_artifacts()}
            return runs, arts

    runs, artifacts = asyncio.run(look())
    assert [str(r.id) for r in runs] == [second["retrain_run"]]
    md = artifacts["monitoring"].data
    assert "Retraining decision: RETRAIN" in md and "(data:image/png;base64," in md

    third = monitoring(config=str(config))  # after a retrain the count starts again
    assert not third["checked"]["decision"]["retrain"]

    log = visionline_cli(config, "monitor", "log", "digits")
    assert log.returncode == 0
    lines = [ln for ln in log.stdout.splitlines() if "digits:1" in ln]
    assert [("RETRAIN" in ln) for ln in lines] == [False, True, False]
    assert "1 consecutive drifted window(s), retrain at 2" in lines[-1]  # counting anew
    since = datetime.now(UTC) - timedelta(hours=1)
    assert all(datetime.fromisoformat(ln.split()[0]) > since for ln in lines)
