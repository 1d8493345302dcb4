"""Meta-gradients of the MAML step: finite differences, `higher`, hand-derived formulas, BN."""

import copy
import math
import sys
from pathlib import Path

import higher
import pytest
import torch
from torch.func import functional_call

from metasparsity.meta import (
    LearnedLambda,
    batch_stat_buffers,
    inner_loop,
    meta_step,
    outer_update,
)
from metasparsity.sparsity import (
    penalty,
    penalty_grad,
    penalty_per_layer,
    prox,
    sparsity_stats,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from toy_models import toy_batch, toy_loss  # noqa: E402

ALPHA = 0.1
SUBSETS = [("seg", "attr"), ("depth",)]



def make_batches(subsets=SUBSETS, seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in subsets:
        sx, sy = toy_batch(n, generator=g)
        qx, qy = toy_batch(n, generator=g)
        out.append((s, sx, sy, qx, qy))
    return out


def make_lam(scope, num_layers, value=0.05, learnable=True):
    lam = LearnedLambda(value, scope=scope, num_layers=num_layers, lambda_min=1e-6,
                        lambda_max=10.0, learnable=learnable).double()
    if scope == "layer":
        with torch.no_grad():  # distinct values per layer
            lam.rho.add_(torch.linspace(-0.5, 0.5, num_layers, dtype=torch.float64))
    return lam


def objective(model, layers, batches, lam, K, outer_penalty):
    """The outer objective's value (identical in every mode; first_order is the cheapest)."""
    fixed = copy.deepcopy(lam)
    fixed.learnable = False
    return meta_step(model, fixed, layers, batches, toy_loss, ALPHA, K, "first_order",
                     outer_penalty=outer_penalty).loss


@pytest.mark.parametrize("K,scope,outer_penalty", [
    (1, "global", False), (3, "global", False), (1, "layer", False), (3, "layer", False),
    (3, "global", True),
])
def test_lambda_gradient_matches_finite_differences(model, layers, K, scope, outer_penalty):
    batches = make_batches()
    lam = make_lam(scope, len(layers))
    res = meta_step(model, lam, layers, batches, toy_loss, ALPHA, K, "second_order",
                    outer_penalty=outer_penalty)
    h = 1e-5
    fd = torch.zeros_like(lam.rho)
    for i in range(lam.rho.numel()):
        vals = []
        for sgn in (1, -1):
            lp = copy.deepcopy(lam)
            with torch.no_grad():
                lp.rho[i] += sgn * h
            vals.append(objective(model, layers, batches, lp, K, outer_penalty))
        fd[i] = (vals[0] - vals[1]) / (2 * h)
    assert res.grad_rho.shape == lam.rho.shape
    assert fd.abs().min() > 1e-6  # a real signal, not two zeros
    torch.testing.assert_close(res.grad_rho, fd, rtol=1e-5, atol=1e-10)
    # d/dρ = d/dλ · λ inside the clamp range
    torch.testing.assert_close(res.grad_rho, res.grad_lambda * lam().detach(), rtol=1e-12,
                               atol=0)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_lambda_path_is_exact_for_one_inner_step(model, layers, scope):
    batches = make_batches()
    lam = make_lam(scope, len(layers))
    so = meta_step(model, lam, layers, batches, toy_loss, ALPHA, 1, "second_order")
    lp = meta_step(model, lam, layers, batches, toy_loss, ALPHA, 1, "lambda_path")
    torch.testing.assert_close(lp.grad_lambda, so.grad_lambda, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(lp.grad_rho, so.grad_rho, rtol=1e-10, atol=1e-14)
    assert lp.loss == pytest.approx(so.loss, rel=1e-14)
    # …but the θ-gradients differ (first- vs second-order MAML)
    name = layers[1].name
    assert not torch.allclose(lp.grads_theta[name], so.grads_theta[name], rtol=1e-6)


def _param_dict(fmodel, names):
    return dict(zip(names, fmodel.parameters()))


def test_theta_gradient_matches_higher(model, layers):
    K, lam_value = 2, 0.05
    batches = make_batches()
    lam = LearnedLambda(lam_value).double()
    res = meta_step(model, lam, layers, batches, toy_loss, ALPHA, K, "second_order")

    ref = copy.deepcopy(model).train()  # train mode: BN uses batch statistics, as in meta_step
    names = [n for n, _ in ref.named_parameters()]
    for subset, sx, sy, qx, qy in batches:
        opt = torch.optim.SGD(ref.parameters(), lr=ALPHA)
        with higher.innerloop_ctx(ref, opt, copy_initial_weights=False,
                                  track_higher_grads=True) as (fmodel, diffopt):
            for _ in range(K):
                out = fmodel(sx, tasks=list(subset))
                pen = penalty(_param_dict(fmodel, names), layers)  # autograd through Ω
                diffopt.step(toy_loss(out, sy, subset)[0] + lam_value * pen)
            toy_loss(fmodel(qx, tasks=list(subset)), qy, subset)[0].backward()
    for name, p in ref.named_parameters():
        assert p.grad is not None
        torch.testing.assert_close(res.grads_theta[name], p.grad, rtol=1e-9, atol=1e-12)


def test_one_step_lambda_gradient_by_hand(model, layers):
    """dL_q/dλ = −α ∇L_q(φ_1)·∇Ω(θ) for K = 1; lambda_path's θ-gradient is ∇L_q(φ_1)."""
    lam_value = 0.05
    subset, sx, sy, qx, qy = make_batches(SUBSETS[:1])[0]
    ref = copy.deepcopy(model).train()
    theta = {n: p.detach().clone().requires_grad_() for n, p in ref.named_parameters()}

    def run(params, x):
        buffers = {n: b.clone() for n, b in ref.named_buffers()}  # train mode: batch stats
        return functional_call(ref, (params, buffers), (x,), {"tasks": list(subset)})

    support = toy_loss(run(theta, sx), sy, subset)[0]
    g = torch.autograd.grad(support, list(theta.values()), allow_unused=True)
    dOmega = {g.name: penalty_grad(theta[g.name].detach(), g.group_weight) for g in layers}
    phi1 = {}
    for (n, t), gn in zip(theta.items(), g):
        step = torch.zeros_like(t) if gn is None else gn
        if n in dOmega:
            step = step + lam_value * dOmega[n]
        phi1[n] = (t - ALPHA * step).detach().requires_grad_()
    q = toy_loss(run(phi1, qx), qy, subset)[0]
    gq = dict(zip(phi1, torch.autograd.grad(q, list(phi1.values()), allow_unused=True)))
    expected = -ALPHA * sum((gq[n] * dOmega[n]).sum() for n in dOmega)

    lam = LearnedLambda(lam_value).double()
    for mode in ("second_order", "lambda_path"):
        res = meta_step(model, lam, layers, [(subset, sx, sy, qx, qy)], toy_loss, ALPHA, 1, mode)
        assert float(res.grad_lambda) == pytest.approx(float(expected), rel=1e-9)
        assert res.grad_lambda_explicit.item() == 0.0
        if mode == "lambda_path":
            for n, gn in gq.items():
                if gn is None:
                    assert res.grads_theta[n] is None
                else:
                    torch.testing.assert_close(res.grads_theta[n], gn, rtol=1e-10, atol=1e-13)


def test_first_order_refuses_a_learnable_lambda(model, layers):
    batches = make_batches()
    with pytest.raises(ValueError, match="first_order.*λ"):
        meta_step(model, LearnedLambda(0.05).double(), layers, batches, toy_loss, ALPHA, 1,
                  "first_order")
    fixed = LearnedLambda(0.05, learnable=False).double()
    res = meta_step(model, fixed, layers, batches, toy_loss, ALPHA, 1, "first_order")
    assert res.grad_lambda is None and res.grad_rho is None
    assert all(torch.isfinite(g).all() for g in res.grads_theta.values() if g is not None)
    with pytest.raises(ValueError, match="mode"):
        meta_step(model, fixed, layers, batches, toy_loss, ALPHA, 1, "zeroth_order")


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_explicit_plus_implicit_is_total(model, layers, scope):
    K = 2
    batches = make_batches()
    lam = make_lam(scope, len(layers))
    with_pen = meta_step(model, lam, layers, batches, toy_loss, ALPHA, K, "second_order",
                         outer_penalty=True)
    torch.testing.assert_close(with_pen.grad_lambda_explicit + with_pen.grad_lambda_implicit,
                               with_pen.grad_lambda, rtol=0, atol=1e-15)
    # explicit part = Σ_S Ω(φ_K^S), from an independent inner loop
    omega = 0
    params = dict(model.named_parameters())
    for subset, sx, sy, _, _ in batches:
        phi, _ = inner_loop(model, params, None, lam.per_layer(len(layers)).detach(), layers,
                            sx, sy, subset, toy_loss, ALPHA, K, "first_order")
        omega = omega + penalty_per_layer(phi, layers).detach()
    expected = omega.sum().reshape(1) if scope == "global" else omega
    torch.testing.assert_close(with_pen.grad_lambda_explicit, expected, rtol=1e-12, atol=0)
    assert (with_pen.grad_lambda_explicit > 0).all()
    # the implicit part flows through φ_K only: d/dλ_inner of Σ_S L_q(φ_K) + λ_outer·Ω(φ_K)
    # with the outer λ held fixed, by central differences (global λ: one direction)
    if scope == "global":
        lam_fixed = lam.per_layer(len(layers)).detach()

        def split(lam_inner):
            total = 0.0
            for subset, sx, sy, qx, qy in batches:
                phi, _ = inner_loop(model, params, None, lam_inner, layers, sx, sy, subset,
                                    toy_loss, ALPHA, K, "first_order")
                out = functional_call(model, (phi, batch_stat_buffers(model)), (qx,),
                                      {"tasks": list(subset)})
                q = toy_loss(out, qy, subset)[0] + (lam_fixed * penalty_per_layer(phi, layers)).sum()
                total += q.item()
            return total

        h = 1e-6
        fd = (split(lam_fixed + h) - split(lam_fixed - h)) / (2 * h)
        assert with_pen.grad_lambda_implicit.item() == pytest.approx(fd, rel=1e-6)
    without = meta_step(model, lam, layers, batches, toy_loss, ALPHA, K, "second_order")
    assert (without.grad_lambda_explicit == 0).all()
    torch.testing.assert_close(without.grad_lambda_implicit, without.grad_lambda, rtol=0, atol=0)


def _bn_state(model):
    return {n: b.clone() for n, b in model.named_buffers()}


@pytest.mark.parametrize("mode", ["second_order", "lambda_path"])
def test_inner_steps_never_touch_bn_running_stats(model, layers, mode):
    model.train()
    before = _bn_state(model)
    assert any("num_batches_tracked" in n for n in before)
    meta_step(model, LearnedLambda(0.05).double(), layers, make_batches(), toy_loss, ALPHA, 3,
              mode)
    for n, b in model.named_buffers():
        assert torch.equal(b, before[n]), n
    assert all(p.grad is None for p in model.parameters())


def test_inner_loop_uses_batch_statistics(model, layers):
    batches = make_batches()
    lam = LearnedLambda(0.05).double()
    ref = meta_step(model, lam, layers, batches, toy_loss, ALPHA, 2, "lambda_path")
    # eval mode with absurd running statistics: results must not change
    model.eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.fill_(100.0)
                mod.running_var.fill_(1e4)
    res = meta_step(model, lam, layers, batches, toy_loss, ALPHA, 2, "lambda_path")
    assert res.loss == ref.loss
    for n, g in ref.grads_theta.items():
        assert torch.equal(g, res.grads_theta[n])
    # the first support loss is the train-mode (batch-statistics) loss of the model
    subset, sx, sy, _, _ = batches[1]
    train_copy = copy.deepcopy(model).train()
    with torch.no_grad():
        expected = toy_loss(train_copy(sx, tasks=list(subset)), sy, subset)[1]
        eval_loss = toy_loss(model(sx, tasks=list(subset)), sy, subset)[1]
    assert res.inner_loss["depth"] == pytest.approx(float(expected["depth"]), rel=1e-12)
    assert res.inner_loss["depth"] != pytest.approx(float(eval_loss["depth"]), rel=1e-3)


def test_inner_loop_adapts_only_the_subsets_parameters(model, layers):
    params = dict(model.named_parameters())
    subset, sx, sy, _, _ = make_batches([("seg",)])[0]
    lam_layers = torch.full((len(layers),), 0.05, dtype=torch.float64)
    phi, info = inner_loop(model, params, batch_stat_buffers(model), lam_layers, layers, sx, sy,
                           subset, toy_loss, ALPHA, 2, "second_order")
    assert len(info["losses"]) == 2 and set(info["task_losses"][0]) == {"seg"}
    for n in params:
        if n.startswith(("heads.depth.", "heads.attr.")):
            assert phi[n] is params[n]
        else:
            assert not torch.equal(phi[n], params[n]), n
    res = meta_step(model, LearnedLambda(0.05).double(), layers, [make_batches([("seg",)])[0]],
                    toy_loss, ALPHA, 1, "lambda_path")
    assert res.grads_theta["heads.depth.weight"] is None
    assert res.grads_theta["heads.seg.weight"] is not None


def test_extra_params_get_their_meta_gradient(model, layers):
    """Uncertainty weights Σ exp(−s_t)·L_t + s_t closed over by the loss function."""
    s = {t: torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
         for t in ("seg", "depth", "attr")}

    def weighted(outputs, targets, tasks):
        total, per = toy_loss(outputs, targets, tasks)
        return sum(torch.exp(-s[t]) * per[t] + s[t] for t in tasks), per

    batches = make_batches()
    lam = LearnedLambda(0.05, learnable=False).double()
    res = meta_step(model, lam, layers, batches, weighted, ALPHA, 2, "second_order",
                    extra_params=s)
    h = 1e-6
    for t in s:
        vals = []
        for sgn in (1, -1):
            with torch.no_grad():
                s[t] += sgn * h
            vals.append(meta_step(model, lam, layers, batches, weighted, ALPHA, 2,
                                  "first_order").loss)
            with torch.no_grad():
                s[t] -= sgn * h
        fd = (vals[0] - vals[1]) / (2 * h)
        assert float(res.grads_extra[t]) == pytest.approx(fd, rel=1e-6)


def test_outer_update_is_adam_then_prox_then_rho(model, layers):
    batches = make_batches()
    lam = LearnedLambda(0.05, lambda_min=1e-3, lambda_max=0.1).double()
    res = meta_step(model, lam, layers, batches, toy_loss, ALPHA, 1, "lambda_path")
    eta = 0.05
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=eta)
    opt_rho = torch.optim.SGD(lam.parameters(), lr=1e6)  # a huge step: ρ must be clamped
    out = outer_update(model, lam, res, opt, opt_rho, eta, layers)
    assert out["lam"] == pytest.approx(0.05)
    grouped = {g.name: g for g in layers}
    for n, p in model.named_parameters():
        g = res.grads_theta[n]
        expected = before[n] - eta * g
        if n in grouped:
            expected = prox(expected, eta * 0.05 * grouped[n].group_weight)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-15)
        assert p.grad is None
    lo, hi = lam.log_bounds
    assert lo <= lam.rho.item() <= hi
    # descent on ρ: a positive gradient drives λ to its lower bound, a negative one to its upper
    assert float(res.grad_rho) != 0.0
    assert out["lam_next"] == pytest.approx(1e-3 if float(res.grad_rho) > 0 else 0.1)
    # clamped at a bound, the gradient still flows (ρ can come back)
    rho = lam.rho
    (g,) = torch.autograd.grad(lam().sum(), rho)
    assert float(g) > 0


def test_short_meta_training_makes_exact_zero_groups_and_moves_lambda(model, layers):
    tasks = ("seg", "depth", "attr")
    lam = LearnedLambda(0.5, lambda_min=1e-4, lambda_max=5.0).double()
    lr = 0.05
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    opt_rho = torch.optim.Adam(lam.parameters(), lr=0.1)
    lam0 = lam.value()
    g = torch.Generator().manual_seed(3)
    assert sparsity_stats(model).num_zero_groups == 0
    for step in range(30):
        subsets = [tasks, (tasks[step % 3],)]
        batches = []
        for s in subsets:
            sx, sy = toy_batch(4, generator=g)
            qx, qy = toy_batch(4, generator=g)
            batches.append((s, sx, sy, qx, qy))
        res = meta_step(model, lam, layers, batches, toy_loss, ALPHA, 1, "lambda_path")
        assert math.isfinite(res.loss) and torch.isfinite(res.grad_rho).all()
        outer_update(model, lam, res, opt, opt_rho, lr, layers)
    stats = sparsity_stats(model)
    assert stats.num_zero_groups > 0 and stats.group_sparsity > 0
    assert abs(math.log(lam.value()) - math.log(lam0)) > 0.05
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_learned_lambda_parameterisation():
    lam = LearnedLambda(1e-2, scope="layer", num_layers=3, lambda_min=1e-4, lambda_max=1.0)
    assert lam.rho.shape == (3,) and lam.rho.requires_grad
    torch.testing.assert_close(lam(), torch.full((3,), 1e-2, dtype=torch.float64))
    assert lam.value() == pytest.approx([1e-2] * 3)
    g = LearnedLambda(0.2)
    assert g.per_layer(4).shape == (4,) and g.value() == pytest.approx(0.2)
    (grad,) = torch.autograd.grad(g.per_layer(4).sum(), g.rho)
    assert float(grad) == pytest.approx(4 * 0.2)  # dλ/dρ = λ, summed over 4 layers
    with torch.no_grad():
        g.rho.fill_(10.0)
    assert g.value() == pytest.approx(1.0)  # clamped to λ_max in the forward…
    g.clamp_rho_()
    assert g.rho.item() == pytest.approx(0.0)  # …and ρ itself after a step
    fixed = LearnedLambda(0.2, learnable=False)
    assert not fixed.rho.requires_grad and not fixed.learnable
    off = LearnedLambda(0.0)
    assert not off.enabled and not off.learnable and off.value() == 0.0
    assert LearnedLambda.disabled("layer", 3).per_layer(3).tolist() == [0.0] * 3
    with pytest.raises(ValueError, match="outside"):
        LearnedLambda(5.0, lambda_max=1.0)
    with pytest.raises(ValueError, match="scope"):
        LearnedLambda(0.1, scope="channel")
    state = lam.state_dict()
    again = LearnedLambda(0.5, scope="layer", num_layers=3, lambda_min=1e-4, lambda_max=1.0)
    again.load_state_dict(state)
    assert again.value() == pytest.approx(lam.value())


def test_disabled_lambda_means_no_penalty(model, layers):
    batches = make_batches()
    off = LearnedLambda.disabled()
    res = meta_step(model, off, layers, batches, toy_loss, ALPHA, 1, "first_order")
    zero = meta_step(model, LearnedLambda(1e-6, lambda_min=1e-6, learnable=False).double(),
                     layers, batches, toy_loss, ALPHA, 1, "first_order")
    assert res.grad_lambda is None and res.loss == pytest.approx(zero.loss, rel=1e-5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    outer_update(model, off, res, opt, None, 0.05, layers)  # no prox with λ ≡ 0
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n])
