"""Evaluation of a model over a split, BatchNorm re-estimation for meta-trained weights, and the
score that chooses a run's best checkpoint."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from metasparsity.training.batches import BatchStream, to_device
from metasparsity.training.logs import progress_bar


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, tasks: Mapping[str, Any],
             device: torch.device, progress: bool = False, desc: str = "eval") -> dict[str, dict]:
    """Per-task metrics (DESIGN §4) and mean loss over a whole split, in eval mode."""
    from metasparsity.eval.metrics import build_metrics, update_all

    was_training = model.training
    model.eval()
    metrics = build_metrics(tasks)
    loss_sum = {t: 0.0 for t in tasks}
    n = 0
    for batch in progress_bar(loader, desc=desc, enabled=progress, leave=False):
        x, y = to_device(batch, device)
        out = model(x, tasks=list(tasks))
        update_all(metrics, out, y)  # a target a metric cannot take: one line naming the task
        for t in tasks:
            loss_sum[t] += float(tasks[t].loss(out[t], y[t])) * x.shape[0]
        n += x.shape[0]
    model.train(was_training)
    res = {t: metrics[t].compute() for t in tasks}
    for t in tasks:
        res[t]["loss"] = loss_sum[t] / max(n, 1)
    return res


BN_STATS_BATCHES = 20
"""Training batches over which BatchNorm's running statistics are re-estimated."""


def bn_stats_to_recompute(meta: Mapping[str, Any]) -> bool:
    """Whether a checkpoint's BatchNorm running statistics must be re-estimated before the model
    is evaluated: its ``state.json`` says ``"bn_stats": "recompute"`` (meta-training never
    updates them; ``"running"``: usable as saved).  Checkpoints written before that field say
    ``"needs_bn_recalibration": true``."""
    if "bn_stats" in meta:
        return meta["bn_stats"] == "recompute"
    return bool(meta.get("needs_bn_recalibration"))


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, stream: BatchStream, device: torch.device,
                       batches: int = BN_STATS_BATCHES) -> None:
    """Recompute BatchNorm running statistics on training batches (no gradients).

    A meta-trained model never updates its running statistics (the inner loop uses batch
    statistics), so before evaluating it without fine-tuning we re-estimate them with a
    cumulative moving average over the next ``batches`` batches of ``stream``.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    was_training = model.training
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for _ in range(batches):
            x, _y = to_device(next(stream), device)
            model.forward_features(x)
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.train(was_training)


def selection_score(val: Mapping[str, Mapping[str, float]],
                    reference: Mapping[str, Mapping[str, float]] | None = None,
                    task_types: Mapping[str, str] | None = None) -> float:
    """Lower is better; chooses the best checkpoint.

    With ``reference`` (the run's first validation) and the tasks' types: ``−Δm`` of the
    validation metrics against the reference, over each task's primary metrics (those whose
    reference value is 0 or undefined left out).  Metrics, not losses, because a classifier's
    cross-entropy can rise from over-confidence while its accuracy still improves.  Without a
    reference, or when no metric is usable: the mean validation loss over tasks.
    """
    if reference is not None and task_types:
        from metasparsity.eval.delta import default_spec, delta_m, usable_spec

        spec, _ = usable_spec(default_spec(task_types), reference)
        if spec:
            return -float(delta_m(val, reference, spec))
    return float(sum(v["loss"] for v in val.values()) / max(len(val), 1))
