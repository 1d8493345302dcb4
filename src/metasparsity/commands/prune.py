"""``metasparsity prune RUN_DIR``: remove the channels no layer reads; write a compact model.

Loads the run's best checkpoint, deletes every channel whose consumers all have zero input
weights (:func:`metasparsity.sparsity.prune_zero_channels`; outputs unchanged), and writes
MODEL_DIR (default ``RUN_DIR/pruned``) with ``model.safetensors`` + ``model.json`` (loadable with
:func:`metasparsity.export.load_compact_model`, no training config needed), ``cost.json`` and
``cost.md`` (parameters, MACs and latency, dense vs pruned).  MODEL_DIR appears complete or not at
all.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from metasparsity.utils.errors import UserError


def _sizes(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers: {text!r}")
    return vals


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune", help="physically remove zero channels; write a compact model and its cost table",
        description="Load RUN_DIR's best checkpoint, remove every channel that no layer reads "
        "(outputs unchanged), and write MODEL_DIR with model.safetensors, model.json, cost.json "
        "and cost.md (parameters, MACs, latency: dense vs pruned).")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--out", metavar="MODEL_DIR", help="output directory (default RUN_DIR/pruned)")
    p.add_argument("--which", default="best", choices=["best", "last"], help="checkpoint to load")
    p.add_argument("--batch-sizes", type=_sizes, default=[1, 16], metavar="B1,B2",
                   help="batch sizes of the latency measurement (default 1,16)")
    p.add_argument("--repeats", type=_positive, default=10, help="timed passes per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed passes before timing")
    p.add_argument("--threads", type=_positive, default=None,
                   help="torch CPU threads (default: the run's train.num_threads)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--overwrite", action="store_true", help="replace an existing MODEL_DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from metasparsity.data import resolve_tasks
    from metasparsity.export import (
        COST_JSON,
        COST_MD,
        cost_comparison,
        cost_markdown,
        input_normalization,
        staged_directory,
        task_meta,
        write_compact_model,
    )
    from metasparsity.recipes.evaluate_run import prepare_bn_stats
    from metasparsity.sparsity import prune_zero_channels, pruning_report, sparsity_stats
    from metasparsity.sparsity.pruning import max_output_difference
    from metasparsity.training.evaluation import bn_stats_to_recompute
    from metasparsity.training.run_checkpoints import load_run_model
    from metasparsity.utils.device import set_threads
    from metasparsity.utils.io import to_jsonable
    from metasparsity.utils.rundir import (
        COMPACT_MODEL,
        check_output_dir,
        config_inputs,
        require_run_dir,
        run_inputs,
    )

    if args.warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {args.warmup}")
    run_dir = require_run_dir(args.run_dir)
    out = Path(args.out) if args.out else run_dir / "pruned"
    # the run's config.yaml and checkpoints are read: MODEL_DIR may be a new folder inside the
    # run (the default), never the run itself; --overwrite replaces only a compact model folder
    check_output_dir(out, COMPACT_MODEL, overwrite=args.overwrite, inputs=run_inputs(run_dir))
    cfg, model, ck = load_run_model(run_dir, args.which)
    check_output_dir(out, COMPACT_MODEL, overwrite=args.overwrite, inputs=config_inputs(cfg))
    set_threads(args.threads or cfg.train.num_threads)
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
    cost = cost_comparison(model, pruned, size, args.batch_sizes, args.repeats, args.warmup,
                           latency=not args.no_latency)
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
    with staged_directory(out, overwrite=args.overwrite, kind=COMPACT_MODEL) as tmp:
        write_compact_model(pruned, tmp, meta)
        (tmp / COST_JSON).write_text(json.dumps(to_jsonable(cost), indent=1) + "\n",
                                     encoding="utf-8")
        (tmp / COST_MD).write_text(f"# Cost of {run_dir}: dense vs pruned\n\n{table}",
                                   encoding="utf-8")
    print(table, end="")
    print(f"group sparsity {100 * stats.group_sparsity:.1f} %; removed "
          f"{report['conv_channels_removed']} conv channels (outputs within "
          f"{cost['max_abs_output_difference']:.1g} of the dense model's); compact model in {out}")
    return 0
