"""Channel groups of the shared backbone: group-lasso penalty, proximal step, sparsity statistics.

Groups (DESIGN §2.2).  Every 4-D convolution weight ``W ∈ R^{O×I×kh×kw}`` of ``model.backbone``
(parameter names starting with ``backbone.``) contributes ``I`` groups, one per **input channel**:
``θ_g = W[:, c, :, :]``.  A zero group means the conv no longer reads feature map ``c``.  BN
parameters, biases and heads are never grouped.  For a grouped convolution (``groups = G > 1``)
the weight's dim 1 has ``I/G`` entries and group ``c`` is still ``W[:, c]``: it covers input channel
``c`` of every one of the ``G`` convolution groups (channels ``c, c + I/G, …``); the same rule is used
everywhere, so counts and the penalty stay consistent.

Maths, with group weight ``w_g = sqrt(O·kh·kw)`` (square root of the group size)::

    Ω(θ)        = Σ_g w_g · ||θ_g||_2
    ∂Ω/∂θ_g     = w_g · θ_g / ||θ_g||_2           (0, a valid subgradient, when θ_g = 0)
    prox_t(θ_g) = θ_g · max(0, 1 − t / ||θ_g||_2)  with t = η·λ·w_g   (block soft-thresholding)

``prox_t`` is the minimiser of ``0.5·||x − θ_g||² + t·||x||_2``; groups with ``||θ_g|| ≤ t`` become
exact zeros.

The functions taking tensors or parameter dicts (:func:`group_norms`, :func:`penalty`,
:func:`penalty_per_layer`, :func:`penalty_grad`, :func:`prox`, :func:`prox_params`) are pure and
differentiable (usable inside ``torch.func.functional_call`` and under ``create_graph=True``: no
NaN at zero groups, to any order).  The functions taking a model (:func:`group_penalty`,
:func:`prox_`, :func:`sparsity_stats`, masks) are thin wrappers for training loops; only the
``*_`` ones write in place, under ``torch.no_grad``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

BACKBONE_PREFIX = "backbone."

LamLike = float | Sequence[float] | torch.Tensor


@dataclass(frozen=True)
class ConvGroups:
    """The channel groups of one backbone convolution weight.

    Attributes:
        name: full parameter name, e.g. ``"backbone.layer1.0.conv1.weight"``.
        module_name: the conv module's name, e.g. ``"backbone.layer1.0.conv1"``.
        shape: the weight's shape ``(O, I, kh, kw)``.
        num_groups: ``I`` (one group per input channel).
        group_size: ``O·kh·kw`` entries per group.
        group_weight: ``w_g = sqrt(O·kh·kw)``.
    """

    name: str
    module_name: str
    shape: tuple[int, ...]
    num_groups: int
    group_size: int
    group_weight: float

    @property
    def num_params(self) -> int:
        return self.num_groups * self.group_size


def channel_groups(model: nn.Module) -> list[ConvGroups]:
    """All grouped conv weights of ``model.backbone``, in ``named_modules`` order.

    Only ``nn.Conv2d`` modules (and subclasses) with a 4-D weight count; transposed convs are not
    ``nn.Conv2d`` and are skipped.  The order is the layer index used by per-layer λ.
    """
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise ValueError(
            f"{type(model).__name__} has no 'backbone' module; channel groups live in the shared "
            "backbone (parameters named 'backbone.…')")
    out: list[ConvGroups] = []
    for mname, module in backbone.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        w = module.weight
        if w is None or w.ndim != 4:
            continue
        o, i, kh, kw = w.shape
        size = o * kh * kw
        full = BACKBONE_PREFIX + mname if mname else BACKBONE_PREFIX.rstrip(".")
        out.append(ConvGroups(name=f"{full}.weight", module_name=full, shape=tuple(w.shape),
                              num_groups=i, group_size=size, group_weight=math.sqrt(size)))
    return out


# ----------------------------------------------------------------------------- pure maths

def _safe_sqrt(sq: torch.Tensor) -> torch.Tensor:
    """``sqrt(sq)`` with value and gradient 0 (not inf / NaN) where ``sq == 0``, at any order.

    A NaN stays NaN (a diverged group is not a zero group)."""
    pos = ~(sq <= 0)
    return torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))),
                       torch.zeros_like(sq))


def group_norms(weight: torch.Tensor) -> torch.Tensor:
    """``||W[:, c]||_2`` for every input channel ``c``: ``[O, I, kh, kw] -> [I]``.

    Differentiable with gradient ``W[:, c] / ||W[:, c]||`` and gradient 0 at a zero group; a
    group holding a NaN has norm NaN.
    """
    return _safe_sqrt(weight.square().sum(dim=(0, 2, 3)))


def _lam_values(lam: LamLike) -> list[float]:
    """λ's values as floats, each checked to be finite and ``>= 0`` (``ValueError``; a
    ``TypeError`` for anything but a number, a sequence of numbers or a tensor).  A tensor costs
    a host sync: for the in-place wrappers, not the differentiable paths."""
    if isinstance(lam, torch.Tensor):
        vals = lam.detach().reshape(-1).tolist()
    elif isinstance(lam, (str, bytes)):
        vals = None
    else:
        try:
            vals = torch.as_tensor(lam, dtype=torch.float64).reshape(-1).tolist()
        except (TypeError, ValueError, RuntimeError):
            vals = None
    if vals is None:
        raise TypeError(f"lam (λ) must be a number, a sequence of numbers (one per grouped "
                        f"layer) or a tensor, got {lam!r}")
    if not all(math.isfinite(v) and v >= 0 for v in vals):
        raise ValueError(f"lam (λ) must be finite and >= 0, got {lam!r}")
    return [float(v) for v in vals]


def _check_step(step: float | torch.Tensor) -> None:
    """A prox step size must be a finite number ``>= 0`` (a tensor passes unchecked)."""
    if isinstance(step, torch.Tensor):
        return
    if not isinstance(step, numbers.Real):
        raise TypeError(f"step must be a number, got {step!r}")
    if not (math.isfinite(step) and step >= 0):
        raise ValueError(f"step must be finite and >= 0, got {step!r}")


def _check_layers(params: Mapping[str, torch.Tensor], layers: Sequence[ConvGroups]) -> None:
    """``ValueError`` unless every layer names a parameter of ``params`` with its shape (the
    groups of another model, or of this one before pruning, give wrong ``w_g`` and counts)."""
    for g in layers:
        w = params.get(g.name)
        if w is None or tuple(w.shape) != tuple(g.shape):
            has = "no such parameter" if w is None else f"shape {tuple(w.shape)}"
            raise ValueError(f"layers do not match the model: {g.name} has {has}, layers say "
                             f"shape {tuple(g.shape)}; call channel_groups(model) again")


def _layer_lambda(lam: LamLike | None, num_layers: int, like: torch.Tensor) -> torch.Tensor | None:
    """λ as a tensor of shape ``[L]`` (a scalar or one value broadcast to every layer).

    λ given as numbers is checked (finite, ``>= 0``: :func:`_lam_values`); a tensor is not (no
    host sync in the differentiable paths)."""
    if lam is None:
        return None
    if not isinstance(lam, torch.Tensor):
        _lam_values(lam)
    t = lam if isinstance(lam, torch.Tensor) else torch.as_tensor(lam, dtype=like.dtype)
    t = t.to(device=like.device, dtype=like.dtype).reshape(-1)
    if t.numel() == 1:
        return t.expand(num_layers)
    if t.numel() != num_layers:
        raise ValueError(f"λ has {t.numel()} values but there are {num_layers} grouped layers")
    return t


def penalty_per_layer(params: Mapping[str, torch.Tensor], layers: Sequence[ConvGroups]) -> torch.Tensor:
    """``Ω_l = Σ_{g in layer l} w_g ||θ_g||_2`` for every layer: ``[L]``."""
    if not layers:
        raise ValueError("no grouped layers: the backbone has no conv weights")
    _check_layers(params, layers)
    return torch.stack([g.group_weight * group_norms(params[g.name]).sum() for g in layers])


def penalty(params: Mapping[str, torch.Tensor], layers: Sequence[ConvGroups],
            lam: LamLike | None = None) -> torch.Tensor:
    """``Ω = Σ_g w_g ||θ_g||_2`` (scalar); with ``lam`` (a scalar or ``[L]``): ``Σ_l λ_l Ω_l``."""
    per = penalty_per_layer(params, layers)
    lam_t = _layer_lambda(lam, len(layers), per)
    return per.sum() if lam_t is None else (lam_t * per).sum()


def penalty_grad(weight: torch.Tensor, group_weight: float) -> torch.Tensor:
    """Analytic ``∂Ω/∂W = w_g · W[:, c] / ||W[:, c]||`` (0 on zero groups), same shape as ``W``.

    Differentiable in ``weight`` (its derivative is the penalty's Hessian), NaN-free for finite
    weights (a group holding a NaN gives NaN).
    """
    norms = group_norms(weight).reshape(1, -1, 1, 1)
    nonzero = norms != 0  # a NaN group gives NaN, not 0
    denom = torch.where(nonzero, norms, torch.ones_like(norms))
    return torch.where(nonzero, weight * (group_weight / denom), torch.zeros_like(weight))


def prox(weight: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """Block soft-thresholding of every input-channel group: ``θ_g · max(0, 1 − t / ||θ_g||)``.

    ``threshold`` is ``t = η·λ·w_g`` (a scalar, or ``[I]`` per group).  Groups with
    ``||θ_g|| ≤ t`` come out exactly zero.  Returns a new tensor; autograd-safe (the division uses
    a denominator that is never 0).
    """
    norms = group_norms(weight).reshape(1, -1, 1, 1)
    t = torch.as_tensor(threshold, dtype=weight.dtype, device=weight.device)
    if t.ndim == 1:
        t = t.reshape(1, -1, 1, 1)
    keep = norms > t
    denom = torch.where(keep, norms, torch.ones_like(norms))
    scale = torch.where(keep, 1.0 - t / denom, torch.zeros_like(norms))
    return weight * scale


def prox_params(params: Mapping[str, torch.Tensor], layers: Sequence[ConvGroups], step: float,
                lam: LamLike) -> dict[str, torch.Tensor]:
    """A new dict with ``prox`` (threshold ``step·λ_l·w_g``) applied to every grouped weight.

    ``step`` and λ given as numbers must be finite and ``>= 0`` (``ValueError``)."""
    _check_step(step)
    if lam is None:
        raise TypeError("lam (λ) is required: a number, one per grouped layer, or a tensor")
    _check_layers(params, layers)
    out = dict(params)
    any_w = params[layers[0].name] if layers else None
    if any_w is None:
        return out
    lam_t = _layer_lambda(lam, len(layers), any_w)
    for i, g in enumerate(layers):
        out[g.name] = prox(params[g.name], step * lam_t[i] * g.group_weight)
    return out


# ----------------------------------------------------------------------------- model wrappers

def _named_params(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


def group_penalty(model: nn.Module, lam: LamLike | None = None,
                  layers: Sequence[ConvGroups] | None = None) -> torch.Tensor:
    """``Ω`` (or ``Σ_l λ_l Ω_l`` with ``lam``) of the model's backbone, differentiable (scalar)."""
    layers = channel_groups(model) if layers is None else layers
    return penalty(_named_params(model), layers, lam)


def prox_(model: nn.Module, step: float, lam: LamLike,
          layers: Sequence[ConvGroups] | None = None) -> None:
    """In place: ``θ_g ← prox_{step·λ_l·w_g}(θ_g)`` on every backbone group.

    ``lam`` is a float or one value per grouped layer (a sequence or tensor of length ``L``);
    ``step`` and every λ must be finite and ``>= 0`` (``ValueError``).
    """
    layers = channel_groups(model) if layers is None else layers
    params = _named_params(model)
    with torch.no_grad():
        if isinstance(lam, torch.Tensor):
            lam = lam.detach()
            _lam_values(lam)
        new = prox_params(params, layers, step, lam)
        for g in layers:
            params[g.name].copy_(new[g.name])


@dataclass
class SparsityStats:
    """Group and parameter sparsity of the backbone (DESIGN §2.2: one definition everywhere).

    ``group_sparsity`` = zero groups / groups; ``param_sparsity`` = grouped conv weights inside
    zero groups / all grouped conv weights; ``zero_groups`` maps each weight name to the indices of
    its zero input channels; ``per_layer`` holds one dict per layer (name, groups, zero_groups,
    group_sparsity, params, zero_params).
    """

    group_sparsity: float
    param_sparsity: float
    num_groups: int
    num_zero_groups: int
    num_params: int
    num_zero_params: int
    per_layer: list[dict] = field(default_factory=list)
    zero_groups: dict[str, list[int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def sparsity_stats(model: nn.Module, tol: float = 0.0,
                   layers: Sequence[ConvGroups] | None = None) -> SparsityStats:
    """Count zero groups (``||θ_g||_2 <= tol``; ``tol = 0`` means exactly zero).  A group
    holding a NaN is not counted as zero."""
    if not (isinstance(tol, numbers.Real) and tol >= 0):  # NaN fails too
        raise ValueError(f"sparsity_stats: tol must be a number >= 0, got {tol!r}")
    layers = channel_groups(model) if layers is None else layers
    params = _named_params(model)
    _check_layers(params, layers)
    per_layer, zero_groups = [], {}
    n_g = n_zg = n_p = n_zp = 0
    with torch.no_grad():
        for g in layers:
            zero = (group_norms(params[g.name]) <= tol).nonzero().flatten().tolist()
            nz = len(zero)
            per_layer.append({
                "name": g.name, "groups": g.num_groups, "zero_groups": nz,
                "group_sparsity": nz / g.num_groups, "params": g.num_params,
                "zero_params": nz * g.group_size,
            })
            zero_groups[g.name] = zero
            n_g += g.num_groups
            n_zg += nz
            n_p += g.num_params
            n_zp += nz * g.group_size
    return SparsityStats(
        group_sparsity=n_zg / n_g if n_g else 0.0, param_sparsity=n_zp / n_p if n_p else 0.0,
        num_groups=n_g, num_zero_groups=n_zg, num_params=n_p, num_zero_params=n_zp,
        per_layer=per_layer, zero_groups=zero_groups)


def zero_group_masks(model: nn.Module, tol: float = 0.0,
                     layers: Sequence[ConvGroups] | None = None) -> dict[str, torch.Tensor]:
    """``{weight name: bool [I]}``, True where the input-channel group is zero (norm ``<= tol``)."""
    layers = channel_groups(model) if layers is None else layers
    params = _named_params(model)
    with torch.no_grad():
        return {g.name: group_norms(params[g.name]) <= tol for g in layers}


def mask_zero_group_grads_(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """In place: zero the ``.grad`` of every masked group, so fine-tuning keeps zeros at zero."""
    params = _named_params(model)
    with torch.no_grad():
        for name, mask in masks.items():
            p = params[name]
            if p.grad is not None:
                p.grad.masked_fill_(mask.to(p.device).reshape(1, -1, 1, 1), 0.0)


def apply_masks_(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """In place: set every masked group's weights to exactly zero (e.g. after an optimizer step)."""
    params = _named_params(model)
    with torch.no_grad():
        for name, mask in masks.items():
            p = params[name]
            p.masked_fill_(mask.to(p.device).reshape(1, -1, 1, 1), 0.0)


def group_gradient_ratios(grads: Mapping[str, torch.Tensor],
                          layers: Sequence[ConvGroups]) -> torch.Tensor:
    """``||∇_g L||_2 / w_g`` for every group of every layer, concatenated: ``[G]``.

    With the prox in Adam's metric a zero group stays zero exactly while ``||∇_g L|| ≤ λ·w_g``
    (DESIGN §2.2.1), so these ratios are λ's natural scale: their median at the start of training
    is the ``auto`` λ0 of DESIGN §2.3.  ``grads`` maps weight names to gradients (missing → 0);
    layers without a penalty (``group_weight = 0``, ``sparsity.penalize: removable``) are left out.
    """
    out = [torch.zeros(0)]
    for g in layers:
        if not g.group_weight > 0:
            continue
        grad = grads.get(g.name)
        if grad is None:
            out.append(torch.zeros(g.num_groups))
        else:
            out.append(group_norms(grad.detach()).float().cpu() / g.group_weight)
    return torch.cat(out)
