import pytest
import torch

from visionline.config import ModelConfig, TrainConfig
from visionline.errors import TrainingError
from visionline.model.architectures import TORCHVISION_ARCHS, build_model, set_backbone_trainable
from visionline.training.optim import LRSchedule, build_optimizer


@pytest.mark.parametrize("arch", ["simple_cnn", "cnn3", *TORCHVISION_ARCHS])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_arch_builds_for_any_channels_and_classes(arch, channels):
    model = build_model(
        ModelConfig(arch=arch), num_classes=7, channels=channels, image_size=32
    ).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, 32, 32))
    assert out.shape == (2, 7)


@pytest.mark.parametrize("arch", ["simple_cnn", "cnn3"])
def test_small_cnn_sizes(arch):
    for size in (8, 16, 28, 64):
        m = build_model(ModelConfig(arch=arch), num_classes=3, channels=1, image_size=size)
        assert m(torch.randn(1, 1, size, size)).shape == (1, 3)
    with pytest.raises(ValueError, match=f"{arch} needs image_size"):
        build_model(ModelConfig(arch=arch), num_classes=3, channels=1, image_size=5)


def test_pretrained_must_fit(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"nonsense.weight": torch.zeros(1)}, bad)
    with pytest.raises(TrainingError, match="do not fit resnet18"):
        build_model(ModelConfig(arch="resnet18", pretrained=str(bad)), 10, 3, 32)
    with pytest.raises(TrainingError, match="cannot load"):
        build_model(
            ModelConfig(arch="resnet18", pretrained=str(tmp_path / "missing.pt")), 10, 3, 32
        )


def test_pretrained_from_s3(s3_client, bucket, tmp_path):
    import io

    import torchvision

    donor = torchvision.models.mobilenet_v3_small(weights=None)
    buf = io.BytesIO()
    torch.save(donor.state_dict(), buf)
    s3_client.put_object(Bucket=bucket, Key="weights/mnv3.pt", Body=buf.getvalue())
    m = build_model(
        ModelConfig(arch="mobilenet_v3_small", pretrained=f"s3://{bucket}/weights/mnv3.pt"),
        4,
        3,
        32,
    )
    assert torch.equal(m.features[1].block[0][0].weight, donor.features[1].block[0][0].weight)
    assert m.classifier[-1].out_features == 4


def test_freeze_leaves_only_the_head_trainable():
    m = build_model(ModelConfig(arch="efficientnet_b0"), 5, 3, 32)
    set_backbone_trainable(m, "efficientnet_b0", False)
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("classifier") for n in trainable)
    set_backbone_trainable(m, "efficientnet_b0", True)
    assert all(p.requires_grad for p in m.parameters())


@pytest.mark.parametrize("opt", ["sgd", "adam", "adamw", "rmsprop"])
@pytest.mark.parametrize("sched", ["none", "cosine", "step", "onecycle", "plateau"])
def test_optimizers_and_schedules(opt, sched):
    cfg = TrainConfig(
        optimizer=opt,
        scheduler=sched,
        epochs=4,
        lr=0.1,
        warmup_epochs=1,
        step_size=1,
        nesterov=opt == "sgd",
    )
    model = torch.nn.Linear(3, 2)
    o = build_optimizer(model.parameters(), cfg)
    s = LRSchedule(o, cfg, steps_per_epoch=5)
    lrs = []
    for _epoch in range(4):
        for _ in range(5):
            o.step()
            s.step_batch()
            lrs.append(o.param_groups[0]["lr"])
        s.step_epoch(val_loss=1.0)
    if sched in ("cosine", "step"):
        assert lrs[0] < lrs[4]  # linear warm-up rises first
        assert lrs[-1] < max(lrs)
    if sched == "onecycle":
        assert max(lrs) == pytest.approx(0.1, rel=0.05) and lrs[-1] < 0.01
    if sched == "plateau":
        assert lrs[-1] < 0.1  # warm-up ended and the flat loss cut the rate
    if sched == "none":
        assert lrs[0] < lrs[4]  # the warm-up still rises...
        assert lrs[5:] == [pytest.approx(0.1)] * 15  # ...then the rate stays put
    state = s.state_dict()
    restored = LRSchedule(build_optimizer(model.parameters(), cfg), cfg, 5)
    restored.load_state_dict(state)
    assert restored.state_dict() == state  # a resumed run continues the same schedule


def _stage_shapes(model: torch.nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape))
        )
        for name in ("conv1", "layer1", "layer4", "fc")
    ]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return shapes


@pytest.mark.parametrize(("arch", "width"), [("resnet18", 512), ("resnet50", 2048)])
@pytest.mark.parametrize("channels", [1, 3])
def test_cifar_stem_keeps_small_images_spatial(arch, width, channels):
    x = torch.randn(2, channels, 32, 32)
    cifar = build_model(ModelConfig(arch=arch, stem="cifar"), 10, channels, 32)
    conv1 = cifar.conv1
    assert (conv1.in_channels, conv1.kernel_size, conv1.stride, conv1.padding) == (
        channels,
        (3, 3),
        (1, 1),
        (1, 1),
    )
    assert isinstance(cifar.maxpool, torch.nn.Identity)
    shapes = _stage_shapes(cifar, x)
    assert shapes["conv1"] == (2, 64, 32, 32)
    assert shapes["layer1"][2:] == (32, 32)
    assert shapes["layer4"] == (2, width, 4, 4)
    assert shapes["fc"] == (2, 10)
    # torchvision's ImageNet stem: 4x down before layer1, 1x1 at the last stage
    imagenet = _stage_shapes(build_model(ModelConfig(arch=arch), 10, channels, 32), x)
    assert imagenet["conv1"] == (2, 64, 16, 16)
    assert imagenet["layer4"] == (2, width, 1, 1)


def test_cifar_stem_only_for_resnets():
    from visionline.config import parse_config
    from visionline.errors import ConfigError

    for arch in ("simple_cnn", "efficientnet_b0", "mobilenet_v3_small"):
        with pytest.raises(ConfigError, match=r"model: .*stem 'cifar' applies to resnet18"):
            parse_config({"data": {"dataset": "d"}, "model": {"arch": arch, "stem": "cifar"}})
    with pytest.raises(ConfigError, match=r"model.stem: Input should be 'imagenet' or 'cifar'"):
        parse_config({"data": {"dataset": "d"}, "model": {"arch": "resnet18", "stem": "tiny"}})


def test_pretrained_weights_must_match_the_stem(tmp_path):
    import torchvision

    imagenet = tmp_path / "imagenet.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), imagenet)
    with pytest.raises(TrainingError, match=r"first conv of shape \(64, 3, 7, 7\).*'cifar'"):
        build_model(ModelConfig(arch="resnet18", stem="cifar", pretrained=str(imagenet)), 5, 3, 32)

    donor = build_model(ModelConfig(arch="resnet18", stem="cifar"), 1000, 3, 32)
    cifar = tmp_path / "cifar.pt"
    torch.save(donor.state_dict(), cifar)
    m = build_model(ModelConfig(arch="resnet18", stem="cifar", pretrained=str(cifar)), 5, 3, 32)
    assert torch.equal(m.conv1.weight, donor.conv1.weight)
    assert m.fc.out_features == 5


def test_archive_model_file_rebuilds_the_stem(tmp_path):
    """The .mar's model file builds the architecture from model_spec.json, stem included."""
    import importlib.util
    import json
    import shutil
    from pathlib import Path

    source = Path(__file__).resolve().parents[2] / "handlers" / "visionline_model.py"
    shutil.copy(source, tmp_path / "visionline_model.py")
    spec = {"arch": "resnet18", "dropout": 0.0, "num_classes": 4, "channels": 3, "image_size": 32}
    for stem, kernel in ((None, (7, 7)), ("imagenet", (7, 7)), ("cifar", (3, 3))):
        (tmp_path / "model_spec.json").write_text(
            json.dumps({**spec, "stem": stem} if stem else spec)
        )
        loader = importlib.util.spec_from_file_location("vm", tmp_path / "visionline_model.py")
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
        assert module.VisionlineModel().net.conv1.kernel_size == kernel
