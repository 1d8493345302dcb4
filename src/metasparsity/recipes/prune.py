"""Recipe ``prune``: a run's checkpoint with every channel that no layer reads removed (outputs
unchanged), written as a compact model (``model.safetensors`` + ``model.json``, loadable with
:func:`metasparsity.export.load_compact_model`) with ``cost.json`` / ``cost.md`` (parameters,
MACs and latency, dense vs pruned).  The output folder appears complete or not at all.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from metasparsity.data import resolve_tasks
from metasparsity.export import (
    COST_JSON,
    COST_MD,
    check_latency_options,
    cost_comparison,
    cost_markdown,
    input_normalization,
    staged_directory,
    task_meta,
    write_compact_model,
)
from metasparsity.recipes.load_run import load_run_model, prepare_bn_stats, unfinished_note
from metasparsity.sparsity import prune_zero_channels, pruning_report, sparsity_stats
from metasparsity.sparsity.pruning import max_output_difference
from metasparsity.training.evaluation import bn_stats_to_recompute
from metasparsity.training.run_checkpoints import check_which
from metasparsity.utils.device import set_threads
from metasparsity.utils.errors import UserError, require_path
from metasparsity.utils.io import to_jsonable
from metasparsity.utils.limits import MAX_THREADS
from metasparsity.utils.rundir import (
    COMPACT_MODEL,
    check_output_dir,
    config_inputs,
    require_run_dir,
    run_inputs,
)


def check_prune_options(which: str, batch_sizes: Sequence[int], repeats: int, warmup: int,
                        threads: int | None) -> None:
    """Refuse, before anything is read, a ``prune_run`` option outside what ``metasparsity
    prune`` accepts (a :class:`UserError` naming the option)."""
    check_which(which)
    check_latency_options(batch_sizes, repeats, warmup)
    if threads is not None and not (isinstance(threads, int) and not isinstance(threads, bool)
                                    and 1 <= threads <= MAX_THREADS):
        raise UserError(f"--threads must be between 1 and {MAX_THREADS}, got {threads!r}")


def prune_run(run_dir: str | Path, out: str | Path | None = None, *, which: str = "best",
              batch_sizes: Sequence[int] = (1, 16), repeats: int = 10, warmup: int = 2,
              threads: int | None = None, latency: bool = True,
              overwrite: bool = False) -> dict[str, Any]:
    """Prune run ``run_dir``'s ``which`` checkpoint into ``out`` (default ``RUN_DIR/pruned``).

    ``batch_sizes`` / ``repeats`` / ``warmup``: the latency measurement (``latency=False``
    skips it); ``threads``: torch CPU threads (default: the run's ``train.num_threads``);
    ``overwrite``: replace a compact model folder this recipe wrote.  A meta-trained
    checkpoint's BatchNorm statistics are re-estimated first.  Returns ``{"out", "cost",
    "table", "sparsity", "channels_removed"}``.
    """
    check_prune_options(which, batch_sizes, repeats, warmup, threads)
    require_path(out, "--out")
    run_dir = require_run_dir(run_dir)
    out = Path(out) if out is not None else run_dir / "pruned"
    # the run's config.yaml and checkpoints are read: the output may be a new folder inside the
    # run (the default), never the run itself; overwrite replaces only a compact model folder
    check_output_dir(out, COMPACT_MODEL, overwrite=overwrite, inputs=run_inputs(run_dir))
    cfg, model, ck = load_run_model(run_dir, which)
    check_output_dir(out, COMPACT_MODEL, overwrite=overwrite, inputs=config_inputs(cfg))
    set_threads(threads or cfg.train.num_threads)
    model.to("cpu").eval()
    if bn_stats_to_recompute(ck.meta):
        print("recomputing BatchNorm statistics on training batches (meta-trained checkpoint)")
        prepare_bn_stats(cfg, model, ck, torch.device("cpu"))
        model.eval()

    size = int(cfg.data.image_size)
    example = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    pruned = prune_zero_channels(model, example)
    report = pruning_report(model, pruned)
    stats = sparsity_stats(model)
    cost = cost_comparison(model, pruned, size, batch_sizes, repeats, warmup, latency=latency)
    cost["sparsity"] = {"group_sparsity": stats.group_sparsity,
                        "param_sparsity": stats.param_sparsity,
                        "num_groups": stats.num_groups, "num_zero_groups": stats.num_zero_groups}
    check = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    cost["max_abs_output_difference"] = max_output_difference(model, pruned, check)
    cost["layers"] = report["layers"]
    tasks = resolve_tasks(cfg, model.tasks)
    meta = {
        "tasks": [task_meta(tasks[t]) for t in model.tasks],
        "image_size": size,
        "normalization": input_normalization(cfg),
        "source": {"run_dir": str(run_dir), "checkpoint": str(ck.path),
                   "step": ck.meta.get("step"), "data": cfg.data.name},
        "sparsity": cost["sparsity"],
        "pruning": {"params_dense": report["params_before"],
                    "params_pruned": report["params_after"],
                    "conv_channels_removed": report["conv_channels_removed"]},
    }
    table = cost_markdown(cost)
    with staged_directory(out, overwrite=overwrite, kind=COMPACT_MODEL) as tmp:
        write_compact_model(pruned, tmp, meta)
        (tmp / COST_JSON).write_text(json.dumps(to_jsonable(cost), indent=1) + "\n",
                                     encoding="utf-8")
        (tmp / COST_MD).write_text(f"# Cost of {run_dir}: dense vs pruned\n\n{table}",
                                   encoding="utf-8")
    if note := unfinished_note(run_dir, ck.path):  # once written: an error stays one line
        print(note, file=sys.stderr, flush=True)
    return {"out": out, "cost": cost, "table": table, "sparsity": stats,
            "channels_removed": report["conv_channels_removed"]}
