"""``metasparsity prune RUN_DIR``: remove the channels no layer reads and write a compact model
with its cost table (:mod:`metasparsity.recipes.prune`)."""

from __future__ import annotations

import argparse

from metasparsity.commands.common import positive_int, threads
from metasparsity.config.schema import MAX_LATENCY_BATCH
from metasparsity.utils.args import split_list
from metasparsity.utils.limits import MAX_THREADS


def _sizes(text: str) -> list[int]:
    parts = split_list(text, "--batch-sizes", "batch size", "1,16", error=argparse.ArgumentTypeError)
    try:
        vals = [int(v) for v in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if any(not 1 <= v <= MAX_LATENCY_BATCH for v in vals):
        raise argparse.ArgumentTypeError(
            f"batch sizes must be integers between 1 and {MAX_LATENCY_BATCH}: {text!r}")
    if len(set(vals)) != len(vals):  # "4,04"
        raise argparse.ArgumentTypeError(f"each batch size may appear only once: {text!r}")
    return vals


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
                   help="batch sizes of the latency measurement, each 1 to "
                   f"{MAX_LATENCY_BATCH} (default 1,16)")
    p.add_argument("--repeats", type=positive_int, default=10, help="timed passes per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed passes before timing")
    p.add_argument("--threads", type=threads, default=None,
                   help=f"torch CPU threads, 1 to {MAX_THREADS} (default: the run's "
                   "train.num_threads)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--overwrite", action="store_true", help="replace an existing MODEL_DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from metasparsity.recipes.prune import prune_run

    res = prune_run(args.run_dir, args.out, which=args.which, batch_sizes=args.batch_sizes,
                    repeats=args.repeats, warmup=args.warmup, threads=args.threads,
                    latency=not args.no_latency, overwrite=args.overwrite)
    print(res["table"], end="")
    print(f"group sparsity {100 * res['sparsity'].group_sparsity:.1f} %; removed "
          f"{res['channels_removed']} conv channels (outputs within "
          f"{res['cost']['max_abs_output_difference']:.1g} of the dense model's); "
          f"compact model in {res['out']}")
    return 0
