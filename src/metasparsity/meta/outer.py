"""The outer update of meta-training: the only place where θ, the loss weights and ρ = log λ
change in place (Adam on θ with the group prox at the current λ, then Adam on ρ).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
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
                 take_prox: bool = True,
                 prox_path: Callable[[Mapping[str, torch.Tensor], torch.Tensor],
                                     torch.Tensor] | None = None) -> dict[str, Any]:
    """Apply one outer step in place (DESIGN §2.4).

    1. ``.grad`` ← the meta-gradients; then the optimizer step on θ and ``extra_params`` (which
       must be in ``opt_theta``'s parameter groups) with the proximal step on the backbone groups
       at the λ this meta-step used (per layer for a per-layer λ):
       * ``opt_theta`` a :class:`~metasparsity.sparsity.ProxAdam`: ``opt_theta.step(lam=λ)``, the
         prox in its own metric (or the Euclidean one), threshold ``η·λ_l·w_g`` with its learning
         rate ``η`` (DESIGN §2.2.1); ``prox_step`` is not used;
       * any other optimizer: its step, then the Euclidean prox with ``η = prox_step``:
         ``θ_g ← θ_g · max(0, 1 − η·λ_l·w_g / ||θ_g||)``.
    2. ``prox_path`` (``meta.lambda_through_prox``; a learnable λ, a :class:`ProxAdam` and a step
       that takes its prox): ``prox_path(z, λ)`` gets the grouped weights between the Adam step
       and the prox and returns ``dL_val(θ_{t+1})/dλ`` per layer (``[L]``,
       :func:`~metasparsity.meta.prox_path.make_prox_path`); it is added to λ's gradient.
    3. If λ is learnable: ``ρ.grad`` ← ``result.grad_rho`` (with step 2: ``dλ/dρ`` times
       ``result.grad_lambda`` plus the prox part); ``opt_rho.step()``; ρ clamped into
       ``[log λ_min, log λ_max]``.

    ``take_prox=False`` leaves the prox out of step 1 (the last step of budget mode or of
    ``meta.final_zero_window`` takes it itself, at the multiple of λ it lands on), and so step 2.
    ``.grad`` fields are set to None afterwards.  Returns ``{"lam": λ used by the prox,
    "lam_next": λ after the update, "grad_lambda_prox": step 2's part (λ's shape) or None}``.
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
    before: dict[str, torch.Tensor] | None = None
    if isinstance(opt_theta, ProxAdam) and sparse and prox_path is not None and lam.learnable:
        # step(lam=λ) is step(lam=None) then apply_prox(λ): keep z between the two
        lam_step = lam().detach()
        opt_theta.step(lam=None)
        before = {g.name: params[g.name].detach().clone() for g in layers}
        opt_theta.apply_prox(lam_step)
    elif isinstance(opt_theta, ProxAdam):
        opt_theta.step(lam=lam().detach() if sparse else None)
    else:
        opt_theta.step()
        if sparse:
            prox_(model, prox_step, lam().detach(), layers)
    for p in params.values():
        p.grad = None
    for p in extra.values():
        p.grad = None

    prox_part = None
    if lam.learnable:
        if opt_rho is None:
            raise ValueError("λ is learnable but no optimizer for ρ was given")
        if result.grad_rho is None:
            raise ValueError(f"the meta-step (mode {result.mode!r}) gave λ no gradient")
        grad_rho = result.grad_rho
        if before is not None and result.grad_lambda is not None:
            per_layer = prox_path(before, lam_step)
            prox_part = per_layer if lam.rho.numel() != 1 else per_layer.sum().reshape(1)
            prox_part = prox_part.to(result.grad_lambda)
            grad_rho = lam.rho_grad(result.grad_lambda + prox_part)
        lam.rho.grad = grad_rho.detach().to(lam.rho.dtype)
        opt_rho.step()
        lam.rho.grad = None
        lam.clamp_rho_()
    return {"lam": lam_used, "lam_next": lam.value(), "grad_lambda_prox": prox_part}


class RelativeClip:
    """Clip θ's meta-gradient at ``multiple`` times the median norm of the last ``window``
    outer steps (``meta.clip_grad``; 0 measures the norm and clips nothing).

    Why relative: the prox in Adam's metric keeps a zero group while ``‖m̂_g‖ ≤ λ·w_g``, so one
    outer step whose gradient is several times the usual one (a hard query batch) pushes every
    group near its threshold over it at once, and a third of the zero set can revive in a step.
    A cap tied to the recent median bounds such steps without a scale of its own.  Nothing is
    clipped before ``min_history`` norms are known.  The history (unclipped norms) is part of a
    checkpoint (:meth:`state_dict`), so a resumed run clips as the uninterrupted one.
    """

    def __init__(self, multiple: float, window: int = 20, min_history: int = 5):
        if multiple < 0 or window < 1 or min_history < 1:
            raise ValueError(f"RelativeClip: multiple >= 0, window >= 1 and min_history >= 1 "
                             f"(got {multiple}, {window}, {min_history})")
        self.multiple, self.window, self.min_history = float(multiple), int(window), int(min_history)
        self.history: list[float] = []

    @torch.no_grad()
    def __call__(self, grads: Mapping[str, torch.Tensor | None]) -> tuple[float, float]:
        """Scale ``grads`` in place when their joint norm is above the cap; returns ``(norm
        before clipping, scale applied)``."""
        gs = [g for g in grads.values() if g is not None]
        norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in gs))
        scale = 1.0
        if self.multiple > 0 and len(self.history) >= self.min_history:
            cap = self.multiple * statistics.median(self.history)
            if 0 < cap < norm:  # a median of 0 (no gradient yet) caps nothing
                scale = cap / norm
                for g in gs:
                    g.mul_(scale)
        self.history = (self.history + [norm])[-self.window:]
        return norm, scale

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = [float(x) for x in state["history"]][-self.window:]
