"""ResNet-18/34/50/101 with torchvision's parameter names, any width, optional dilation.

The modules, their order and every parameter / buffer name and shape are those of
``torchvision.models.ResNet`` (``conv1``, ``bn1``, ``layer1.0.conv1``, …,
``layer1.0.downsample.0/1``, ``fc``), so a torchvision ImageNet checkpoint loads with
``load_state_dict(strict=True)`` into a width-1 model.  torchvision itself is not imported.

Differences from torchvision, all of which leave the names unchanged:

* ``width`` multiplies the channels: stage ``i`` (0..3) has
  ``planes_i = max(1, round(64·width·2^i))`` channels (times 4 at the output of a bottleneck), and the stem has ``planes_0``.
* ``BasicBlock`` accepts a dilation (torchvision raises for it): both 3×3 convs of a block use
  the block's dilation, so ResNet-18/34 can run at output stride 8 or 16 as well.
* ``num_classes=None`` builds no ``fc`` (a pure backbone, as used by the multi-task model, so that
  no unused parameter sits among the shared ones).
* Activations and residual additions are out of place, which keeps the model friendly to
  ``torch.func`` transforms and higher-order gradients.

Dilation follows torchvision's ``replace_stride_with_dilation`` exactly: a dilated stage replaces
its stride 2 by stride 1 and multiplies the running dilation by 2; the first block of that stage
still uses the *previous* dilation, the following blocks the new one.  Output stride 8 is
``(False, True, True)`` (layer3 dilation 2, layer4 dilation 4), 16 is ``(False, False, True)``
(layer4 dilation 2), 32 is no dilation.

Initialisation as in torchvision: convs ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``,
BN weight 1 and bias 0, ``fc`` PyTorch's default ``nn.Linear`` init.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from metasparsity.utils.errors import UserError
from metasparsity.utils.registry import Registry

BACKBONES: Registry = Registry("backbone")

OUTPUT_STRIDES: dict[int, tuple[bool, bool, bool]] = {
    32: (False, False, False),
    16: (False, False, True),
    8: (False, True, True),
}


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3×3 convolution whose padding equals its dilation (spatial size kept at stride 1)."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation,
                     dilation=dilation, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with two 3×3 convs."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride and dilation here, "ResNet v1.5") → 1×1 expanding ×4, plus shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def stage_planes(width: float) -> list[int]:
    """Channels of the four stages before expansion: ``max(1, round(64·width·2^i))``."""
    if not width > 0:
        raise UserError(f"ResNet width must be > 0, got {width!r}")
    return [max(1, int(round(64 * width * 2**i))) for i in range(4)]


class ResNet(nn.Module):
    """torchvision-compatible ResNet.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
        width: channel multiplier (1.0 = torchvision's channels).
        replace_stride_with_dilation: three flags for layer2..layer4 (torchvision semantics).
        num_classes: size of ``fc``; ``None`` builds no ``fc``.

    Attributes:
        out_channels: channels of the layer4 feature map (``planes_3 · block.expansion``).
        output_stride: input size / feature-map size (8, 16 or 32).
        width: the channel multiplier.

    ``forward_features(x)``: ``[B, 3, H, W]`` → ``[B, out_channels, ⌈H/os⌉, ⌈W/os⌉]``;
    ``forward_head(f)``: global average pooling then ``fc`` → ``[B, num_classes]``
    (``[B, out_channels]`` without ``fc``); ``forward(x) = forward_head(forward_features(x))``.
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int],
                 width: float = 1.0,
                 replace_stride_with_dilation: Sequence[bool] = (False, False, False),
                 num_classes: int | None = 1000) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"layers must name 4 stages, got {list(layers)}")
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation must be three flags (layer2..layer4), "
                             f"got {list(replace_stride_with_dilation)}")
        planes = stage_planes(width)
        self.width = float(width)
        self.inplanes = planes[0]
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, planes[0], layers[0])
        self.layer2 = self._make_layer(block, planes[1], layers[1], stride=2,
                                       dilate=replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, planes[2], layers[2], stride=2,
                                       dilate=replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, planes[3], layers[3], stride=2,
                                       dilate=replace_stride_with_dilation[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.out_channels = planes[3] * block.expansion
        self.output_stride = 32 // 2 ** sum(bool(d) for d in replace_stride_with_dilation)
        self.fc = nn.Linear(self.out_channels, num_classes) if num_classes else None

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int,
                    stride: int = 1, dilate: bool = False) -> nn.Sequential:
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, previous_dilation)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, dilation=self.dilation))
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` → layer4 map ``[B, out_channels, H/os, W/os]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pooling (and ``fc`` when present): ``[B, C, h, w]`` → ``[B, ·]``."""
        x = torch.flatten(self.avgpool(features), 1)
        return x if self.fc is None else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_ARCHS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


def resnet(depth: int, width: float = 1.0, output_stride: int = 32,
           num_classes: int | None = 1000) -> ResNet:
    """ResNet-``depth`` (18, 34, 50, 101) at ``width`` and ``output_stride`` (8, 16, 32)."""
    if depth not in _ARCHS:
        raise UserError(f"unsupported ResNet depth {depth!r}; choose one of {sorted(_ARCHS)}")
    if output_stride not in OUTPUT_STRIDES:
        raise UserError(f"unsupported output stride {output_stride!r}; "
                        f"choose one of {sorted(OUTPUT_STRIDES)}")
    block, layers = _ARCHS[depth]
    return ResNet(block, layers, width=width,
                  replace_stride_with_dilation=OUTPUT_STRIDES[output_stride],
                  num_classes=num_classes)


def _register(depth: int) -> None:
    def build(width: float = 1.0, output_stride: int = 32,
              num_classes: int | None = 1000) -> ResNet:
        return resnet(depth, width=width, output_stride=output_stride, num_classes=num_classes)

    build.__name__ = build.__qualname__ = f"resnet{depth}"
    build.__doc__ = f"ResNet-{depth}: see :func:`resnet`."
    BACKBONES.register(f"resnet{depth}", build)


for _depth in _ARCHS:
    _register(_depth)


# ----------------------------------------------------------------------------- checkpoints

def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types
            first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
            raise UserError(f"cannot read safetensors file {path}: {first[:200]}") from None
    if suffix in (".pth", ".pt"):
        try:
            with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": we decide below
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            # PyTorch's own message suggests weights_only=False, which would run the file's code:
            # never repeat that advice.
            raise UserError(
                f"refusing to load {path}: it holds pickled Python objects, not only tensors, and "
                f"such files can run code when loaded; convert it to .safetensors or to a "
                f"tensor-only state dict") from None
        except Exception as e:  # a truncated, empty or non-PyTorch file
            raise UserError(f"cannot read {path}: not a PyTorch checkpoint, or truncated or "
                            f"corrupt ({type(e).__name__})") from None
        if isinstance(obj, dict):
            for key in ("state_dict", "model"):
                if isinstance(obj.get(key), dict):
                    obj = obj[key]
                    break
        if not isinstance(obj, dict):
            raise UserError(f"{path} holds a {type(obj).__name__}, not a state_dict")
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise UserError(f"{path}: entry {bad[0]!r} is not a tensor; expected a state_dict")
        return dict(obj)
    raise UserError(f"unsupported checkpoint file {path}: use .pth, .pt or .safetensors")


def _strip_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _optional(key: str) -> bool:
    # fc is never used by the multi-task model; num_batches_tracked is absent from the old
    # (pre-1.0) torchvision ImageNet files.
    return key.startswith("fc.") or key.endswith("num_batches_tracked")


def load_pretrained(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a torchvision-style ResNet checkpoint into ``model`` (a :class:`ResNet`), in place.

    ``path`` is a ``.pth`` / ``.pt`` file (read with ``torch.load(weights_only=True)``: a raw
    state_dict or a dict with a ``"state_dict"`` / ``"model"`` entry; a ``module.`` prefix on every
    key is removed) or a ``.safetensors`` file.  Every name and shape must match the model's,
    except that ``fc.*`` and ``*.num_batches_tracked`` may be missing from the file (the model keeps
    its own values) and the file's ``fc.*`` is ignored when the model has no ``fc``.

    Raises:
        UserError: missing or unreadable file, non-tensor content, a width mismatch (e.g. ImageNet
            weights into a ``width != 1`` model), or the first missing / unexpected / misshapen
            key.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"pretrained checkpoint {path} does not exist")
    state = _strip_prefix(_read_state_dict(path), "module.")
    own = model.state_dict()
    has_fc = any(k.startswith("fc.") for k in own)
    if not has_fc:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}

    if "conv1.weight" in state and "conv1.weight" in own:
        theirs, ours = state["conv1.weight"].shape[0], own["conv1.weight"].shape[0]
        if theirs != ours:
            raise UserError(
                f"{path} is for a ResNet of width {theirs / 64:g} (conv1 has {theirs} channels) "
                f"but the model has width {getattr(model, 'width', ours / 64):g} "
                f"({ours} channels); "
                f"set model.width={theirs / 64:g} or drop model.pretrained")
    for key, value in own.items():
        if key not in state:
            if _optional(key):
                continue
            raise UserError(f"{path} does not fit the model: key {key!r} is missing from the file")
        if tuple(state[key].shape) != tuple(value.shape):
            raise UserError(
                f"{path} does not fit the model: key {key!r} has shape {tuple(state[key].shape)} "
                f"in the file but {tuple(value.shape)} in the model")
    for key in state:
        if key not in own:
            raise UserError(f"{path} does not fit the model: unexpected key {key!r} in the file")
    merged = dict(own)
    merged.update(state)
    model.load_state_dict(merged, strict=True)
    return model
