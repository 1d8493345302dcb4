"""``metasparsity compare``: every method under one protocol; ``metasparsity report``."""

from __future__ import annotations

import argparse
from pathlib import Path

from metasparsity.commands.common import add_run_args, config_from_args, run_dir_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="STL, MTL, fixed-λ grid, (Optuna), meta λ=0, meta-sparsity: one protocol",
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
    from metasparsity.report.compare import summary_table, write_report
    from metasparsity.utils.errors import UserError
    from metasparsity.utils.io import read_json

    path = Path(args.run_dir) / "results.json"
    if not path.is_file():
        raise UserError(f"{args.run_dir}: no results.json (is it a compare run directory?)")
    try:
        results = read_json(path)
        out = write_report(Path(args.run_dir), results)
    except (KeyError, ValueError) as e:
        raise UserError(f"{path} is not a compare results file ({e})") from None
    print(summary_table(results))
    print(f"\nwritten {out}")
    return 0
