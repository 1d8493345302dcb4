"""Checks on tensors shared across layers: the task losses (``data``) and the metrics
(``eval``); the example inputs of the cost counters (``eval``) and of pruning (``sparsity``)."""

from __future__ import annotations

import reprlib
from typing import Any

import torch

from metasparsity.utils.errors import TargetError

Inputs = torch.Tensor | tuple[Any, ...] | list[Any]
"""An example input: the input tensor, or the list / tuple of ``forward()``'s arguments."""


def forward_args(example_input: Inputs) -> tuple[Any, ...]:
    """The positional arguments of ``model(...)``: the input tensor, or the list / tuple of
    arguments starting with it; ``TypeError`` otherwise (e.g. for a shape such as
    ``(1, 3, 32, 32)`` or a ``torch.Size``), ``ValueError`` for an input with no sample."""
    args = tuple(example_input) if isinstance(example_input, (tuple, list)) else (example_input,)
    if not args or not isinstance(args[0], torch.Tensor):
        raise TypeError("example_input must be an input tensor (e.g. torch.zeros(1, 3, H, W), not "
                        "its shape) or a list / tuple of forward()'s arguments starting with one, "
                        f"got {reprlib.repr(example_input)}")
    if args[0].numel() == 0:
        raise ValueError(f"example_input is empty (shape {list(args[0].shape)}): give at least "
                         "one sample (batch size >= 1)")
    return args


def check_unit_range(what: str, target: torch.Tensor, valid: torch.Tensor | None = None) -> None:
    """:class:`~metasparsity.utils.errors.TargetError` (a ValueError: ``what: target values
    must lie in [0, 1]…``) unless every target value, or every one where ``valid``, lies in
    [0, 1] (NaN does not)."""
    bad = ~((target >= 0) & (target <= 1))
    if valid is not None:
        bad &= valid
    if bool(bad.any()):
        ignore = " (or be the ignore label)" if valid is not None else ""
        raise TargetError(f"{what}: target values must lie in [0, 1]{ignore}, got "
                         f"{target[bad].flatten()[0].item()!r}")
