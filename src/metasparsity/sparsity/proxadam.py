"""``ProxAdam``: Adam followed by the group-lasso proximal step in Adam's own metric (DESIGN §2.2.1).

One step on a channel-grouped weight (layer ``l``, group ``g`` = input channel, ``w_g`` its group
weight, ``η`` the learning rate of this step after the LR schedule)::

    z   = the Adam step                                     (torch.optim.Adam, unchanged)
    D   = sqrt(v̂) + ε                                       (Adam's bias-corrected denominator)
    θ_g = argmin_y ½·||y − z_g||²_D + τ_g·||y||_2,   τ_g = η·λ_l·w_g
        = 0                                 if ||D_g ⊙ z_g||_2 ≤ τ_g        (exact zeros)
        = z_g ⊙ r / (r + τ_g / D_g)         otherwise, r = ||θ_g|| > 0 the root of
                                            Σ_i z_i² / (r + τ_g/d_i)² = 1

The fixed points of "Adam step, then this prox" are the group-lasso stationary points
``0 ∈ m̂ + λ·∂Ω(θ)``: λ is in gradient units.  ``prox_metric="euclidean"`` applies the plain block
soft-threshold ``θ_g·max(0, 1 − τ_g/||θ_g||)`` instead (the first version, kept for ablation),
whose fixed points compare λ with Adam's *normalised* step.

The scalar equation is solved in the form ``h(r) = 1/||z / (r + a)|| = 1`` (``a_i = τ_g/d_i``):
``h`` is increasing and concave, so Newton's method converges monotonically from below once it
is left of the root (one step at most), exact at once when ``D`` is constant over the group; it
runs batched over all groups of a layer (see :func:`metric_prox`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from metasparsity.sparsity.groups import (
    ConvGroups,
    LamLike,
    _lam_values,
    _layer_lambda,
    group_norms,
    prox,
)

PROX_METRICS = ("adam", "euclidean")
NEWTON_MAX_STEPS = 30


def metric_prox(z: torch.Tensor, d: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
    """Group prox of every input-channel group of ``z`` in the diagonal metric ``d``.

    ``z``, ``d``: ``[O, I, kh, kw]`` (``d > 0``); ``tau``: a scalar or ``[I]`` (one threshold per
    group, ``> 0``).  Returns ``argmin_y ½·Σ d·(y − z)² + τ·||y||`` for every group
    ``y = W[:, c]``; groups with ``||d ⊙ z_g|| ≤ τ`` come out exactly zero.  Pure: returns a new
    tensor.  See :func:`prox_rows` for the solver.
    """
    o, i = z.shape[:2]
    # group-major [I, O·kh·kw]: every sum runs along contiguous memory
    zt = z.transpose(0, 1).reshape(i, -1)
    tau_t = torch.as_tensor(tau, dtype=z.dtype, device=z.device).reshape(-1, 1)
    a = tau_t / d.transpose(0, 1).reshape(i, -1)
    return prox_rows(zt, a).reshape(i, o, *z.shape[2:]).transpose(0, 1)


def prox_rows(z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The metric group prox of every row of ``z`` ``[G, n]`` with ``a = τ_g/d_i`` ``[G, n]``
    (``a > 0``; ``+inf`` marks padding, whose ``z`` must be 0): the row is 0 when
    ``Σ_i z_i²/a_i² ≤ 1`` (i.e. ``||d ⊙ z|| ≤ τ``), else ``z ⊙ r/(r + a)``.

    Newton on ``h(r) = 1/||z/(r + a)|| = 1``, batched over the rows, from ``r_0 = ||z|| − ā``
    (``ā`` the z²-weighted mean of ``a``: the exact root when ``d`` is constant over the row).
    ``h`` is increasing and concave, so a step from the right of the root lands on its left
    (clamped at 0, where ``h < 1``) and every later step climbs monotonically to it.
    """
    z2 = z.square()
    keep = ~((z2 / a.square()).sum(1) <= 1.0)  # a NaN row is kept, and stays NaN (a divergence)
    if not bool(keep.any()):
        return torch.zeros_like(z)
    zn2 = z2.sum(1)
    safe = torch.where(keep, zn2, torch.ones_like(zn2))
    r = (zn2.sqrt() - torch.nansum(z2 * a, 1) / safe).clamp_min_(0.0)  # padding: 0·inf
    # converged: a step below rounding at the scale of r + a (a root near 0 for a row just
    # kept has r ≪ a, where float32 noise in h moves r by ~eps·a), or a step that does not climb
    # once the first step has put r left of the root.  Newton is quadratic: after a step of
    # relative size δ the error is O(δ²), so a step below sqrt(16·eps) is accepted as it is.
    scale_floor = a.amin(1)
    tol_step = (16 * torch.finfo(z.dtype).eps) ** 0.5
    for k in range(NEWTON_MAX_STEPS):
        inv = (a + r.unsqueeze(1)).reciprocal_()
        q = z2 * inv
        q.mul_(inv)
        s2 = q.sum(1)                       # S(r) = Σ z²/(r+a)²
        s3 = q.mul_(inv).sum(1)             # −S'(r)/2 = Σ z²/(r+a)³
        s2 = torch.where(keep, s2, torch.ones_like(s2))
        h = s2.rsqrt()
        step = torch.where(keep, (1.0 - h) * s2 / (s3 * h), torch.zeros_like(r))  # (1−h)/h'
        r_new = (r + step).clamp_min_(0.0)
        moved = r_new - r
        small = (moved.abs() <= tol_step * (r_new + scale_floor)) | r_new.isnan()
        done = bool((small | (moved <= 0)).all()) if k > 0 else bool(small.all())
        r = torch.maximum(r_new, r) if k > 0 else r_new  # rounding never walks back
        if done:
            break
    rb = r.unsqueeze(1)
    y = z * (rb / (rb + a))
    return y.masked_fill_(~keep.unsqueeze(1), 0.0)


def prox_param_groups(model: nn.Module, layers: Sequence[ConvGroups],
                      params: Iterable[torch.Tensor] | None = None,
                      extra: Iterable[torch.Tensor] = ()) -> list[dict[str, Any]]:
    """Parameter groups for :class:`ProxAdam`: one group per grouped backbone conv weight
    (``prox_layer``: its index in ``layers``, the index of per-layer λ; ``group_weight``: ``w_g``),
    then one plain group with every other parameter.

    ``params``: the parameters to optimise (default: all of ``model``'s that require grad); only
    those among them that are grouped get a prox group.  ``extra``: further parameters (e.g.
    learned loss weights) in the plain group.
    """
    named = dict(model.named_parameters())
    chosen = list(named.values()) if params is None else list(params)
    chosen_ids = {id(p) for p in chosen}
    groups, grouped_ids = [], set()
    for i, g in enumerate(layers):
        w = named[g.name]
        if id(w) in chosen_ids and w.requires_grad:
            groups.append({"params": [w], "prox_layer": i, "group_weight": g.group_weight})
            grouped_ids.add(id(w))
    rest = [p for p in chosen if id(p) not in grouped_ids and p.requires_grad] + list(extra)
    if rest:
        groups.append({"params": rest})
    return groups


class ProxAdam(torch.optim.Adam):
    """Adam (``torch.optim.Adam``, optional decoupled weight decay) whose step is followed, on the
    parameter groups marked with ``prox_layer`` (see :func:`prox_param_groups`), by the group prox
    with threshold ``τ = η_t·λ_l·w_g`` in Adam's metric (``prox_metric="adam"``) or the Euclidean
    one (``"euclidean"``).

    ``step(lam=...)`` takes the current λ: a float, or a tensor with one value per grouped layer
    (indexed by ``prox_layer``), finite and ``>= 0`` (``ValueError``, before the Adam step);
    ``None`` or 0 is a plain Adam step.  A λ > 0 with no ``prox_layer`` group (the optimizer
    built on ``model.parameters()`` rather than :func:`prox_param_groups`) is a ``ValueError``:
    it would take no prox at all.  Everything the prox needs
    lives in Adam's own state and the param groups, so ``state_dict`` round-trips exactly.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *,
                 decoupled_weight_decay: bool = False, prox_metric: str = "adam",
                 num_layers: int | None = None) -> None:
        if prox_metric not in PROX_METRICS:
            raise ValueError(f"prox_metric must be one of {PROX_METRICS}, got {prox_metric!r}")
        # passed only when asked for: torch.optim.Adam has the flag since PyTorch 2.7 (AdamW before)
        extra = {"decoupled_weight_decay": True} if decoupled_weight_decay else {}
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **extra)
        self.prox_metric = prox_metric
        layers = [g["prox_layer"] for g in self.param_groups if "prox_layer" in g]
        needed = max(layers) + 1 if layers else 0
        if num_layers is not None and not (isinstance(num_layers, int) and num_layers >= needed):
            raise ValueError(f"num_layers={num_layers!r}, but the parameter groups have prox_layer "
                             f"indices up to {needed - 1}: pass len(layers), the number of "
                             "grouped layers the groups were made from")
        self.num_layers = num_layers if num_layers is not None else needed

    @torch.no_grad()
    def step(self, closure=None, *, lam: LamLike | None = None):  # type: ignore[override]
        take = self._takes_prox(lam)  # checked before the Adam step: all or nothing
        loss = super().step(closure)
        if take:
            self._prox(lam)
        return loss

    def _takes_prox(self, lam: LamLike | None) -> bool:
        """Whether ``lam`` asks for a prox (not None, not all 0); ``ValueError`` for a λ that is
        not finite and ``>= 0``, or a λ > 0 that no parameter group would take."""
        if lam is None:
            return False
        vals = _lam_values(lam)
        if not any(vals):
            return False
        if not any("prox_layer" in g for g in self.param_groups):
            raise ValueError(
                f"lam={lam!r} but no parameter group has a prox_layer, so no prox would be "
                "taken: build the optimizer on prox_param_groups(model, layers)")
        if len(vals) not in (1, self.num_layers):
            raise ValueError(f"λ has {len(vals)} values but there are {self.num_layers} grouped "
                             "layers")
        return True

    @torch.no_grad()
    def apply_prox(self, lam: LamLike | None) -> None:
        """The proximal half of :meth:`step` alone, at ``lam``, on the current weights (the
        threshold takes each group's current learning rate).  ``step(lam=λ)`` is
        ``step(lam=None)`` followed by ``apply_prox(λ)``; budget mode's last step puts a search
        for λ between the two (:func:`~metasparsity.sparsity.budget.land_on_budget`)."""
        if self._takes_prox(lam):
            self._prox(lam)

    def _prox(self, lam: LamLike) -> None:
        if isinstance(lam, torch.Tensor):
            lam = lam.detach()
        lam_by_dtype: dict[tuple, torch.Tensor] = {}
        lam_floats: list[float] | None = None
        for group in self.param_groups:
            if "prox_layer" not in group:
                continue
            (w,) = group["params"]
            key = (w.dtype, w.device)
            if key not in lam_by_dtype:
                lam_by_dtype[key] = _layer_lambda(lam, self.num_layers, w)
            if self.prox_metric == "euclidean":  # today's arithmetic, bit for bit
                tau = group["lr"] * lam_by_dtype[key][group["prox_layer"]] * group["group_weight"]
                w.copy_(prox(w, tau))
                continue
            if lam_floats is None:  # one host sync per step, not one per layer
                lam_floats = lam_by_dtype[key].tolist()
            tau = group["lr"] * lam_floats[group["prox_layer"]] * group["group_weight"]
            state = self.state.get(w)
            if not (tau > 0 and state and "exp_avg_sq" in state):
                continue  # no prox, or no Adam step yet (no gradient): no metric to take it in
            w.copy_(metric_prox(w, self.denominator(w, group), tau))

    def set_group_weights(self, layers: Sequence[ConvGroups]) -> None:
        """Each prox group's ``w_g`` from ``layers`` (indexed by ``prox_layer``): after
        ``load_state_dict``, which restores the saved ``w_g``, so that a resumed run takes its
        prox with the weights its config gives now (``sparsity.penalize``)."""
        for group in self.param_groups:
            if "prox_layer" in group:
                group["group_weight"] = layers[group["prox_layer"]].group_weight

    @torch.no_grad()
    def zero_thresholds(self, model: nn.Module, layers: Sequence[ConvGroups],
                        lam: LamLike) -> dict[str, torch.Tensor]:
        """Per group of ``layers``, the factor ``s`` from which :meth:`apply_prox` at ``s·λ``
        zeroes it on the current weights: ``‖D_g ⊙ θ_g‖/(η·λ_l·w_g)`` (``D = 1`` for the
        Euclidean metric; ``inf`` where ``λ_l = 0``, or in Adam's metric before the parameter's
        first step, where :meth:`apply_prox` leaves it alone)."""
        group_of = {id(p): grp for grp in self.param_groups for p in grp["params"]}
        params = dict(model.named_parameters())
        lam_t = lam.detach() if isinstance(lam, torch.Tensor) else None
        out = {}
        for g in layers:
            w = params[g.name]
            grp = group_of[id(w)]
            lam_l = float(_layer_lambda(lam_t if lam_t is not None else lam, self.num_layers,
                                        w)[grp["prox_layer"]])
            euclid = self.prox_metric == "euclidean"
            scale = grp["lr"] * lam_l * g.group_weight
            if not scale > 0 or not (euclid or self.state.get(w)):
                out[g.name] = torch.full((w.shape[1],), math.inf, dtype=w.dtype)
                continue
            d = torch.ones_like(w) if euclid else self.denominator(w, grp)
            out[g.name] = group_norms(d * w) / scale
        return out

    @torch.no_grad()
    def prox_scores(self, model: nn.Module, layers: Sequence[ConvGroups]) -> dict[str, torch.Tensor]:
        """``‖D_g ⊙ θ_g‖/w_g`` per group of ``layers`` (``D = 1`` before a parameter's first
        step): how large λ must be for the prox in this metric to zero the group (η aside), the
        order in which budget mode's last step removes groups."""
        group_of = {id(p): grp for grp in self.param_groups for p in grp["params"]}
        params = dict(model.named_parameters())
        out = {}
        for g in layers:
            w = params[g.name]
            if not g.group_weight > 0:  # an unpenalised layer: no λ zeroes it
                out[g.name] = torch.full((w.shape[1],), math.inf, dtype=w.dtype)
                continue
            d = self.denominator(w, group_of[id(w)]) if self.state.get(w) else torch.ones_like(w)
            out[g.name] = group_norms(d * w) / g.group_weight
        return out

    def denominator(self, w: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        """``D = sqrt(v̂) + ε`` of parameter ``w``, exactly as Adam's step divided by it."""
        state = self.state[w]
        step = float(state["step"])
        beta2 = group["betas"][1]
        bias_correction2 = 1 - beta2 ** step
        v = state["max_exp_avg_sq"] if group["amsgrad"] else state["exp_avg_sq"]
        return (v.sqrt() / math.sqrt(bias_correction2)).add_(group["eps"])

