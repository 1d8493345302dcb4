"""What a run reports while it runs: ``metrics.jsonl`` (and TensorBoard) records and the progress
bar (drawn only on a terminal)."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from metasparsity.utils.io import JsonlWriter


def progress_enabled(requested: bool = True) -> bool:
    """Whether to draw a progress bar: asked for, and stderr (where tqdm draws) is a terminal.

    Redirected to a file or a pipe, a bar would write a carriage-return line per update.
    """
    if not requested:
        return False
    stream = sys.stderr
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def progress_bar(it, *, enabled: bool = True, **kw):
    """``tqdm(it)`` when :func:`progress_enabled` (``enabled`` and stderr a terminal), else ``it``."""
    if not progress_enabled(enabled):
        return it
    from tqdm.auto import tqdm

    return tqdm(it, dynamic_ncols=True, **kw)


class RunLogger:
    """``metrics.jsonl`` (always) and TensorBoard (when installed) for one run."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.jsonl = JsonlWriter(Path(run_dir) / "metrics.jsonl", enabled=enabled)
        self.tb = None
        self.t0 = time.time()
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run_dir) / "tb"))
            except Exception:  # tensorboard is optional
                self.tb = None

    def log(self, step: int, kind: str, values: Mapping[str, Any]) -> None:
        rec = {"step": step, "kind": kind, "time": round(time.time() - self.t0, 3), **values}
        self.jsonl.write(rec)
        if self.tb is not None:
            for k, v in _flatten(values).items():
                if isinstance(v, (int, float)) and v is not None:
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out
