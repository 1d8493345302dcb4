"""A tiny multi-task network for unit tests (follows the model contract of DESIGN §6).

``ToyMultiTaskNet``: ``backbone`` = stem conv + BN + ReLU, one residual block (two 3×3 convs with
BN and an identity add) and a strided 1×1 conv with BN; ``heads`` = a ``ModuleDict`` with dense
tasks ``seg`` (3 classes) and ``depth`` (1 channel) and the image-level task ``attr`` (binary).
Works in float64 (``.double()``).  Import from a test with ``sys.path`` pointing at ``tests/``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TOY_TASKS = ("seg", "depth", "attr")


class ToyBackbone(nn.Module):
    def __init__(self, in_ch: int = 3, width: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.block_conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.block_bn1 = nn.BatchNorm2d(width)
        self.block_conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.block_bn2 = nn.BatchNorm2d(width)
        self.down = nn.Conv2d(width, 2 * width, 1, stride=2, bias=False)
        self.down_bn = nn.BatchNorm2d(2 * width)
        self.out_channels = 2 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.block_bn1(self.block_conv1(x)))
        y = self.block_bn2(self.block_conv2(y))
        x = F.relu(x + y)
        return F.relu(self.down_bn(self.down(x)))


class ToyMultiTaskNet(nn.Module):
    def __init__(self, tasks=TOY_TASKS, width: int = 4) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.backbone = ToyBackbone(width=width)
        c = self.backbone.out_channels
        heads = {}
        for t in self.tasks:
            if t == "seg":
                heads[t] = nn.Conv2d(c, 3, 1)
            elif t == "depth":
                heads[t] = nn.Conv2d(c, 1, 1)
            else:
                heads[t] = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 1))
        self.heads = nn.ModuleDict(heads)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor, tasks=None) -> dict[str, torch.Tensor]:
        tasks = self.tasks if tasks is None else tasks
        f = self.backbone(x)  # once, whatever the number of tasks
        out = {}
        for t in tasks:
            o = self.heads[t](f)
            if o.ndim == 4:
                o = F.interpolate(o, size=x.shape[-2:], mode="bilinear", align_corners=False)
            out[t] = o
        return out

    def shared_parameters(self):
        return self.backbone.parameters()

    def task_parameters(self, task: str):
        return self.heads[task].parameters()


def toy_loss(outputs, targets, tasks):
    """Equal-weight sum: CE for ``seg``, MSE for ``depth``, BCE-with-logits for ``attr``."""
    per = {}
    for t in tasks:
        o, y = outputs[t], targets[t]
        if t == "seg":
            per[t] = F.cross_entropy(o, y)
        elif t == "depth":
            per[t] = F.mse_loss(o, y)
        else:
            per[t] = F.binary_cross_entropy_with_logits(o.reshape(-1), y)
    return sum(per.values()), per


def toy_batch(n: int = 6, size: int = 8, dtype=torch.float64, generator=None):
    """``(x [n, 3, size, size], {task: target})`` with random targets for every toy task."""
    g = generator
    x = torch.randn(n, 3, size, size, dtype=dtype, generator=g)
    y = {
        "seg": torch.randint(0, 3, (n, size, size), generator=g),
        "depth": torch.randn(n, 1, size, size, dtype=dtype, generator=g),
        "attr": torch.randint(0, 2, (n,), generator=g).to(dtype),
    }
    return x, y
