"""Explanations for served predictions: gradient saliency for the predicted class.

For each image, the gradient of the predicted class's logit with respect to the input
pixels (Simonyan et al., 2014): its magnitude, the largest over channels, says which
pixels the decision is most sensitive to. It costs one forward and one backward pass,
needs nothing beyond the model, and works for every architecture we train. Maps are
max-pooled to at most ``max_side`` pixels a side so an answer stays small, and scaled
to [0, 1] per image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

METHOD = (
    "gradient saliency: |d logit(predicted class) / d pixel|, max over channels, scaled to [0, 1]"
)


def gradient_saliency(
    model: nn.Module, x: torch.Tensor, max_side: int = 32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(probabilities [N, K], predicted class [N], saliency [N, h, w]) for a batch of
    preprocessed images ``x`` [N, C, H, W]. ``model`` must support autograd (the eager
    module, not a oneDNN-prepacked one); its parameters get no gradient."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        target = logits.argmax(1)
        score = logits.gather(1, target[:, None]).sum()
        (grad,) = torch.autograd.grad(score, x)
    sal = grad.abs().amax(1, keepdim=True)  # [N, 1, H, W]
    h, w = sal.shape[-2:]
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        sal = F.adaptive_max_pool2d(sal, (max(1, round(h * scale)), max(1, round(w * scale))))
    peak = sal.amax(dim=(1, 2, 3), keepdim=True).clamp_min(torch.finfo(sal.dtype).tiny)
    probs = torch.softmax(logits.detach().float(), 1)
    return probs, target, (sal / peak)[:, 0]


def explanation(
    probs: torch.Tensor,
    target: int,
    saliency: torch.Tensor,
    labels: Mapping[str, str] | Sequence[str] | None = None,
    top_k: int = 3,
) -> dict[str, Any]:
    """One image's answer: the prediction it explains and the saliency map."""

    def name(i: int) -> str:
        if isinstance(labels, Mapping):
            return labels.get(str(i), str(i))
        return labels[i] if labels is not None else str(i)

    k = min(top_k, probs.numel())
    top_p, top_i = probs.topk(k)
    return {
        "label": name(int(target)),
        "probability": float(probs[target]),
        "predictions": {name(int(i)): float(p) for p, i in zip(top_p, top_i, strict=True)},
        "saliency": {
            "method": METHOD,
            "height": int(saliency.shape[0]),
            "width": int(saliency.shape[1]),
            "values": [[round(float(v), 4) for v in row] for row in saliency],
        },
    }
