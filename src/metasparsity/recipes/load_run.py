"""A finished run's model as the recipes that read runs need it: built from the run's config and
loaded from its best (or last) checkpoint, BatchNorm statistics re-estimated when the checkpoint
asks for it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from metasparsity.builders import build_model
from metasparsity.config import load_config
from metasparsity.data import build_dataset
from metasparsity.training.batches import BatchStream
from metasparsity.training.checkpoint import checkpoint_path
from metasparsity.training.evaluation import bn_stats_to_recompute, recompute_bn_stats
from metasparsity.training.reuse import RESULTS
from metasparsity.training.run_checkpoints import (
    check_which,
    load_model_state,
    load_run_checkpoint,
)
from metasparsity.utils.errors import UserError
from metasparsity.utils.io import read_json
from metasparsity.utils.rundir import CONFIG_FILE, require_run_dir


def load_run_model(run_dir: str | Path, which: str = "best", overrides: Sequence[str] = ()):
    """(cfg, model, checkpoint) of a run directory; the model has every head the run trained.
    ``which``: ``"best"`` (falling back to ``last``) or ``"last"``; anything else is refused."""
    check_which(which)
    run_dir = require_run_dir(run_dir, need=(CONFIG_FILE,))
    cfg = load_config(run_dir / CONFIG_FILE, overrides)
    ck = load_run_checkpoint(run_dir, which)
    tasks = list(ck.meta.get("tasks") or cfg.train_tasks)
    unknown = [t for t in tasks if t not in cfg.data.tasks]
    if unknown:  # resolve_tasks would blame data.tasks
        raise UserError(f"checkpoint {ck.path} predicts {', '.join(map(repr, unknown))}, not "
                        f"among the tasks of its run's data ({', '.join(cfg.data.tasks)}): its "
                        "state.json was damaged, or data.tasks was overridden")
    model = build_model(cfg, tasks)
    load_model_state(model, ck, run_dir, "load")
    return cfg, model, ck


def unfinished_note(run_dir: str | Path, checkpoint: str | Path) -> str | None:
    """A note for a command that read ``checkpoint`` of a run that has not finished (no
    ``results.json``: it was stopped, or is training now), which may not be the run's last
    word; None for a finished run."""
    run_dir = Path(run_dir)
    if (run_dir / RESULTS).is_file():
        return None
    return (f"note: {run_dir} has not finished (no {RESULTS}); this read its checkpoint "
            f"{Path(checkpoint).name}")


def run_tasks(run_dir: str | Path, cfg, which: str = "best") -> list[str]:
    """The tasks whose heads :func:`load_run_model` would give the run's model, read from the
    checkpoint's ``state.json`` alone (no weights loaded); ``cfg``: the run's config."""
    check_which(which)
    for w in (which, "last"):
        path = checkpoint_path(run_dir, w)
        if path is not None and (path / "state.json").is_file():
            try:
                tasks = read_json(path / "state.json").get("tasks")
            except (OSError, ValueError):
                break
            return list(tasks or cfg.train_tasks)
    return list(cfg.train_tasks)


def prepare_bn_stats(cfg, model: torch.nn.Module, ck, device: torch.device) -> bool:
    """Re-estimate the BatchNorm statistics of a loaded run's model on the first training batches
    of its config when its checkpoint asks for it (:func:`bn_stats_to_recompute`); whether it
    did."""
    if not bn_stats_to_recompute(ck.meta):
        return False
    stream = BatchStream(build_dataset(cfg, "train"), cfg.train.batch_size, cfg.train.seed)
    recompute_bn_stats(model, stream, device)
    return True
