"""The toy meta-batch shared by the meta-gradient tests: subsets, batches, λ, uncertainty loss."""

import torch
from tests.toy_models import toy_batch, toy_loss

from metasparsity.meta import LearnedLambda

ALPHA = 0.1
SUBSETS = [("seg", "attr"), ("depth",), ("seg", "depth", "attr")]


def make_batches(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in SUBSETS:
        sx, sy = toy_batch(n, generator=g)
        qx, qy = toy_batch(n, generator=g)
        out.append((s, sx, sy, qx, qy))
    return out


def make_lam(scope, num_layers, learnable=True):
    lam = LearnedLambda(0.05, scope=scope, num_layers=num_layers, lambda_min=1e-6,
                        lambda_max=10.0, learnable=learnable).double()
    if scope == "layer":
        with torch.no_grad():
            lam.rho.add_(torch.linspace(-0.5, 0.5, num_layers, dtype=torch.float64))
    return lam


def uncertainty(s):
    def loss_fn(outputs, targets, tasks):
        _, per = toy_loss(outputs, targets, tasks)
        return sum(torch.exp(-s[t]) * per[t] + s[t] for t in tasks), per
    return loss_fn


def central_differences(f, lam_vec, rel_h):
    """``(f(λ + h e_l) − f(λ − h e_l)) / 2h`` for every entry ``l`` of ``lam_vec``,
    ``h = rel_h·λ_l``; ``f`` takes a λ vector and returns a float."""
    out = []
    for idx in range(lam_vec.numel()):
        h = rel_h * float(lam_vec[idx])
        up, down = lam_vec.clone(), lam_vec.clone()
        up[idx] += h
        down[idx] -= h
        out.append((f(up) - f(down)) / (2 * h))
    return torch.tensor(out, dtype=torch.float64)
