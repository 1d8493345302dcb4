"""``metasparsity prune RUN_DIR``: remove the channels no layer reads and write a compact model
with its cost table (:mod:`metasparsity.recipes.prune`)."""

from __future__ import annotations

import argparse

from metasparsity.commands.common import positive_int, threads
from metasparsity.utils.args import split_list
from metasparsity.utils.limits import MAX_LATENCY_BATCH, MAX_LATENCY_PASSES, MAX_THREADS


def _sizes(text: str) -> list[int]:
    # the range is prune_run's check (check_latency_options), before anything is read
    parts = split_list(text, "--batch-sizes", "batch size", "1,16", error=argparse.ArgumentTypeError)
    try:
        return [int(v) for v in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None


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
    p.add_argument("--repeats", type=positive_int, default=10, help=f"timed passes per measurement, 1 to {MAX_LATENCY_PASSES}")
    p.add_argument("--warmup", type=int, default=2, help=f"untimed passes before timing, 0 to {MAX_LATENCY_PASSES}")
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
