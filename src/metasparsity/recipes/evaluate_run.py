"""Load any run's checkpoint and score it on a split."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from metasparsity.data import build_dataset, resolve_tasks
from metasparsity.training.batches import BatchStream, eval_loader
from metasparsity.training.evaluation import bn_stats_to_recompute, evaluate, recompute_bn_stats
from metasparsity.training.run_checkpoints import load_run_model
from metasparsity.utils.device import resolve_device, set_threads


def prepare_bn_stats(cfg, model: torch.nn.Module, ck, device: torch.device) -> bool:
    """Re-estimate the BatchNorm statistics of a loaded run's model on the first training batches
    of its config when its checkpoint asks for it (:func:`bn_stats_to_recompute`); whether it
    did."""
    if not bn_stats_to_recompute(ck.meta):
        return False
    stream = BatchStream(build_dataset(cfg, "train"), cfg.train.batch_size, cfg.train.seed)
    recompute_bn_stats(model, stream, device)
    return True


def evaluate_run(run_dir: str | Path, split: str = "test", which: str = "best",
                 overrides: Sequence[str] = ()) -> dict[str, Any]:
    cfg, model, ck = load_run_model(run_dir, which, overrides)
    set_threads(cfg.train.num_threads)
    device = resolve_device(cfg.train.device)
    model.to(device)
    tasks = resolve_tasks(cfg, model.tasks)
    prepare_bn_stats(cfg, model, ck, device)
    loader = eval_loader(build_dataset(cfg, split), cfg.train.eval_batch_size, cfg.data.num_workers)
    with torch.no_grad():
        metrics = evaluate(model, loader, tasks, device, progress=cfg.train.progress)
    return {"run_dir": str(run_dir), "checkpoint": str(ck.path), "split": split, "metrics": metrics}


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


@torch.no_grad()
def trivial_results(cfg, task_names: Sequence[str], split: str = "test") -> dict[str, dict]:
    """Metrics of the trivial predictors (majority class, mean depth, mean normal, all-zero
    edges, majority attribute), statistics from the training split, scored on ``split``."""
    from metasparsity.eval.metrics import build_metrics

    tasks = resolve_tasks(cfg, task_names)
    stats = trivial_statistics(build_dataset(cfg, "train"), tasks)
    metrics = build_metrics(tasks)
    loader = eval_loader(build_dataset(cfg, split), cfg.train.eval_batch_size, cfg.data.num_workers)
    for x, y in loader:
        for t, task in tasks.items():
            metrics[t].update(trivial_prediction(task, stats[t], x, x.shape[0]), y[t])
    return {t: m.compute() for t, m in metrics.items()}
