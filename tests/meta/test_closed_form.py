"""meta_step's closed form for lambda_path / first_order against the autograd formulation.

The reference differentiates the query loss through ``inner_loop``'s ``φ_K`` (differentiable in
θ and λ); ``meta_step`` runs the inner loop without a graph and applies
``∂/∂θ = ∂L_q/∂φ_K`` and ``∂/∂λ_l = −α ⟨∂L_q/∂φ_K|_l, Σ_k ∇Ω_l(φ_k)⟩ (+ Ω_l(φ_K))``.
"""

import sys
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from metasparsity.meta import (
    batch_stat_buffers,
    broadcast_lambda,
    inner_loop,
    meta_step,
)
from metasparsity.meta.inner import _constant_inner_loop, adapted_names
from metasparsity.sparsity import channel_groups, penalty_per_layer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.meta.toy_meta import ALPHA, make_batches, make_lam, uncertainty  # noqa: E402

from toy_models import ToyMultiTaskNet, toy_loss  # noqa: E402


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ToyMultiTaskNet().double()








def reference(model, lam, layers, batches, loss_fn, K, mode, outer_penalty, extra):
    """The autograd formulation: query loss differentiated through inner_loop's φ_K."""
    params = dict(model.named_parameters())
    names = list(params)
    buffers = batch_stat_buffers(model)
    lam_leaf = lam().detach().requires_grad_(mode != "first_order")
    lam_layers = broadcast_lambda(lam_leaf, len(layers))
    inputs = [params[n] for n in names] + list(extra.values())
    if mode != "first_order":
        inputs.append(lam_leaf)
    total, loss = [None] * len(inputs), 0.0
    for subset, sx, sy, qx, qy in batches:
        phi, _ = inner_loop(model, params, buffers, lam_layers, layers, sx, sy, subset, loss_fn,
                            ALPHA, K, mode)
        out = functional_call(model, (phi, buffers), (qx,), {"tasks": list(subset)})
        obj = loss_fn(out, qy, subset)[0]
        if outer_penalty:
            obj = obj + (lam_layers * penalty_per_layer(phi, layers)).sum()
        loss += float(obj.detach())
        g = torch.autograd.grad(obj, inputs, allow_unused=True)
        total = [b if a is None else a if b is None else a + b for a, b in zip(total, g)]
    grads_theta = dict(zip(names, total[:len(names)]))
    grads_extra = dict(zip(extra, total[len(names):len(names) + len(extra)]))
    grad_lam = total[-1] if mode != "first_order" else None
    return loss, grads_theta, grads_extra, grad_lam


def _assert_grads(got, want):
    assert got.keys() == want.keys()
    for n, w in want.items():
        if w is None:
            assert got[n] is None, n
        else:
            torch.testing.assert_close(got[n], w, rtol=1e-10, atol=1e-14, msg=n)


@pytest.mark.parametrize("K", [0, 1, 3])
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("outer_penalty", [False, True])
def test_lambda_path_closed_form_matches_autograd(model, K, scope, outer_penalty):
    layers = channel_groups(model)
    batches = make_batches()
    lam = make_lam(scope, len(layers))
    s = {t: torch.tensor(0.2 + 0.1 * i, dtype=torch.float64, requires_grad=True)
         for i, t in enumerate(("seg", "depth", "attr"))}
    loss_fn = uncertainty(s)
    res = meta_step(model, lam, layers, batches, loss_fn, ALPHA, K, "lambda_path",
                    outer_penalty=outer_penalty, extra_params=s)
    loss, g_theta, g_extra, g_lam = reference(model, lam, layers, batches, loss_fn, K,
                                              "lambda_path", outer_penalty, s)
    assert res.loss == pytest.approx(loss, rel=1e-13)
    _assert_grads(res.grads_theta, g_theta)
    _assert_grads(res.grads_extra, g_extra)
    assert res.grad_lambda.shape == lam.rho.shape
    if K == 0 and not outer_penalty:
        assert g_lam is None and (res.grad_lambda == 0).all()
    else:
        assert g_lam.abs().min() > 1e-8  # a real signal
        torch.testing.assert_close(res.grad_lambda, g_lam, rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(res.grad_lambda_explicit + res.grad_lambda_implicit,
                               res.grad_lambda, rtol=1e-14, atol=0)
    assert (res.grad_lambda_explicit == 0).all() != outer_penalty
    torch.testing.assert_close(res.grad_rho, res.grad_lambda * lam().detach(), rtol=1e-12,
                               atol=0)


@pytest.mark.parametrize("outer_penalty", [False, True])
def test_first_order_closed_form_matches_autograd(model, outer_penalty):
    layers = channel_groups(model)
    batches = make_batches(seed=1)
    lam = make_lam("global", len(layers), learnable=False)
    res = meta_step(model, lam, layers, batches, toy_loss, ALPHA, 2, "first_order",
                    outer_penalty=outer_penalty)
    loss, g_theta, _, _ = reference(model, lam, layers, batches, toy_loss, 2, "first_order",
                                    outer_penalty, {})
    assert res.loss == pytest.approx(loss, rel=1e-13)
    _assert_grads(res.grads_theta, g_theta)
    assert res.grad_lambda is None and res.grad_rho is None


@pytest.mark.parametrize("K", [1, 3])
def test_graph_free_inner_loop_gives_the_same_adapted_parameters(model, K):
    """φ_K of the closed form equals inner_loop's, and D = Σ_k ∇Ω(φ_k) is dφ_K/dλ / (−α)."""
    layers = channel_groups(model)
    params = dict(model.named_parameters())
    buffers = batch_stat_buffers(model)
    subset, sx, sy, _, _ = make_batches()[0]
    lam = torch.tensor([0.05], dtype=torch.float64, requires_grad=True)
    lam_layers = broadcast_lambda(lam, len(layers))
    ref, ref_info = inner_loop(model, params, buffers, lam_layers, layers, sx, sy, subset,
                               toy_loss, ALPHA, K, "lambda_path")
    adapt = adapted_names(model, subset)
    phi, directions, info = _constant_inner_loop(model, params, buffers, lam_layers, layers, sx,
                                                 sy, subset, toy_loss, ALPHA, K, adapt)
    assert info == ref_info
    assert set(phi) == set(adapt) and not any(t.requires_grad for t in phi.values())
    for n in adapt:
        torch.testing.assert_close(phi[n], ref[n].detach(), rtol=0, atol=0, msg=n)
    assert set(directions) == {g.name for g in layers}
    for g in layers:
        (dphi,) = torch.autograd.grad(ref[g.name].sum(), lam, retain_graph=True)
        torch.testing.assert_close(dphi, -ALPHA * directions[g.name].sum().reshape(1),
                                   rtol=1e-12, atol=1e-15)
