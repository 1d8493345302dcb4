"""Run directories: ``runs/<name>/`` with ``config.yaml``, checkpoints, logs and results.

A run directory is created only after the config and the inputs have been validated, so a bad
command leaves nothing behind.  An existing directory is never overwritten unless asked, and even
``--overwrite`` only ever deletes a directory that is a run directory (it holds ``config.yaml``)
or is empty, so a mistyped ``--out`` cannot wipe unrelated files.

``config.yaml`` always holds the resolved config of the latest invocation: a resumed run with
overrides (``--resume DIR train.max_steps=2000``) rewrites it atomically, and the recipe logs
which keys changed in ``metrics.jsonl`` (a ``kind: "resume"`` record).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from metasparsity.utils.errors import UserError
from metasparsity.utils.io import atomic_write_text

CONFIG_FILE = "config.yaml"


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, after a resumable checkpoint of ``step`` was saved in ``run_dir``.

    A subclass of :class:`KeyboardInterrupt`, so code that does not know it still stops; the
    command line turns it into the message ``interrupted at step N; resume with: …`` and exit
    code 130.
    """

    def __init__(self, step: int, run_dir: str | Path) -> None:
        super().__init__(f"interrupted at step {step}; checkpoint in {run_dir}")
        self.step = int(step)
        self.run_dir = Path(run_dir)


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def check_run_dir(path: str | Path, *, overwrite: bool = False, resume: bool = False) -> Path:
    """Validate (without touching the disk) that ``path`` can be used as a run directory."""
    p = Path(path)
    if resume:
        if not p.is_dir():
            raise UserError(f"--resume {p}: no such run directory")
        if not is_run_dir(p):
            raise UserError(f"--resume {p}: not a run directory (no {CONFIG_FILE})")
        return p
    if p.exists() and not p.is_dir():
        raise UserError(f"run directory {p} exists and is not a directory")
    if p.is_dir() and any(p.iterdir()):
        if not overwrite:
            raise UserError(f"run directory {p} already exists; pass --overwrite to replace it "
                            "or --resume to continue it")
        if not is_run_dir(p):
            raise UserError(f"--overwrite: {p} is not a run directory (no {CONFIG_FILE}); "
                            "refusing to delete it")
    return p


def create_run_dir(path: str | Path, config_yaml: str, *, overwrite: bool = False) -> Path:
    """Create (or, with ``overwrite``, empty) ``path`` and write the resolved config into it."""
    p = Path(path)
    check_run_dir(p, overwrite=overwrite)
    if p.is_dir() and overwrite and any(p.iterdir()):
        shutil.rmtree(p)
    p.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p / CONFIG_FILE, config_yaml)
    return p


def _diff(old: Any, new: Any, prefix: str = "") -> dict[str, list[Any]]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: dict[str, list[Any]] = {}
        for k in list(old) + [k for k in new if k not in old]:
            out.update(_diff(old.get(k), new.get(k), f"{prefix}{k}."))
        return out
    return {} if old == new else {prefix.rstrip("."): [old, new]}


def update_run_config(path: str | Path, config_yaml: str) -> dict[str, list[Any]]:
    """Atomically replace a resumed run's ``config.yaml``; return ``{key: [old, new]}`` changed."""
    p = Path(path) / CONFIG_FILE
    try:
        old = yaml.safe_load(p.read_text(encoding="utf-8")) if p.is_file() else {}
    except yaml.YAMLError:
        old = {}
    changed = _diff(old or {}, yaml.safe_load(config_yaml) or {})
    if changed or not p.is_file():
        atomic_write_text(p, config_yaml)
    return changed


def require_run_dir(path: str | Path, *, need: tuple[str, ...] = (CONFIG_FILE,)) -> Path:
    """Check that ``path`` is an existing run directory holding the files in ``need``."""
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"run directory {p} does not exist")
    for name in need:
        if not (p / name).exists():
            raise UserError(f"{p} is not a complete run directory: {name} is missing")
    return p
