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
from visionline.model.runs import load_trained_model
from visionline.storage import ArtifactStore


def _is_linear(module: nn.Module) -> bool:
    # oneDNN-planned models (visionline.serving.inference) swap Linear for MkldnnLinear
    return isinstance(module, nn.Linear) or type(module).__name__ == "MkldnnLinear"


def penultimate_layer(model: nn.Module) -> nn.Module:
    """The model's last linear layer (the classification head), whose input is the
    penultimate representation: ``fc`` of ResNets, ``classifier[-1]`` of EfficientNet
    and MobileNet, ``head`` of the small CNN; the same after a conv-bn fusion."""
    last = None
    for module in model.modules():
        if _is_linear(module):
            last = module
    if last is None:
        raise ValueError(f"{type(model).__name__} has no linear layer to take features from")
    return last


class FeatureTap:
    """Keeps the input of the model's last linear layer from the latest forward pass:
    the penultimate features of every row of the batch, at no extra forward cost."""

    def __init__(self, model: nn.Module) -> None:
        self._last: torch.Tensor | None = None
        self._handle = penultimate_layer(model).register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._last = inputs[0]

    def take(self) -> torch.Tensor | None:
        """The (N, D) float32 features of the latest forward pass; None when the model
        has not run since the last take."""
        x, self._last = self._last, None
        if x is None:
            return None
        if x.is_mkldnn:
            x = x.to_dense()
        return x.detach().float().reshape(x.shape[0], -1)

    def remove(self) -> None:
        self._handle.remove()


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

    def predict_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) preprocessed batch -> (N, K) probabilities and the (N, D)
        penultimate features (the input of the last linear layer), from one forward pass."""
        tap = FeatureTap(self.model)
        try:
            probs = self.predict_tensor(x)
            feats = tap.take()
        finally:
            tap.remove()
        assert feats is not None
        return probs, feats.cpu()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, D) penultimate features of a preprocessed batch (monitoring's embedding)."""
        return self.predict_with_features(x)[1]

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
