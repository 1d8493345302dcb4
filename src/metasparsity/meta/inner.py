"""MAML over task subsets with the sparsity penalty inside the inner loop (DESIGN §2.4).

For a task subset ``S`` with support batch ``(x_s, y_s)`` and query batch ``(x_q, y_q)``, starting
from the meta-parameters ``φ_0 = θ``::

    φ_{k+1} = φ_k − α · ( ∇_φ L_S(φ_k; x_s, y_s) + λ·∇Ω(φ_k) ),   k = 0 … K−1
    objective = Σ_S L_S(φ_K; x_q, y_q)  [+ Σ_S Σ_l λ_l Ω_l(φ_K)  when outer_penalty]

θ's gradient is that objective's; λ's is the same objective's (``lambda_objective = query``) or,
with λ-validation batches ``(x_v, y_v)`` (``heldout``), that of ``Σ_S L_S(φ_K; x_v, y_v)``: the
λ-validation loss is differentiated with respect to λ alone, so θ never learns from it.

Only the parameters ``S`` uses are adapted (the shared parameters and the heads of ``S``); other
heads pass through unchanged.  ``∇Ω`` is the analytic group-lasso gradient
``w_g θ_g / ||θ_g||`` (0 on zero groups, see :func:`metasparsity.sparsity.penalty_grad`).

Gradient modes (``mode``):

* ``second_order``: the whole unrolled loop is differentiated (``create_graph=True``): exact
  gradients for θ and λ.
* ``lambda_path``: the task-loss gradients ``∇_φ L_S`` and the penalty directions ``∇Ω(φ_k)`` are
  constants; λ stays in the graph, so ``φ_K = θ − α Σ_k g_k − α Σ_k λ·∇Ω(φ_k)`` with constant
  ``g_k, ∇Ω(φ_k)``.  θ gets the first-order MAML gradient ``∂L_q/∂φ_K``; λ gets
  ``−α Σ_k ∇Ω(φ_k)·∂L_q/∂φ_K``, which for ``K = 1`` is exactly the second-order value
  ``dL_q/dλ = −α ∇L_q(φ_1)·∇Ω(θ)`` (∇Ω(θ) does not depend on λ), and an approximation for ``K > 1``
  that drops the Hessian terms.  Keeping ``∇Ω`` constant also keeps the penalty's Hessian
  ``∝ 1/||θ_g||`` (huge for groups near zero) out of θ's gradient.
* ``first_order``: everything is a constant, λ included: plain first-order MAML.  λ gets no
  gradient, so :func:`meta_step` refuses this mode when λ is learnable.

:func:`inner_loop` returns ``φ_K`` differentiable in θ and λ in every mode (the reference
formulation).  :func:`meta_step` evaluates ``lambda_path`` and ``first_order`` in closed form
instead, since there ``dφ_K/dθ = I`` and ``dφ_K/dλ_l = −α Σ_k ∇Ω_l(φ_k)`` are known: the inner
loop builds no graph, the query loss is differentiated once with respect to ``φ_K`` (a leaf)::

    ∂/∂θ   = ∂L_q/∂φ_K
    ∂/∂λ_l = −α ⟨∂L_q/∂φ_K |layer l, Σ_k ∇Ω_l(φ_k)⟩   [+ Ω_l(φ_K) with outer_penalty]

(summed over layers for a global λ).  These are the values autograd gives through the reference
``φ_K`` (θ's bit for bit), for the cost of two plain forward/backward passes when ``K = 1``;
``tests/meta/test_closed_form.py`` pins the two formulations together.

BatchNorm: every functional forward pass (support and query) gets the model's buffers with each
BatchNorm's ``running_mean``, ``running_var`` and ``num_batches_tracked`` replaced by ``None``
(:func:`batch_stat_buffers`).  PyTorch's BatchNorm then normalises with the batch statistics and
tracks nothing, whatever ``model.training`` is, so the inner and query passes never touch the
running statistics; fine-tuning and evaluation keep their usual behaviour.

``loss_fn(outputs, targets, tasks) -> (total, {task: loss})`` is supplied by the caller (equal
weights, uncertainty weighting …); parameters it closes over (e.g. learned log-variances) are
passed as ``extra_params`` to :func:`meta_step`, which returns their gradients too.

:func:`meta_step` only computes gradients; :func:`outer_update` is the single place where
parameters change in place (Adam on θ and ρ, then the proximal step).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from metasparsity.meta.lam import LearnedLambda, broadcast_lambda
from metasparsity.sparsity import (
    ConvGroups,
    ProxAdam,
    group_norms,
    penalty_grad,
    penalty_per_layer,
    prox_,
)

MODES = ("second_order", "lambda_path", "first_order")

Targets = Mapping[str, torch.Tensor]
LossFn = Callable[[dict[str, torch.Tensor], Targets, Sequence[str]],
                  tuple[torch.Tensor, dict[str, torch.Tensor]]]
MetaBatch = tuple[Sequence[str], torch.Tensor, Targets, torch.Tensor, Targets]

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown meta-gradient mode {mode!r}; choose one of {', '.join(MODES)}")


def batch_stat_buffers(model: nn.Module) -> dict[str, torch.Tensor | None]:
    """The model's buffers for ``functional_call``, with BatchNorm running statistics set to None.

    With these, every BatchNorm layer normalises with the current batch's statistics and updates
    nothing, in train and eval mode alike; the model's own buffers are left untouched.
    """
    out: dict[str, torch.Tensor | None] = dict(model.named_buffers())
    for mname, module in model.named_modules():
        if isinstance(module, _BN_TYPES):
            prefix = f"{mname}." if mname else ""
            for b in _BN_STATS:
                if f"{prefix}{b}" in out:
                    out[f"{prefix}{b}"] = None
    return out


def adapted_names(model: nn.Module, tasks: Sequence[str]) -> list[str]:
    """Names of the trainable parameters that subset ``tasks`` uses: shared ones + its heads.

    Uses the model contract (``shared_parameters()``, ``task_parameters(task)``) when the model has
    it, else parameter names (``backbone.…`` and ``heads.<task>.…``).
    """
    names = {id(p): n for n, p in model.named_parameters()}
    if hasattr(model, "shared_parameters") and hasattr(model, "task_parameters"):
        ps = list(model.shared_parameters())
        for t in tasks:
            ps.extend(model.task_parameters(t))
        picked = [names[id(p)] for p in ps if p.requires_grad and id(p) in names]
    else:
        prefixes = ("backbone.",) + tuple(f"heads.{t}." for t in tasks)
        picked = [n for n, p in model.named_parameters()
                  if p.requires_grad and n.startswith(prefixes)]
    return list(dict.fromkeys(picked))


def _forward(model: nn.Module, params: Mapping[str, torch.Tensor],
             buffers: Mapping[str, torch.Tensor | None], x: torch.Tensor,
             tasks: Sequence[str]) -> dict[str, torch.Tensor]:
    return functional_call(model, (dict(params), dict(buffers)), (x,), {"tasks": list(tasks)})


def _support_grads(model: nn.Module, run: Mapping[str, torch.Tensor],
                   buffers: Mapping[str, torch.Tensor | None], x: torch.Tensor, y: Targets,
                   tasks: Sequence[str], loss_fn: LossFn, wrt: Sequence[torch.Tensor],
                   create_graph: bool, info: dict[str, list]) -> tuple[torch.Tensor | None, ...]:
    """``∇_wrt L_S(run; x, y)`` (None for unused tensors); logs the loss in ``info``."""
    out = _forward(model, run, buffers, x, tasks)
    total, per_task = loss_fn(out, y, tasks)
    grads = torch.autograd.grad(total, list(wrt), create_graph=create_graph, allow_unused=True)
    info["losses"].append(float(total.detach()))
    info["task_losses"].append({t: float(v.detach()) for t, v in per_task.items()})
    return grads


@torch.no_grad()
def _penalty_direction(weight: torch.Tensor,
                       group_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(∇Ω_l(W), Ω_l(W))`` of one layer as constants, from one pass over the group norms.

    The same arithmetic as :func:`metasparsity.sparsity.penalty_grad` and
    :func:`metasparsity.sparsity.penalty_per_layer`: ``W[:, c]·w_g/||W[:, c]||`` (a zero group is
    all zeros, so it stays zero without a mask) and ``w_g Σ_c ||W[:, c]||``.
    """
    norms = group_norms(weight)
    scale = group_weight / torch.where(norms > 0, norms, torch.ones_like(norms))
    return weight * scale.reshape(1, -1, 1, 1), group_weight * norms.sum()


def inner_loop(model: nn.Module, params: Mapping[str, torch.Tensor],
               buffers: Mapping[str, torch.Tensor | None] | None,
               lam_layers: torch.Tensor | None, layers: Sequence[ConvGroups],
               support_x: torch.Tensor, support_y: Targets, tasks: Sequence[str],
               loss_fn: LossFn, inner_lr: float, steps: int, mode: str = "second_order",
               adapt: Sequence[str] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """K plain-SGD steps on ``L_S(φ; support) + Σ_l λ_l Ω_l(φ)`` (pure: returns a new dict).

    Args:
        model: the module whose structure ``functional_call`` runs (its tensors are not used).
        params: ``{name: tensor}`` φ_0 (normally the model's parameters: the meta-parameters θ).
        buffers: buffers for ``functional_call``; None means :func:`batch_stat_buffers` (model).
        lam_layers: λ per grouped layer, ``[L]`` (differentiable), or None for no penalty.
        layers: the grouped conv weights (:func:`metasparsity.sparsity.channel_groups`).
        support_x: ``[B, C, H, W]``; support_y: ``{task: target}``; tasks: the subset ``S``.
        loss_fn: ``loss_fn(outputs, targets, tasks) -> (total, {task: loss})``.
        inner_lr: α.  steps: K (>= 0).  mode: see the module docstring.
        adapt: names of the parameters to adapt (default: :func:`adapted_names`).

    Returns:
        ``(φ_K, info)``; ``φ_K`` holds every entry of ``params`` (non-adapted ones unchanged);
        ``info`` has ``losses`` (support total per step, before the step) and ``task_losses``
        (``{task: float}`` per step).
    """
    _check_mode(mode)
    if steps < 0:
        raise ValueError(f"inner steps must be >= 0, got {steps}")
    buffers = batch_stat_buffers(model) if buffers is None else buffers
    adapt = adapted_names(model, tasks) if adapt is None else list(adapt)
    create_graph = mode == "second_order"
    if lam_layers is not None:
        lam_layers = broadcast_lambda(lam_layers, len(layers))
        if mode == "first_order":
            lam_layers = lam_layers.detach()
    layer_of = {g.name: (i, g) for i, g in enumerate(layers)}

    phi = dict(params)
    info: dict[str, list] = {"losses": [], "task_losses": []}
    for _ in range(steps):
        if create_graph:
            inputs = {n: phi[n] for n in adapt}
            run = phi
        else:
            inputs = {n: phi[n].detach().requires_grad_() for n in adapt}
            run = {**phi, **inputs}
        grads = _support_grads(model, run, buffers, support_x, support_y, tasks, loss_fn,
                               list(inputs.values()), create_graph, info)

        new = dict(phi)
        for name, g in zip(adapt, grads):
            if lam_layers is not None and name in layer_of:
                idx, grp = layer_of[name]
                w = phi[name] if create_graph else phi[name].detach()
                pen = lam_layers[idx] * penalty_grad(w, grp.group_weight)
                g = pen if g is None else g + pen
            if g is not None:
                new[name] = phi[name] - inner_lr * g
        phi = new
    return phi, info


def _constant_inner_loop(model: nn.Module, params: Mapping[str, torch.Tensor],
                         buffers: Mapping[str, torch.Tensor | None],
                         lam_layers: torch.Tensor | None, layers: Sequence[ConvGroups],
                         support_x: torch.Tensor, support_y: Targets, tasks: Sequence[str],
                         loss_fn: LossFn, inner_lr: float, steps: int, adapt: Sequence[str],
                         theta_directions: Mapping[str, torch.Tensor] | None = None,
                         ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """The inner loop of ``lambda_path`` / ``first_order`` without any autograd graph.

    Computes the same ``φ_K`` values as :func:`inner_loop` (same operations in the same order)
    with every step a constant, and ``D = {name: Σ_k ∇Ω(φ_k)}`` for the grouped weights it adapts
    (``dφ_K/dλ_l = −α·D`` on layer ``l``).  ``lam_layers`` (``[L]``) is used as a constant.
    ``theta_directions`` (optional, ``{name: ∇Ω(θ)}``) are reused for the first step, where
    ``φ_0 = θ`` for every subset.

    Returns ``(φ_K, D, info)``: ``φ_K`` holds the adapted names only (detached tensors), ``info``
    as in :func:`inner_loop`.
    """
    layer_of = ({g.name: (i, g) for i, g in enumerate(layers)} if lam_layers is not None
                else {})
    lam_c = None if lam_layers is None else lam_layers.detach()
    phi = {n: params[n].detach() for n in adapt}
    directions: dict[str, torch.Tensor] = {}
    info: dict[str, list] = {"losses": [], "task_losses": []}
    for k in range(steps):
        inputs = {n: phi[n].requires_grad_() for n in adapt}
        grads = _support_grads(model, {**params, **inputs}, buffers, support_x, support_y, tasks,
                               loss_fn, list(inputs.values()), False, info)
        with torch.no_grad():
            new = {}
            for name, g in zip(adapt, grads):
                w = phi[name].detach()
                if name in layer_of:
                    idx, grp = layer_of[name]
                    if k == 0 and theta_directions is not None and name in theta_directions:
                        d = theta_directions[name]
                    else:
                        d = _penalty_direction(w, grp.group_weight)[0]
                    directions[name] = d if k == 0 else directions[name] + d
                    pen = lam_c[idx] * d
                    g = pen if g is None else g + pen
                new[name] = w if g is None else w - inner_lr * g
            phi = new
    return {n: t.detach() for n, t in phi.items()}, directions, info


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


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if b is None:
        return a
    return b if a is None else a + b


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
        batches: one ``(subset, support_x, support_y, query_x, query_y)`` per meta-task.
        loss_fn: ``loss_fn(outputs, targets, tasks) -> (total, {task: loss})``.
        inner_lr: α; inner_steps: K; mode: ``second_order``, ``lambda_path`` or ``first_order``.
        outer_penalty: add ``λ·Ω(φ_K)`` to each subset's query objective.
        extra_params: leaf tensors that ``loss_fn`` closes over (e.g. uncertainty weights).
        lambda_batches: one ``(x, y)`` λ-validation batch per entry of ``batches``
            (``meta.lambda_objective = heldout``, DESIGN §2.4): λ's gradient is then that of
            ``Σ_S L_S(φ_K(θ, λ); λ-validation batch)`` and θ's gradient is unchanged (the
            λ-validation loss is differentiated with respect to λ only).  None: λ's gradient
            comes from the query objective.

    Each subset is differentiated on its own (its graph is freed before the next), and the
    gradients are summed.  The model's parameters, ``.grad`` fields and BatchNorm running
    statistics are left untouched.
    """
    _check_mode(mode)
    if mode == "first_order" and lam.enabled and lam.learnable:
        raise ValueError(
            "meta_grad='first_order' gives λ no gradient (first-order MAML drops dφ_K/dλ), so λ "
            "cannot be learned with it; use meta_grad='lambda_path' or 'second_order', or keep λ "
            "fixed (learn_lambda=false)")
    if not batches:
        raise ValueError("meta_step needs at least one (subset, support, query) batch")
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
            grad_impl = implicit if per_layer else implicit.sum().reshape(1)
            grad_lam = grad_expl + grad_impl
        else:
            grad_lam = grads[-1] if grads[-1] is not None else torch.zeros_like(lam_leaf)
            grad_impl = grad_lam - grad_expl
        rho_grad_out = grad_lam.detach().to(dtype=lam.rho.dtype, device=lam.rho.device)
        with torch.enable_grad():
            rho = lam.rho.detach().requires_grad_()
            lo, hi = lam.log_bounds
            (grad_rho,) = torch.autograd.grad(torch.exp(torch.clamp(rho, lo, hi)), rho,
                                              grad_outputs=rho_grad_out)

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


def outer_update(model: nn.Module, lam: LearnedLambda, result: MetaStepResult,
                 opt_theta: torch.optim.Optimizer, opt_rho: torch.optim.Optimizer | None,
                 prox_step: float, layers: Sequence[ConvGroups],
                 extra_params: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
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

    ``.grad`` fields are set to None afterwards.  Returns ``{"lam": λ used by the prox,
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
    sparse = lam.enabled and bool(layers)
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
