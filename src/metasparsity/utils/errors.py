"""Errors that are the user's to fix.

Every :class:`UserError` reaching the command line is printed as one message and turns into exit
code 2, with no traceback and nothing half-written.  Code raises it for bad configs, unknown task
names, missing data folders, unreadable files and invalid run directories.
"""

from __future__ import annotations

import os
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input (config, paths, names); the CLI exits with code 2."""


class ConfigError(UserError):
    """An invalid configuration value; the message names the key and the allowed values."""


class TargetError(UserError, ValueError):
    """A target value a loss or metric cannot take (a segmentation label out of range, an edge
    or binary target outside [0, 1]): the data's to fix, so one line at the command line; a
    ValueError to Python callers."""


class NonFiniteError(UserError):
    """A NaN / infinite loss or λ; the run stops, keeping its last good checkpoint.

    ``step``: the (1-based) step whose loss was not finite; ``task``: the task (or ``"λ"``).
    """

    def __init__(self, message: str, *, step: int | None = None, task: str | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.task = task
        self.detail = message  # the message without its resume hint
        self.resume: tuple[str, str, float] | None = None  # (run dir, LR key, LR) of the run

    def message_for(self, command: str, top: str | Path | None) -> str:
        """The message for ``metasparsity COMMAND``: when the run that diverged is a sub-run of
        ``top`` (a sweep or comparison), the hint resumes ``top`` (whose overrides reach the
        sub-runs; finished sub-runs are kept), not the sub-run, whose config.yaml the parent
        rewrites on its next resume."""
        if self.resume is None or top is None:
            return str(self)
        run_dir, key, lr = self.resume
        if Path(run_dir).resolve() == Path(top).resolve():
            return str(self)
        return (f"{self.detail}; resume the whole {command} with a smaller learning rate: "
                f"metasparsity {command} --resume {top} {key}={lr / 10:g}")


def require_path(value: object, label: str, error: type[UserError] = UserError) -> None:
    """Refuse an empty path argument: ``error("<label>: empty path")`` (default :class:`UserError`).

    Only a value whose ``str()`` is empty (the empty string) is refused; ``None`` (an option not
    given) and ``Path`` objects pass, since ``str()`` of them is never empty.
    """
    if not str(value):
        raise error(f"{label}: empty path")


def user_message(e: BaseException) -> str:
    """The one line of a :class:`UserError`, also when a DataLoader worker raised it (PyTorch
    re-raises it in the main process with the worker's whole traceback as its message)."""
    text = str(e).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.splitlines())


def os_error_message(e: OSError) -> str:
    """``<strerror>: <path>`` of an error of the operating system, on one line."""
    reason = e.strerror or (os.strerror(e.errno) if isinstance(e.errno, int) else "") or \
        user_message(e)  # e.g. from a DataLoader worker: the worker's traceback as its text
    if not reason:
        reason = type(e).__name__
    reason = " ".join(str(reason).split())
    paths = [os.fsdecode(f) if isinstance(f, (str, bytes, os.PathLike)) else str(f)
             for f in (e.filename, e.filename2) if f not in (None, "", b"")]
    return f"{reason}: {' -> '.join(paths)}" if paths else reason
