"""``metasparsity sweep-lambda``: fixed-λ group-sparse MTL over a λ grid."""

from __future__ import annotations

import argparse
from pathlib import Path

from metasparsity.commands.common import add_run_args, config_from_args, run_dir_from_args
from metasparsity.config import parse_lambda_grid
from metasparsity.utils.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep-lambda", help="fixed-λ sparse MTL over a λ grid: table + Δm/sparsity plot")
    p.add_argument("--grid", default=None,
                   help="comma-separated λ values (default: compare.lambda_grid)")
    add_run_args(p, suffix="_sweep")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # checked like compare.lambda_grid (finite, > 0, no duplicate, no empty entry), before
    # anything is written
    if args.grid is not None:
        args.grid = parse_lambda_grid(args.grid, "--grid")
    cfg = config_from_args(args)
    if args.out is None and args.resume is None:
        args.out = str(Path("runs") / f"{cfg.name}_sweep")
    out = run_dir_from_args(args, cfg)
    grid = args.grid or list(cfg.compare.lambda_grid)
    if not grid:
        raise UserError("no λ grid: pass --grid or set compare.lambda_grid")
    cfg.compare.lambda_grid = list(grid)  # recorded in config.yaml, so --resume needs no --grid
    from metasparsity.recipes.sweep import run_sweep

    summary = run_sweep(cfg, out, grid, resume=bool(args.resume), overwrite=args.overwrite)
    print((out / "sweep.md").read_text())
    print(f"selected λ = {summary['selected']:g}; table {out / 'sweep.md'}, plot {out / 'delta_vs_sparsity.png'}")
    return 0
