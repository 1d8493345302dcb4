"""``meta.lambda_init: auto``: λ0 is the median of the groups' ``‖∇_g L‖/w_g`` (the lower middle
for an even number of groups, as ``torch.median`` gives), clamped into its bounds."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from metasparsity.meta.lambda_init import auto_lambda0
from metasparsity.sparsity import channel_groups

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from toy_models import ToyMultiTaskNet, toy_batch, toy_loss  # noqa: E402

TASKS = ["seg", "depth", "attr"]


def ratios_by_backward(model, layers, batches) -> np.ndarray:
    """``‖∇_g L‖/w_g`` of every group from a plain backward (train mode: batch statistics)."""
    model.train()
    params = dict(model.named_parameters())
    grads = {g.name: np.zeros(g.shape) for g in layers}
    for x, y in batches:
        model.zero_grad()
        toy_loss(model(x, tasks=TASKS), y, TASKS)[0].backward()
        for g in layers:
            grads[g.name] += params[g.name].grad.numpy() / len(batches)
    return np.concatenate([np.sqrt((grads[g.name] ** 2).sum(axis=(0, 2, 3))) / g.group_weight
                           for g in layers])


def test_auto_lambda0_is_the_lower_median_for_an_even_number_of_groups():
    torch.manual_seed(0)
    model = ToyMultiTaskNet(width=3).double()  # 3 + 3 + 3 + 3 = 12 groups
    layers = channel_groups(model)
    gen = torch.Generator().manual_seed(1)
    batches = [toy_batch(4, generator=gen) for _ in range(2)]
    want = np.sort(ratios_by_backward(model, layers, batches))
    assert want.size % 2 == 0
    lower, upper = want[want.size // 2 - 1], want[want.size // 2]
    assert upper > lower * (1 + 1e-3)  # the two middles differ: the test tells them apart
    lam0 = auto_lambda0(model, layers, batches, toy_loss, TASKS, 0.0, np.inf)
    assert lam0 == pytest.approx(float(lower), rel=1e-6)  # the ratios are float32
    # clamped into [lambda_min, lambda_max]
    assert auto_lambda0(model, layers, batches, toy_loss, TASKS, 2 * upper, np.inf) == 2 * upper
    assert auto_lambda0(model, layers, batches, toy_loss, TASKS, 0.0, lower / 2) == lower / 2
