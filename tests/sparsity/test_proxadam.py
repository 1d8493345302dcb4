"""ProxAdam: the group prox in Adam's metric against independent computations (DESIGN §2.2.1)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from torch import nn

from metasparsity.sparsity import channel_groups, prox_
from metasparsity.sparsity.proxadam import ProxAdam, metric_prox, prox_param_groups


def _objective(y: np.ndarray, z: np.ndarray, d: np.ndarray, tau: float) -> float:
    return 0.5 * float(np.sum(d * (y - z) ** 2)) + tau * float(np.linalg.norm(y))


def _bisection_prox(z: np.ndarray, d: np.ndarray, tau: float) -> np.ndarray:
    """Independent reference: 0 if ||d·z|| ≤ τ, else z·r/(r + τ/d) with r from bisection."""
    if np.linalg.norm(d * z) <= tau:
        return np.zeros_like(z)
    a = tau / d

    def f(r):
        return np.sum(z ** 2 / (r + a) ** 2) - 1.0

    lo, hi = 0.0, float(np.linalg.norm(z))  # f(0) > 0, f(||z||) ≤ 0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if f(mid) > 0 else (lo, mid)
    r = 0.5 * (lo + hi)
    return z * r / (r + a)


def _random_layer(gen: torch.Generator, o=3, i=6, k=3):
    z = torch.randn(o, i, k, k, generator=gen, dtype=torch.float64)
    # D spread over six decades, as Adam's sqrt(v̂)+ε is across the entries of one group
    d = 10 ** (torch.rand(o, i, k, k, generator=gen, dtype=torch.float64) * 6 - 4)
    return z, d


@pytest.mark.parametrize("seed", range(5))
def test_metric_prox_equals_independent_minimiser(seed):
    gen = torch.Generator().manual_seed(seed)
    z, d = _random_layer(gen)
    # thresholds around each group's zero boundary ||d ⊙ z_g||: some zero, some just kept
    edge = torch.linalg.vector_norm(d * z, dim=(0, 2, 3))
    factor = torch.tensor([0.05, 0.5, 0.999, 1.001, 1.5, 0.2], dtype=torch.float64)
    tau = edge * factor
    y = metric_prox(z, d, tau)
    for c in range(z.shape[1]):
        zc, dc, yc = z[:, c].numpy().ravel(), d[:, c].numpy().ravel(), y[:, c].numpy().ravel()
        t = float(tau[c])
        ref = _bisection_prox(zc, dc, t)
        np.testing.assert_allclose(yc, ref, rtol=1e-9, atol=1e-12)
        if factor[c] > 1:
            assert not yc.any()  # exact zeros, not tiny values
        else:
            assert np.linalg.norm(yc) > 0
            # and nothing near it has a lower objective (SciPy, from a perturbed start)
            res = minimize(_objective, yc + 1e-3 * np.random.default_rng(c).standard_normal(yc.size),
                           args=(zc, dc, t), method="Nelder-Mead" if yc.size < 4 else "BFGS",
                           options={"gtol": 1e-12} if yc.size >= 4 else {})
            assert _objective(yc, zc, dc, t) <= res.fun + 1e-9


def test_metric_prox_with_constant_metric_is_the_euclidean_soft_threshold():
    from metasparsity.sparsity import prox

    gen = torch.Generator().manual_seed(0)
    z, _ = _random_layer(gen)
    d = torch.full_like(z, 2.5)
    tau = torch.rand(z.shape[1], generator=gen, dtype=torch.float64) * 8
    # ½·2.5·||y − z||² + τ||y||  ⇔  ½||y − z||² + (τ/2.5)||y||
    torch.testing.assert_close(metric_prox(z, d, tau), prox(z, tau / 2.5), rtol=1e-12, atol=1e-14)


class _Grouped(nn.Module):
    """A 'model' whose backbone is one 1×1 conv weight [O, I, 1, 1]: I groups of O entries."""

    def __init__(self, o: int, i: int):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(i, o, 1, bias=False))
        self.backbone[0].weight.data.zero_()


def _least_squares(seed=0, o=3, i=5, n=40):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, o * i, generator=gen, dtype=torch.float64)
    a = a * torch.linspace(0.2, 3.0, o * i, dtype=torch.float64)  # badly scaled columns
    w_true = torch.randn(o, i, dtype=torch.float64, generator=gen) * torch.tensor(
        [2.0, 0.0, 1.0, 0.0, 0.05], dtype=torch.float64)
    b = a @ w_true.reshape(-1) + 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)

    def loss(w: torch.Tensor) -> torch.Tensor:  # w: [O, I]
        return 0.5 * ((a @ w.reshape(-1) - b) ** 2).mean()

    return a, b, loss


def _fista(loss, o, i, lam, w_g, iters=20000):
    """Reference solution: FISTA with the Euclidean group prox and a Lipschitz step."""
    from metasparsity.sparsity import prox

    x = torch.zeros(o, i, dtype=torch.float64, requires_grad=True)
    hess = torch.autograd.functional.hessian(lambda v: loss(v.reshape(o, i)), x.detach().reshape(-1))
    step = 1.0 / float(torch.linalg.eigvalsh(hess).max())
    y, x_prev, t = x.detach().clone(), x.detach().clone(), 1.0
    for _ in range(iters):
        yv = y.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(yv), yv)
        x_new = prox((y - step * g).reshape(o, i, 1, 1), step * lam * w_g).reshape(o, i)
        t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
        y = x_new + (t - 1) / t_new * (x_new - x_prev)
        x_prev, t = x_new, t_new
    return x_prev


def test_proxadam_converges_to_the_group_lasso_solution():
    o, i, lam = 3, 5, 0.08
    _, _, loss = _least_squares(o=o, i=i)
    model = _Grouped(o, i).double()
    layers = channel_groups(model)
    w_g = layers[0].group_weight
    w = model.backbone[0].weight
    opt = ProxAdam(prox_param_groups(model, layers), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1.0 + t / 1000.0))
    for _ in range(3000):
        opt.zero_grad()
        loss(w.reshape(o, i)).backward()
        opt.step(lam=lam)
        sched.step()
    sol = w.detach().reshape(o, i)
    ref = _fista(loss, o, i, lam, w_g)
    torch.testing.assert_close(sol, ref, rtol=0, atol=1e-6)
    # group-lasso optimality conditions at ProxAdam's point
    wv = sol.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss(wv), wv)
    norms = sol.norm(dim=0)
    zero = norms == 0
    assert zero.any() and (~zero).any()  # both kinds of group occur
    assert bool((g[:, zero].norm(dim=0) <= lam * w_g * (1 + 1e-6)).all())
    resid = g[:, ~zero] + lam * w_g * sol[:, ~zero] / norms[~zero]
    assert float(resid.abs().max()) < 1e-4


def _tiny_model():
    torch.manual_seed(0)
    model = nn.Module()
    model.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(8, 6, 3, padding=1))
    model.head = nn.Linear(6, 2)
    return model


def _loss(model, gen):
    x = torch.randn(4, 3, 6, 6, generator=gen)
    f = model.backbone(x).mean(dim=(2, 3))
    return model.head(f).square().mean() + f.abs().mean()


def test_euclidean_proxadam_reproduces_adam_then_prox_bit_for_bit():
    a, b = _tiny_model(), _tiny_model()
    layers = channel_groups(a)
    lam = torch.tensor([0.3, 0.7])  # per layer
    opt_a = torch.optim.Adam(a.parameters(), lr=0.05, weight_decay=1e-3)
    opt_b = ProxAdam(prox_param_groups(b, channel_groups(b)), lr=0.05, weight_decay=1e-3,
                     prox_metric="euclidean")
    ga, gb = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for _ in range(6):
        opt_a.zero_grad()
        _loss(a, ga).backward()
        opt_a.step()
        prox_(a, 0.05, lam, layers)
        opt_b.zero_grad()
        _loss(b, gb).backward()
        opt_b.step(lam=lam)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(bool((sa[g.name] == 0).any()) for g in layers)  # the prox did zero something


def test_proxadam_state_dict_round_trip_resumes_bit_identically():
    def run(model, opt, gen, steps):
        for _ in range(steps):
            opt.zero_grad()
            _loss(model, gen).backward()
            opt.step(lam=0.05)

    a = _tiny_model()
    opt_a = ProxAdam(prox_param_groups(a, channel_groups(a)), lr=0.05)
    gen = torch.Generator().manual_seed(2)
    run(a, opt_a, gen, 3)
    b = copy.deepcopy(a)
    opt_b = ProxAdam(prox_param_groups(b, channel_groups(b)), lr=0.05)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    gen_b = torch.Generator()
    gen_b.set_state(gen.get_state())
    run(a, opt_a, gen, 4)
    run(b, opt_b, gen_b, 4)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_plain_adam_when_lambda_is_zero_or_none():
    a, b = _tiny_model(), _tiny_model()
    opt_a = torch.optim.Adam(a.parameters(), lr=0.01)
    opt_b = ProxAdam(prox_param_groups(b, channel_groups(b)), lr=0.01)
    ga, gb = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for lam in (None, 0.0, torch.zeros(2)):
        opt_a.zero_grad()
        _loss(a, ga).backward()
        opt_a.step()
        opt_b.zero_grad()
        _loss(b, gb).backward()
        opt_b.step(lam=lam)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_metric_prox_threshold_uses_the_scheduled_learning_rate():
    """τ = η_t·λ·w_g with η_t the rate of this step: a group exactly at the boundary for the
    scheduled rate is zeroed, and kept with a rate 10× smaller."""
    model = _Grouped(2, 3).double()
    layers = channel_groups(model)
    w = model.backbone[0].weight
    opt = ProxAdam(prox_param_groups(model, layers), lr=0.1)
    w.grad = torch.ones_like(w)
    opt.step()  # one plain Adam step: v̂ = 1, D = 1 + ε, θ = −0.1
    d = opt.denominator(w, opt.param_groups[0])
    norm_dz = float(torch.linalg.vector_norm(d[:, 0] * w.detach()[:, 0]))
    w_g = layers[0].group_weight
    w.grad = torch.zeros_like(w)  # Adam keeps moving by m̂: compute the z it will produce
    snapshot = copy.deepcopy(opt.state_dict()), w.detach().clone()
    opt.param_groups[0]["lr"] = 0.01
    opt.step(lam=norm_dz / (0.01 * w_g) * 0.5)
    assert float(w.detach().abs().sum()) > 0
    opt.load_state_dict(snapshot[0])
    with torch.no_grad():
        w.copy_(snapshot[1])
    opt.param_groups[0]["lr"] = 0.01
    opt.step(lam=norm_dz / (0.01 * w_g) * 10)
    assert float(w.detach().abs().sum()) == 0


def test_group_gradient_ratios_match_a_numpy_computation():
    from metasparsity.sparsity import group_gradient_ratios

    model = _tiny_model()
    layers = channel_groups(model)
    gen = torch.Generator().manual_seed(4)
    grads = {g.name: torch.randn(g.shape, generator=gen) for g in layers}
    got = group_gradient_ratios(grads, layers).numpy()
    want = np.concatenate([
        np.sqrt((grads[g.name].numpy() ** 2).sum(axis=(0, 2, 3))) / np.sqrt(g.shape[0] * g.shape[2] * g.shape[3])
        for g in layers])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert group_gradient_ratios({}, layers).abs().sum() == 0  # no gradient: zeros, one per group


@pytest.mark.parametrize("spread", [1, 6])
def test_float32_newton_stops_within_six_steps_near_the_zero_boundary(monkeypatch, spread):
    """Groups only just kept (τ just under ‖D z‖) have a root r ≪ τ/d, where float32 rounding
    makes r jitter: the loop must still stop (at rounding) within a few steps, not at its cap."""
    import metasparsity.sparsity.proxadam as pa

    gen = torch.Generator().manual_seed(7)
    z = torch.randn(64, 32, 3, 3, generator=gen) * 0.02
    d = 10 ** (torch.rand(64, 32, 3, 3, generator=gen) * spread - 3)
    edge = torch.linalg.vector_norm(d * z, dim=(0, 2, 3))
    tau = edge * torch.linspace(0.2, 1.1, 32)
    full = pa.metric_prox(z, d, tau)
    calls = []
    real_rsqrt = torch.Tensor.rsqrt

    def counting_rsqrt(self):
        calls.append(1)
        return real_rsqrt(self)

    monkeypatch.setattr(torch.Tensor, "rsqrt", counting_rsqrt)
    pa.metric_prox(z, d, tau)
    assert 1 <= len(calls) <= 6  # one rsqrt per Newton step (none: the count proves nothing)
    monkeypatch.undo()
    ref = metric_prox(z.double(), d.double(), tau.double())
    torch.testing.assert_close(full.double(), ref, rtol=1e-4, atol=1e-7)


def test_the_threshold_follows_an_lr_scheduler():
    """With a LambdaLR that drops the rate 10× after step 1, τ = η_t·λ·w_g uses the dropped
    rate: a λ that would zero the group at the initial rate keeps it at the scheduled one."""
    def run(scheduled: bool) -> float:
        model = _Grouped(2, 3).double()
        layers = channel_groups(model)
        w = model.backbone[0].weight
        with torch.no_grad():
            w.fill_(0.5)
        opt = ProxAdam(prox_param_groups(model, layers), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 if t == 0 else 0.1)
        w.grad = torch.full_like(w, 1e-3)
        opt.step()  # plain step; then the rate drops (or, unscheduled, stays)
        if scheduled:
            sched.step()
        w.grad = torch.full_like(w, 1e-3)
        d = 1.0  # sqrt(v̂) = |g| = 1e-3 ≪ θ: D = 1e-3 + ε
        norm = float(torch.linalg.vector_norm(w.detach()[:, 0])) * 1e-3 * d
        lam = norm / (0.05 * layers[0].group_weight)  # zero at η = 0.1, kept at η = 0.01
        opt.step(lam=lam)
        return float(w.detach()[:, 0].abs().sum())

    assert run(scheduled=True) > 0
    assert run(scheduled=False) == 0
