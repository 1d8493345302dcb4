"""``metasparsity compare``: every method under one protocol; ``metasparsity report``."""

from __future__ import annotations

import argparse
from pathlib import Path

from metasparsity.commands.common import add_run_args, config_from_args, run_dir_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="STL, MTL, fixed-λ grid, (Optuna), meta λ=0, meta-sparsity, budget modes: one protocol",
        description="Run every method of compare.methods for every seed of compare.seeds under "
        "the same budget and split, then write results.json, report.md and plots.")
    add_run_args(p, suffix="_compare")
    p.set_defaults(func=run)
    r = sub.add_parser("report", help="regenerate report.md and plots of a compare run, no training")
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.set_defaults(func=run_report)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.out is None and args.resume is None:
        args.out = str(Path("runs") / f"{cfg.name}_compare")
    out = run_dir_from_args(args, cfg)
    from metasparsity.recipes.compare import run_compare
    from metasparsity.report.compare import summary_table

    res = run_compare(cfg, out, resume=bool(args.resume), overwrite=args.overwrite)
    print(summary_table(res))
    print(f"\nreport: {out / 'report.md'}  (results {out / 'results.json'})")
    return 0


def run_report(args: argparse.Namespace) -> int:
    from metasparsity.report.compare import prepare_report, summary_table
    from metasparsity.utils.errors import UserError, require_path
    from metasparsity.utils.io import load_json

    require_path(args.run_dir, "RUN_DIR")
    path = Path(args.run_dir) / "results.json"
    if not path.is_file():
        raise UserError(f"{args.run_dir}: no results.json (is it a compare run directory?)")
    results = load_json(path, what="compare results file")
    # everything the report reads (its shape included), before a plot or report.md is written
    write = prepare_report(Path(args.run_dir), results)
    table = summary_table(results)  # prepare_report rendered it once
    out = write()  # drawing: an error here is ours, not the file's
    print(table)
    print(f"\nwritten {out}")
    return 0
