"""Task heads: shapes, DeepLab-v3 structure, batch-of-one training, upsampling."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from metasparsity.models import HEADS, ASPPHead, MLPHead, make_head


def test_registry():
    assert HEADS.names() == ["aspp", "mlp"]
    assert HEADS["aspp"] is ASPPHead and HEADS["mlp"] is MLPHead


@pytest.mark.parametrize("batch", [1, 3])
def test_aspp_output_is_input_size(batch):
    head = ASPPHead(64, 5, channels=32, rates=(2, 4, 6)).train()
    feat = torch.randn(batch, 64, 8, 8)
    out = head(feat, (64, 64))
    assert out.shape == (batch, 5, 64, 64)
    out.mean().backward()  # batch of one in train mode works (image pooling uses GroupNorm)
    assert all(p.grad is not None for p in head.parameters())
    odd = head(torch.randn(batch, 64, 5, 7), torch.Size([37, 50]))
    assert odd.shape == (batch, 5, 37, 50)


def test_aspp_structure():
    head = ASPPHead(64, 3, channels=32, rates=(12, 24, 36))
    convs = {n: m for n, m in head.named_modules() if isinstance(m, nn.Conv2d)}
    # five branches, the projection and the 3x3 conv have no bias
    assert [c.bias is None for n, c in convs.items() if n != "classifier"] == [True] * 7
    assert convs["classifier"].bias is not None and convs["classifier"].kernel_size == (1, 1)
    dil = [b[0].dilation[0] for b in head.branches[1:4]]
    pad = [b[0].padding[0] for b in head.branches[1:4]]
    assert dil == pad == [12, 24, 36]
    assert head.branches[0][0].kernel_size == (1, 1)
    assert head.project[0].in_channels == 5 * 32  # 1x1 + three atrous + image pooling
    assert head.conv[0].kernel_size == (3, 3)
    norm = head.branches[4].norm
    assert isinstance(norm, nn.GroupNorm) and norm.num_channels // norm.num_groups >= 8


def test_aspp_upsamples_bilinearly_without_align_corners():
    head = ASPPHead(16, 2, channels=16, rates=(1, 2, 3)).eval()
    feat = torch.randn(2, 16, 4, 6)
    with torch.no_grad():
        low = head(feat)
        high = head(feat, (32, 48))
    assert low.shape == (2, 2, 4, 6)
    ref = F.interpolate(low, size=(32, 48), mode="bilinear", align_corners=False)
    assert torch.allclose(high, ref, atol=1e-6)
    assert not torch.allclose(high, F.interpolate(low, size=(32, 48), mode="bilinear",
                                                  align_corners=True), atol=1e-4)


def test_aspp_pooling_branch_is_global():
    """The image-pooling branch is constant over space and sees the whole map."""
    branch = ASPPHead(8, 1, channels=16, rates=(1, 1, 1)).branches[4].eval()
    x = torch.randn(1, 8, 5, 5)
    y = branch(x)
    assert torch.allclose(y, y[..., :1, :1].expand_as(y))
    x2 = x.clone()
    x2[..., 4, 4] += 10.0
    assert not torch.allclose(branch(x2), y)


@pytest.mark.parametrize("batch", [1, 4])
def test_mlp_head(batch):
    head = MLPHead(64, 3, channels=32).train()
    out = head(torch.randn(batch, 64, 4, 4), (32, 32))
    assert out.shape == (batch, 3)
    out.sum().backward()
    assert head.conv[0].weight.grad is not None and head.conv[0].bias is None


def test_make_head_passes_rates_only_to_heads_that_take_them():
    aspp = make_head("aspp", 32, 4, channels=16, rates=[3, 6, 9])
    assert aspp.rates == (3, 6, 9)
    mlp = make_head("mlp", 32, 1, channels=16, rates=[3, 6, 9])
    assert isinstance(mlp, MLPHead) and mlp.fc2.out_features == 1
