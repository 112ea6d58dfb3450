"""Parity: pinned validation images through the served endpoint and through the model
in-process. Every top-1 must agree and probabilities must match within ``tol``; a
failing check blocks deployment."""

from __future__ import annotations

from dataclasses import dataclass, field

from visionline.model.predictor import Predictor
from visionline.serving.client import InferenceClient
from visionline.storage import ArtifactStore


@dataclass
class ParityReport:
    checked: int = 0
    max_abs_diff: float = 0.0
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.checked > 0 and not self.mismatches

    def summary(self) -> str:
        head = f"parity {'OK' if self.ok else 'FAILED'}: {self.checked} images, max |dp| {self.max_abs_diff:.2e}"
        return "\n".join([head, *(f"  - {m}" for m in self.mismatches[:10])])


def parity_check(
    client: InferenceClient, store: ArtifactStore, model_info: dict, tol: float = 1e-4
) -> ParityReport:
    predictor = Predictor.from_run(store, model_info["run_id"])
    classes = predictor.classes
    report = ParityReport()
    for key in model_info["parity_keys"]:
        data = store.get_bytes(key)
        local = predictor.predict_bytes([data])[0]
        try:
            served = client.predict(data)
        except Exception as e:
            report.mismatches.append(f"{key}: served request failed: {e}")
            continue
        report.checked += 1
        local_top = classes[int(local.argmax())]
        served_top = max(served, key=served.get)
        if served_top != local_top:
            report.mismatches.append(f"{key}: top-1 served {served_top} != in-process {local_top}")
        for label, p in served.items():
            diff = abs(float(local[classes.index(label)]) - float(p))
            report.max_abs_diff = max(report.max_abs_diff, diff)
            if diff > tol:
                report.mismatches.append(
                    f"{key}: p({label}) served {p:.6f} vs in-process {float(local[classes.index(label)]):.6f}"
                )
    return report
