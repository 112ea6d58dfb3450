"""Gradient saliency against a model whose gradient is known in closed form."""

import torch
from torch import nn

from visionline.config import ModelConfig
from visionline.model.architectures import build_model
from visionline.serving.explain import explanation, gradient_saliency


def _linear(c: int, h: int, w: int, k: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, k)).eval()


def test_saliency_of_a_linear_model_is_its_weights_for_the_predicted_class():
    model = _linear(3, 6, 5, k=4)
    x = torch.randn(5, 3, 6, 5)
    probs, target, maps = gradient_saliency(model, x)
    logits = model(x)
    assert torch.equal(target, logits.argmax(1))
    assert torch.allclose(probs, torch.softmax(logits, 1), atol=1e-6)
    weight = model[1].weight.detach().view(4, 3, 6, 5)
    for i in range(5):
        expected = weight[target[i]].abs().amax(0)
        assert torch.allclose(maps[i], expected / expected.max(), atol=1e-6)
    assert all(p.grad is None for p in model.parameters())  # the served model is untouched


def test_large_inputs_get_a_small_map():
    model = _linear(1, 64, 48, k=3)
    x = torch.randn(2, 1, 64, 48)
    _, target, maps = gradient_saliency(model, x, max_side=16)
    assert maps.shape == (2, 16, 12)
    full = model[1].weight.detach().view(3, 1, 64, 48)[target[0]].abs()
    pooled = nn.functional.adaptive_max_pool2d(full, (16, 12))[0]
    assert torch.allclose(maps[0], pooled / pooled.max(), atol=1e-6)
    assert float(maps.amax()) == 1.0 and float(maps.amin()) >= 0.0


def test_explanation_json_names_the_class():
    model = build_model(ModelConfig(), num_classes=10, channels=1, image_size=8).eval()
    probs, target, maps = gradient_saliency(model, torch.randn(1, 1, 8, 8))
    labels = {str(i): f"digit-{i}" for i in range(10)}
    out = explanation(probs[0], int(target[0]), maps[0], labels, top_k=3)
    assert out["label"] == f"digit-{int(target[0])}"
    assert out["probability"] == max(out["predictions"].values())
    assert len(out["predictions"]) == 3
    sal = out["saliency"]
    assert (sal["height"], sal["width"]) == (8, 8) and len(sal["values"]) == 8
    assert max(max(r) for r in sal["values"]) == 1.0
