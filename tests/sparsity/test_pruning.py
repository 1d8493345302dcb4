"""Physical pruning: exact outputs, real removals, residual streams kept, all-zero layers."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from metasparsity.data import TASKS
from metasparsity.models import build_model_from_tasks
from metasparsity.sparsity import (
    prune_zero_channels,
    pruning,
    pruning_report,
    removed_zero_masks,
    sparsity_stats,
    zero_group_masks,
)
from metasparsity.sparsity.pruning import feature_map_groups, plan_pruning

TASK_NAMES = ("segment", "depth", "has_sphere")  # two ASPP heads, one mlp head
SIZE = 32


def make_model(depth: int, width: float, output_stride: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    tasks = {n: TASKS.get(n) for n in TASK_NAMES}
    model = build_model_from_tasks(tasks, depth=depth, width=width, output_stride=output_stride,
                                   head_channels=8, aspp_rates=(1, 2, 3))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-default BN statistics and affine parameters everywhere
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return model.eval()


def convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def zero_inputs(model: nn.Module, name: str, channels) -> None:
    with torch.no_grad():
        convs(model)[name].weight[:, list(channels)] = 0.0


def random_pattern(model: nn.Module, fraction: float, seed: int) -> None:
    """Zero a random ``fraction`` of the input-channel groups of every backbone conv."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.backbone.modules():
            if isinstance(m, nn.Conv2d):
                m.weight[:, torch.rand(m.in_channels, generator=g) < fraction] = 0.0


def outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model.eval()(x)


def assert_same_outputs(dense: nn.Module, pruned: nn.Module, x: torch.Tensor) -> None:
    a, b = outputs(dense, x), outputs(pruned, x)
    assert a.keys() == b.keys() == set(TASK_NAMES)
    for t in a:
        assert a[t].shape == b[t].shape
        assert a[t].abs().max() > 0.01, t  # a meaningful comparison, not of near-zero outputs
        assert (a[t] - b[t]).abs().max().item() <= 1e-5, t


ARCHS = [(18, 0.25, 32), (34, 0.125, 8), (50, 0.125, 16)]


@pytest.mark.parametrize("depth,width,os_", ARCHS)
def test_random_patterns_prune_exactly(depth, width, os_):
    dense = make_model(depth, width, os_)
    random_pattern(dense, 0.5, seed=depth)
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    x = torch.randn(2, 3, SIZE, SIZE)
    pruned = prune_zero_channels(dense, x[:1])
    assert_same_outputs(dense, pruned, x)
    # the input model is untouched
    after = dense.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # random per-layer patterns still free block-internal channels (single consumer)
    report = pruning_report(dense, pruned)
    assert report["params_after"] < report["params_before"]
    rows = {r["name"]: r for r in report["layers"]}
    internal = "backbone.layer1.0.conv1"
    c2 = convs(dense)["backbone.layer1.0.conv2"]
    unread = int((c2.weight.abs().sum(dim=(0, 2, 3)) == 0).sum())
    expected = max(1, c2.in_channels - unread)
    assert rows[internal]["out_after"] == expected
    assert rows["backbone.layer1.0.bn1"]["out_after"] == expected


def test_exact_up_to_rounding_in_float64():
    """In float64 the only difference left is summation order: far below float32's 1e-5."""
    dense = make_model(50, 0.125, 8).double()
    random_pattern(dense, 0.6, seed=7)
    x = torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64)
    pruned = prune_zero_channels(dense, x[:1])
    a, b = outputs(dense, x), outputs(pruned, x)
    assert max((a[t] - b[t]).abs().max().item() for t in a) < 1e-10
    assert pruning_report(dense, pruned)["conv_channels_removed"] > 0


def test_structured_pattern_removes_every_unread_channel():
    dense = make_model(50, 0.125, 8)
    x = torch.randn(1, 3, SIZE, SIZE)
    g = torch.Generator().manual_seed(3)
    removed = {}
    for grp in feature_map_groups(dense, x):
        if grp.blocked or any(not c.name.startswith("backbone.") for c in grp.consumers):
            continue
        chosen = torch.randperm(grp.size, generator=g)[: grp.size // 2].tolist()
        for c in grp.consumers:
            zero_inputs(dense, c.name, [loc for loc, root in c.pairs if root in chosen])
        removed[grp.root] = len(chosen)
    assert "backbone.layer1.0.conv3" in removed  # a residual stream is among them
    pruned = prune_zero_channels(dense, x)
    assert_same_outputs(dense, pruned, torch.randn(2, 3, SIZE, SIZE))
    before, after = convs(dense), convs(pruned)
    for root, n in removed.items():
        assert after[root].out_channels == before[root].out_channels - n, root
    # the stream is removed in every producer and every consumer of layer1
    assert after["backbone.layer1.0.downsample.0"].out_channels == after["backbone.layer1.0.conv3"].out_channels
    assert after["backbone.layer1.1.conv1"].in_channels == after["backbone.layer1.0.conv3"].out_channels
    assert after["backbone.layer2.0.downsample.0"].in_channels == after["backbone.layer1.0.conv3"].out_channels
    # the layer4 stream feeds the heads (never sparsified): it keeps every channel
    assert pruned.backbone.out_channels == dense.backbone.out_channels
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in dense.parameters())


def test_channel_read_by_residual_path_is_kept():
    """ResNet-18 layer1 stream (stem output): read by both layer1 blocks' conv1 and by layer2.0's
    conv1 and downsample.  Zeroing channel 0 in some of them must not remove it."""
    dense = make_model(18, 0.25, 32)
    x = torch.randn(2, 3, SIZE, SIZE)
    stream_readers = ["backbone.layer1.0.conv1", "backbone.layer1.1.conv1",
                      "backbone.layer2.0.conv1", "backbone.layer2.0.downsample.0"]
    for name in stream_readers[:3]:  # the downsample still reads channel 0
        zero_inputs(dense, name, [0])
    pruned = prune_zero_channels(dense, x[:1])
    assert_same_outputs(dense, pruned, x)
    assert convs(pruned)["backbone.conv1"].out_channels == convs(dense)["backbone.conv1"].out_channels
    assert pruned.backbone.layer1[0].conv2.out_channels == dense.backbone.layer1[0].conv2.out_channels

    zero_inputs(dense, stream_readers[3], [0])  # now nobody reads it: gone from the whole stream
    pruned = prune_zero_channels(dense, x[:1])
    assert_same_outputs(dense, pruned, x)
    n = convs(dense)["backbone.conv1"].out_channels
    after = convs(pruned)
    assert after["backbone.conv1"].out_channels == n - 1
    assert after["backbone.layer1.0.conv2"].out_channels == n - 1
    assert after["backbone.layer1.1.conv2"].out_channels == n - 1
    assert pruned.backbone.bn1.num_features == n - 1
    for name in stream_readers:
        assert after[name].in_channels == n - 1


def test_removed_zero_masks_mark_only_the_groups_whose_channel_goes():
    """A zero group on the residual stream that another layer still reads is not removed by
    pruning; the zero groups of an internal channel (conv1 → conv2 of a block) are."""
    model = make_model(18, 0.25, 32)
    x = torch.randn(1, 3, SIZE, SIZE)
    stream_readers = ["backbone.layer1.0.conv1", "backbone.layer1.1.conv1",
                      "backbone.layer2.0.conv1", "backbone.layer2.0.downsample.0"]
    for name in stream_readers[:3]:
        zero_inputs(model, name, [0])
    zero_inputs(model, "backbone.layer1.0.conv2", [1, 2])  # conv1's out channels 1, 2: unread
    masks = removed_zero_masks(model, x)
    zeros = zero_group_masks(model)
    assert masks.keys() == zeros.keys()
    for k in masks:  # a subset of the zero groups
        assert not (masks[k] & ~zeros[k]).any(), k
    marked = {k: m.nonzero().flatten().tolist() for k, m in masks.items() if m.any()}
    assert marked == {"backbone.layer1.0.conv2.weight": [1, 2]}
    assert zeros["backbone.layer1.0.conv1.weight"][0]  # zero, but read by the downsample

    zero_inputs(model, stream_readers[3], [0])  # now nobody reads channel 0 of the stream
    marked = {k: m.nonzero().flatten().tolist()
              for k, m in removed_zero_masks(model, x).items() if m.any()}
    assert marked == {"backbone.layer1.0.conv2.weight": [1, 2],
                      **{f"{n}.weight": [0] for n in stream_readers}}
    # what the masks mark is exactly what pruning removes
    pruned = prune_zero_channels(model, x)
    removed_in = {n: convs(model)[n].in_channels - c.in_channels for n, c in convs(pruned).items()
                  if n.startswith("backbone.")}
    assert {k: len(v) for k, v in marked.items()} == \
        {f"{n}.weight": d for n, d in removed_in.items() if d}


@pytest.mark.parametrize("depth", [18, 50])
def test_layer_with_all_groups_zero(depth):
    dense = make_model(depth, 0.125, 8)
    x = torch.randn(2, 3, SIZE, SIZE)
    block = dense.backbone.layer2[0]
    zero_inputs(dense, "backbone.layer2.0.conv2", range(block.conv2.in_channels))
    if depth == 50:
        zero_inputs(dense, "backbone.layer3.1.conv3", range(dense.backbone.layer3[1].conv3.in_channels))
    pruned = prune_zero_channels(dense, x[:1])
    assert_same_outputs(dense, pruned, x)
    # no consumer reads any of conv1's outputs: one zero-read channel is kept
    assert pruned.backbone.layer2[0].conv1.out_channels == 1
    assert pruned.backbone.layer2[0].conv2.in_channels == 1
    if depth == 50:
        assert pruned.backbone.layer3[1].conv2.out_channels == 1


def test_dense_model_is_not_pruned_and_plan_is_empty():
    dense = make_model(18, 0.125, 32)
    x = torch.randn(1, 3, SIZE, SIZE)
    plans = plan_pruning(dense, feature_map_groups(dense, x))
    assert plans and all(not p.remove for p in plans)
    pruned = prune_zero_channels(dense, x)
    report = pruning_report(dense, pruned)
    assert report["params_after"] == report["params_before"]
    assert report["changed_layers"] == 0
    assert sparsity_stats(pruned).num_zero_groups == 0


def test_training_mode_and_requires_grad_are_preserved():
    dense = make_model(18, 0.125, 32).train()
    dense.backbone.conv1.weight.requires_grad_(False)
    random_pattern(dense, 0.5, seed=1)
    pruned = prune_zero_channels(dense, torch.randn(1, 3, SIZE, SIZE))
    assert pruned.training and dense.training
    assert not pruned.backbone.conv1.weight.requires_grad
    assert pruned.backbone.layer1[0].conv1.weight.requires_grad


def _channel_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``(in, out)`` channels of every conv, linear and BN, read off the modules themselves."""
    out = {}
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            out[n] = (m.in_channels, m.out_channels)
        elif isinstance(m, nn.Linear):
            out[n] = (m.in_features, m.out_features)
        elif isinstance(m, nn.BatchNorm2d):
            out[n] = (m.num_features, m.num_features)
    return out


def test_report_counts_removed_conv_out_channels_and_every_changed_layer():
    """Stream channel 0 of layer1 (3 producing convs, 4 reading ones) and two internal channels
    of layer1.0 go: 5 conv out-channels removed (not the 6 in-channels), and 11 changed layers,
    the convs that lost only input channels among them."""
    dense = make_model(18, 0.25, 32)
    x = torch.randn(1, 3, SIZE, SIZE)
    for name in ["backbone.layer1.0.conv1", "backbone.layer1.1.conv1",
                 "backbone.layer2.0.conv1", "backbone.layer2.0.downsample.0"]:
        zero_inputs(dense, name, [0])
    zero_inputs(dense, "backbone.layer1.0.conv2", [1, 2])
    pruned = prune_zero_channels(dense, x)
    report = pruning_report(dense, pruned)
    before, after = _channel_counts(dense), _channel_counts(pruned)
    conv_names = [n for n, m in dense.named_modules() if isinstance(m, nn.Conv2d)]
    out_removed = sum(before[n][1] - after[n][1] for n in conv_names)
    in_removed = sum(before[n][0] - after[n][0] for n in conv_names)
    changed = [n for n in before if before[n] != after[n]]
    only_in = [n for n in changed if before[n][1] == after[n][1]]
    assert (out_removed, in_removed, len(changed)) == (5, 6, 11)
    assert report["conv_channels_removed"] == out_removed
    assert report["changed_layers"] == len(changed)
    assert set(only_in) == {"backbone.layer1.1.conv1", "backbone.layer2.0.conv1",
                            "backbone.layer2.0.downsample.0"}


@pytest.mark.parametrize("how", ["gross", "slight"])
def test_pruning_that_removes_channels_still_read_is_refused(monkeypatch, how):
    """The output check catches a wrong plan that removes channels the next conv still reads:
    grossly (all but one channel of every block-internal feature map), and slightly (one
    channel of layer4.1 read through small weights: a few times the tolerance
    ``VERIFY_RTOL·(1 + max|y|)``)."""
    real = pruning.plan_pruning

    def wrong_plan(model, groups):
        plans = real(model, groups)
        assert not any(p.remove for p in plans)  # a dense model: every channel is read
        if how == "slight":
            return [dataclasses.replace(p, remove=[0]) if p.group.root == "backbone.layer4.1.conv1"
                    else p for p in plans]
        return [dataclasses.replace(p, remove=list(range(p.group.size - 1)))
                if p.group.blocked is None and len(p.group.consumers) == 1 else p
                for p in plans]

    monkeypatch.setattr(pruning, "plan_pruning", wrong_plan)
    dense = make_model(18, 0.25, 32)
    if how == "slight":
        with torch.no_grad():
            dense.backbone.layer4[1].conv2.weight[:, 0] *= 0.3
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    wrong = prune_zero_channels(dense, x, verify=False)  # the plan itself goes through
    a, b = outputs(dense, x), outputs(wrong, x)
    tol = pruning.VERIFY_RTOL * (1 + max(float(v.abs().max()) for v in a.values()))
    diff = max(float((a[t] - b[t]).abs().max()) for t in a)
    assert diff > (1.5 * tol if how == "slight" else 100 * tol)
    if how == "slight":
        assert diff < 20 * tol  # just above the tolerance
    with pytest.raises(RuntimeError, match="changed the model's outputs"):
        prune_zero_channels(dense, x)


def test_a_nan_output_difference_fails_the_check(monkeypatch):
    """A difference that is not a number is no pass."""
    monkeypatch.setattr(pruning, "max_output_difference", lambda *a: math.nan)
    with pytest.raises(RuntimeError, match="changed the model's outputs"):
        prune_zero_channels(make_model(18, 0.125, 32), torch.randn(1, 3, SIZE, SIZE))
