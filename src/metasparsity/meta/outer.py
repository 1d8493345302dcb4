"""The outer update of meta-training: the only place where θ, the loss weights and ρ = log λ
change in place (Adam on θ with the group prox at the current λ, then Adam on ρ).
"""

from __future__ import annotations

import math
import numbers
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from metasparsity.meta.lam import LearnedLambda
from metasparsity.meta.meta_step import MetaStepResult
from metasparsity.sparsity import ConvGroups, ProxAdam, prox_
from metasparsity.utils.errors import NonFiniteError


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

    Refused before anything changes (``ValueError``): ``opt_theta`` missing a grouped weight
    or an ``extra_params`` entry that has a meta-gradient, ``opt_rho`` missing ``lam.rho`` (a
    learnable λ), a ``prox_step`` that is not a finite number ``>= 0`` (when it is used).  A
    non-finite gradient of ρ raises :class:`~metasparsity.utils.errors.NonFiniteError`
    (a divergence, as a non-finite λ is for meta-training) rather than making λ NaN; checked
    before anything changes, except λ's part through the prox (``prox_path``), which exists only
    after θ's step: that one leaves θ stepped and λ as it was (meta-training then stops and
    keeps its last good checkpoint).
    """
    params = dict(model.named_parameters())
    extra = dict(extra_params or {})
    sparse = lam.enabled and bool(layers) and take_prox
    _check_outer_args(params, extra, lam, result, opt_theta, opt_rho,
                      prox_step if sparse else 0.0, layers)
    for name, p in params.items():
        g = result.grads_theta.get(name)
        p.grad = None if g is None else g.detach().to(p.dtype)
    for name, p in extra.items():
        g = result.grads_extra.get(name)
        p.grad = None if g is None else g.detach().to(p.dtype)
    lam_used = lam.value()
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
        grad_rho = result.grad_rho
        if before is not None and result.grad_lambda is not None:
            per_layer = prox_path(before, lam_step)
            prox_part = per_layer if lam.rho.numel() != 1 else per_layer.sum().reshape(1)
            prox_part = prox_part.to(result.grad_lambda)
            grad_rho = lam.rho_grad(result.grad_lambda + prox_part)
            _check_finite_grad_rho(grad_rho, "with the part through the prox")
        lam.rho.grad = grad_rho.detach().to(lam.rho.dtype)
        opt_rho.step()
        lam.rho.grad = None
        lam.clamp_rho_()
    return {"lam": lam_used, "lam_next": lam.value(), "grad_lambda_prox": prox_part}


def _check_outer_args(params: Mapping[str, torch.Tensor], extra: Mapping[str, torch.Tensor],
                      lam: LearnedLambda, result: MetaStepResult,
                      opt_theta: torch.optim.Optimizer, opt_rho: torch.optim.Optimizer | None,
                      prox_step: float, layers: Sequence[ConvGroups]) -> None:
    """:func:`outer_update`'s checks, before anything changes (one set of ids per call);
    ``prox_step`` is checked as given (the caller passes 0 when no prox is taken)."""
    held = {id(p) for group in opt_theta.param_groups for p in group["params"]}
    need = [(g.name, params[g.name]) for g in layers
            if g.name in params and result.grads_theta.get(g.name) is not None]
    need += [(n, p) for n, p in extra.items() if result.grads_extra.get(n) is not None]
    missing = [n for n, p in need if id(p) not in held]
    if missing:
        raise ValueError(f"opt_theta does not hold {', '.join(missing[:3])}"
                         + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                         + ": its parameter groups must hold the model's grouped weights and "
                         "extra_params (e.g. prox_param_groups(model, layers, extra=...) of "
                         "this model)")
    if not isinstance(opt_theta, ProxAdam) and not (
            isinstance(prox_step, (numbers.Real, torch.Tensor)) and math.isfinite(prox_step)
            and prox_step >= 0):
        raise ValueError(f"prox_step (the prox's step size after {type(opt_theta).__name__}) "
                         f"must be a finite number >= 0, got {prox_step!r}")
    if lam.learnable:
        if opt_rho is None:
            raise ValueError("λ is learnable but no optimizer for ρ was given")
        if not any(p is lam.rho for group in opt_rho.param_groups for p in group["params"]):
            raise ValueError("opt_rho does not hold lam.rho, so λ would never move: build it "
                             "over lam.parameters()")
        if result.grad_rho is None:
            raise ValueError(f"the meta-step (mode {result.mode!r}) gave λ no gradient")
        _check_finite_grad_rho(result.grad_rho, "")


def _check_finite_grad_rho(grad_rho: torch.Tensor, where: str) -> None:
    """A NaN / infinite gradient of ρ (one value or one per layer) is a divergence: stepping on
    it would make λ NaN, and the next prox would zero the backbone."""
    if not bool(torch.isfinite(grad_rho).all()):
        raise NonFiniteError(f"non-finite meta-gradient of λ {where + ' ' if where else ''}"
                             f"(dL/dρ = {grad_rho.detach().cpu().reshape(-1).tolist()[:4]})",
                             task="λ")


class RelativeClip:
    """Clip θ's meta-gradient at ``multiple`` times the median norm of the last ``window``
    outer steps (``meta.clip_grad``; 0 measures the norm and clips nothing).

    Why relative: the prox in Adam's metric keeps a zero group while ``‖m̂_g‖ ≤ λ·w_g``, so one
    outer step whose gradient is several times the usual one (a hard query batch) pushes every
    group near its threshold over it at once, and a third of the zero set can revive in a step.
    A cap tied to the recent median bounds such steps without a scale of its own.  Nothing is
    clipped before ``min_history`` norms are known.  The history (unclipped norms) is part of a
    checkpoint (:meth:`state_dict`), so a resumed run clips as the uninterrupted one.

    A non-finite norm (a NaN or infinite gradient) is neither clipped nor kept in the history:
    scaling cannot repair it (an infinity times the scale is a NaN), so it is left as it is for
    the caller's divergence check, and it does not disable clipping for the next ``window`` steps.
    """

    def __init__(self, multiple: float, window: int = 20, min_history: int = 5):
        if not (math.isfinite(multiple) and multiple >= 0) or window < 1 or min_history < 1:
            raise ValueError(f"RelativeClip: multiple a finite number >= 0, window >= 1 and "
                             f"min_history >= 1 (got {multiple}, {window}, {min_history})")
        self.multiple, self.window, self.min_history = float(multiple), int(window), int(min_history)
        self.history: list[float] = []

    @torch.no_grad()
    def __call__(self, grads: Mapping[str, torch.Tensor | None]) -> tuple[float, float]:
        """Scale ``grads`` in place when their joint norm is above the cap; returns ``(norm
        before clipping, scale applied)``."""
        gs = [g for g in grads.values() if g is not None]
        norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in gs))
        scale = 1.0
        if not math.isfinite(norm):  # left for the caller's divergence check, not recorded
            return norm, scale
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
        self.history = [float(x) for x in state["history"]
                        if math.isfinite(float(x))][-self.window:]
