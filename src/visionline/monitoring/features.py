"""Per-image statistics and embeddings: one code path for captures, image folders and
the reference, so every comparison is like for like.

Statistics are taken on the model's input (after the eval transform's resize and crop)
in [0, 1] pixel units, plus the image's own width and height before resizing. The
embedding is the model's penultimate layer (the input of its last linear layer), read
by a forward hook during the forward pass the prediction needs anyway, and reduced by a
fixed random Gaussian projection (Johnson-Lindenstrauss: distances are kept up to a
small factor) so that a record stays a few dozen numbers.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from visionline.data.images import ImageDecodeError, decode_image
from visionline.data.transforms import Preprocessing
from visionline.model.predictor import FeatureTap, Predictor

# numeric features the drift check tests one by one (the channel ones per channel)
BASE_FEATURES = ("width", "height", "confidence", "entropy")


def channel_features(channels: int) -> list[str]:
    return [f"mean_{c}" for c in range(channels)] + [f"std_{c}" for c in range(channels)]


def numeric_features(channels: int) -> list[str]:
    return ["width", "height", *channel_features(channels), "confidence", "entropy"]


def feature_dim(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Width of the penultimate layer, found by running one blank input."""
    tap = FeatureTap(model)
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros((1, *input_shape)))
        feats = tap.take()
    finally:
        tap.remove()
    assert feats is not None
    return int(feats.shape[1])


def make_projection(in_dim: int, out_dim: int, seed: int) -> np.ndarray:
    """A fixed Gaussian random projection (in_dim, out_dim), scaled so that squared
    norms are kept in expectation."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((in_dim, out_dim)) / np.sqrt(out_dim)).astype(np.float32)


def projection_to_bytes(p: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, p, allow_pickle=False)
    return buf.getvalue()


def projection_from_bytes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def describe_batch(
    x: torch.Tensor,
    probs: torch.Tensor,
    feats: torch.Tensor | None,
    pre: Preprocessing,
    projection: torch.Tensor | None,
) -> dict[str, np.ndarray]:
    """Statistics of preprocessed images ``x`` (N, C, H, W, normalised) and their class
    probabilities ``probs`` (N, K); ``embedding`` when features and a projection are given."""
    x = x.detach().float().cpu()
    mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, -1)
    std = torch.tensor(pre.std, dtype=torch.float32).view(1, -1)
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    # undo the normalisation on the statistics, not on the pixels: [0, 1] units
    ch_mean = (flat.mean(2) * std + mean).numpy()
    ch_std = (flat.std(2, unbiased=False) * std).numpy()
    p = probs.detach().float().cpu()
    k = min(2, p.shape[1])
    top = p.topk(k, dim=1)
    out: dict[str, np.ndarray] = {
        "label_index": top.indices[:, 0].numpy().astype(np.int64),
        "confidence": top.values[:, 0].numpy().astype(np.float64),
        "margin": (top.values[:, 0] - (top.values[:, 1] if k > 1 else 0)).numpy(),
        "entropy": (-(p * p.clamp_min(1e-12).log()).sum(1)).numpy().astype(np.float64),
    }
    for c in range(x.shape[1]):
        out[f"mean_{c}"] = ch_mean[:, c].astype(np.float64)
        out[f"std_{c}"] = ch_std[:, c].astype(np.float64)
    if feats is not None and projection is not None:
        out["embedding"] = (feats.float().cpu() @ projection).numpy()
    return out


@dataclass
class Described:
    """Images run through the model, described; ``skipped`` names what could not be read."""

    frame: pd.DataFrame
    skipped: list[tuple[str, str]]


def describe_images(
    predictor: Predictor,
    projection: np.ndarray,
    images: Iterable[tuple[str, bytes]],
    batch_size: int = 128,
    max_pixels: int = 64_000_000,
) -> Described:
    """(name, bytes) pairs -> one row per decodable image, as a capture records it:
    decoded as the handler decodes, the predictor's transform and forward pass."""
    proj = torch.from_numpy(projection)
    parts: list[pd.DataFrame] = []
    skipped: list[tuple[str, str]] = []

    def run(batch: list[tuple[str, tuple[int, int], torch.Tensor]]) -> None:
        x = torch.stack([t for _, _, t in batch])
        probs, feats = predictor.predict_with_features(x)
        d = describe_batch(x, probs, feats, predictor.preprocessing, proj)
        emb = d.pop("embedding")
        df = pd.DataFrame(d)
        df.insert(0, "name", [n for n, _, _ in batch])
        df.insert(1, "width", [s[0] for _, s, _ in batch])
        df.insert(2, "height", [s[1] for _, s, _ in batch])
        df["label"] = [predictor.classes[i] for i in d["label_index"]]
        df["embedding"] = list(emb.astype(np.float32))
        parts.append(df)

    batch: list[tuple[str, tuple[int, int], torch.Tensor]] = []
    for name, data in images:
        try:
            im = decode_image(data, max_pixels)
        except ImageDecodeError as e:
            skipped.append((name, str(e)))
            continue
        batch.append((name, im.size, predictor.transform(im)))
        if len(batch) == batch_size:
            run(batch)
            batch = []
    if batch:
        run(batch)
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return Described(frame, skipped)
