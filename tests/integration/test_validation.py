"""The GX data gate on real data and on a corpus of real-world faults."""

import subprocess
import sys

from tests.support.faults import CLASSES, EXPECTED, write_fault_corpus
from visionline.config import parse_config
from visionline.data.ingest import ingest
from visionline.data.validation import validate_dataset

DIGITS_CFG = parse_config(
    {
        "data": {"dataset": "digits", "classes": [str(i) for i in range(10)]},
        "validation": {
            "min_per_class": 1,
            "modes": ["L"],
            "allow_convertible": False,
            "max_imbalance_ratio": 1.5,
        },
    }
)
FAULT_CFG = parse_config(
    {
        "data": {"dataset": "faults", "classes": CLASSES},
        "validation": {
            "min_per_class": 2,
            "min_width": 8,
            "min_height": 8,
            "max_imbalance_ratio": 4,
        },
    }
)


def test_digits_pass_and_docs_are_stored(small_digits_dir, store):
    res = ingest(store, str(small_digits_dir), "digits", progress=False)
    report = validate_dataset(store, res.ref, DIGITS_CFG)
    assert report.success, report.summary()
    assert report.evaluated >= 10
    assert store.exists(f"{report.report_prefix}/data_docs/index.html")
    assert store.get_json(f"{report.report_prefix}/result.json")["success"] is True


def test_fault_corpus_fails_naming_every_bad_file(small_digits_dir, tmp_path, store):
    # something valuable is already in the store and must not change
    ingest(store, str(small_digits_dir), "digits", progress=False)
    before = {k: store.get_bytes(k) for k in store.list("")}

    corpus = write_fault_corpus(tmp_path / "faults")
    res = ingest(store, str(corpus), "faults", progress=False)
    report = validate_dataset(store, res.ref, FAULT_CFG)
    assert not report.success
    by_check = {f.check: f for f in report.failures}
    for source, check in EXPECTED.items():
        assert check in by_check, f"{check!r} did not fail; failures: {list(by_check)}"
        assert source in by_check[check].offending, f"{source} not named under {check!r}"
    # the class with no images is named per split
    per_class = next(f for f in report.failures if f.check.startswith("at least"))
    assert {"train/bird", "val/bird", "test/bird"} <= set(per_class.offending)
    # ... and so is the imbalance it causes
    assert "bird" in next(f for f in report.failures if "imbalance" in f.check).offending
    summary = report.summary()
    assert "FAILED" in summary and "train/cat/bomb.png" in summary

    after = {k: store.get_bytes(k) for k in before}
    assert after == before
    assert store.get_json(f"{report.report_prefix}/result.json")["success"] is False


def test_cli_validate_exits_nonzero_and_lists_files(tmp_path):
    corpus = write_fault_corpus(tmp_path / "faults")
    cfg = tmp_path / "faults.yaml"
    cfg.write_text(
        "store: " + str(tmp_path / "store") + "\n"
        "data: {dataset: faults, classes: [bird, cat, dog]}\n"
        "validation: {min_per_class: 2, max_imbalance_ratio: 4}\n"
    )
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "visionline.cli", "--config", str(cfg), *a],
        capture_output=True,
        text=True,
    )
    ing = run("ingest", str(corpus), "--dataset", "faults")
    assert ing.returncode == 0, ing.stderr
    val = run("validate", "faults")
    assert val.returncode == 1, val.stdout + val.stderr
    for source in EXPECTED:
        assert source in val.stdout
    assert "Data Docs:" in val.stdout
