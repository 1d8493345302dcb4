"""Recipe ``evaluate``: a run's checkpoint scored on a split, and the trivial predictors beside it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from metasparsity.config import Config
from metasparsity.data import build_dataset, resolve_tasks
from metasparsity.eval.delta import default_spec, per_task_delta, usable_spec
from metasparsity.eval.trivial import trivial_prediction, trivial_statistics
from metasparsity.recipes.load_run import (
    load_run_model,
    prepare_bn_stats,
    run_tasks,
)
from metasparsity.training.batches import eval_loader
from metasparsity.training.evaluation import evaluate
from metasparsity.utils.device import resolve_device, set_threads
from metasparsity.utils.errors import UserError

# the data keys that decide which samples a split holds, beside the split's own size
# (num_workers, cache_dir do not; the other splits' sizes do not either)
_SAME_DATA_KEYS = ("name", "root", "image_size", "seed", "layout", "num_classes", "attributes")


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


def check_same_data(cfg: Config, ref_cfg: Config, split: str, ref_dir: str | Path) -> None:
    """A :class:`UserError` unless the two configs' ``split`` holds the same samples."""
    keys = (*_SAME_DATA_KEYS, f"{split}_size")
    differ = [f"data.{k}: {getattr(cfg.data, k)!r} vs {getattr(ref_cfg.data, k)!r}"
              for k in keys if getattr(cfg.data, k) != getattr(ref_cfg.data, k)]
    if differ:
        raise UserError(f"--against {ref_dir}: the two runs' {split} splits hold other samples "
                        f"({'; '.join(differ)}), so Δm would compare nothing")


def check_against(run_dir: str | Path, cfg: Config, ref_dir: str | Path, ref_cfg: Config,
                  split: str = "test", which: str = "best") -> None:
    """Before anything is scored: a :class:`UserError` unless the two configs' ``split`` holds
    the same samples and the two models (``which`` checkpoint of the run, ``best`` of the
    reference) have a task in common."""
    check_same_data(cfg, ref_cfg, split, ref_dir)
    mine, theirs = run_tasks(run_dir, cfg, which), run_tasks(ref_dir, ref_cfg)
    if not any(t in theirs for t in mine):
        raise UserError(f"--against {ref_dir}: no task in common "
                        f"({', '.join(mine)} vs {', '.join(theirs)})")


def delta_against(cfg: Config, result: dict[str, Any], ref_cfg: Config,
                  reference: dict[str, Any]) -> dict[str, Any]:
    """Δm (DESIGN §4, the primary metrics of each task) of :func:`evaluate_run`'s ``result``
    against ``reference``, another run scored on the same split: over the tasks both models
    have, with each task's Δ_t beside it.  Metrics whose reference value is 0 or not finite
    leave Δm (listed in ``left_out``); the tasks only one model has are listed in
    ``only_run`` / ``only_reference``.  Runs on other data, or without a task in common, are a
    :class:`UserError` (:func:`check_against` says so before anything is scored)."""
    check_same_data(cfg, ref_cfg, result["split"], reference["run_dir"])
    tasks = [t for t in result["metrics"] if t in reference["metrics"]]
    if not tasks:
        raise UserError(f"--against {reference['run_dir']}: no task in common "
                        f"({', '.join(result['metrics'])} vs {', '.join(reference['metrics'])})")
    types = {t: task.type for t, task in resolve_tasks(cfg, tasks).items()}
    ref = {t: reference["metrics"][t] for t in tasks}
    spec, left_out = usable_spec(default_spec(types), ref,
                                 needed=f"the tasks in common with {reference['run_dir']}")
    bad = [f"{t}.{m}" for t, ms in spec.items() for m in ms
           if not math.isfinite(result["metrics"][t].get(m, math.nan))]
    if bad:
        raise UserError(f"{result['run_dir']}: {', '.join(bad)} is not a finite number, so Δm "
                        "is undefined")
    per_task = per_task_delta({t: result["metrics"][t] for t in spec}, ref, spec)
    return {"run_dir": reference["run_dir"], "checkpoint": reference["checkpoint"],
            "metrics": reference["metrics"], "tasks": list(spec),
            "delta_m": sum(per_task.values()) / len(per_task), "per_task": per_task,
            "spec": spec, "left_out": left_out,
            "only_run": [t for t in result["metrics"] if t not in reference["metrics"]],
            "only_reference": [t for t in reference["metrics"] if t not in result["metrics"]]}


@torch.no_grad()
def trivial_results(cfg, task_names: Sequence[str], split: str = "test") -> dict[str, dict]:
    """Metrics of the trivial predictors (majority class, mean depth, mean normal, all-zero
    edges, majority attribute), statistics from the training split, scored on ``split``."""
    from metasparsity.eval.metrics import build_metrics, update_all

    tasks = resolve_tasks(cfg, task_names)
    stats = trivial_statistics(build_dataset(cfg, "train"), tasks)
    metrics = build_metrics(tasks)
    loader = eval_loader(build_dataset(cfg, split), cfg.train.eval_batch_size, cfg.data.num_workers)
    for x, y in loader:
        update_all(metrics, {t: trivial_prediction(task, stats[t], x, x.shape[0])
                             for t, task in tasks.items()}, y)
    return {t: m.compute() for t, m in metrics.items()}
