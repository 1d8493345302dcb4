"""``meta.lambda_init = auto`` (DESIGN §2.3): λ0 from the gradient scale of the initial model."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call

from metasparsity.meta.inner import batch_stat_buffers
from metasparsity.sparsity import ConvGroups, group_gradient_ratios
from metasparsity.utils.errors import UserError


def auto_lambda0(model: nn.Module, layers: Sequence[ConvGroups],
                 batches: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]],
                 loss_fn: Callable, tasks: Sequence[str], lambda_min: float,
                 lambda_max: float) -> float:
    """λ0 = the median over backbone groups of ``‖∇_g L‖/w_g`` at the model's θ: the λ at which
    the prox in Adam's metric would hold half the groups at zero.  ``L = loss_fn(outputs,
    targets, tasks)[0]`` with ``∇L`` averaged over ``batches``, computed with batch statistics
    (no running statistic touched); clamped into ``[lambda_min, lambda_max]``."""
    params = dict(model.named_parameters())
    buffers = batch_stat_buffers(model)
    names = [g.name for g in layers]
    grads: dict[str, torch.Tensor] = {}
    for x, y in batches:
        out = functional_call(model, (params, buffers), (x,), {"tasks": list(tasks)})
        total, _ = loss_fn(out, y, list(tasks))
        for n, g in zip(names, torch.autograd.grad(total, [params[n] for n in names],
                                                   allow_unused=True)):
            if g is not None:
                grads[n] = grads.get(n, 0) + g.detach() / len(batches)
    ratios = group_gradient_ratios(grads, layers)
    if ratios.numel() == 0:
        raise UserError("meta.lambda_init=auto: no backbone group carries the penalty "
                        "(sparsity.penalize); give meta.lambda_init a number")
    lam0 = float(ratios.median())
    if not math.isfinite(lam0):
        raise UserError(f"meta.lambda_init=auto: the initial gradient scale is {lam0}; "
                        "give meta.lambda_init a number")
    return min(max(lam0, lambda_min), lambda_max)
