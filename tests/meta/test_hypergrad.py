"""The implicit-function hypergradient of λ (metasparsity.meta.hypergrad) against a central finite
difference of the validation loss at the exact group-lasso solution, on a convex problem."""

import functools

import pytest
import torch
import torch.nn.functional as F

from metasparsity.meta.hypergrad import implicit_lambda_grad
from metasparsity.sparsity import ConvGroups, group_norms

D = torch.float64

LAYERS = [ConvGroups(name="a", module_name="a", shape=(3, 5, 1, 1), num_groups=5, group_size=3,
                     group_weight=3 ** 0.5),
          ConvGroups(name="b", module_name="b", shape=(3, 4, 1, 1), num_groups=4, group_size=3,
                     group_weight=3 ** 0.5)]


def _data(n, gen):
    xa = torch.randn(n, 5, 1, 1, generator=gen, dtype=D)
    xb = torch.randn(n, 4, 1, 1, generator=gen, dtype=D)
    true = torch.tensor([[1.5, 0.0, -1.0, 0.05, 0.0], [0.5, 0.0, 1.0, 0.02, 0.0],
                         [-1.0, 0.0, 0.3, 0.0, 0.0]], dtype=D)
    y = (xa.flatten(1) @ true.T + 0.4 * xb.flatten(1)[:, :3]
         + 0.5 * torch.randn(n, 3, generator=gen, dtype=D))
    return xa, xb, y


def _loss(p, data):
    xa, xb, y = data
    pred = (F.conv2d(xa, p["a"]) + F.conv2d(xb, p["b"])).flatten(1) + p["bias"]
    return 0.5 * ((pred - y) ** 2).sum(dim=1).mean()


def _solve(lam, data, start, iters=6000):
    """The group lasso's solution by proximal gradient (step 1/L of the exact Hessian bound)."""
    xa, xb, _ = data
    z = torch.cat([xa.flatten(1), xb.flatten(1), torch.ones(len(xa), 1, dtype=D)], dim=1)
    step = 1.0 / float(torch.linalg.eigvalsh(z.T @ z / len(z)).max())
    p = {k: v.clone() for k, v in start.items()}
    for _ in range(iters):
        q = {k: v.clone().requires_grad_() for k, v in p.items()}
        g = dict(zip(q, torch.autograd.grad(_loss(q, data), list(q.values()))))
        with torch.no_grad():
            p = {k: p[k] - step * g[k] for k in p}
            for i, grp in enumerate(LAYERS):
                w = p[grp.name]
                n = group_norms(w)
                shrink = torch.clamp(1 - step * lam[i] * grp.group_weight
                                     / torch.where(n > 0, n, torch.ones_like(n)), min=0)
                p[grp.name] = w * shrink.reshape(1, -1, 1, 1)
    return p


@functools.cache
def _problem():
    gen = torch.Generator().manual_seed(3)
    train, val = _data(80, gen), _data(60, gen)
    lam = [0.08, 0.05]
    start = {"a": torch.zeros(3, 5, 1, 1, dtype=D), "b": torch.zeros(3, 4, 1, 1, dtype=D),
             "bias": torch.zeros(3, dtype=D)}
    sol = _solve(lam, train, start)
    return train, val, lam, sol


def test_matches_finite_difference_of_the_solution():
    train, val, lam, sol = _problem()
    # a proper active set: each layer has zero and non-zero groups, with strict complementarity
    q = {k: v.clone().requires_grad_() for k, v in sol.items()}
    grads = dict(zip(q, torch.autograd.grad(_loss(q, train), list(q.values()))))
    for i, grp in enumerate(LAYERS):
        norms = group_norms(sol[grp.name])
        gnorm = group_norms(grads[grp.name])
        zero = norms == 0
        assert 0 < int(zero.sum()) < grp.num_groups
        assert float(gnorm[zero].max()) < 0.95 * lam[i] * grp.group_weight
        assert float(norms[~zero].min()) > 1e-2

    h = 1e-5
    fd = []
    for i in range(len(LAYERS)):
        vals = []
        for sign in (1, -1):
            lam_h = list(lam)
            lam_h[i] = lam[i] + sign * h
            vals.append(float(_loss(_solve(lam_h, train, sol, iters=4000), val)))
        fd.append((vals[0] - vals[1]) / (2 * h))
    fd = torch.tensor(fd, dtype=D)

    est = implicit_lambda_grad(sol, LAYERS, torch.tensor(lam, dtype=D), lambda p: _loss(p, train),
                               lambda p: _loss(p, val), alpha=0.09, terms=[0, 600])
    # the Hessian of the active set has eigenvalues in [0.62, 10.0]: α = 0.09 < 2/10 converges
    assert torch.allclose(est.estimates[600], fd, rtol=1e-5, atol=0)
    assert est.growth[0] == 1.0 and est.growth[600] < 1e-10  # the series has converged
    # the one-step term alone is a different number (it does not see H)
    assert not torch.allclose(est.estimates[0], fd, rtol=1e-2)


def test_zero_terms_is_the_one_step_signal():
    train, val, lam, sol = _problem()
    q = {k: v.clone().requires_grad_() for k, v in sol.items()}
    gv = dict(zip(q, torch.autograd.grad(_loss(q, val), list(q.values()))))
    alpha = 0.2
    want = []
    for grp in LAYERS:
        w = sol[grp.name]
        n = group_norms(w)
        d = w * (grp.group_weight / torch.where(n > 0, n, torch.ones_like(n))).reshape(1, -1, 1, 1)
        want.append(-alpha * float((gv[grp.name] * d).sum()))
    est = implicit_lambda_grad(sol, LAYERS, lam[0], lambda p: _loss(p, train),
                               lambda p: _loss(p, val), alpha=alpha, terms=[0])
    assert torch.allclose(est.estimates[0], torch.tensor(want, dtype=D), rtol=1e-12, atol=0)


def test_growth_flags_a_diverging_series():
    """Negative curvature (a concave direction) makes the series grow, and the growth says so."""
    p = {"a": torch.ones(3, 5, 1, 1, dtype=D), "b": torch.ones(3, 4, 1, 1, dtype=D),
         "bias": torch.zeros(3, dtype=D)}
    est = implicit_lambda_grad(p, LAYERS, 0.0, lambda q: -(q["bias"] ** 2).sum(),
                               lambda q: q["bias"].sum(), alpha=0.1, terms=[0, 50])
    assert est.growth[50] == pytest.approx(1.2 ** 50, rel=1e-9)  # (1 + α·2)^50 along the bias


@pytest.mark.parametrize("kw", [{"alpha": 0.0, "terms": [0]}, {"alpha": 0.1, "terms": []},
                                {"alpha": 0.1, "terms": [-1]}])
def test_bad_arguments(kw):
    p = {"a": torch.ones(3, 5, 1, 1), "b": torch.ones(3, 4, 1, 1), "bias": torch.zeros(3)}
    with pytest.raises(ValueError):
        implicit_lambda_grad(p, LAYERS, 0.1, lambda q: q["a"].sum(), lambda q: q["b"].sum(), **kw)
