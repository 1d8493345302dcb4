"""Arguments shared by every command that trains, and their handling."""

from __future__ import annotations

import argparse
from pathlib import Path

from metasparsity.config import Config, load_config
from metasparsity.utils.errors import UserError
from metasparsity.utils.rundir import CONFIG_FILE, check_run_dir


def add_config_args(p: argparse.ArgumentParser, *, default_config: str | None = None) -> None:
    p.add_argument("--config", metavar="FILE", default=default_config,
                   help="YAML config (see configs/); defaults apply where it is silent")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. train.max_steps=2 model.depth=18")


def add_run_args(p: argparse.ArgumentParser, *, default_config: str | None = None) -> None:
    """``--config FILE --out RUN_DIR --resume RUN_DIR --overwrite key=value...``"""
    add_config_args(p, default_config=default_config)
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/<name>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")


def config_from_args(args: argparse.Namespace) -> Config:
    """Load the config (a resumed run's own config when ``--resume``), overrides applied."""
    if getattr(args, "resume", None):
        cfg_path = Path(args.resume) / CONFIG_FILE
        if not cfg_path.is_file():
            raise UserError(f"--resume {args.resume}: not a run directory (no {CONFIG_FILE})")
        return load_config(cfg_path, args.overrides)
    return load_config(args.config, args.overrides)


def run_dir_from_args(args: argparse.Namespace, cfg: Config) -> Path:
    """Validate and return the run directory (nothing is created here)."""
    if getattr(args, "resume", None):
        if args.out and Path(args.out) != Path(args.resume):
            raise UserError("--out and --resume name different directories; give only --resume")
        return check_run_dir(args.resume, resume=True)
    out = Path(args.out) if args.out else Path("runs") / cfg.name
    return check_run_dir(out, overwrite=args.overwrite)
