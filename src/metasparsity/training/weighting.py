"""Per-task losses and how they are combined into one training loss (equal or uncertainty)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from metasparsity.utils.errors import UserError


class LossWeighting(nn.Module):
    """Combine per-task losses: ``equal`` (Σ L_t) or ``uncertainty`` (Kendall et al.):

        L = Σ_t exp(−s_t)·L_t + s_t,   s_t = log σ_t² learned (initialised at 0).
    """

    def __init__(self, tasks: Sequence[str], method: str = "equal") -> None:
        super().__init__()
        if method not in ("equal", "uncertainty"):
            raise UserError(f"train.loss_weighting: {method!r}; choose equal or uncertainty")
        self.method = method
        self.log_vars = nn.ParameterDict(
            {t: nn.Parameter(torch.zeros(())) for t in tasks} if method == "uncertainty" else {})

    def add_task(self, task: str) -> None:
        if self.method == "uncertainty" and task not in self.log_vars:
            self.log_vars[task] = nn.Parameter(torch.zeros((), device=self._device()))

    def _device(self) -> torch.device:
        for p in self.log_vars.values():
            return p.device
        return torch.device("cpu")

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.method == "equal":
            return sum(losses.values())
        return sum(torch.exp(-self.log_vars[t]) * v + self.log_vars[t] for t, v in losses.items())

    def weights(self) -> dict[str, float]:
        if self.method == "equal":
            return {}
        return {t: float(torch.exp(-v.detach())) for t, v in self.log_vars.items()}


def task_losses(tasks: Mapping[str, Any], outputs: Mapping[str, torch.Tensor],
                targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {t: tasks[t].loss(outputs[t], targets[t]) for t in outputs}
