"""Preprocessing, defined once: training imports it, and so does the TorchServe handler.

``Preprocessing`` is the serialisable description (stored with every run and inside
every model archive); ``eval_transform`` and ``train_transform`` build the callables.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch
from PIL import Image
from torchvision.transforms import v2

from visionline.config import AugmentConfig
from visionline.data.images import to_mode


@dataclass(frozen=True)
class Preprocessing:
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_ratio: float = 1.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(
            image_size=int(d["image_size"]),
            channels=int(d["channels"]),
            mean=tuple(float(x) for x in d["mean"]),
            std=tuple(float(x) for x in d["std"]),
            crop_ratio=float(d.get("crop_ratio", 1.0)),
        )

    @property
    def resize_to(self) -> int:
        return max(self.image_size, round(self.image_size / self.crop_ratio))


class ToModelMode:
    """Any PIL image (RGBA, CMYK, 16-bit, palette...) -> L or RGB, as the model expects."""

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def __call__(self, im: Image.Image) -> Image.Image:
        return to_mode(im, self.channels)


def _tensor_tail(p: Preprocessing) -> list:
    return [
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(p.mean), std=list(p.std)),
    ]


def eval_transform(p: Preprocessing) -> v2.Compose:
    """Deterministic: mode conversion, resize, centre crop, scale to [0,1], normalise."""
    return v2.Compose(
        [
            ToModelMode(p.channels),
            v2.Resize(p.resize_to, interpolation=v2.InterpolationMode.BILINEAR, antialias=True),
            v2.CenterCrop(p.image_size),
            *_tensor_tail(p),
        ]
    )


def train_transform(p: Preprocessing, aug: AugmentConfig) -> v2.Compose:
    steps: list = [ToModelMode(p.channels)]
    if aug.random_resized_crop:
        steps.append(v2.RandomResizedCrop(p.image_size, scale=aug.crop_scale, antialias=True))
    else:
        steps += [v2.Resize(p.resize_to, antialias=True), v2.CenterCrop(p.image_size)]
    if aug.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(aug.hflip))
    if aug.rotation_degrees > 0:
        steps.append(v2.RandomRotation(aug.rotation_degrees))
    if aug.color_jitter > 0:
        j = aug.color_jitter
        steps.append(
            v2.ColorJitter(brightness=j, contrast=j, saturation=j if p.channels == 3 else 0)
        )
    return v2.Compose([*steps, *_tensor_tail(p)])


def stats_transform(p: Preprocessing) -> v2.Compose:
    """Eval geometry without normalisation: what mean/std are computed over."""
    return v2.Compose(
        [
            ToModelMode(p.channels),
            v2.Resize(p.resize_to, antialias=True),
            v2.CenterCrop(p.image_size),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )
