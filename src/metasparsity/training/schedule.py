"""Learning-rate schedules: linear warm-up, then constant, cosine, poly or step decay."""

from __future__ import annotations

import math

import torch

from metasparsity.utils.errors import UserError


def lr_factor(schedule: str, step: int, max_steps: int, warmup: int) -> float:
    """Multiplier of the base LR at ``step`` (0-based): linear warm-up then the schedule."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, max_steps - warmup)
    t = min(max(t, 0.0), 1.0)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "poly":
        return (1.0 - t) ** 0.9
    if schedule == "step":
        return 0.1 ** int(t * 3)  # /10 at 1/3 and 2/3 of training
    raise UserError(f"unknown lr schedule {schedule!r}")


def build_scheduler(opt: torch.optim.Optimizer, schedule: str, max_steps: int, warmup: int):
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(schedule, s, max_steps, warmup))
