"""Per-image statistics and the penultimate-layer embedding, for every architecture and
for the forward passes the serving worker may plan."""

import numpy as np
import pytest
import torch

from visionline.config import ModelConfig
from visionline.data.transforms import Preprocessing
from visionline.model.architectures import build_model
from visionline.model.predictor import FeatureTap, Predictor, penultimate_layer
from visionline.monitoring.features import describe_batch, feature_dim, make_projection
from visionline.serving.inference import BUILDERS

WIDTH = {
    "simple_cnn": 128,
    "cnn3": 256,
    "resnet18": 512,
    "efficientnet_b0": 1280,
    "mobilenet_v3_small": 1024,
}


@pytest.mark.parametrize("arch", list(WIDTH))
def test_features_are_the_input_of_the_head(arch):
    torch.manual_seed(0)
    size, ch = (16, 1) if arch in ("simple_cnn", "cnn3") else (32, 3)
    model = build_model(ModelConfig(arch=arch), 5, ch, size).eval()
    pre = Preprocessing(size, ch, (0.5,) * ch, (0.25,) * ch)
    x = torch.randn(3, ch, size, size)
    probs, feats = Predictor(model, pre, list("abcde")).predict_with_features(x)
    assert feats.shape == (3, WIDTH[arch]) and probs.shape == (3, 5)
    head = penultimate_layer(model)
    with torch.inference_mode():  # the head applied to the features gives the logits
        assert torch.allclose(torch.softmax(head(feats), 1), probs, atol=1e-5)
    assert feature_dim(model, (ch, size, size)) == WIDTH[arch]


@pytest.mark.parametrize("plan", list(BUILDERS))
def test_the_tap_reads_the_planned_forward_pass_too(plan):
    """The worker may serve a conv-bn fused or oneDNN-layout module: the features must
    be the same numbers as eager's."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="simple_cnn"), 10, 1, 16).eval()
    x = torch.randn(4, 1, 16, 16)
    eager_tap = FeatureTap(model)
    with torch.inference_mode():
        model(x)
    eager = eager_tap.take()
    planned = BUILDERS[plan](model)
    tap = FeatureTap(planned)
    with torch.inference_mode():
        planned(x)
    got = tap.take()
    assert got is not None and got.layout == torch.strided
    assert torch.allclose(got, eager, atol=1e-4)
    assert tap.take() is None  # taken once


def test_describe_batch_undoes_the_normalisation():
    pre = Preprocessing(4, 3, (0.5, 0.4, 0.3), (0.2, 0.25, 0.5))
    raw = torch.rand(2, 3, 4, 4)  # pixels in [0, 1]
    x = (raw - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.45, 0.45]])
    feats = torch.randn(2, 6)
    proj = torch.from_numpy(make_projection(6, 3, seed=1))
    d = describe_batch(x, probs, feats, pre, proj)
    flat = raw.reshape(2, 3, -1)
    for c in range(3):
        assert np.allclose(d[f"mean_{c}"], flat[:, c].mean(1).numpy(), atol=1e-6)
        assert np.allclose(d[f"std_{c}"], flat[:, c].std(1, unbiased=False).numpy(), atol=1e-6)
    assert d["label_index"].tolist() == [0, 1]
    assert np.allclose(d["confidence"], [0.7, 0.45]) and np.allclose(d["margin"], [0.5, 0.0])
    expected_entropy = -(probs * probs.log()).sum(1).numpy()
    assert np.allclose(d["entropy"], expected_entropy, atol=1e-6)
    assert np.allclose(d["embedding"], (feats @ proj).numpy(), atol=1e-6)


def test_the_projection_is_fixed_by_its_seed_and_keeps_distances():
    a, b = make_projection(512, 32, seed=0), make_projection(512, 32, seed=0)
    assert np.array_equal(a, b) and not np.array_equal(a, make_projection(512, 32, seed=1))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 512)).astype(np.float32)
    d_in = np.linalg.norm(x[:, None] - x[None], axis=-1)[np.triu_indices(50, 1)]
    y = x @ a
    d_out = np.linalg.norm(y[:, None] - y[None], axis=-1)[np.triu_indices(50, 1)]
    ratio = d_out / d_in
    assert 0.7 < np.median(ratio) < 1.3 and ratio.min() > 0.4  # Johnson-Lindenstrauss
