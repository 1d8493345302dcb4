"""Channel groups, Ω, the proximal operator and sparsity statistics against closed forms."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from metasparsity.sparsity import (
    apply_masks_,
    channel_groups,
    group_norms,
    group_penalty,
    mask_zero_group_grads_,
    penalty,
    penalty_grad,
    penalty_per_layer,
    prox,
    prox_,
    prox_params,
    sparsity_stats,
    zero_group_masks,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from toy_models import ToyMultiTaskNet  # noqa: E402


@pytest.fixture
def model():
    return ToyMultiTaskNet().double()


def test_channel_groups_cover_every_backbone_conv(model):
    layers = channel_groups(model)
    expected = [n for n, p in model.named_parameters()
                if n.startswith("backbone.") and p.ndim == 4]
    assert [g.name for g in layers] == expected
    assert all(not g.name.startswith("heads.") for g in layers)
    g = layers[1]
    assert g.name == "backbone.block_conv1.weight"
    assert g.module_name == "backbone.block_conv1"
    assert g.shape == (4, 4, 3, 3)
    assert g.num_groups == 4 and g.group_size == 36 and g.group_weight == 6.0
    down = layers[-1]
    assert down.shape == (8, 4, 1, 1) and down.group_weight == math.sqrt(8)


def test_channel_groups_needs_a_backbone():
    with pytest.raises(ValueError, match="backbone"):
        channel_groups(torch.nn.Conv2d(2, 2, 1))


def test_group_norms_and_penalty_closed_form(model):
    layers = channel_groups(model)
    params = dict(model.named_parameters())
    expected = []
    for g in layers:
        w = params[g.name].detach().numpy()
        norms = np.sqrt((w**2).sum(axis=(0, 2, 3)))
        np.testing.assert_allclose(group_norms(params[g.name]).detach().numpy(), norms, rtol=1e-12)
        expected.append(g.group_weight * norms.sum())
    per = penalty_per_layer(params, layers).detach().numpy()
    np.testing.assert_allclose(per, expected, rtol=1e-12)
    assert penalty(params, layers).item() == pytest.approx(sum(expected), rel=1e-12)
    lam = torch.linspace(0.1, 0.4, len(layers), dtype=torch.float64)
    assert penalty(params, layers, lam).item() == pytest.approx(
        float((lam * torch.tensor(expected)).sum()), rel=1e-12)
    assert penalty(params, layers, 0.3).item() == pytest.approx(0.3 * sum(expected), rel=1e-12)
    assert group_penalty(model, 0.3).item() == pytest.approx(0.3 * sum(expected), rel=1e-12)
    with pytest.raises(ValueError, match="grouped layers"):
        penalty(params, layers, torch.ones(len(layers) + 1, dtype=torch.float64))


def _prox_reference(v: np.ndarray, t: float) -> np.ndarray:
    """Numerical minimiser of 0.5·||x − v||² + t·||x||."""
    def f(x):
        return 0.5 * np.sum((x - v) ** 2) + t * np.linalg.norm(x)

    best = None
    for x0 in (v, np.zeros_like(v) + 1e-3, 0.5 * v):
        r = minimize(f, x0, method="Powell", options={"xtol": 1e-12, "ftol": 1e-14,
                                                       "maxiter": 100000})
        if best is None or r.fun < best.fun:
            best = r
    return best.x


def test_prox_is_the_closed_form_minimiser():
    rng = np.random.default_rng(0)
    w = torch.tensor(rng.normal(size=(3, 5, 1, 2)), dtype=torch.float64)
    w[:, 1] *= 0.05  # small groups that must vanish
    w[:, 3] = 0.0  # already zero
    t = 0.4
    out = prox(w, t)
    norms = group_norms(w)
    for c in range(w.shape[1]):
        v = w[:, c].numpy().ravel()
        n = float(norms[c])
        closed = v * max(0.0, 1.0 - t / n) if n > 0 else np.zeros_like(v)
        got = out[:, c].numpy().ravel()
        np.testing.assert_allclose(got, closed, rtol=1e-12, atol=1e-15)
        ref = _prox_reference(v, t)
        def f(x, v=v):
            return 0.5 * np.sum((x - v) ** 2) + t * np.linalg.norm(x)

        assert f(got) <= f(ref) + 1e-9
        np.testing.assert_allclose(got, ref, atol=1e-5)
        if n <= t:
            assert np.all(got == 0.0)  # exact zeros, not tiny numbers
    assert (group_norms(out)[[1, 3]] == 0).all()
    assert (group_norms(out)[[0, 2, 4]] > 0).all()


def test_prox_keeps_zeros_and_shrinks_norm_by_exactly_t():
    torch.manual_seed(1)
    w = torch.randn(4, 6, 3, 3, dtype=torch.float64)
    w[:, 2] *= 1e-3
    t = 0.5
    p1 = prox(w, t)
    assert (p1[:, 2] == 0).all()
    p2 = prox(p1 - 0.1 * torch.zeros_like(p1), t)  # a further prox step with a zero gradient
    assert (p2[:, 2] == 0).all()
    n0, n1 = group_norms(w), group_norms(p1)
    for c in range(6):
        if n0[c] > t:
            assert float(n1[c]) == pytest.approx(float(n0[c]) - t, abs=1e-12)
            cos = torch.nn.functional.cosine_similarity(w[:, c].reshape(1, -1),
                                                        p1[:, c].reshape(1, -1))
            assert float(cos) == pytest.approx(1.0, abs=1e-12)


def test_prox_is_autograd_safe_at_zero():
    w = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    w[:, 0] = 0.0
    w[:, 1] *= 1e-4
    w.requires_grad_(True)
    t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    out = prox(w, t)
    gw, gt = torch.autograd.grad(out.square().sum(), (w, t))
    assert torch.isfinite(gw).all() and torch.isfinite(gt)
    assert (gw[:, :2] == 0).all()


def test_penalty_gradient_is_the_analytic_subgradient(model):
    layers = channel_groups(model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        params[layers[1].name][:, 2] = 0.0
    loss = group_penalty(model)
    grads = torch.autograd.grad(loss, [params[g.name] for g in layers])
    for g, gr in zip(layers, grads):
        w = params[g.name].detach()
        assert torch.isfinite(gr).all()
        n = w.square().sum(dim=(0, 2, 3)).sqrt()
        for c in range(g.num_groups):
            if n[c] > 0:
                torch.testing.assert_close(gr[:, c], g.group_weight * w[:, c] / n[c])
            else:
                assert (gr[:, c] == 0).all()
        torch.testing.assert_close(penalty_grad(w, g.group_weight), gr)
    # second order through the safe norm stays finite too
    w = params[layers[1].name]
    (g1,) = torch.autograd.grad(penalty(params, layers), w, create_graph=True)
    (h,) = torch.autograd.grad(g1.square().sum(), w)
    assert torch.isfinite(h).all()


def test_prox_params_is_pure_and_prox_matches_it(model):
    layers = channel_groups(model)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    lam = [0.5, 0.0, 2.0, 0.1]
    assert len(layers) == len(lam)
    new = prox_params(params, layers, 0.05, lam)
    for n, p in model.named_parameters():
        assert torch.equal(params[n], p.detach())  # input untouched
    prox_(model, 0.05, lam)
    cur = dict(model.named_parameters())
    for i, g in enumerate(layers):
        torch.testing.assert_close(cur[g.name].detach(), new[g.name])
        expected = prox(params[g.name], 0.05 * lam[i] * g.group_weight)
        torch.testing.assert_close(new[g.name], expected)
    assert torch.equal(new[layers[1].name], params[layers[1].name])  # λ_l = 0: unchanged


def _direct_counts(model, layers):
    params = dict(model.named_parameters())
    out = []
    for g in layers:
        w = params[g.name].detach()
        zero = [c for c in range(w.shape[1]) if bool((w[:, c] == 0).all())]
        out.append((zero, w.shape[1], w.numel(), len(zero) * w[:, 0].numel()))
    return out


def test_sparsity_stats_counts_per_layer(model):
    layers = channel_groups(model)
    prox_(model, 1.0, [0.0, 0.08, 0.05, 0.2])
    params = dict(model.named_parameters())
    with torch.no_grad():
        params[layers[0].name][:, 1] = 0.0
    stats = sparsity_stats(model)
    direct = _direct_counts(model, layers)
    assert stats.num_zero_groups > 0
    assert stats.num_groups == sum(d[1] for d in direct)
    assert stats.num_zero_groups == sum(len(d[0]) for d in direct)
    assert stats.num_params == sum(d[2] for d in direct)
    assert stats.group_sparsity == pytest.approx(stats.num_zero_groups / stats.num_groups)
    assert stats.param_sparsity == pytest.approx(sum(d[3] for d in direct) / stats.num_params)
    for row, g, d in zip(stats.per_layer, layers, direct):
        assert row["name"] == g.name
        assert stats.zero_groups[g.name] == d[0]
        assert row["zero_groups"] == len(d[0]) and row["groups"] == d[1]
        assert row["params"] == d[2] and row["zero_params"] == d[3]
    assert stats.to_dict()["num_zero_groups"] == stats.num_zero_groups
    # tol counts near-zero groups as zero
    assert sparsity_stats(model, tol=1e9).group_sparsity == 1.0


def test_masks_keep_zero_groups_zero(model):
    layers = channel_groups(model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        params[layers[1].name][:, 0] = 0.0
        params[layers[3].name][:, 2:] = 0.0
    masks = zero_group_masks(model)
    assert masks[layers[1].name].tolist() == [True, False, False, False]
    assert masks[layers[3].name].tolist() == [False, False, True, True]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    mask_zero_group_grads_(model, masks)
    assert (params[layers[1].name].grad[:, 0] == 0).all()
    assert (params[layers[1].name].grad[:, 1:] == 1).all()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    opt.step()
    with torch.no_grad():
        params[layers[3].name].add_(1.0)  # something revives the groups…
    apply_masks_(model, masks)  # …and the masks zero them again
    assert sparsity_stats(model).zero_groups[layers[3].name] == [2, 3]
    assert sparsity_stats(model).zero_groups[layers[1].name] == [0]
