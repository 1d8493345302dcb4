"""The inner loop of MAML with the sparsity penalty inside it (DESIGN §2.4): K functional SGD
steps of one task subset on its support batch, in the three gradient modes (:data:`MODES`).
Pure functions of parameter dicts (``torch.func.functional_call``); nothing changes in place.

BatchNorm: every functional pass gets :func:`batch_stat_buffers` (running statistics set to
None), so it normalises with the batch statistics and never touches the running statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call

from metasparsity.meta.lam import broadcast_lambda
from metasparsity.sparsity import ConvGroups, group_norms, penalty_grad

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
    """K plain-SGD steps on ``L_S(φ; support) + Σ_l λ_l Ω_l(φ)`` (pure: returns a new dict)::

        φ_{k+1} = φ_k − α · ( ∇_φ L_S(φ_k; x_s, y_s) + λ·∇Ω(φ_k) ),   k = 0 … K−1,  φ_0 = θ

    Only the parameters the subset uses are adapted (shared ones and its heads).  ``∇Ω`` is the
    analytic group-lasso gradient ``w_g θ_g / ||θ_g||`` (0 on zero groups,
    :func:`metasparsity.sparsity.penalty_grad`).  Modes (how ``φ_K`` depends on θ and λ):

    * ``second_order``: the whole unrolled loop is differentiable (``create_graph=True``).
    * ``lambda_path``: the task-loss gradients and the directions ``∇Ω(φ_k)`` are constants and
      λ stays in the graph: ``φ_K = θ − α Σ_k g_k − α Σ_k λ·∇Ω(φ_k)``.  For ``K = 1`` λ's
      gradient is the exact second-order one (∇Ω(θ) does not depend on λ); for ``K > 1`` the
      Hessian terms are dropped, which also keeps the penalty's Hessian ``∝ 1/||θ_g||`` out.
    * ``first_order``: every step is a constant, λ included (plain first-order MAML).

    Args:
        model: the module whose structure ``functional_call`` runs (its tensors are not used).
        params: ``{name: tensor}`` φ_0 (normally the model's parameters: the meta-parameters θ).
        buffers: buffers for ``functional_call``; None means :func:`batch_stat_buffers` (model).
        lam_layers: λ per grouped layer, ``[L]`` (differentiable), or None for no penalty.
        layers: the grouped conv weights (:func:`metasparsity.sparsity.channel_groups`).
        support_x: ``[B, C, H, W]``; support_y: ``{task: target}``; tasks: the subset ``S``.
        loss_fn: ``loss_fn(outputs, targets, tasks) -> (total, {task: loss})``.
        inner_lr: α.  steps: K (>= 0).  mode: one of :data:`MODES` (above).
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
