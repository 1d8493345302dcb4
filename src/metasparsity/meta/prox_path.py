"""λ's gradient through the outer step's proximal operator (``meta.lambda_through_prox``,
DESIGN §2.4): ``∂L_val(θ_{t+1})/∂λ`` with ``θ_{t+1} = prox^D(z; η·λ·w)``.

The outer step of meta-training is an Adam step ``z = θ_t − η·m̂/D`` (which does not depend on
λ) followed by the group prox at threshold ``τ_g = η·λ_l·w_g`` (:mod:`~metasparsity.sparsity
.proxadam`).  On a group the prox keeps, ``θ_g = z_g ⊙ r/(r + a)`` with ``a_i = τ/d_i`` and
``r = ‖θ_g‖ > 0`` the root of ``F(r, τ) = Σ_i z_i²/(r + a_i)² − 1 = 0``, so by the implicit
function of that scalar equation::

    dr/dτ    = −F_τ/F_r = −(Σ_i z_i²/(d_i (r + a_i)³)) / (Σ_i z_i²/(r + a_i)³)
    dθ_i/dτ  = z_i · (a_i·dr/dτ − r/d_i) / (r + a_i)²

(``d = 1`` is the Euclidean block soft-threshold, where this is ``−z_g/‖z_g‖``).  A group the prox
zeroes stays zero for a small change of λ: its derivative is 0.  Then, per grouped layer,
``dL_val/dλ_l = η·w_g·Σ_{g in l} ⟨∇_{θ_g} L_val(θ_{t+1}), dθ_g/dτ⟩`` (summed over the layers for
a global λ).  ``L_val`` is ``Σ_S L_S(θ_{t+1}; λ-validation batch of S)``, the held-out objective
without the inner adaptation, on the same λ-validation batches as the step's meta-gradient.

A one-step look-ahead: the issue's probe found it drives λ up on its own (86–97 % group sparsity
while the validation loss rose); here it is added to the held-out gradient through the
adaptation, which it does not replace.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

from metasparsity.meta.inner import LossFn, Targets, _forward, batch_stat_buffers
from metasparsity.meta.lam import broadcast_lambda
from metasparsity.meta.meta_step import check_subset
from metasparsity.sparsity import ConvGroups, ProxAdam

ProxPath = Callable[[Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor]


def prox_tau_derivative(z: torch.Tensor, y: torch.Tensor, d: torch.Tensor,
                        tau: float) -> torch.Tensor:
    """``dy/dτ`` of ``y = metric_prox(z, d, τ)`` for every input-channel group of a conv weight.

    ``z``: the weight before the prox; ``y``: after it (its group norms are the roots ``r``);
    ``d``: the metric (``> 0``; ones for the Euclidean prox), all ``[O, I, kh, kw]``; ``tau``:
    the layer's threshold ``η·λ_l·w_g`` (``> 0``).  Zero groups get 0.  Shapes and ``τ`` are
    checked (``ValueError``); the sign of ``d`` is not (it would cost a reduction per layer).
    """
    if z.dim() < 2 or y.shape != z.shape or d.shape != z.shape:
        raise ValueError(f"prox_tau_derivative: z, y and d must be one weight's shape "
                         f"[O, I, ...], got {tuple(z.shape)}, {tuple(y.shape)}, {tuple(d.shape)}")
    if not tau > 0:
        raise ValueError(f"prox_tau_derivative: tau (the threshold η·λ_l·w_g) must be > 0, "
                         f"got {tau}")
    o, i = z.shape[:2]
    zt = z.transpose(0, 1).reshape(i, -1)
    dt = d.transpose(0, 1).reshape(i, -1)
    r = y.transpose(0, 1).reshape(i, -1).norm(dim=1, keepdim=True)
    kept = r > 0
    a = tau / dt
    u = (r + a).reciprocal()
    z2u3 = zt.square() * u.pow(3)
    den = z2u3.sum(1, keepdim=True)
    dr = -(z2u3 / dt).sum(1, keepdim=True) / torch.where(kept, den, torch.ones_like(den))
    dy = zt * (a * dr - r / dt) * u.square()
    dy = torch.where(kept, dy, torch.zeros_like(dy))
    return dy.reshape(i, o, *z.shape[2:]).transpose(0, 1)


def prox_lambda_grad(opt: ProxAdam, model: nn.Module, layers: Sequence[ConvGroups],
                     before: Mapping[str, torch.Tensor],
                     val_grads: Mapping[str, torch.Tensor | None],
                     lam: torch.Tensor) -> torch.Tensor:
    """``dL_val(θ_{t+1})/dλ_l`` through ``opt``'s last prox, one entry per grouped layer (``[L]``,
    float64), for the prox that :meth:`ProxAdam.apply_prox` took at ``lam`` (``[1]`` or ``[L]``).

    ``before``: each grouped weight between the Adam step and the prox (``z``); the model holds
    ``θ_{t+1}``; ``val_grads``: ``∇L_val`` at ``θ_{t+1}`` for the grouped weights (None: not
    reached).  A layer the prox left alone (``τ = 0``, or no Adam step yet in Adam's metric)
    gets 0, as does every layer at ``λ_l = 0``.
    """
    group_of = {id(p): grp for grp in opt.param_groups for p in grp["params"]}
    params = dict(model.named_parameters())
    lam_l = broadcast_lambda(lam.detach().double(), len(layers)).tolist()
    parts: list[torch.Tensor] = []
    euclid = opt.prox_metric == "euclidean"
    for g in layers:
        w = params[g.name]
        gv = val_grads.get(g.name)
        grp = group_of.get(id(w))
        zero = torch.zeros((), dtype=torch.float64, device=w.device)
        if gv is None or grp is None or "prox_layer" not in grp:
            parts.append(zero)
            continue
        dtau = grp["lr"] * grp["group_weight"]  # dτ/dλ_l
        tau = dtau * lam_l[grp["prox_layer"]]
        if not tau > 0 or not (euclid or opt.state.get(w)):
            parts.append(zero)
            continue
        d = torch.ones_like(w) if euclid else opt.denominator(w, grp)
        dy = prox_tau_derivative(before[g.name], w.detach(), d, tau)
        parts.append((gv.detach() * dy).sum().double() * dtau)
    return torch.stack(parts).cpu() if parts else torch.zeros(0, dtype=torch.float64)


def heldout_grads(model: nn.Module, layers: Sequence[ConvGroups],
                  batches: Sequence[tuple[Sequence[str], tuple[torch.Tensor, Targets]]],
                  loss_fn: LossFn) -> dict[str, torch.Tensor | None]:
    """``∇ Σ_S L_S(θ; λ-validation batch of S)`` for the grouped weights at the model's current
    parameters (batch statistics, as in the inner loop; nothing in the model is touched).
    ``batches``: ``(subset, (x, y))`` per meta-batch entry."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    leaves = {g.name: params[g.name].clone().requires_grad_() for g in layers}
    run = {**params, **leaves}
    buffers = batch_stat_buffers(model)
    with torch.enable_grad():
        total = sum(loss_fn(_forward(model, run, buffers, x, subset), y, subset)[0]
                    for subset, (x, y) in batches)
        grads = torch.autograd.grad(total, list(leaves.values()), allow_unused=True)
    return dict(zip(leaves, grads))


def make_prox_path(model: nn.Module, layers: Sequence[ConvGroups], opt: ProxAdam,
                   batches: Sequence[tuple[Sequence[str], tuple[torch.Tensor, Targets]]],
                   loss_fn: LossFn) -> ProxPath:
    """The ``prox_path`` of :func:`~metasparsity.meta.outer_update` for one outer step:
    ``(before, λ) -> dL_val/dλ`` per layer (``[L]``, :func:`prox_lambda_grad`), ``L_val`` over
    this process's λ-validation ``batches`` (``(subset, (x, y))`` each, at least one), summed
    over processes (every process holds the same ``θ_{t+1}``).  ``opt`` must be the outer step's
    :class:`ProxAdam`; the arguments are checked here, not at the first call."""
    if not isinstance(opt, ProxAdam):
        raise TypeError(f"make_prox_path: opt must be the outer step's ProxAdam (its prox is "
                        f"differentiated), got {type(opt).__name__}")
    batches = list(batches)
    if not batches:
        raise ValueError("make_prox_path needs at least one (subset, (x, y)) λ-validation batch")
    for i, entry in enumerate(batches):
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2
                and isinstance(entry[1], (tuple, list)) and len(entry[1]) == 2):
            raise TypeError(f"make_prox_path: batches[{i}] must be (subset, (x, y)), got "
                            f"{type(entry).__name__} of length "
                            f"{len(entry) if isinstance(entry, (tuple, list)) else '?'}")
        check_subset(entry[0], f"make_prox_path: batches[{i}]")

    def prox_path(before: Mapping[str, torch.Tensor], lam: torch.Tensor) -> torch.Tensor:
        grads = heldout_grads(model, layers, batches, loss_fn)
        out = prox_lambda_grad(opt, model, layers, before, grads, lam)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dev = next(model.parameters()).device
            buf = out.to(dev)
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            out = buf.cpu()
        return out

    return prox_path
