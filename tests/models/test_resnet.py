"""ResNet: torchvision names / shapes / counts, dilation, and checkpoint loading.

torchvision is not imported: the expected state_dict is generated below from torchvision's naming
scheme (``torchvision/models/resnet.py``), independently of the code under test.
"""

from __future__ import annotations

import fractions

import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from metasparsity.models import BACKBONES, Bottleneck, ResNet, load_pretrained
from metasparsity.utils.errors import UserError

_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def torchvision_state_shapes(depth: int, num_classes: int = 1000) -> list[tuple[str, tuple]]:
    """``[(name, shape)]`` of ``torchvision.models.resnet{depth}().state_dict()``, in order."""
    bottleneck = depth >= 50
    expansion = 4 if bottleneck else 1
    out: list[tuple[str, tuple]] = []

    def conv(name, o, i, k):
        out.append((f"{name}.weight", (o, i, k, k)))

    def bn(name, c):
        for p in ("weight", "bias", "running_mean", "running_var"):
            out.append((f"{name}.{p}", (c,)))
        out.append((f"{name}.num_batches_tracked", ()))

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inplanes = 64
    for li, (planes, blocks) in enumerate(zip((64, 128, 256, 512), _LAYERS[depth]), start=1):
        for b in range(blocks):
            p = f"layer{li}.{b}"
            if bottleneck:
                conv(f"{p}.conv1", planes, inplanes, 1)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
                conv(f"{p}.conv3", planes * 4, planes, 1)
                bn(f"{p}.bn3", planes * 4)
            else:
                conv(f"{p}.conv1", planes, inplanes, 3)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
            if b == 0 and (li > 1 or inplanes != planes * expansion):
                conv(f"{p}.downsample.0", planes * expansion, inplanes, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    out.append(("fc.weight", (num_classes, 512 * expansion)))
    out.append(("fc.bias", (num_classes,)))
    return out


def _shapes(model: nn.Module) -> list[tuple[str, tuple]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def _n_params(shapes: list[tuple[str, tuple]]) -> int:
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    n = 0
    for name, shape in shapes:
        if not name.endswith(buffers):
            n += int(torch.tensor(shape).prod().item()) if shape else 1
    return n


@pytest.mark.parametrize("depth,output_stride,count", [
    (50, 32, 25_557_032), (50, 8, 25_557_032), (50, 16, 25_557_032), (18, 32, 11_689_512),
    (18, 8, 11_689_512)])
def test_torchvision_names_shapes_and_counts(depth, output_stride, count):
    model = BACKBONES[f"resnet{depth}"](output_stride=output_stride)
    expected = torchvision_state_shapes(depth)
    assert _shapes(model) == expected
    assert _n_params(expected) == count  # the generator itself matches torchvision's totals
    assert sum(p.numel() for p in model.parameters()) == count
    # parameters vs buffers split exactly as in torchvision
    buffers = {k for k, _ in model.named_buffers()}
    assert buffers == {k for k, _ in expected
                       if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def test_all_registered_depths_have_torchvision_names():
    assert BACKBONES.names() == ["resnet101", "resnet18", "resnet34", "resnet50"]
    for depth in (34, 101):
        model = BACKBONES[f"resnet{depth}"](width=0.125)  # names only; narrow keeps it fast
        names = [k for k, _ in model.state_dict().items()]
        assert names == [k for k, _ in torchvision_state_shapes(depth)]


def test_width_multiplier_channels():
    model = BACKBONES["resnet50"](width=0.25, num_classes=None)
    assert model.conv1.out_channels == 16
    assert [model.layer1[0].conv1.out_channels, model.layer4[0].conv3.out_channels] == [16, 512]
    assert model.out_channels == 512
    assert not hasattr(model.fc, "weight") and "fc.weight" not in model.state_dict()
    tiny = BACKBONES["resnet18"](width=0.001, num_classes=None)
    assert tiny.conv1.out_channels == 1 and tiny.out_channels == 1  # rounded to at least 1
    with pytest.raises(UserError):
        BACKBONES["resnet18"](width=0.0)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("depth", [18, 50])
def test_output_stride(depth, output_stride):
    model = BACKBONES[f"resnet{depth}"](width=0.25, output_stride=output_stride).eval()
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        f = model.forward_features(x)
        logits = model(x)
    # ⌈H/os⌉ × ⌈W/os⌉, as for torchvision (48/32 rounds up to 2)
    assert f.shape == (2, model.out_channels, -(-64 // output_stride), -(-48 // output_stride))
    assert model.output_stride == output_stride
    assert logits.shape == (2, 1000)


def _conv_geometry(model: nn.Module) -> dict[str, tuple[int, int, int]]:
    return {n: (m.stride[0], m.dilation[0], m.padding[0])
            for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_dilation_matches_torchvision_os8():
    """replace_stride_with_dilation=[False, True, True]: block 0 of a dilated stage keeps the
    previous dilation and loses its stride (also in the downsample conv)."""
    g = _conv_geometry(BACKBONES["resnet50"](width=0.25, output_stride=8))
    assert g["layer2.0.conv2"] == (2, 1, 1) and g["layer2.0.downsample.0"] == (2, 1, 0)
    assert g["layer3.0.conv2"] == (1, 1, 1) and g["layer3.0.downsample.0"] == (1, 1, 0)
    assert all(g[f"layer3.{i}.conv2"] == (1, 2, 2) for i in range(1, 6))
    assert g["layer4.0.conv2"] == (1, 2, 2) and g["layer4.0.downsample.0"] == (1, 1, 0)
    assert g["layer4.1.conv2"] == g["layer4.2.conv2"] == (1, 4, 4)
    assert all(g[f"layer{li}.{b}.conv{c}"][1:] == (1, 0)
               for li, n in zip((1, 2, 3, 4), (3, 4, 6, 3)) for b in range(n) for c in (1, 3))


def test_dilation_os16_and_basic_block():
    g = _conv_geometry(BACKBONES["resnet50"](width=0.25, output_stride=16))
    assert g["layer3.0.conv2"] == (2, 1, 1) and g["layer3.1.conv2"] == (1, 1, 1)
    assert g["layer4.0.conv2"] == (1, 1, 1) and g["layer4.1.conv2"] == (1, 2, 2)
    # BasicBlock: both 3x3 convs of a block use its dilation (torchvision has no dilated
    # BasicBlock; this is the natural extension).
    g = _conv_geometry(BACKBONES["resnet18"](width=0.25, output_stride=8))
    assert g["layer3.0.conv1"] == (1, 1, 1) and g["layer3.0.conv2"] == (1, 1, 1)
    assert g["layer3.1.conv1"] == g["layer3.1.conv2"] == (1, 2, 2)
    assert g["layer4.0.conv1"] == g["layer4.0.conv2"] == (1, 2, 2)
    assert g["layer4.1.conv1"] == g["layer4.1.conv2"] == (1, 4, 4)


def test_torchvision_initialisation():
    model = BACKBONES["resnet50"](width=0.5)
    # kaiming_normal_(mode="fan_out"): convs whose fan-in and fan-out differ tell the modes apart
    for conv in (model.layer3[1].conv1, model.layer3[1].conv3):  # 512 → 128 and 128 → 512, 1×1
        w = conv.weight
        fan_out, fan_in = w.shape[0] * w.shape[2] * w.shape[3], w.shape[1] * w.shape[2] * w.shape[3]
        assert fan_out != fan_in
        assert w.std().item() == pytest.approx((2.0 / fan_out) ** 0.5, rel=0.05)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


def test_resnet_class_takes_torchvision_flags():
    model = ResNet(Bottleneck, (1, 1, 1, 1), width=0.125,
                   replace_stride_with_dilation=(False, True, True), num_classes=7)
    assert model.output_stride == 8 and model.out_channels == 256
    assert model.layer4[0].conv2.dilation == (2, 2) and model.fc.out_features == 7
    with pytest.raises(ValueError):
        ResNet(Bottleneck, (1, 1, 1), width=0.125)


# ----------------------------------------------------------------------------- checkpoints

def _trained_like(model: nn.Module) -> nn.Module:
    """Give the BN running statistics non-default values so that loading them is checked."""
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
    return model.eval()


@pytest.mark.parametrize("fmt", ["pth", "pt-wrapped", "safetensors"])
def test_load_pretrained_roundtrip(tmp_path, fmt):
    src = _trained_like(BACKBONES["resnet18"](width=0.25))
    state = src.state_dict()
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif fmt == "pth":
        path = tmp_path / "w.pth"
        torch.save(state, path)
    else:
        path = tmp_path / "w.pt"
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    dst = BACKBONES["resnet18"](width=0.25)
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(dst.eval()(x), src(x))
    load_pretrained(dst, path)
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))
    for k, v in dst.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_load_pretrained_fc_optional(tmp_path):
    src = _trained_like(BACKBONES["resnet18"](width=0.25))
    state = src.state_dict()
    no_fc = {k: v for k, v in state.items()
             if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    torch.save(no_fc, tmp_path / "nofc.pth")
    dst = BACKBONES["resnet18"](width=0.25)
    fc_before = dst.fc.weight.clone()
    load_pretrained(dst, tmp_path / "nofc.pth")
    assert torch.equal(dst.fc.weight, fc_before)
    assert torch.equal(dst.layer4[1].bn2.running_var, src.layer4[1].bn2.running_var)
    # a model without fc ignores the file's fc
    torch.save(state, tmp_path / "full.pth")
    headless = BACKBONES["resnet18"](width=0.25, num_classes=None).eval()
    load_pretrained(headless, tmp_path / "full.pth")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(headless.forward_features(x), src.forward_features(x))


def test_load_pretrained_errors(tmp_path):
    model = BACKBONES["resnet18"](width=0.25)
    with pytest.raises(UserError, match="does not exist"):
        load_pretrained(model, tmp_path / "missing.pth")

    state = model.state_dict()
    bad = dict(state)
    bad["layer2.0.conv1.weight"] = torch.zeros(32, 16, 1, 1)
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(UserError, match=r"shape\.pth .*key 'layer2\.0\.conv1\.weight'"):
        load_pretrained(model, tmp_path / "shape.pth")

    missing = {k: v for k, v in state.items() if k != "layer3.1.bn1.running_mean"}
    save_file({k: v.contiguous() for k, v in missing.items()}, str(tmp_path / "m.safetensors"))
    with pytest.raises(UserError, match=r"layer3\.1\.bn1\.running_mean"):
        load_pretrained(model, tmp_path / "m.safetensors")

    extra = dict(state, **{"layer5.0.conv1.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(UserError, match=r"unexpected key 'layer5\.0\.conv1\.weight'"):
        load_pretrained(model, tmp_path / "extra.pth")

    # ImageNet-shaped weights into a narrow model: a clear width message
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "imagenet.pth")
    with pytest.raises(UserError, match="width 1 .*width 0.25"):
        load_pretrained(model, tmp_path / "imagenet.pth")

    (tmp_path / "w.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="unsupported checkpoint"):
        load_pretrained(model, tmp_path / "w.bin")


def test_load_pretrained_refuses_pickled_objects(tmp_path):
    model = BACKBONES["resnet18"](width=0.25)
    state = dict(model.state_dict())
    state["evil"] = fractions.Fraction(1, 3)  # any non-tensor global is refused by weights_only
    torch.save(state, tmp_path / "evil.pth")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match="pickled Python objects") as e:
        load_pretrained(model, tmp_path / "evil.pth")
    msg = str(e.value)
    # never PyTorch's advice to re-run with weights_only=False (it would run the file's code)
    assert "weights_only=False" not in msg and "\n" not in msg and "safetensors" in msg
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
