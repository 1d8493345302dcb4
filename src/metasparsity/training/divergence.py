"""Divergence: NaN / infinite losses, parameters or evaluation results stop a run with a
:class:`NonFiniteError` whose message names the step and suggests a smaller learning rate (the
class lives in :mod:`metasparsity.utils.errors`, so that :func:`metasparsity.meta.outer_update`
below this layer raises it too)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from metasparsity.utils.errors import NonFiniteError


def check_finite(losses: Mapping[str, torch.Tensor], step: int, what: str = "loss") -> None:
    """Raise :class:`NonFiniteError` naming the step and task when a loss is NaN or infinite."""
    for t, v in losses.items():
        v = torch.as_tensor(v).detach()
        if not torch.isfinite(v).all():
            raise NonFiniteError(f"non-finite {what} at step {step} for task {t!r} "
                                 f"({float(v.float().sum())})", step=step, task=t)


def nonfinite_metrics(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``task.key`` of the evaluation results that show a diverged model: a per-task loss that
    is not a finite number (NaN, ±inf, or missing as JSON null), or any metric that is infinite.

    A NaN *metric* alone is not divergence: metrics are NaN where undefined on a split (no
    valid pixel, a single class for AUROC, no predicted positive for a precision), while every
    task loss is finite for finite predictions.
    """
    bad = []
    for t, values in results.items():
        loss = values.get("loss")
        if not isinstance(loss, (int, float)) or not math.isfinite(loss):
            bad.append(f"{t}.loss")
        bad += [f"{t}.{k}" for k, v in values.items()
                if k != "loss" and isinstance(v, float) and math.isinf(v)]
    return bad


def check_finite_metrics(results: Mapping[str, Mapping[str, Any]], step: int,
                         what: str = "validation") -> None:
    """Raise :class:`NonFiniteError` when evaluation results show a diverged model."""
    bad = nonfinite_metrics(results)
    if bad:
        raise NonFiniteError(f"non-finite {what} metrics at step {step} ({', '.join(bad[:4])}"
                             + (f" and {len(bad) - 4} more" if len(bad) > 4 else "") + ")",
                             step=step, task=bad[0].split(".")[0])


def check_finite_params(tensors: Mapping[str, torch.Tensor], step: int) -> None:
    """Raise :class:`NonFiniteError` when a parameter or buffer holds a NaN or an infinity."""
    from metasparsity.training.checkpoint import nonfinite_tensors

    bad = nonfinite_tensors(dict(tensors))
    if bad:
        raise NonFiniteError(f"non-finite parameters at step {step} ({', '.join(bad[:3])}"
                             + (f" and {len(bad) - 3} more" if len(bad) > 3 else "") + ")",
                             step=step, task=None)


@contextmanager
def overflow_is_divergence(step: int) -> Iterator[None]:
    """An update so large that PyTorch cannot even form it (``RuntimeError: value cannot be
    converted to type float without overflow``, e.g. Adam's step size ``lr/(1 − β1ᵗ)`` beyond
    float32 at an absurd learning rate) is a divergence at ``step``, as a NaN would be."""
    try:
        yield
    except RuntimeError as e:
        if "without overflow" not in str(e):
            raise
        raise NonFiniteError(f"non-finite update at step {step} (it overflows: {e})",
                             step=step, task=None) from None


def divergence_message(error: Exception, note: str, run_dir: str | Path, lr_key: str,
                       lr: float) -> str:
    """The one-line message of a run stopped by a divergence: what, where, what is kept, and
    the resume with a smaller learning rate."""
    if note.startswith("the last good checkpoint"):
        hint = f"resume with a smaller learning rate: --resume {run_dir} {lr_key}={lr / 10:g}"
    else:
        hint = f"start again with a smaller learning rate ({lr_key}={lr / 10:g})"
    return f"{error}; {note}; {hint}"


def diverged_error(error: NonFiniteError, note: str, run_dir: str | Path, lr_key: str,
                   lr: float) -> NonFiniteError:
    """The error a diverged run stops with (:func:`divergence_message`), carrying what a caller
    that ran it as a sub-run (``sweep-lambda``, ``compare``) needs to point at its own resume."""
    out = NonFiniteError(divergence_message(error, note, run_dir, lr_key, lr), step=error.step,
                         task=error.task)
    out.detail = f"{error}; {note}"
    out.resume = (str(run_dir), lr_key, lr)
    return out


