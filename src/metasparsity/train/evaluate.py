"""Load any run's checkpoint and score it on a split."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from metasparsity.config import load_config
from metasparsity.data import build_dataset, resolve_tasks
from metasparsity.models import build_model
from metasparsity.train.checkpoint import load_run_checkpoint
from metasparsity.train.loop import BatchStream, eval_loader, evaluate, recalibrate_bn
from metasparsity.utils.rundir import CONFIG_FILE, require_run_dir
from metasparsity.utils.seed import resolve_device, set_threads

BN_RECALIBRATION_BATCHES = 20


def load_run_model(run_dir: str | Path, which: str = "best", overrides: Sequence[str] = ()):
    """(cfg, model, checkpoint) of a run directory; the model has every head the run trained."""
    run_dir = require_run_dir(run_dir, need=(CONFIG_FILE,))
    cfg = load_config(run_dir / CONFIG_FILE, overrides)
    ck = load_run_checkpoint(run_dir, which)
    tasks = list(ck.meta.get("tasks") or cfg.train_tasks)
    model = build_model(cfg, tasks)
    model.load_state_dict(ck.model)
    return cfg, model, ck


def evaluate_run(run_dir: str | Path, split: str = "test", which: str = "best",
                 overrides: Sequence[str] = ()) -> dict[str, Any]:
    cfg, model, ck = load_run_model(run_dir, which, overrides)
    set_threads(cfg.train.num_threads)
    device = resolve_device(cfg.train.device)
    model.to(device)
    tasks = resolve_tasks(cfg, model.tasks)
    if ck.meta.get("needs_bn_recalibration"):
        stream = BatchStream(build_dataset(cfg, "train"), cfg.train.batch_size, cfg.train.seed)
        recalibrate_bn(model, stream, device, BN_RECALIBRATION_BATCHES)
    loader = eval_loader(build_dataset(cfg, split), cfg.train.eval_batch_size, cfg.data.num_workers)
    with torch.no_grad():
        metrics = evaluate(model, loader, tasks, device, progress=cfg.train.progress)
    return {"run_dir": str(run_dir), "checkpoint": str(ck.path), "split": split, "metrics": metrics}
