"""simple_cnn on the bundled digits (CPU) vs scikit-learn's SVC on the same split.

The SVC is tuned on the validation split (C x gamma grid), so the baseline is a fair
one. Target: CNN test accuracy >= 98.5% and not below SVC.

    python benchmarks/accuracy.py
"""

from __future__ import annotations

import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_result
from visionline.config import load_config
from visionline.data.ingest import ingest
from visionline.data.manifest import read_manifest
from visionline.data.samples import write_digits
from visionline.evaluation import evaluate_run
from visionline.storage import LocalStore
from visionline.training import fit

REPO = Path(__file__).resolve().parents[1]


def _pixels(store: LocalStore, keys: list[str]) -> np.ndarray:
    from PIL import Image

    return np.stack(
        [
            np.asarray(Image.open(io.BytesIO(store.get_bytes(k))), dtype=np.float32).ravel() / 255
            for k in keys
        ]
    )


def main() -> None:
    from sklearn.svm import SVC

    with tempfile.TemporaryDirectory() as tmp:
        write_digits(Path(tmp) / "digits")
        store = LocalStore(Path(tmp) / "store")
        ref = ingest(store, str(Path(tmp) / "digits"), "digits", progress=False).ref
        cfg = load_config(REPO / "configs" / "digits.yaml").with_overrides(
            store=store.uri, **{"data.cache_dir": str(Path(tmp) / "cache")}
        )
        t = time.perf_counter()
        result = fit(cfg, store, "bench")
        train_seconds = time.perf_counter() - t
        cnn = evaluate_run(store, "bench")

        m = read_manifest(store, ref)
        split = {s: m[(m["split"] == s) & m["decodable"]] for s in ("train", "val", "test")}
        X = {s: _pixels(store, df["key"].tolist()) for s, df in split.items()}
        y = {s: df["label"].to_numpy() for s, df in split.items()}
        best = max(
            ((C, g) for C in (1, 3, 10, 30) for g in ("scale", 0.01, 0.03)),
            key=lambda p: (
                SVC(C=p[0], gamma=p[1]).fit(X["train"], y["train"]).score(X["val"], y["val"])
            ),
        )
        svc = SVC(C=best[0], gamma=best[1]).fit(X["train"], y["train"])
        svc_acc = float(svc.score(X["test"], y["test"]))

    write_result(
        "accuracy",
        {
            "test_accuracy": round(cnn["accuracy"], 4),
            "svc_accuracy": round(svc_acc, 4),
            "train_seconds": round(train_seconds, 1),
            "test_images": cnn["n"],
            "epochs_run": result.epochs_run,
            "svc_params": {"C": best[0], "gamma": best[1]},
            "target_met": cnn["accuracy"] >= 0.985 and cnn["accuracy"] >= svc_acc,
        },
    )


if __name__ == "__main__":
    main()
