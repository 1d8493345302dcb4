"""Recipe ``evaluate``: a run's checkpoint scored on a split, and the trivial predictors beside it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from metasparsity.data import build_dataset, resolve_tasks
from metasparsity.eval.trivial import trivial_prediction, trivial_statistics
from metasparsity.recipes.load_run import load_run_model, prepare_bn_stats
from metasparsity.training.batches import eval_loader
from metasparsity.training.evaluation import evaluate
from metasparsity.utils.device import resolve_device, set_threads


def evaluate_run(run_dir: str | Path, split: str = "test", which: str = "best",
                 overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Metrics of run ``run_dir``'s ``which`` checkpoint on ``split`` (BatchNorm statistics of
    a meta-trained checkpoint re-estimated first)."""
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
