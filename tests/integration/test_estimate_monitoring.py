"""Accuracy estimated without labels, as a user meets it: `visionline monitor check MODEL
--images DIR` on the trained digits model prints the estimate with its interval next to
the reference accuracy, or "cannot estimate" with the reason, and the stored report
JSON carries both. The truth of each folder is known (its file names carry the labels)."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.serving import visionline_cli
from visionline.config import EstimateConfig
from visionline.data.manifest import read_manifest, resolve_dataset
from visionline.model.predictor import Predictor
from visionline.monitoring.estimate import method_key
from visionline.storage import LocalStore

LINE = re.compile(
    r"accuracy   (?P<est>[\d.]+) \[(?P<lo>[\d.]+), (?P<hi>[\d.]+)\] \(95% bootstrap, "
    r"(?P<method>\w+); reference accuracy (?P<ref>[\d.]+)\)"
)


@pytest.fixture(scope="module")
def env(packaged_digits, tmp_path_factory):
    """A copy of the packaged digits store (its reports stay here), the config, and the
    test split's images as (label, uint8 pixels)."""
    store0, _, cfg0 = packaged_digits
    root = tmp_path_factory.mktemp("estimate")
    shutil.copytree(
        store0.root,
        root / "store",
        ignore=lambda d, names: (
            {"captures", "monitoring", ".cache"} & set(names) if Path(d) == store0.root else set()
        ),
    )
    store = LocalStore(root / "store")
    cfg = cfg0.with_overrides(store=store.uri, **{"data.cache_dir": str(root / "cache")})
    cfg_path = root / "config.yaml"
    cfg_path.write_text(cfg.to_yaml())
    m = read_manifest(store, resolve_dataset(store, "digits"))
    test = m[(m["split"] == "test") & m["decodable"]].sort_values("sha256")
    images = [
        (row.label, np.asarray(Image.open(io.BytesIO(store.get_bytes(row.key))), np.float64))
        for row in test.itertuples()
    ]
    return {"store": store, "cfg_path": cfg_path, "root": root, "images": images}


def folder(env, name: str, shift) -> tuple[Path, float]:
    """The test images through ``shift`` as PNGs in a folder, and the model's true
    accuracy on exactly those files."""
    d = env["root"] / name
    d.mkdir()
    for i, (label, a) in enumerate(env["images"]):
        Image.fromarray(np.clip(np.rint(shift(a)), 0, 255).astype(np.uint8), "L").save(
            d / f"{i:04d}-{label}.png"
        )
    predictor = Predictor.from_run(env["store"], "champ")
    files = sorted(d.iterdir())
    predicted = predictor.label(predictor.predict_bytes([f.read_bytes() for f in files]))
    truth = np.mean([p == f.stem.split("-", 1)[1] for p, f in zip(predicted, files, strict=True)])
    return d, float(truth)


def check(env, d: Path) -> tuple[str, dict]:
    out = visionline_cli(env["cfg_path"], "monitor", "check", "digits", "--images", str(d))
    assert out.returncode in (0, 3), out.stdout + out.stderr
    report_md = Path(out.stdout.split("report: ")[1].strip())
    return out.stdout, json.loads((report_md.parent / "report.json").read_text())


def test_a_clean_window_is_estimated_near_the_reference_accuracy(env):
    d, truth = folder(env, "clean", lambda a: a)
    stdout, report = check(env, d)
    m = LINE.search(stdout)
    assert m, stdout
    est, ref = float(m["est"]), float(m["ref"])
    assert m["method"] == method_key(EstimateConfig())  # the measured default
    assert abs(est - ref) < 0.05 and abs(est - truth) < 0.05
    assert float(m["lo"]) <= est <= float(m["hi"])
    acc = report["accuracy"]
    assert acc["estimate"] == pytest.approx(est, abs=1e-4) and acc["declined"] is None
    assert acc["reference_accuracy"] == pytest.approx(ref, abs=1e-4)
    assert {"atc_negative_entropy", "average_confidence"} <= set(acc["estimates"])
    md = (Path(stdout.split("report: ")[1].strip())).read_text()
    assert "## Accuracy estimated without labels" in md


def test_a_noisy_window_is_estimated_within_the_goal(env):
    rng = np.random.default_rng(0)
    d, truth = folder(env, "noisy", lambda a: a + rng.normal(0, 40, a.shape))
    stdout, report = check(env, d)
    m = LINE.search(stdout)
    assert m, stdout  # answered, not declined
    assert abs(float(m["est"]) - truth) <= 0.10
    assert report["accuracy"]["n_window"] == len(env["images"])


def test_an_inverted_window_cannot_be_estimated_and_says_why(env):
    d, _ = folder(env, "inverted", lambda a: 255 - a)
    stdout, report = check(env, d)
    assert "accuracy   accuracy cannot be estimated for this window: " in stdout
    assert not LINE.search(stdout)
    acc = report["accuracy"]
    assert acc["estimate"] is None and acc["declined"]
    assert "domain classifier" in acc["declined"] or "disagree" in acc["declined"]
    assert "reference accuracy" in stdout
