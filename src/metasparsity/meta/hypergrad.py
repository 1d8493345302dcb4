"""λ's hypergradient by the implicit function theorem: the *lasting* effect of λ on a held-out
loss, as a check of the horizon of the meta-gradient (DESIGN §2.4; Lorraine et al. 2020).

At a group-lasso solution ``θ*`` of ``L_train(θ) + Σ_l λ_l Ω_l(θ)`` the non-zero groups (and every
ungrouped parameter) satisfy ``∇L_train(θ*) + Σ_l λ_l ∇Ω_l(θ*) = 0`` and the zero groups stay zero
for small changes of λ, so on that active set ``dθ*/dλ_l = −H⁻¹ ∇Ω_l`` with ``H`` the Hessian of
the penalised training loss, and::

    d L_val(θ*(λ)) / dλ_l = −⟨H⁻¹ ∇L_val(θ*), ∇Ω_l(θ*)⟩

``H⁻¹`` is approximated by the Neumann series ``α Σ_{j=0..J} (I − α H)^j`` (Hessian-vector
products only).  Its ``J = 0`` term, ``−α ⟨∇L_val, ∇Ω_l⟩``, is the one-step signal that
``meta_grad = lambda_path`` gives λ (``dφ_1/dλ = −α ∇Ω``); larger ``J`` sees further.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from metasparsity.sparsity import ConvGroups, group_norms, penalty

ParamLoss = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]


@dataclass
class Hypergradient:
    """``estimates[J]``: ``dL_val/dλ_l`` per layer (``[L]``, float64) from ``J`` Neumann terms;
    ``growth[J]``: ``‖(I − αH)^J v‖ / ‖v‖`` on the active set, ``v = ∇L_val``.  The series has
    converged where the growth is small; it grows where ``H`` has negative curvature (a
    non-convex loss away from a minimum) or ``α ≥ 2/‖H‖``, and the estimates then mean nothing."""

    estimates: dict[int, torch.Tensor]
    growth: dict[int, float]


def implicit_lambda_grad(params: Mapping[str, torch.Tensor], layers: Sequence[ConvGroups],
                         lam: float | torch.Tensor, train_loss: ParamLoss, val_loss: ParamLoss,
                         *, alpha: float, terms: Sequence[int]) -> Hypergradient:
    """``dL_val(θ*(λ))/dλ_l`` per layer (shape ``[L]``; sum it for a global λ), one estimate per
    number of Neumann terms ``J`` in ``terms``, with the series' growth (:class:`Hypergradient`).

    Args:
        params: the parameters at (or near) a solution, every one of which moves with λ (pass
            only the trainable ones, every grouped weight among them; the losses close over the
            rest).  Not modified.
        layers: the grouped conv weights (``channel_groups``); their zero groups are held at 0.
        lam: λ, a scalar or one value per layer (it enters ``H`` through ``λ·∇²Ω``).
        train_loss, val_loss: ``loss(params dict) -> scalar``, e.g. a batch each.
        alpha: the Neumann step; the series converges when ``H`` is positive definite on the
            active set and ``α < 2 / ‖H‖`` (``growth`` shows when it does not).
        terms: the ``J`` to report (``J = 0``: ``−α ⟨∇L_val, ∇Ω_l⟩``).
    """
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
    if not terms or min(terms) < 0:
        raise ValueError(f"terms must be non-negative numbers of Neumann terms, got {terms}")
    missing = [g.name for g in layers if g.name not in params]
    if missing:
        raise ValueError(f"params lacks the grouped weight(s) {', '.join(missing[:3])}"
                         + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                         + ": params must hold every weight in layers (the trainable "
                         "parameters, named as in model.named_parameters())")
    names = list(params)
    p = {n: t.detach().clone().requires_grad_() for n, t in params.items()}
    x = [p[n] for n in names]
    masks: dict[str, torch.Tensor] = {}
    dirs: list[tuple[int, torch.Tensor]] = []  # (layer, ∇Ω_l on its weight)
    for i, g in enumerate(layers):
        w = p[g.name].detach()
        norms = group_norms(w)
        alive = (norms > 0).to(w.dtype).reshape(1, -1, 1, 1)
        masks[g.name] = alive.expand_as(w)
        safe = torch.where(norms > 0, norms, torch.ones_like(norms))
        dirs.append((i, w * (g.group_weight / safe).reshape(1, -1, 1, 1)))

    def mask(n: str, t: torch.Tensor | None) -> torch.Tensor:
        t = torch.zeros_like(p[n]) if t is None else t.detach()
        return t * masks[n] if n in masks else t

    v = [mask(n, g) for n, g in zip(names, torch.autograd.grad(val_loss(p), x, allow_unused=True))]
    obj = train_loss(p) + penalty(p, layers, lam)
    grads = torch.autograd.grad(obj, x, create_graph=True, allow_unused=True)
    live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    index = {n: i for i, n in enumerate(names)}

    def hvp(vec: list[torch.Tensor]) -> list[torch.Tensor]:
        dot = sum((grads[i] * vec[i]).sum() for i in live)
        out = [torch.zeros_like(t) for t in vec]
        for i, h in zip(live, torch.autograd.grad(dot, [x[i] for i in live], retain_graph=True,
                                                   allow_unused=True)):
            out[i] = mask(names[i], h)
        return out

    def project(acc: list[torch.Tensor]) -> torch.Tensor:
        vals = torch.zeros(len(layers), dtype=torch.float64)
        for i, d in dirs:
            j = index.get(layers[i].name)
            if j is not None:
                vals[i] = float((acc[j] * d).sum())
        return -alpha * vals

    def norm(vec: list[torch.Tensor]) -> float:
        return float(sum(float((t.double() ** 2).sum()) for t in vec)) ** 0.5

    out = Hypergradient({}, {})
    v_norm = norm(v)
    cur, acc = v, [t.clone() for t in v]
    for j in range(max(terms) + 1):
        if j in terms:
            out.estimates[j] = project(acc)
            out.growth[j] = norm(cur) / v_norm if v_norm > 0 else 0.0
        if j == max(terms):
            break
        cur = [c - alpha * h for c, h in zip(cur, hvp(cur))]
        acc = [a + c for a, c in zip(acc, cur)]
    return out
