"""Which code made a result: the package version and, in a git checkout, its commit.

Every run's ``results.json`` carries :func:`code_identity` under ``"code"``, so a benchmark that
reuses finished runs can tell which were made by other code (:func:`code_label`,
:func:`other_code`) instead of mixing them silently into one table.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_PACKAGE_DIR), *args], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def code_identity() -> dict[str, Any]:
    """``{"version", "commit", "dirty"}`` of the running package.

    ``commit``: the git commit of the checkout the package is imported from (None when it is
    not in one, e.g. an installed wheel, or git is missing); ``dirty``: whether tracked files of
    the package differ from that commit (None without a commit).  Computed once per process.
    """
    from metasparsity import __version__

    commit = _git("rev-parse", "HEAD")
    dirty = None
    if commit:
        status = _git("status", "--porcelain", "--untracked-files=no", "--", ".")
        dirty = None if status is None else bool(status)
    return {"version": __version__, "commit": commit, "dirty": dirty}


def code_label(code: Mapping[str, Any] | None) -> str:
    """A short name of a :func:`code_identity`: ``"1a2b3c4"``, ``"1a2b3c4+dirty"``,
    ``"version 0.1.0"`` without a commit, ``"unrecorded"`` for runs older than the record."""
    if not code:
        return "unrecorded"
    commit = code.get("commit")
    if not commit:
        return f"version {code.get('version')}"
    return commit[:7] + ("+dirty" if code.get("dirty") else "")


def other_code(results: Iterable[tuple[str, Mapping[str, Any] | None]],
               current: Mapping[str, Any] | None = None) -> dict[str, list[str]]:
    """The runs among ``results`` (``(name, results.json contents)``) not made by ``current``
    (default: this process's code), grouped by :func:`code_label`.  A run made by a dirty tree
    never counts as current code, nor does a run without a record."""
    current = code_identity() if current is None else current
    here = code_label(current)
    out: dict[str, list[str]] = {}
    for name, res in results:
        label = code_label((res or {}).get("code"))
        if label != here or label.endswith("+dirty") or label == "unrecorded":
            out.setdefault(label, []).append(name)
    return out


def reused_from_other_code(run_dirs: Iterable[str | Path]) -> dict[str, list[str]]:
    """Of the finished runs among ``run_dirs`` (those with a ``results.json``), the ones made by
    other code than this process's, grouped by :func:`code_label` (see :func:`other_code`)."""
    from metasparsity.utils.io import read_json

    done = [(str(d), read_json(Path(d) / "results.json")) for d in run_dirs
            if (Path(d) / "results.json").is_file()]
    return other_code(done)


def other_code_note(other: Mapping[str, list[str]], total: int) -> str:
    """One sentence on runs reused from other code (``other``: :func:`reused_from_other_code`),
    ``total`` runs in all; empty when there are none."""
    n = sum(len(v) for v in other.values())
    if not n:
        return ""
    parts = ", ".join(f"{label}: {len(v)}" for label, v in sorted(other.items()))
    return (f"{n} of the {total} runs were reused from other code than this code "
            f"({code_label(code_identity())}): {parts}; rerun them in fresh run folders to "
            "measure this code alone.")


def check_reuse(run_dirs: Iterable[str | Path], *, refuse: bool,
                error: Callable[[str], Any]) -> tuple[dict[str, list[str]], str]:
    """A benchmark's check before it reuses ``run_dirs``: the runs made by other code and the
    :func:`other_code_note` on them (empty when none), warned about on stderr; with ``refuse``
    any such run is passed to ``error`` (e.g. ``ArgumentParser.error``: exit 2) instead."""
    dirs = list(run_dirs)
    other = reused_from_other_code(dirs)
    note = other_code_note(other, len(dirs))
    if note and refuse:
        error(f"--current-code-only: {note}")
    if note:
        print(f"warning: {note}", file=sys.stderr, flush=True)
    return other, note
