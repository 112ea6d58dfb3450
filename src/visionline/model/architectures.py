"""Architectures: two small CNNs and torchvision's classifiers, with transfer learning.

Pretrained weights come from a file or ``s3://`` URI named in the config, loaded with
``weights_only=True``; nothing is ever downloaded from a hub at run time.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import torch
import torchvision
from torch import nn

from visionline.config import ModelConfig
from visionline.errors import TrainingError
from visionline.storage import read_uri

TORCHVISION_ARCHS = ("resnet18", "resnet50", "efficientnet_b0", "mobilenet_v3_small")


class SimpleCNN(nn.Module):
    """The classic two-conv CNN (PyTorch's MNIST example), for any channels, classes and
    input size; batch norm after each conv makes it train fast and robustly."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, dropout: float = 0.25):
        super().__init__()
        if image_size < 6:
            raise ValueError(f"simple_cnn needs image_size >= 6, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Dropout(dropout),
        )
        side = (image_size - 4) // 2
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * side * side, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout * 2),
        )
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.features(x)))


class CNN3(nn.Module):
    """Three VGG-style blocks (3x3 conv, batch norm, ReLU, 2x2 max-pool; 32, 64 and 128
    channels), then a 256-wide hidden layer: deeper than ``SimpleCNN`` for fewer
    multiply-adds on 28x28 inputs (about 7.5 M against 12 M), since it halves the
    resolution after every conv. An adaptive pool to 3x3 keeps the hidden layer's width
    whatever the image size."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int, dropout: float = 0.25):
        super().__init__()
        if image_size < 8:
            raise ValueError(f"cnn3 needs image_size >= 8, got {image_size}")
        blocks: list[nn.Module] = []
        for cin, cout in ((in_channels, 32), (32, 64), (64, 128)):
            blocks += [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(3))
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(128 * 3 * 3, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.head = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(self.features(x)))


SMALL_CNNS: dict[str, type[nn.Module]] = {"simple_cnn": SimpleCNN, "cnn3": CNN3}


def _head_name(arch: str) -> str:
    if arch in SMALL_CNNS:
        return "head"
    return {"resnet18": "fc", "resnet50": "fc"}.get(arch, "classifier")


def _replace_head(model: nn.Module, arch: str, num_classes: int) -> None:
    if arch.startswith("resnet"):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:  # efficientnet / mobilenet: the last Linear of the classifier Sequential
        last = model.classifier[-1]
        model.classifier[-1] = nn.Linear(last.in_features, num_classes)


def _first_conv_path(arch: str) -> tuple[str, ...]:
    return ("conv1",) if arch.startswith("resnet") else ("features", "0", "0")


def _adapt_input_channels(model: nn.Module, arch: str, channels: int) -> None:
    """Swap the stem conv for one taking ``channels`` inputs. Pretrained RGB filters are
    summed over colour, the usual way to keep them meaningful for grayscale."""
    if channels == 3:
        return
    *parents, leaf = _first_conv_path(arch)
    holder = model
    for name in parents:
        holder = holder[int(name)] if name.isdigit() else getattr(holder, name)
    old: nn.Conv2d = holder[int(leaf)] if leaf.isdigit() else getattr(holder, leaf)
    new = nn.Conv2d(
        channels,
        old.out_channels,
        old.kernel_size,
        old.stride,
        old.padding,
        bias=old.bias is not None,
    )
    with torch.no_grad():
        new.weight.copy_(old.weight.sum(dim=1, keepdim=True).repeat(1, channels, 1, 1) / channels)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    if leaf.isdigit():
        holder[int(leaf)] = new
    else:
        setattr(holder, leaf, new)


def _apply_stem(model: nn.Module, cfg: ModelConfig) -> None:
    """Swap torchvision's ImageNet stem for the CIFAR one: a 3x3 stride-1 conv and no
    max-pool, so a 32x32 image reaches layer1 at 32x32 and the last stage at 4x4."""
    if cfg.stem != "cifar":
        return
    old: nn.Conv2d = model.conv1
    conv = nn.Conv2d(old.in_channels, old.out_channels, 3, stride=1, padding=1, bias=False)
    # the initialisation torchvision gives every ResNet conv
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    model.conv1 = conv
    model.maxpool = nn.Identity()


def load_state_dict_uri(uri: str) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(io.BytesIO(read_uri(uri)), map_location="cpu", weights_only=True)
    except Exception as e:
        raise TrainingError(f"cannot load pretrained weights from {uri}: {e}") from e
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # one of our checkpoints
    return state


def build_model(cfg: ModelConfig, num_classes: int, channels: int, image_size: int) -> nn.Module:
    if cfg.arch in SMALL_CNNS:
        model: nn.Module = SMALL_CNNS[cfg.arch](channels, num_classes, image_size, cfg.dropout)
        if cfg.pretrained:
            model.load_state_dict(load_state_dict_uri(cfg.pretrained))
        return model

    if cfg.pretrained:
        # Build with the architecture's own head so the pretrained state_dict fits,
        # then replace the head for our classes.
        model = torchvision.models.get_model(cfg.arch, weights=None)
        _apply_stem(model, cfg)
        state = load_state_dict_uri(cfg.pretrained)
        if cfg.arch.startswith("resnet"):
            expected = model.conv1.weight.shape
            found = getattr(state.get("conv1.weight"), "shape", None)
            if found is not None and found != expected:
                raise TrainingError(
                    f"pretrained weights {cfg.pretrained} have a first conv of shape "
                    f"{tuple(found)}, model.stem {cfg.stem!r} needs {tuple(expected)}: use "
                    "weights trained with that stem, or the other model.stem"
                )
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if "num_batches_tracked" not in k]:
            raise TrainingError(
                f"pretrained weights {cfg.pretrained} do not fit {cfg.arch}: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        _replace_head(model, cfg.arch, num_classes)
    else:
        model = torchvision.models.get_model(cfg.arch, weights=None, num_classes=num_classes)
        _apply_stem(model, cfg)
    _adapt_input_channels(model, cfg.arch, channels)
    return model


def head_parameters(model: nn.Module, arch: str) -> Iterator[nn.Parameter]:
    return getattr(model, _head_name(arch)).parameters()


def set_backbone_trainable(model: nn.Module, arch: str, trainable: bool) -> None:
    """Freeze or unfreeze everything but the classification head."""
    head = {id(p) for p in head_parameters(model, arch)}
    for p in model.parameters():
        if id(p) not in head:
            p.requires_grad_(trainable)
