"""``metasparsity sweep-lambda``: fixed-λ group-sparse MTL over a λ grid."""

from __future__ import annotations

import argparse
from pathlib import Path

from metasparsity.commands.common import add_run_args, config_from_args, run_dir_from_args
from metasparsity.config import parse_lambda_grid
from metasparsity.utils.errors import ConfigError, UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep-lambda", help="fixed-λ sparse MTL over a λ grid: table + Δm/sparsity plot")
    p.add_argument("--grid", default=None,
                   help="comma-separated λ values (default: compare.lambda_grid)")
    add_run_args(p, suffix="_sweep")
    p.set_defaults(func=run)


def check_grid_entries(text: str) -> None:
    """An empty entry among λ values (``1e-3,`` or ``1e-3,,3e-3``) is a typo, not a value to drop.
    (A grid of nothing but commas is left to :func:`parse_lambda_grid`: "the λ grid is empty".)"""
    parts = [p.strip() for p in str(text).split(",")]
    if any(parts) and not all(parts):
        where = ("at the end" if not parts[-1] else "at the start" if not parts[0]
                 else f"after {next(p for p, q in zip(parts, parts[1:]) if p and not q)!r}")
        raise ConfigError(f"--grid {text!r} has an empty entry {where}; give comma-separated "
                          "positive numbers, e.g. 1e-4,1e-3")


def run(args: argparse.Namespace) -> int:
    # checked like compare.lambda_grid (finite, > 0, no duplicate, no empty entry), before
    # anything is written
    if args.grid is not None:
        check_grid_entries(args.grid)
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
