"""The trivial predictors, the floor a trained model must beat: majority class, mean depth, mean
normal, all-zero edges, majority attribute; statistics from training samples."""

from __future__ import annotations

from typing import Any

import torch

TRIVIAL_STAT_SAMPLES = 500


@torch.no_grad()
def trivial_statistics(dataset, tasks, n: int = TRIVIAL_STAT_SAMPLES) -> dict[str, Any]:
    """Training-set statistics of the trivial predictors: majority class (over pixels), mean
    valid depth, mean valid normal (renormalised), majority attribute value."""
    stats: dict[str, Any] = {}
    counts: dict[str, Any] = {}
    for i in range(min(n, len(dataset))):
        _, y = dataset[i]
        for t, task in tasks.items():
            v = y[t]
            c = counts.setdefault(t, {"sum": 0.0, "n": 0, "hist": None})
            if task.type == "segmentation":
                valid = v[v != 255]
                h = torch.bincount(valid.flatten(), minlength=task.num_classes).double()
                c["hist"] = h if c["hist"] is None else c["hist"] + h
            elif task.type == "depth":
                m = v > 0
                c["sum"] += float(v[m].double().sum())
                c["n"] += int(m.sum())
            elif task.type == "normal":
                m = v.abs().sum(0) > 0
                s = v[:, m].double().sum(1)
                c["sum"] = s if isinstance(c["sum"], float) else c["sum"] + s
            elif task.type in ("binary",):
                c["sum"] += float(v)
                c["n"] += 1
    for t, task in tasks.items():
        c = counts[t]
        if task.type == "segmentation":
            stats[t] = int(c["hist"].argmax())
        elif task.type == "depth":
            stats[t] = c["sum"] / max(c["n"], 1)
        elif task.type == "normal":
            stats[t] = torch.nn.functional.normalize(c["sum"].float(), dim=0)
        elif task.type == "binary":
            stats[t] = 1.0 if c["sum"] / max(c["n"], 1) >= 0.5 else 0.0
        else:  # edges and unknown dense types: predict "no positive anywhere"
            stats[t] = 0.0
    return stats


def trivial_prediction(task, stat, like: torch.Tensor, batch: int) -> torch.Tensor:
    """Raw model-output tensor of the trivial predictor for a batch shaped like ``like``."""
    h, w = like.shape[-2:]
    if task.type == "segmentation":
        out = torch.full((batch, task.channels, h, w), -20.0)
        out[:, stat] = 20.0
        return out
    if task.type == "depth":
        return torch.full((batch, 1, h, w), float(stat))
    if task.type == "normal":
        return stat.view(1, 3, 1, 1).expand(batch, 3, h, w).clone()
    if task.type == "binary":
        return torch.full((batch, 1), 20.0 if stat > 0.5 else -20.0)
    return torch.full((batch, task.channels, h, w), -20.0)  # edges: all zero
