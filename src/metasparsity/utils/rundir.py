"""Run directories: ``runs/<name>/`` with ``config.yaml``, checkpoints, logs and results.

A run directory is created only after the config and the inputs have been validated, so a bad
command leaves nothing behind.  An existing directory is never overwritten unless asked.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from metasparsity.utils.errors import UserError
from metasparsity.utils.io import atomic_write_text

CONFIG_FILE = "config.yaml"


def check_run_dir(path: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Validate (without touching the disk) that ``path`` can be used as a run directory."""
    p = Path(path)
    if resume:
        if not (p / CONFIG_FILE).is_file():
            raise UserError(f"--resume {p}: not a run directory (no {CONFIG_FILE})")
        return p
    if p.exists() and not p.is_dir():
        raise UserError(f"run directory {p} exists and is not a directory")
    if p.is_dir() and any(p.iterdir()) and not overwrite:
        raise UserError(f"run directory {p} already exists; pass --overwrite to replace it or --resume to continue it")
    return p


def create_run_dir(path: str | Path, config_yaml: str, *, overwrite: bool = False) -> Path:
    """Create (or, with ``overwrite``, empty) ``path`` and write the resolved config into it."""
    p = Path(path)
    if p.is_dir() and overwrite:
        shutil.rmtree(p)
    p.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p / CONFIG_FILE, config_yaml)
    return p


def require_run_dir(path: str | Path, *, need: tuple[str, ...] = (CONFIG_FILE,)) -> Path:
    """Check that ``path`` is an existing run directory holding the files in ``need``."""
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"run directory {p} does not exist")
    for name in need:
        if not (p / name).exists():
            raise UserError(f"{p} is not a complete run directory: {name} is missing")
    return p
