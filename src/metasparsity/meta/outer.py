"""The outer update of meta-training: the only place where θ, the loss weights and ρ = log λ
change in place (Adam on θ with the group prox at the current λ, then Adam on ρ).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from metasparsity.meta.lam import LearnedLambda
from metasparsity.meta.meta_step import MetaStepResult
from metasparsity.sparsity import ConvGroups, ProxAdam, prox_


def outer_update(model: nn.Module, lam: LearnedLambda, result: MetaStepResult,
                 opt_theta: torch.optim.Optimizer, opt_rho: torch.optim.Optimizer | None,
                 prox_step: float, layers: Sequence[ConvGroups],
                 extra_params: Mapping[str, torch.Tensor] | None = None,
                 take_prox: bool = True) -> dict[str, Any]:
    """Apply one outer step in place (DESIGN §2.4).

    1. ``.grad`` ← the meta-gradients; then the optimizer step on θ and ``extra_params`` (which
       must be in ``opt_theta``'s parameter groups) with the proximal step on the backbone groups
       at the λ this meta-step used (per layer for a per-layer λ):
       * ``opt_theta`` a :class:`~metasparsity.sparsity.ProxAdam`: ``opt_theta.step(lam=λ)``, the
         prox in its own metric (or the Euclidean one), threshold ``η·λ_l·w_g`` with its learning
         rate ``η`` (DESIGN §2.2.1); ``prox_step`` is not used;
       * any other optimizer: its step, then the Euclidean prox with ``η = prox_step``:
         ``θ_g ← θ_g · max(0, 1 − η·λ_l·w_g / ||θ_g||)``.
    3. If λ is learnable: ``ρ.grad`` ← ``result.grad_rho``; ``opt_rho.step()``; ρ clamped into
       ``[log λ_min, log λ_max]``.

    ``take_prox=False`` leaves the prox out of step 1 (budget mode's last step takes it
    itself, at the λ that meets the budget).  ``.grad`` fields are set to None afterwards.  Returns ``{"lam": λ used by the prox,
    "lam_next": λ after the update}``.
    """
    params = dict(model.named_parameters())
    for name, p in params.items():
        g = result.grads_theta.get(name)
        p.grad = None if g is None else g.detach().to(p.dtype)
    extra = dict(extra_params or {})
    for name, p in extra.items():
        g = result.grads_extra.get(name)
        p.grad = None if g is None else g.detach().to(p.dtype)
    lam_used = lam.value()
    sparse = lam.enabled and bool(layers) and take_prox
    if isinstance(opt_theta, ProxAdam):
        opt_theta.step(lam=lam().detach() if sparse else None)
    else:
        opt_theta.step()
        if sparse:
            prox_(model, prox_step, lam().detach(), layers)
    for p in params.values():
        p.grad = None
    for p in extra.values():
        p.grad = None

    if lam.learnable:
        if opt_rho is None:
            raise ValueError("λ is learnable but no optimizer for ρ was given")
        if result.grad_rho is None:
            raise ValueError(f"the meta-step (mode {result.mode!r}) gave λ no gradient")
        lam.rho.grad = result.grad_rho.detach().to(lam.rho.dtype)
        opt_rho.step()
        lam.rho.grad = None
        lam.clamp_rho_()
    return {"lam": lam_used, "lam_next": lam.value()}
