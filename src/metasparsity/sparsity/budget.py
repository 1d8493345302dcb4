"""The backbone's cost after pruning, read off the current zeros without pruning (DESIGN §2.4).

Budget mode (``meta.target``) needs, after every outer step, the cost the pruned backbone would
have: its multiply–accumulates, its conv parameters, or its share of non-zero groups.  Pruning a
copy every step would cost more than the step, so :class:`BackboneCost` traces the channel
dependency graph once (:func:`~metasparsity.sparsity.pruning.feature_map_groups`) and records
each backbone conv's shape and output size on an example input.  Then, for the current weights,
the removable channels of every feature-map group (the rule of
:func:`~metasparsity.sparsity.pruning.plan_pruning`, one channel kept where all would go) take
out-channels from its producer convs and in-channels from its consumer convs, and::

    MACs(conv)   = out_alive · in_alive / groups · kh · kw · Ho · Wo
    params(conv) = out_alive · in_alive / groups · kh · kw

summed over the backbone's convs: the counts :func:`metasparsity.eval.cost.count_macs` and the
conv weights of the model :func:`~metasparsity.sparsity.pruning.prune_zero_channels` returns
(``tests/sparsity/test_budget.py`` checks both).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from metasparsity.sparsity.groups import ConvGroups, _check_layers, group_norms, sparsity_stats
from metasparsity.sparsity.pruning import feature_map_groups, plan_pruning
from metasparsity.utils.errors import UserError

MEASURES = ("macs", "params", "groups")

#: Which backbone groups carry the group-lasso penalty (``sparsity.penalize``).
PENALIZE = ("all", "removable")


def removable_layers(model: nn.Module, example_input: torch.Tensor,
                     layers: Sequence[ConvGroups]) -> list[ConvGroups]:
    """``layers`` with the penalty kept only where a zero group removes a channel.

    A conv that is the only reader of its input feature map (inside a ResNet block: ``conv2``
    reading ``conv1``'s output, and ``conv3`` in a bottleneck) loses, with a zero group, a
    channel of that map: the pruned network drops the channel from the producer's outputs and
    from this conv's inputs.  A conv
    that shares its input with other readers (``conv1`` and the downsample reading the residual
    stream, the stem reading the image) removes nothing with a zero group of its own; the
    channel goes only when every reader drops it.  Those layers get ``group_weight = 0``: no
    penalty, no prox, a threshold of ``inf``.  Layer order (the index of per-layer λ) is kept.
    ``layers`` must be ``model``'s (``ValueError`` otherwise).
    """
    _check_layers(dict(model.named_parameters()), layers)
    sole = set()
    for fm in feature_map_groups(model, example_input):
        if fm.blocked is None and len(fm.consumers) == 1 and fm.consumers[0].kind == "conv":
            sole.add((fm.consumers[0].name, len(fm.consumers[0].pairs)))
    return [g if (g.module_name, g.num_groups) in sole else replace(g, group_weight=0.0)
            for g in layers]


def penalised_layers(model: nn.Module, example_input: torch.Tensor,
                     layers: Sequence[ConvGroups], penalize: str) -> list[ConvGroups]:
    """``layers`` as ``sparsity.penalize`` says: ``all`` as they are, ``removable`` through
    :func:`removable_layers`."""
    if penalize not in PENALIZE:
        raise ValueError(f"unknown sparsity.penalize {penalize!r}; choose one of {PENALIZE}")
    return list(layers) if penalize == "all" else removable_layers(model, example_input, layers)


class BackboneCost:
    """Cost of ``model``'s backbone after pruning its current zeros, as a fraction of dense.

    Args:
        model: a multi-task model with a ``backbone`` (or any model: all its convs count).
        example_input: one input (e.g. ``[1, 3, H, W]``) for the graph and the output sizes.
        layers: the grouped conv weights (``channel_groups(model)``), for ``groups``.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor,
                 layers: Sequence[ConvGroups]) -> None:
        self.layers = list(layers)
        self.groups = feature_map_groups(model, example_input)
        prefix = "backbone." if isinstance(getattr(model, "backbone", None), nn.Module) else ""
        convs = {n: m for n, m in model.named_modules()
                 if isinstance(m, nn.Conv2d) and n.startswith(prefix)}
        sizes: dict[str, int] = {}
        hooks = [m.register_forward_hook(
            lambda mod, inp, out, n=n: sizes.__setitem__(n, out.shape[-2] * out.shape[-1]))
            for n, m in convs.items()]
        training = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            with torch.no_grad():
                model(example_input)
        finally:
            for h in hooks:
                h.remove()
            for m, t in training:
                m.training = t
        # name -> (in channels, out channels, groups, kh·kw, Ho·Wo)
        self.convs = {n: (m.in_channels, m.out_channels, m.groups,
                          m.kernel_size[0] * m.kernel_size[1], sizes.get(n, 0))
                      for n, m in convs.items()}
        self.dense = {"macs": self._sum(model, {}, {}, "macs"),
                      "params": self._sum(model, {}, {}, "params")}

    def _sum(self, model: nn.Module, cut_in: dict[str, int], cut_out: dict[str, int],
             measure: str) -> int:
        total = 0
        for n, (cin, cout, g, k, hw) in self.convs.items():
            per = (cout - cut_out.get(n, 0)) * (cin - cut_in.get(n, 0)) // g * k
            total += per * (hw if measure == "macs" else 1)
        return total

    def count(self, model: nn.Module, measure: str) -> int:
        """MACs or conv parameters of the backbone once its removable channels are pruned."""
        cut_in: dict[str, int] = {}
        cut_out: dict[str, int] = {}
        for plan in plan_pruning(model, self.groups):
            if not plan.remove:
                continue
            gone = set(plan.remove)
            for p in plan.group.producers:
                if p in self.convs:
                    cut_out[p] = cut_out.get(p, 0) + len(gone)
            for c in plan.group.consumers:
                if c.name in self.convs:
                    cut_in[c.name] = cut_in.get(c.name, 0) + sum(r in gone for _, r in c.pairs)
        return self._sum(model, cut_in, cut_out, measure)

    def fraction(self, model: nn.Module, measure: str) -> float:
        """Cost as a fraction of the dense backbone's: ``macs``, ``params`` or ``groups``
        (non-zero groups / groups)."""
        if measure not in MEASURES:
            raise ValueError(f"unknown cost measure {measure!r}; choose one of {MEASURES}")
        if measure == "groups":
            return 1.0 - sparsity_stats(model, layers=self.layers).group_sparsity
        dense = self.dense[measure]
        return self.count(model, measure) / dense if dense else 1.0

    @torch.no_grad()
    def floor(self, model: nn.Module, measure: str,
              moved: Sequence[bool] | None = None) -> float:
        """The lowest reachable :meth:`fraction`: every penalised group zero (the stem's inputs
        and the channels the heads read stay; a layer with ``group_weight = 0`` keeps its
        groups); with ``moved`` (one flag per layer: the layers a budget's multiplier acts on)
        only those layers' groups.  The model's weights are restored."""
        if moved is not None and len(moved) != len(self.layers):
            raise ValueError(f"moved: {len(moved)} flags for {len(self.layers)} layers")
        params = dict(model.named_parameters())
        saved = {g.name: params[g.name].detach().clone()
                 for i, g in enumerate(self.layers)
                 if g.group_weight > 0 and (moved is None or moved[i])}
        try:
            for name in saved:
                params[name].zero_()
            return self.fraction(model, measure)
        finally:
            for name, w in saved.items():
                params[name].copy_(w)

    def check_target(self, model: nn.Module, measure: str, target: float,
                     key: str = "meta.target", moved: Sequence[bool] | None = None) -> None:
        """Raise ``UserError`` (naming the config ``key`` of the target) when ``target`` is
        below :meth:`floor` (of the ``moved`` layers, when the multiplier acts on only those)."""
        floor = self.floor(model, measure, moved)
        if target < floor:
            least = math.ceil(floor * 1000) / 1000  # printed to 3 digits: at least the floor
            if moved is not None and any(not m and g.group_weight > 0
                                         for m, g in zip(moved, self.layers)):
                raise UserError(
                    f"{key}: {target:g} is out of reach of the multiplier: with every group of "
                    f"the layers it moves (sparsity.multiplier_on=removable) zero the backbone "
                    f"still keeps {floor:.3f} of its {measure}, and the landing cuts no other "
                    f"layer; use {key} >= {least:.3f}, or sparsity.multiplier_on=all")
            if all(g.group_weight > 0 for g in self.layers):
                why = "the stem and the channels the heads read stay"
            else:
                why = ("the stem, the channels the heads read and the layers without a penalty, "
                       "sparsity.penalize, stay")
            raise UserError(
                f"{key}: {target:g} is out of reach: with every group zero the backbone "
                f"still keeps {floor:.3f} of its {measure} ({why}); use {key} >= "
                f"{least:.3f}")

    def summary(self, model: nn.Module) -> dict[str, Any]:
        """Every measure at once (for logs and results)."""
        return {m: self.fraction(model, m) for m in MEASURES}


def _prefix_cost(model: nn.Module, cost: BackboneCost, measure: str, cand: list):
    """``zero_first(k)``: the weights as they are now with the first ``k`` groups of ``cand``
    (``(key, weight name, channel)``, sorted) zeroed, and the cost that leaves."""
    params = dict(model.named_parameters())
    saved = {g.name: params[g.name].detach().clone() for g in cost.layers}

    def zero_first(k: int) -> float:
        for name, w in saved.items():
            params[name].copy_(w)
        for _, name, c in cand[:k]:
            params[name][:, c].zero_()
        return cost.fraction(model, measure)

    return zero_first


def _fewest_within(zero_first, n: int, target: float) -> int | None:
    """The smallest ``k`` in ``[0, n]`` with ``zero_first(k) <= target`` (the cost falls as
    ``k`` grows: a binary search), or None when even ``zero_first(n)`` is above ``target``.
    The weights are left at whatever ``zero_first`` set last."""
    if zero_first(0) <= target:
        return 0
    lo, hi = 0, n  # fraction(lo) > target >= fraction(hi)
    if zero_first(hi) > target:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if zero_first(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


@torch.no_grad()
def project_to_budget(model: nn.Module, cost: BackboneCost, measure: str, target: float,
                      scores: dict[str, torch.Tensor],
                      only: Sequence[bool] | None = None) -> int:
    """Zero the fewest non-zero groups, lowest ``scores`` first, so that the backbone's cost
    ``cost.fraction(model, measure)`` is at most ``target``; returns how many were zeroed.

    Budget mode's last outer step (DESIGN §2.4): dual ascent holds the cost *around* the
    target while groups near the prox threshold still come and go, so the last step takes the
    prox at the λ that meets the budget: the groups a larger λ would zero first go first.
    ``scores``: ``{weight name: [I]}`` per group (e.g. ``‖D_g ⊙ θ_g‖/w_g``, the λ at which the
    prox in Adam's metric zeroes the group).  Nothing changes when the cost is already within
    the target, or when even an empty backbone (the channels the heads read stay) is above it.
    ``only``: one flag per layer of ``cost.layers``, the layers it may cut (default: every
    penalised one).
    """
    if cost.fraction(model, measure) <= target:
        return 0
    params = dict(model.named_parameters())
    cand = []  # (score, name, channel) of every non-zero group the penalty can zero
    for i, g in enumerate(cost.layers):
        if not g.group_weight > 0 or (only is not None and not only[i]):
            continue
        w = params[g.name]
        alive = group_norms(w) > 0
        for c in alive.nonzero().flatten().tolist():
            cand.append((float(scores[g.name][c]), g.name, c))
    cand.sort()
    zero_first = _prefix_cost(model, cost, measure, cand)
    k = _fewest_within(zero_first, len(cand), target)
    zero_first(k or 0)  # out of reach (None): leave the model as it was
    return k or 0


@torch.no_grad()
def land_on_budget(model: nn.Module, cost: BackboneCost, measure: str, target: float,
                   thresholds: dict[str, torch.Tensor]) -> float:
    """The smallest factor ``s`` such that zeroing every group whose threshold is at most ``s``
    puts the backbone's cost within ``target`` (0 when the current weights already are; in
    practice a hair above the last needed threshold, below the next).

    Budget mode's last outer step (DESIGN §2.4) takes its prox at ``s·λ`` instead of λ, with
    ``thresholds`` from :meth:`ProxAdam.zero_thresholds` on the weights after the plain Adam
    step: the prox zeroes group ``g`` exactly when ``s`` reaches its threshold, so the zero set
    grows with ``s`` and the cost falls.  A smaller ``s`` than 1 gives back the groups closest to
    surviving (revived by the step, or kept), a larger one takes the next ones: the step lands
    on the budget from either side, at the multiplier that just meets it.  The model's weights
    are left as they were; returns ``inf`` when even an empty backbone is above ``target``.
    """
    cand = sorted((t, g.name, c) for g in cost.layers if g.group_weight > 0
                  for c, t in enumerate(thresholds[g.name].tolist()))
    zero_first = _prefix_cost(model, cost, measure, cand)

    try:
        hi = _fewest_within(zero_first, len(cand), target)
        if hi is None:
            return math.inf
        if hi == 0:
            return 0.0
        # the last group needed sits exactly at its threshold: a hair above it, so that the
        # prox's own arithmetic (float32) zeroes it too, and below the next one
        last = cand[hi - 1][0]
        nxt = cand[hi][0] if hi < len(cand) else math.inf
        return min(last * (1 + 1e-4), last + (nxt - last) / 2)
    finally:
        zero_first(0)


@torch.no_grad()
def land_prox(model: nn.Module, opt: Any, cost: BackboneCost, measure: str, target: float,
              lam: torch.Tensor, scaled: torch.Tensor | None = None
              ) -> tuple[dict[str, Any] | None, int]:
    """The landing of budget mode (its last step, or ``sparsity.target_land``'s): after a plain
    Adam step of ``opt``
    (:class:`~metasparsity.sparsity.ProxAdam`, ``step(lam=None)``), its prox at the multiple
    ``s·λ`` of ``lam`` (``[1]`` or ``[L]``) that just brings the backbone's ``measure`` within
    ``target`` (:func:`land_on_budget`: from either side, groups revive or go), then the
    rounding safety net (:func:`project_to_budget`, the groups a larger λ would zero first).

    Returns ``({scale, lambda, groups_vs_lambda}, projected)``: ``s``, ``s·λ``, how many groups
    more (or fewer) than the prox at λ would have zeroed, and how many the safety net zeroed;
    the landing is None when the target is out of reach (then the prox is taken at λ).

    ``scaled``: bool ``[L]``, the layers whose λ the landing scales (default: all); the others
    take their prox at ``lam`` first and are left out of the search and of the safety net."""
    layers = cost.layers
    held = lam
    if scaled is not None:
        keep = scaled.to(lam.dtype)
        opt.apply_prox(lam * (1 - keep))  # the layers held at λ: their prox at λ
        lam = lam * keep  # 0 elsewhere: an infinite threshold, no second prox
    thr = opt.zero_thresholds(model, layers, lam)
    s = land_on_budget(model, cost, measure, target, thr)
    landing = None
    if math.isfinite(s):
        at_lam = sum(int((t <= 1.0).sum()) for t in thr.values())
        at_s = sum(int((t <= s).sum()) for t in thr.values())
        opt.apply_prox(lam * s)
        lam_s = (lam * s if scaled is None
                 else torch.where(scaled, held * s, held)).reshape(-1).tolist()
        landing = {"scale": s, "lambda": lam_s[0] if len(lam_s) == 1 else lam_s,
                   "groups_vs_lambda": at_s - at_lam}
    else:  # out of reach (the recipes refuse it at the start; kept for safety): at λ
        opt.apply_prox(lam)
    projected = project_to_budget(model, cost, measure, target, opt.prox_scores(model, layers),
                                  None if scaled is None else scaled.tolist())
    return landing, projected
