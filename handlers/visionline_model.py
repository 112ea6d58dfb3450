"""The model file inside every visionline .mar: rebuilds the architecture from the
archive's model_spec.json with visionline's own builder. TorchServe requires exactly one
class defined in this module."""

import json
from pathlib import Path

from torch import nn

from visionline.config import ModelConfig
from visionline.model.architectures import build_model


class VisionlineModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        spec = json.loads((Path(__file__).resolve().parent / "model_spec.json").read_text())
        self.net = build_model(
            ModelConfig(
                arch=spec["arch"],
                dropout=spec["dropout"],
                # archives built before the stem option have torchvision's own
                stem=spec.get("stem", "imagenet"),
            ),
            spec["num_classes"],
            spec["channels"],
            spec["image_size"],
        )

    def forward(self, x):
        return self.net(x)
