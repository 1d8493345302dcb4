"""``metasparsity predict MODEL_DIR IMAGE... [--out DIR]``: run a compact model on image files
(:mod:`metasparsity.recipes.predict`)."""

from __future__ import annotations

import argparse

from metasparsity.commands.common import threads
from metasparsity.utils.limits import MAX_THREADS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="run a compact (pruned) model on image files",
                       description="Predict every task of the compact model in MODEL_DIR (from "
                       "`metasparsity prune`) for each IMAGE; dense tasks are written as PNG "
                       "(+ .npy for depth), image-level ones into predictions.json.")
    p.add_argument("model_dir", metavar="MODEL_DIR")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--out", metavar="DIR", default="predictions",
                   help="output directory (default ./predictions)")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass")
    p.add_argument("--threads", type=threads, default=None,
                   help=f"torch CPU threads, 1 to {MAX_THREADS} (default: the cores, at most 8)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from metasparsity.recipes.predict import PREDICTIONS_FILE, predict_files
    from metasparsity.utils.device import set_threads

    set_threads(args.threads)
    result = predict_files(args.model_dir, args.images, args.out, args.batch_size)
    n_files = sum(int("png" in v) + int("npy" in v) for r in result["images"]
                  for v in r["outputs"].values())
    print(f"{len(result['images'])} image(s), {len(result['tasks'])} task(s): {n_files} files "
          f"and {PREDICTIONS_FILE} in {args.out}")
    return 0
