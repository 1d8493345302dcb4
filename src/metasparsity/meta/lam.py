"""The learned sparsity strength ``λ = exp(ρ)`` (DESIGN §2.3).

``ρ`` is one trainable scalar (``scope="global"``) or one per grouped conv layer (``scope="layer"``),
initialised to ``log λ0``.  λ is kept in ``[λ_min, λ_max]`` in log space::

    λ = exp(clamp(ρ, log λ_min, log λ_max))

Clamping choice: the clamp passes the gradient unchanged inside the range (and on its boundary),
and :meth:`LearnedLambda.clamp_rho_` puts ``ρ`` itself back into the range after every optimizer
step (``outer_update`` calls it).  So ``ρ`` never sits outside the range, the clamp's zero-gradient
region is never reached, and a λ pinned at a bound can still move back inside.

``λ0 = 0`` means "no sparsity": the module is *disabled*, ``forward`` returns zeros, there is no
penalty and nothing to learn (``learnable`` is forced to False).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

SCOPES = ("global", "layer")


def broadcast_lambda(lam: torch.Tensor, num_layers: int) -> torch.Tensor:
    """λ of shape ``[1]`` (global) or ``[L]`` (per layer) as a ``[L]`` tensor (differentiable)."""
    lam = lam.reshape(-1)
    if lam.numel() == 1:
        return lam.expand(num_layers)
    if lam.numel() != num_layers:
        raise ValueError(f"λ has {lam.numel()} values but there are {num_layers} grouped layers")
    return lam


def dual_ascent(log_lam: torch.Tensor, violation: float, rate: float,
                lo: float, hi: float) -> torch.Tensor:
    """Budget mode's multiplier update in log space (DESIGN §2.4), every entry shifted alike:
    ``clamp(log λ + rate·violation, lo, hi)`` with ``violation = (cost − target)/target``, so
    that λ grows while the backbone costs more than its target and shrinks once it costs less."""
    return (log_lam + rate * float(violation)).clamp(lo, hi)


def ramped_target(target: float, step: int, ramp_steps: int) -> float:
    """Budget mode's target after ``step`` outer steps when it ramps (``meta.target_ramp``):
    ``target + (1 − target)·(1 − step/ramp_steps)³`` up to ``ramp_steps``, then ``target``
    (``ramp_steps`` ≤ 0: ``target`` from the start).  The cubic of gradual pruning (Zhu &
    Gupta 2017) cuts fastest early, while whole groups are still cheap to lose, and slows as the
    network approaches its final size; the multiplier tracks a violation that stays small
    instead of chasing the full budget from the first step."""
    if ramp_steps <= 0 or step >= ramp_steps:
        return target
    return target + (1.0 - target) * (1.0 - max(step, 0) / ramp_steps) ** 3


def _lambda_init_value(lambda_init: object) -> float:
    """``lambda_init`` as a finite float: a number or a one-element tensor (e.g. a λ of an
    earlier run); ``"auto"`` and other strings are refused (the recipe resolves ``auto``)."""
    if isinstance(lambda_init, str):
        hint = (" (meta.lambda_init=auto is resolved before λ is built: compute λ0 with "
                "metasparsity.meta.lambda_init.auto_lambda0(model, layers, batches, loss_fn, "
                "tasks, lambda_min, lambda_max), as meta-training does, and pass that number)"
                if lambda_init.strip().lower() == "auto" else "")
        raise TypeError(f"lambda_init must be a number, got the string {lambda_init!r}{hint}")
    if isinstance(lambda_init, torch.Tensor):
        if lambda_init.numel() != 1:
            raise TypeError(f"lambda_init must be one number, got a tensor of shape "
                            f"{tuple(lambda_init.shape)} (a per-layer λ: load_state_dict)")
    elif not (isinstance(lambda_init, numbers.Real)
              or (getattr(lambda_init, "ndim", None) == 0 and hasattr(lambda_init, "__float__"))):
        raise TypeError(f"lambda_init must be a number, got {lambda_init!r}")  # (0-d numpy: ok)
    value = float(lambda_init.detach() if isinstance(lambda_init, torch.Tensor) else lambda_init)
    if not math.isfinite(value):
        raise ValueError(f"lambda_init must be a finite number >= 0, got {value}")
    return value


class LearnedLambda(nn.Module):
    """``λ = exp(clamp(ρ, log λ_min, log λ_max))``, shape ``[1]`` or ``[L]``.

    Args:
        lambda_init: λ0 (> 0), or 0 for a disabled λ ≡ 0 (meta-learning without sparsity); a
            finite number or a one-element tensor (``"auto"`` is the recipe's:
            :func:`~metasparsity.meta.lambda_init.auto_lambda0` computes it).
        scope: ``"global"`` (one λ) or ``"layer"`` (one λ per grouped layer).
        num_layers: number of grouped layers ``L``, an int (``>= 1`` for ``scope="layer"``).
        lambda_min, lambda_max: the allowed range; λ0 must lie inside it.
        learnable: train ρ (False keeps λ at λ0: ``rho.requires_grad`` is False).
    """

    def __init__(self, lambda_init: float = 1e-3, scope: str = "global", num_layers: int = 1,
                 lambda_min: float = 1e-6, lambda_max: float = 1.0, learnable: bool = True) -> None:
        super().__init__()
        if scope not in SCOPES:
            raise ValueError(f"lambda scope must be one of {SCOPES}, got {scope!r}")
        if not 0.0 < lambda_min <= lambda_max:
            raise ValueError(f"need 0 < lambda_min <= lambda_max, got {lambda_min}, {lambda_max}")
        lambda_init = _lambda_init_value(lambda_init)
        if lambda_init < 0:
            raise ValueError(f"lambda_init must be >= 0, got {lambda_init}")
        if lambda_init > 0 and not lambda_min <= lambda_init <= lambda_max:
            raise ValueError(f"lambda_init={lambda_init} is outside [lambda_min, lambda_max] = "
                             f"[{lambda_min}, {lambda_max}]")
        if not isinstance(num_layers, numbers.Integral) or isinstance(num_layers, bool):
            raise TypeError(f"num_layers must be an int (the number of grouped layers), "
                            f"got {num_layers!r}")
        if num_layers < (1 if scope == "layer" else 0):
            raise ValueError(f"scope {scope!r} needs num_layers >= "
                             f"{1 if scope == 'layer' else 0}, got {num_layers}")
        self.scope = scope
        self.num_layers = int(num_layers)
        self.lambda_min = float(lambda_min)
        self.lambda_max = float(lambda_max)
        self.enabled = lambda_init > 0
        self.learnable = bool(learnable) and self.enabled
        n = num_layers if scope == "layer" else 1
        rho0 = math.log(lambda_init) if self.enabled else math.log(lambda_min)
        self.rho = nn.Parameter(torch.full((n,), rho0, dtype=torch.float64),
                                requires_grad=self.learnable)

    @classmethod
    def disabled(cls, scope: str = "global", num_layers: int = 1) -> LearnedLambda:
        """λ ≡ 0: no penalty, nothing learned."""
        return cls(0.0, scope=scope, num_layers=num_layers, learnable=False)

    @property
    def log_bounds(self) -> tuple[float, float]:
        return math.log(self.lambda_min), math.log(self.lambda_max)

    def forward(self) -> torch.Tensor:
        """λ, shape ``[1]`` or ``[L]`` (zeros when disabled); differentiable in ρ."""
        if not self.enabled:
            return torch.zeros_like(self.rho)
        lo, hi = self.log_bounds
        return torch.exp(torch.clamp(self.rho, lo, hi))

    def rho_grad(self, grad_lambda: torch.Tensor) -> torch.Tensor:
        """``dL/dρ = dL/dλ · dλ/dρ`` for ``λ = exp(clamp(ρ, log λ_min, log λ_max))``, through the
        same operations as :meth:`forward` (so ``exp(ρ)`` inside the range, and the clamp passes
        the gradient on its boundary); ``grad_lambda`` has λ's shape."""
        with torch.enable_grad():
            rho = self.rho.detach().requires_grad_()
            lo, hi = self.log_bounds
            (grad,) = torch.autograd.grad(
                torch.exp(torch.clamp(rho, lo, hi)), rho,
                grad_outputs=grad_lambda.detach().to(dtype=self.rho.dtype, device=self.rho.device))
        return grad

    def per_layer(self, num_layers: int | None = None) -> torch.Tensor:
        """λ as ``[L]`` (a global λ broadcast to every layer)."""
        return broadcast_lambda(self(), self.num_layers if num_layers is None else num_layers)

    def value(self) -> float | list[float]:
        """λ as a float (global) or a list of floats (per layer), for logs and checkpoints."""
        v = self().detach().cpu().tolist()
        return v[0] if self.scope == "global" else v

    @torch.no_grad()
    def clamp_rho_(self) -> None:
        """Put ρ back into ``[log λ_min, log λ_max]`` (call after every optimizer step on ρ)."""
        if self.enabled:
            lo, hi = self.log_bounds
            self.rho.clamp_(lo, hi)

    @torch.no_grad()
    def dual_step_(self, violation: float, rate: float) -> None:
        """Budget mode: :func:`dual_ascent` on ρ.  A per-layer λ keeps its pattern across
        layers (that is the meta-gradient's part); only its level moves."""
        if self.enabled:
            self.rho.copy_(dual_ascent(self.rho, violation, rate, *self.log_bounds))

    def extra_repr(self) -> str:
        return (f"scope={self.scope}, enabled={self.enabled}, learnable={self.learnable}, "
                f"range=[{self.lambda_min:g}, {self.lambda_max:g}]")
