"""The served forward pass: CPU graph rewrites are verified against eager, measured,
and dropped (with the reason) when they cannot be trusted."""

import pytest
import torch
from torch import nn

from visionline.config import ModelConfig
from visionline.model.architectures import build_model
from visionline.serving import inference
from visionline.serving.inference import plan_cpu_inference


def _model(arch: str, channels: int, size: int) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch), 10, channels, size).eval()
    for m in model.modules():  # trained-looking batch-norm statistics, so folding matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model


def _probs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.softmax(model(x), 1)


@pytest.mark.parametrize("arch", ["resnet18", "cnn3"])
@pytest.mark.parametrize("mode", ["fused", "mkldnn"])
def test_forced_rewrite_computes_what_eager_computes(mode, arch):
    # 48, not 64, for cnn3: oneDNN's adaptive pool needs the 6x6 map divisible by 3x3
    model = _model(arch, 3, 48)
    plan = plan_cpu_inference(model, (3, 48, 48), batch_sizes=(8,), mode=mode, budget_s=0.3)
    assert plan.choice == mode and not plan.rejected
    assert plan.model is not model and isinstance(plan.model, torch.fx.GraphModule)
    if mode == "fused":  # batch norm is folded away
        assert not any(isinstance(m, nn.BatchNorm2d) for m in plan.model.modules())
    for batch in (1, 5, 8):  # any batch TorchServe may assemble, not only the ones checked
        x = torch.randn(batch, 3, 48, 48)
        assert (_probs(plan.model, x) - _probs(model, x)).abs().max() < 1e-5
    # a batch whose every request was refused reaches the model empty
    assert _probs(plan.model, torch.empty(0, 3, 48, 48)).shape == (0, 10)
    assert set(plan.ms_per_call) == {"eager", mode}
    assert set(plan.ms_per_call["eager"]) == {1, 8}


def test_auto_keeps_the_fastest_verified_candidate_or_eager():
    model = _model("simple_cnn", 1, 28)
    plan = plan_cpu_inference(model, (1, 28, 28), batch_sizes=(8,), budget_s=0.5)
    assert set(plan.ms_per_call) == {"eager", "fused", "mkldnn"}
    speedups = {n: plan.speedup(n) for n in ("fused", "mkldnn")}
    best = max(speedups, key=speedups.get)
    if speedups[best] >= 1.05:
        assert plan.choice == best
    else:
        assert plan.choice == "eager" and plan.model is model
    x = torch.randn(4, 1, 28, 28)
    assert (_probs(plan.model, x) - _probs(model, x)).abs().max() < 1e-5
    assert plan.choice in plan.summary() and "batch 8" in plan.summary()


def test_a_rewrite_the_model_does_not_support_falls_back_to_eager():
    # oneDNN's elementwise mul does not broadcast: mobilenet's squeeze-excite breaks it
    model = _model("mobilenet_v3_small", 3, 32)
    plan = plan_cpu_inference(model, (3, 32, 32), mode="mkldnn", budget_s=0.2)
    assert plan.choice == "eager" and plan.model is model
    assert "broadcasting" in plan.rejected["mkldnn"]


def test_a_rewrite_that_changes_the_answers_is_rejected(monkeypatch):
    class Drifted(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x) * 1.01  # a rewrite that is "almost" right

    monkeypatch.setitem(inference.BUILDERS, "fused", Drifted)
    model = _model("simple_cnn", 1, 8)
    plan = plan_cpu_inference(model, (1, 8, 8), mode="auto", budget_s=0.2)
    assert "fused" in plan.rejected and "differ from eager" in plan.rejected["fused"]
    assert plan.choice != "fused" and "fused" not in plan.ms_per_call


def test_untraceable_models_stay_eager():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)

        def forward(self, x):
            y = self.conv(x)
            return y.flatten(1) if y.sum() > 0 else -y.flatten(1)

    model = DataDependent().eval()
    plan = plan_cpu_inference(model, (1, 8, 8), budget_s=0.2)
    assert plan.choice == "eager" and plan.model is model
    assert set(plan.rejected) == {"fused", "mkldnn"}
    assert all("Trace" in why or "symbolic" in why for why in plan.rejected.values())


def test_eager_mode_and_non_float32_models_are_left_alone():
    model = _model("simple_cnn", 1, 8)
    assert plan_cpu_inference(model, (1, 8, 8), mode="eager").model is model
    doubled = _model("simple_cnn", 1, 8).double()
    plan = plan_cpu_inference(doubled, (1, 8, 8))
    assert plan.model is doubled and "float64" in plan.rejected["all"]
    with pytest.raises(ValueError, match="cpu inference mode 'fast'"):
        plan_cpu_inference(model, (1, 8, 8), mode="fast")
