"""Task heads: DeepLab-v3 ASPP for dense tasks, a small conv + MLP head for image-level tasks.

Every head is registered in :data:`HEADS` and obeys one contract::

    head = HEADS[name](in_channels=C_feat, out_channels=C_task, channels=..., [rates=...])
    out = head(features, size)   # features [B, C_feat, h, w], size = (H, W) of the input image

Dense heads return ``[B, C_task, H, W]`` (``[B, C_task, h, w]`` when ``size`` is None); image-level
heads return ``[B, C_task]`` and ignore ``size``.  Heads keep no state between calls, so they run
under ``torch.func.functional_call``.

Initialisation: convs followed by a norm and ReLU are Kaiming-normal (fan_out), norms 1 / 0, as in
the backbone; the output layers (ASPP classifier, MLP linears) keep PyTorch's default init.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from metasparsity.utils.registry import Registry

HEADS: Registry = Registry("head")


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(),
    )


def _gn_groups(channels: int, max_groups: int = 32, min_group_size: int = 8) -> int:
    """GroupNorm groups: the largest divisor of ``channels`` that is at most ``max_groups`` and
    leaves at least ``min_group_size`` channels per group (1 if none does): 256 → 32, 32 → 4."""
    best = 1
    for g in range(1, max_groups + 1):
        if channels % g == 0 and channels // g >= min_group_size:
            best = g
    return best


def _init_hidden(head: nn.Module, skip: tuple[nn.Module, ...] = ()) -> None:
    """Kaiming-normal (fan_out) for the convs followed by a norm and ReLU, norms at 1 / 0 (as in
    the backbone).  Output layers in ``skip`` keep PyTorch's default init, which gives logits of
    order one instead of the ReLU gain's larger ones."""
    for m in head.modules():
        if any(m is s for s in skip):
            continue
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ASPPPooling(nn.Module):
    """Image-pooling branch: global average pool → 1×1 conv → GroupNorm → ReLU → upsample.

    GroupNorm replaces DeepLab-v3's BatchNorm here: after global pooling each sample has a 1×1
    map, so BatchNorm in training mode would normalise over the batch only, fails for a batch of
    one and is very noisy for small batches.  GroupNorm normalises each sample over groups of its
    own channels (up to 32 groups of at least 8 channels, so a group never holds a single value,
    which would normalise to a constant), works for any batch size and keeps no running state.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.norm = nn.GroupNorm(_gn_groups(out_channels), out_channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm(self.conv(self.pool(x))))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


@HEADS.register("aspp")
class ASPPHead(nn.Module):
    """DeepLab-v3 head (Chen et al., 2017) for a dense task.

    Branches on the backbone map ``f`` ``[B, C_in, h, w]``, each ``channels`` wide:
    a 1×1 conv, three 3×3 convs with dilations ``rates`` (each conv → BN → ReLU) and the
    image-pooling branch (:class:`ASPPPooling`).  They are concatenated (``5·channels``) and
    projected by 1×1 conv → BN → ReLU (→ dropout), then 3×3 conv → BN → ReLU, then a 1×1
    classifier conv (with bias; every other conv has none) to ``out_channels``.  The logits are
    upsampled bilinearly (``align_corners=False``) to ``size``.

    Args:
        in_channels: backbone channels ``C_in``.
        out_channels: task channels (classes, 1 for depth, 3 for normals, …).
        channels: width of every branch (256 in DeepLab-v3).
        rates: dilations of the three atrous branches (12/24/36 at output stride 8).
        dropout: dropout after the projection (0 keeps the head deterministic).
    """

    def __init__(self, in_channels: int, out_channels: int, channels: int = 256,
                 rates: Sequence[int] = (12, 24, 36), dropout: float = 0.0) -> None:
        super().__init__()
        rates = tuple(int(r) for r in rates)
        if len(rates) != 3 or any(r < 1 for r in rates):
            raise ValueError(f"ASPP needs three atrous rates >= 1, got {list(rates)}")
        self.rates = rates
        self.branches = nn.ModuleList(
            [_conv_bn_relu(in_channels, channels, 1)]
            + [_conv_bn_relu(in_channels, channels, 3, r) for r in rates]
            + [ASPPPooling(in_channels, channels)]
        )
        self.project = nn.Sequential(
            *_conv_bn_relu(len(self.branches) * channels, channels, 1),
            nn.Dropout(dropout),
        )
        self.conv = _conv_bn_relu(channels, channels, 3)
        self.classifier = nn.Conv2d(channels, out_channels, 1)
        _init_hidden(self, skip=(self.classifier,))

    def forward(self, features: torch.Tensor,
                size: Sequence[int] | torch.Size | None = None) -> torch.Tensor:
        """``[B, C_in, h, w]`` → ``[B, out_channels, *size]`` (``h, w`` kept if ``size`` is None)."""
        x = torch.cat([branch(features) for branch in self.branches], dim=1)
        x = self.classifier(self.conv(self.project(x)))
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        return x


@HEADS.register("mlp")
class MLPHead(nn.Module):
    """Image-level head: 3×3 conv → BN → ReLU → global average pool → Linear → ReLU → Linear.

    ``[B, C_in, h, w]`` → logits ``[B, out_channels]``; ``channels`` is the width of the conv and
    of the hidden layer.  ``size`` is accepted for the common head interface and ignored.
    """

    def __init__(self, in_channels: int, out_channels: int, channels: int = 256) -> None:
        super().__init__()
        self.conv = _conv_bn_relu(in_channels, channels, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(channels, channels)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(channels, out_channels)
        _init_hidden(self)

    def forward(self, features: torch.Tensor,
                size: Sequence[int] | torch.Size | None = None) -> torch.Tensor:
        x = torch.flatten(self.pool(self.conv(features)), 1)
        return self.fc2(self.relu(self.fc1(x)))

