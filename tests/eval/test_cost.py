"""Parameter counts, MACs (closed forms) and latency."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metasparsity.eval.cost import (
    cost_table,
    count_macs,
    count_parameters,
    measure_latency,
    stage_costs,
)


def test_count_parameters_exact():
    assert count_parameters(nn.Linear(7, 5)) == 7 * 5 + 5
    assert count_parameters(nn.Conv2d(3, 8, 3, bias=False)) == 8 * 3 * 3 * 3
    assert count_parameters(nn.Conv2d(4, 8, (3, 5), groups=2)) == 8 * 2 * 3 * 5 + 8
    shared = nn.Linear(4, 4)
    assert count_parameters(nn.Sequential(shared, shared)) == 20  # shared weights counted once
    frozen = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    frozen[0].requires_grad_(False)
    assert count_parameters(frozen, trainable_only=True) == 4


@pytest.mark.parametrize(
    ("b", "i", "o", "k", "stride", "padding", "hw"),
    [
        (2, 3, 8, (3, 3), 1, 1, (10, 12)),
        (1, 4, 6, (1, 3), 2, 0, (9, 7)),
        (3, 2, 5, (5, 5), 1, 2, (6, 6)),
    ],
)
def test_count_macs_of_a_conv(b, i, o, k, stride, padding, hw):
    conv = nn.Conv2d(i, o, k, stride=stride, padding=padding)
    x = torch.randn(b, i, *hw)
    ho, wo = conv(x).shape[-2:]
    assert count_macs(conv, x) == o * i * k[0] * k[1] * ho * wo * b


def test_count_macs_linear_and_mode_restored():
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    model.train()
    assert count_macs(model, torch.randn(5, 6)) == 5 * (6 * 4 + 4 * 2)
    assert model.training and model[1].training


class ToyMTL(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.heads = nn.ModuleDict({"a": nn.Conv2d(4, 2, 1), "b": nn.Conv2d(4, 1, 3, padding=1)})
        self.log_vars = nn.Parameter(torch.zeros(2))

    def forward_features(self, x):
        return self.backbone(x)

    def forward(self, x, tasks=None):
        f = self.forward_features(x)
        return {t: self.heads[t](f) for t in (tasks or list(self.heads))}


def test_cost_table_breakdown():
    model = ToyMTL()
    x = torch.randn(2, 3, 5, 5)
    table = cost_table(model, x)
    px = 2 * 5 * 5
    assert table["backbone"] == {"params": 4 * 3 * 9 + 4, "macs": 4 * 3 * 9 * px}
    assert table["per_head"]["a"] == {"params": 2 * 4 + 2, "macs": 2 * 4 * px}
    assert table["per_head"]["b"] == {"params": 4 * 9 + 1, "macs": 4 * 9 * px}
    assert table["heads"] == {"params": 10 + 37, "macs": (8 + 36) * px}
    assert table["total"]["params"] == count_parameters(model)
    assert table["total"]["macs"] == table["backbone"]["macs"] + table["heads"]["macs"]
    assert table["other_params"] == 2
    with pytest.raises(ValueError):
        cost_table(nn.Linear(2, 2), torch.randn(1, 2))


class Stages(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.block = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), self.relu, nn.Conv2d(6, 8, 1))
        self.unused = nn.MaxPool2d(2)  # never called: neither parameters nor MACs

    def forward(self, x):
        return self.block(self.relu(self.bn(self.stem(x))))


def test_stage_costs_are_closed_forms_and_sum_to_the_whole():
    net = Stages().train()
    x = torch.randn(2, 3, 8, 10)
    rows = stage_costs(net, x)
    px = 2 * 4 * 5  # batch × the 4 × 5 output of the stride-2 stem
    assert rows == [
        {"name": "stem", "params": 4 * 3 * 9, "macs": 4 * 3 * 9 * px},
        {"name": "bn", "params": 8, "macs": 0},
        {"name": "block", "params": 6 * 4 * 9 + 6 + 8 * 6 + 8, "macs": (6 * 4 * 9 + 8 * 6) * px},
    ]
    assert sum(r["macs"] for r in rows) == count_macs(net, x)
    assert sum(r["params"] for r in rows) == count_parameters(net)
    assert net.training and net.bn.training  # modes restored


def test_measure_latency_positive_and_mode_restored():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model.train()
    out = measure_latency(model, torch.randn(1, 3, 16, 16), warmup=1, repeats=5)
    assert out["repeats"] == 5 and out["device"] == "cpu"
    assert 0 < out["min_ms"] <= out["p10_ms"] <= out["median_ms"] <= out["p90_ms"] <= out["max_ms"]
    assert model.training
    with pytest.raises(ValueError):
        measure_latency(model, torch.randn(1, 3, 8, 8), repeats=0)
