"""Checks on tensors that the task losses (``data``) and the metrics (``eval``) share."""

from __future__ import annotations

import torch


def check_unit_range(what: str, target: torch.Tensor, valid: torch.Tensor | None = None) -> None:
    """ValueError (``what: target values must lie in [0, 1]…``) unless every target value, or
    every one where ``valid``, lies in [0, 1] (NaN does not)."""
    bad = ~((target >= 0) & (target <= 1))
    if valid is not None:
        bad &= valid
    if bool(bad.any()):
        ignore = " (or be the ignore label)" if valid is not None else ""
        raise ValueError(f"{what}: target values must lie in [0, 1]{ignore}, got "
                         f"{target[bad].flatten()[0].item()!r}")
