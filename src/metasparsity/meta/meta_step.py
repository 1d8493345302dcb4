"""One meta-step: the meta-gradients of θ and λ over a meta-batch of task subsets, in
:class:`MetaStepResult` (nothing is updated here; :mod:`metasparsity.meta.outer` applies them,
:mod:`metasparsity.meta.meta_batch` sums them over processes).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from metasparsity.meta.inner import (
    LossFn,
    MetaBatch,
    Targets,
    _check_mode,
    _constant_inner_loop,
    _forward,
    _penalty_direction,
    adapted_names,
    batch_stat_buffers,
    inner_loop,
)
from metasparsity.meta.lam import LearnedLambda, broadcast_lambda
from metasparsity.sparsity import ConvGroups, penalty_per_layer


@dataclass
class MetaStepResult:
    """Gradients and logs of one outer step; nothing has been updated yet.

    Gradients are of the outer objective ``Σ_S L_S(φ_K; query) [+ λ·Ω(φ_K)]``:
    ``grads_theta`` ``{param name: tensor or None}`` (None: no subset reached the parameter),
    ``grads_extra`` for ``extra_params``; λ's gradient ``d/dλ`` (shape of λ: ``[1]`` or ``[L]``)
    as ``grad_lambda = grad_lambda_explicit + grad_lambda_implicit``, where the explicit part is
    ``Σ_S Ω(φ_K^S)`` (per layer for a per-layer λ; zero without ``outer_penalty``) and the
    implicit part flows through the adaptation; ``grad_rho = grad_lambda · dλ/dρ``.  The λ
    gradients are None when λ is disabled or the mode is ``first_order``.
    """

    mode: str
    subsets: list[tuple[str, ...]]
    loss: float
    query_total: float
    query_loss: dict[str, float]
    inner_loss: dict[str, float]
    penalty: float
    lam: float | list[float]
    grads_theta: dict[str, torch.Tensor | None]
    grads_extra: dict[str, torch.Tensor | None] = field(default_factory=dict)
    grad_lambda: torch.Tensor | None = None
    grad_lambda_explicit: torch.Tensor | None = None
    grad_lambda_implicit: torch.Tensor | None = None
    grad_rho: torch.Tensor | None = None
    lambda_val_loss: float | None = None

    def log_dict(self) -> dict[str, Any]:
        """Plain floats for a metrics log."""

        def f(t: torch.Tensor | None):
            if t is None:
                return None
            v = t.detach().cpu().reshape(-1).tolist()
            return v[0] if len(v) == 1 else v

        return {
            "meta_loss": self.loss, "query_total": self.query_total,
            **{f"query/{t}": v for t, v in self.query_loss.items()},
            **{f"inner/{t}": v for t, v in self.inner_loss.items()},
            "penalty": self.penalty, "lam": self.lam,
            "grad_lambda": f(self.grad_lambda),
            "grad_lambda_explicit": f(self.grad_lambda_explicit),
            "grad_lambda_implicit": f(self.grad_lambda_implicit),
            "lambda_val_loss": self.lambda_val_loss,
        }


def lambda_gradient(mode: str, explicit: torch.Tensor, *, implicit: torch.Tensor | None = None,
                    total: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dL/dλ, its implicit part)`` from the part a mode computes: ``second_order``
    differentiates the total (implicit = total − explicit); the closed forms build the implicit
    part (total = explicit + implicit).  ``explicit``: ``Σ_S Ω(φ_K^S)`` (zero without
    ``outer_penalty``)."""
    if mode == "second_order":
        return total, total - explicit
    return explicit + implicit, implicit


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if b is None:
        return a
    return b if a is None else a + b


def check_subset(subset: object, where: str) -> None:
    """Refuse a subset that is not a non-empty tuple (or list) of task names: a bare string
    (``"depth"``, whose letters would be taken for tasks) or an empty one."""
    if (isinstance(subset, str) or not isinstance(subset, (tuple, list)) or not subset
            or not all(isinstance(t, str) for t in subset)):
        raise TypeError(f"{where}: the task subset must be a non-empty tuple of task names "
                        f"(e.g. ('depth',)), got {subset!r}")


def _check_meta_step_args(lam: object, batches: Sequence[MetaBatch], loss_fn: LossFn,
                          inner_lr: float, inner_steps: int) -> None:
    """:func:`meta_step`'s argument checks (types, signs, each entry's shape and subset)."""
    if not isinstance(lam, LearnedLambda):
        raise TypeError(f"lam must be a LearnedLambda (LearnedLambda(value, learnable=False) for a "
                        f"fixed λ, LearnedLambda.disabled() for none), got {lam!r}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {loss_fn!r}")
    if not (isinstance(inner_lr, numbers.Real) and math.isfinite(inner_lr) and inner_lr > 0):
        raise ValueError(f"inner_lr (α) must be a finite number > 0, got {inner_lr!r}")
    if not isinstance(inner_steps, numbers.Integral) or isinstance(inner_steps, bool) \
            or inner_steps < 0:
        raise ValueError(f"inner_steps (K) must be an int >= 0, got {inner_steps!r}")
    for i, entry in enumerate(batches):
        if not isinstance(entry, (tuple, list)) or len(entry) != 5:
            raise TypeError(f"batches[{i}] must be (subset, support_x, support_y, query_x, "
                            f"query_y) and batches a list of such entries, got "
                            f"{type(entry).__name__} {_brief(entry)}")
        check_subset(entry[0], f"batches[{i}]")


def _brief(value: object) -> str:
    return (f"of length {len(value)}" if isinstance(value, (tuple, list))
            else repr(value)[:60])


def _checked_loss_fn(loss_fn: LossFn) -> LossFn:
    """``loss_fn``, raising a clear error when it does not return ``(total, {task: loss})``."""

    def checked(outputs, targets, tasks):
        out = loss_fn(outputs, targets, tasks)
        if not (isinstance(out, (tuple, list)) and len(out) == 2 and isinstance(out[1], Mapping)):
            raise TypeError("loss_fn(outputs, targets, tasks) must return (total, {task: loss}), "
                            f"got {type(out).__name__} {_brief(out)}")
        return out

    return checked


def meta_step(model: nn.Module, lam: LearnedLambda, layers: Sequence[ConvGroups],
              batches: Sequence[MetaBatch], loss_fn: LossFn, inner_lr: float, inner_steps: int,
              mode: str = "lambda_path", outer_penalty: bool = False,
              extra_params: Mapping[str, torch.Tensor] | None = None,
              lambda_batches: Sequence[tuple[torch.Tensor, Targets]] | None = None,
              ) -> MetaStepResult:
    """Meta-gradients of ``Σ_S L_S(φ_K(θ, λ); query) [+ Σ_S λ·Ω(φ_K)]`` (does not step).

    Args:
        model: the multi-task model (θ = its trainable parameters).
        lam: the (learned) λ; disabled means no penalty.
        layers: grouped conv weights (``channel_groups(model)``), the index of per-layer λ.
        batches: one ``(subset, support_x, support_y, query_x, query_y)`` per meta-task
            (``subset``: a non-empty tuple of task names).
        loss_fn: ``loss_fn(outputs, targets, tasks) -> (total, {task: loss})``.
        inner_lr: α (finite, > 0); inner_steps: K (an int >= 0; 0: no adaptation); mode:
            ``second_order``, ``lambda_path`` or ``first_order``.
        outer_penalty: add ``λ·Ω(φ_K)`` to each subset's query objective.
        extra_params: leaf tensors that ``loss_fn`` closes over (e.g. uncertainty weights).
        lambda_batches: one ``(x, y)`` λ-validation batch per entry of ``batches``
            (``meta.lambda_objective = heldout``, DESIGN §2.4): λ's gradient is then that of
            ``Σ_S L_S(φ_K(θ, λ); λ-validation batch)`` and θ's gradient is unchanged (the
            λ-validation loss is differentiated with respect to λ only).  None: λ's gradient
            comes from the query objective.

    θ's gradient is that of the query objective; λ's is the same objective's or, with
    ``lambda_batches``, that of the λ-validation loss at the same ``φ_K`` (λ alone is
    differentiated, so θ never learns from it).  ``second_order`` differentiates through
    :func:`~metasparsity.meta.inner.inner_loop`.  ``lambda_path`` and ``first_order`` use the
    closed form instead, since there ``dφ_K/dθ = I`` and ``dφ_K/dλ_l = −α Σ_k ∇Ω_l(φ_k)``: the
    inner loop builds no graph and the query loss is differentiated once, at ``φ_K`` (a leaf)::

        ∂/∂θ   = ∂L_q/∂φ_K
        ∂/∂λ_l = −α ⟨∂L_q/∂φ_K |layer l, Σ_k ∇Ω_l(φ_k)⟩   [+ Ω_l(φ_K) with outer_penalty]

    (summed over layers for a global λ): the values autograd gives through the reference
    ``φ_K`` (θ's bit for bit; ``tests/meta/test_closed_form.py``).

    Each subset is differentiated on its own (its graph is freed before the next), and the
    gradients are summed.  The model's parameters, ``.grad`` fields and BatchNorm running
    statistics are left untouched.
    """
    _check_mode(mode)
    batches = list(batches)  # an iterator is read once, by the checks below
    if not batches:
        raise ValueError("meta_step needs at least one (subset, support, query) batch")
    _check_meta_step_args(lam, batches, loss_fn, inner_lr, inner_steps)
    loss_fn = _checked_loss_fn(loss_fn)
    if mode == "first_order" and lam.enabled and lam.learnable:
        raise ValueError(
            "meta_grad='first_order' gives λ no gradient (first-order MAML drops dφ_K/dλ), so λ "
            "cannot be learned with it; use meta_grad='lambda_path' or 'second_order', or keep λ "
            "fixed (learn_lambda=false)")
    if lambda_batches is not None and len(lambda_batches) != len(batches):
        raise ValueError(f"meta_step: {len(lambda_batches)} λ-validation batches for "
                         f"{len(batches)} meta-batch entries")
    extra = dict(extra_params or {})
    params = {n: p for n, p in model.named_parameters()}
    theta_names = [n for n, p in params.items() if p.requires_grad]
    buffers = batch_stat_buffers(model)
    ref = next(iter(params.values()))
    num_layers = len(layers)

    use_pen = lam.enabled and num_layers > 0
    track_lam = use_pen and mode != "first_order"
    closed_form = mode != "second_order"
    lam_leaf = lam_layers = None
    if use_pen:
        lam_leaf = lam().detach().to(dtype=ref.dtype, device=ref.device)
        lam_leaf.requires_grad_(track_lam and not closed_form)
        lam_layers = broadcast_lambda(lam_leaf, num_layers)

    # ∇Ω(θ) and Ω(θ): the first inner step's penalty direction in the closed form (φ_0 = θ for
    # every subset) and the logged penalty, from one pass over the group norms.
    theta_dirs: dict[str, torch.Tensor] | None = None
    omega_theta: torch.Tensor | None = None
    if closed_form and use_pen and inner_steps > 0:
        pairs = [_penalty_direction(params[g.name], g.group_weight) for g in layers]
        theta_dirs = {g.name: d for g, (d, _) in zip(layers, pairs)}
        omega_theta = torch.stack([o for _, o in pairs])

    inputs = [params[n] for n in theta_names] + list(extra.values())
    heldout = lambda_batches is not None and track_lam
    if track_lam and not closed_form:
        inputs.append(lam_leaf)
    val_total = 0.0

    grads: list[torch.Tensor | None] = [None] * len(inputs)
    explicit = torch.zeros(num_layers, dtype=ref.dtype, device=ref.device)
    implicit = torch.zeros(num_layers, dtype=ref.dtype, device=ref.device)
    loss_total = query_total = 0.0
    q_sum: dict[str, float] = {}
    s_sum: dict[str, float] = {}
    count: dict[str, int] = {}
    subsets = []
    for i, (subset, sx, sy, qx, qy) in enumerate(batches):
        subset = tuple(subset)
        subsets.append(subset)
        if closed_form:
            adapt = adapted_names(model, subset)
            phi_k, directions, info = _constant_inner_loop(
                model, params, buffers, lam_layers, layers, sx, sy, subset, loss_fn, inner_lr,
                inner_steps, adapt, theta_dirs)
            leaves = {n: t.requires_grad_() for n, t in phi_k.items()}
            phi = {**params, **leaves}
            wrt = [leaves.get(n, params[n]) for n in theta_names] + list(extra.values())
        else:
            phi, info = inner_loop(model, params, buffers, lam_layers, layers, sx, sy, subset,
                                   loss_fn, inner_lr, inner_steps, mode)
            wrt = inputs
        out = _forward(model, phi, buffers, qx, subset)
        q, q_tasks = loss_fn(out, qy, subset)
        obj = q
        if outer_penalty and use_pen:
            omega = penalty_per_layer(phi, layers)
            obj = obj + (lam_layers * omega).sum()
            if not heldout:  # λ's held-out objective has no Ω term
                explicit = explicit + omega.detach()
        if heldout and not closed_form:
            # θ from the query objective; λ (the last input) from the λ-validation loss only
            g = torch.autograd.grad(obj, wrt[:-1], allow_unused=True, retain_graph=True)
            v = _heldout_loss(model, phi, buffers, lambda_batches[i], subset, loss_fn)
            g = (*g, torch.autograd.grad(v, lam_leaf, allow_unused=True)[0])
            val_total += float(v.detach())
        else:
            g = torch.autograd.grad(obj, wrt, allow_unused=True)
        grads = [_add(a, b) for a, b in zip(grads, g)]
        if closed_form and track_lam:
            # dL/dλ_l through φ_K = −α ⟨∂L/∂φ_K, Σ_k ∇Ω(φ_k)⟩ on layer l, L the query loss or,
            # held out, the λ-validation loss at the same φ_K (differentiated for λ alone)
            by_name = dict(zip(theta_names, g))
            if heldout:
                names = [n for n in directions if n in leaves]
                v = _heldout_loss(model, phi, buffers, lambda_batches[i], subset, loss_fn)
                by_name = dict(zip(names, torch.autograd.grad(
                    v, [leaves[n] for n in names], allow_unused=True)))
                val_total += float(v.detach())
            dots = [torch.zeros((), dtype=ref.dtype, device=ref.device)
                    if by_name.get(grp.name) is None or grp.name not in directions
                    else (by_name[grp.name] * directions[grp.name]).sum() for grp in layers]
            implicit = implicit - inner_lr * torch.stack(dots)

        loss_total += float(obj.detach())
        query_total += float(q.detach())
        for t in subset:
            count[t] = count.get(t, 0) + 1
            q_sum[t] = q_sum.get(t, 0.0) + float(q_tasks[t].detach())
            if info["task_losses"]:
                s_sum[t] = s_sum.get(t, 0.0) + info["task_losses"][0][t]

    n_theta = len(theta_names)
    grads_theta = dict(zip(theta_names, grads[:n_theta]))
    grads_extra = dict(zip(extra, grads[n_theta:n_theta + len(extra)]))
    grad_lam = grad_expl = grad_impl = grad_rho = None
    if track_lam:
        per_layer = lam_leaf.numel() != 1
        grad_expl = explicit if per_layer else explicit.sum().reshape(1)
        if closed_form:
            grad_lam, grad_impl = lambda_gradient(
                mode, grad_expl, implicit=implicit if per_layer else implicit.sum().reshape(1))
        else:
            grad_lam, grad_impl = lambda_gradient(
                mode, grad_expl,
                total=grads[-1] if grads[-1] is not None else torch.zeros_like(lam_leaf))
        grad_rho = lam.rho_grad(grad_lam)

    pen_theta = 0.0
    if omega_theta is not None:
        pen_theta = float(omega_theta.sum())
    elif num_layers:
        with torch.no_grad():
            pen_theta = float(penalty_per_layer(params, layers).sum())
    return MetaStepResult(
        mode=mode, subsets=subsets, loss=loss_total, query_total=query_total,
        query_loss={t: q_sum[t] / count[t] for t in q_sum},
        inner_loss={t: s_sum[t] / count[t] for t in s_sum},
        penalty=pen_theta, lam=lam.value(), grads_theta=grads_theta, grads_extra=grads_extra,
        grad_lambda=grad_lam, grad_lambda_explicit=grad_expl, grad_lambda_implicit=grad_impl,
        grad_rho=grad_rho, lambda_val_loss=val_total if heldout else None)


def _heldout_loss(model: nn.Module, phi: Mapping[str, torch.Tensor],
                  buffers: Mapping[str, torch.Tensor | None],
                  batch: tuple[torch.Tensor, Targets], subset: Sequence[str],
                  loss_fn: LossFn) -> torch.Tensor:
    """``L_S(φ_K; λ-validation batch)``: the objective of λ under ``lambda_objective=heldout``."""
    x, y = batch
    return loss_fn(_forward(model, phi, buffers, x, subset), y, subset)[0]
