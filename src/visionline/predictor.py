"""In-process inference, written once: model + preprocessing + class names -> probabilities.

Evaluation, the deploy parity check, the TorchServe handler and monitoring all predict
through this class, so "what the model says about an image" has one definition.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from visionline.data.images import decode_image
from visionline.data.transforms import Preprocessing, eval_transform
from visionline.storage import ArtifactStore


class Predictor:
    def __init__(
        self,
        model: nn.Module,
        preprocessing: Preprocessing,
        classes: Sequence[str],
        device: str | torch.device = "cpu",
    ) -> None:
        self.model = model.eval()
        self.preprocessing = preprocessing
        self.classes = list(classes)
        self.device = torch.device(device)
        self._transform = eval_transform(preprocessing)

    @classmethod
    def from_run(cls, store: ArtifactStore, run_id: str, device: str = "cpu") -> Predictor:
        """The best weights of a finished run with the preprocessing it was trained with."""
        from visionline.runs import load_trained_model

        model, info = load_trained_model(store, run_id, device)
        return cls(model, Preprocessing.from_dict(info["preprocessing"]), info["classes"], device)

    def transform(self, image: Image.Image) -> torch.Tensor:
        """One decoded image -> the normalised (C, H, W) tensor the model takes."""
        return self._transform(image)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float(), dim=1)

    def predict_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) preprocessed batch -> (N, K) class probabilities on the CPU."""
        with torch.inference_mode():
            return self.probabilities(self.model(x.to(self.device))).cpu()

    def predict_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, len(self.classes)), dtype=np.float32)
        return self.predict_tensor(torch.stack([self.transform(im) for im in images])).numpy()

    def predict_bytes(self, payloads: Sequence[bytes], max_pixels: int = 64_000_000) -> np.ndarray:
        """Encoded images -> probabilities; an undecodable one raises ImageDecodeError, as
        does one whose resize to this model's input would exceed the default bound."""
        side = self.preprocessing.resize_to
        return self.predict_images(
            [decode_image(p, max_pixels, target_short_edge=side) for p in payloads]
        )

    def label(self, probs: np.ndarray | torch.Tensor) -> list[str]:
        return [self.classes[int(i)] for i in np.asarray(probs).argmax(1)]
