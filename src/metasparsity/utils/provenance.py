"""Which code made a result (the package version, a digest of the package's files and, in a git
checkout, its commit) and on which machine.

Every run's ``results.json`` carries :func:`code_identity` under ``"code"`` (and, for a run
resumed from a checkpoint of other code, that code under ``"code_before_resume"``), so whatever
reuses finished runs can tell which were made by other code (:func:`code_label`,
:func:`other_code`) instead of mixing them silently into one table.  Two records are the same
code when the package's files were the same (:func:`same_code`), whatever the commit: a run
made before an edit of the README or of a benchmark script is still this package's run.  Reading run folders, and
the check a benchmark makes before it reuses them, live in :mod:`metasparsity.training.reuse`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        # --no-optional-locks: `status` may not take index.lock behind a user's own git command
        out = subprocess.run(["git", "--no-optional-locks", "-C", str(_PACKAGE_DIR), *args],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _is_code(rel: Path) -> bool:
    """Whether a file of the package (path relative to it) is part of its code: not a compiled
    cache, nor an editor's or the system's litter (hidden files such as ``.a.py.swp``, ``*~``)."""
    return not (any(part == "__pycache__" or part.startswith(".") for part in rel.parts)
                or rel.suffix in (".pyc", ".pyo") or rel.name.endswith("~"))


def package_digest(folder: str | Path | None = None) -> str:
    """``"sha256:<16 hex>"`` over the package's files (``folder``, default this package): every
    code file's path relative to it and its bytes, each length-prefixed, in path order (see
    :func:`_is_code` for what is left out; a file that cannot be read counts by its path and
    as unreadable).  Equal digests mean the same code whatever the commit or the state of the
    work tree."""
    root = Path(folder) if folder is not None else _PACKAGE_DIR
    h = hashlib.sha256()
    for rel in sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file()):
        if not _is_code(rel):
            continue
        try:
            data = (root / rel).read_bytes()
        except OSError:
            data = b"\xff unreadable"
        for part in (rel.as_posix().encode(), data):
            h.update(len(part).to_bytes(8, "little") + part)
    return "sha256:" + h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def code_identity() -> dict[str, Any]:
    """``{"version", "commit", "dirty", "package"}`` of the running package.

    ``commit``: the git commit of the checkout the package is imported from (None when it is
    not in one, e.g. an installed wheel, git is missing, or the git repository around the
    package does not track it, as a project's own repository around its ``.venv``);
    ``dirty``: whether tracked files of the package differ from that commit (None without a
    commit); ``package``: :func:`package_digest`, which needs no git.  Computed once per
    process.
    """
    from metasparsity import __version__

    commit = _git("rev-parse", "HEAD")
    if commit and not _git("ls-files", "--", "__init__.py"):
        commit = None  # a repository around the package, not the package's own checkout
    dirty = None
    if commit:
        status = _git("status", "--porcelain", "--untracked-files=no", "--", ".")
        dirty = None if status is None else bool(status)
    return {"version": __version__, "commit": commit, "dirty": dirty,
            "package": package_digest()}


def code_label(code: Mapping[str, Any] | None) -> str:
    """A short name of a :func:`code_identity`: ``"1a2b3c4"``, ``"1a2b3c4+dirty"``,
    ``"version 0.1.0"`` without a commit, ``"unrecorded"`` for runs older than the record."""
    if not code:
        return "unrecorded"
    commit = code.get("commit")
    if not commit:
        return f"version {code.get('version')}"
    return commit[:7] + ("+dirty" if code.get("dirty") else "")


def same_code(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether two :func:`code_identity` records name the same code: the same package digest;
    for a record from before the digest, the same commit with neither tree edited.  No record
    (``None``) is never the same code."""
    if not a or not b:
        return False
    if a.get("package") and b.get("package"):
        return a["package"] == b["package"]
    return (bool(a.get("commit")) and a.get("commit") == b.get("commit")
            and a.get("dirty") is False and b.get("dirty") is False)


def _label(code: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> str:
    """:func:`code_label` of ``code``, with its package digest appended when it reads like
    ``current``'s own label although the code differs (another dirty tree at one commit,
    another wheel of one version)."""
    label = code_label(code)
    if (current is not None and code and code.get("package") and label == code_label(current)
            and not same_code(code, current)):
        return f"{label} (package {code['package'].removeprefix('sha256:')[:8]})"
    return label


def run_code_label(res: Mapping[str, Any] | None,
                   current: Mapping[str, Any] | None = None) -> str:
    """:func:`code_label` of a run's ``results.json`` contents ``res``, with the code it was
    resumed from: ``"1a2b3c4 after unrecorded, 5d6e7f8"``; ``"unfinished, ..."`` for what
    :func:`metasparsity.training.reuse.run_code` reads from an unfinished run's checkpoint.
    With ``current`` (a :func:`code_identity`), a code whose label reads like its own is named
    apart by its package digest."""
    res = res or {}
    before = res.get("code_before_resume") or []
    return (("unfinished, " if res.get("unfinished") else "") + _label(res.get("code"), current)
            + (" after " + ", ".join(_label(c, current) for c in before) if before else ""))


def other_code(results: Iterable[tuple[str, Mapping[str, Any] | None]],
               current: Mapping[str, Any] | None = None) -> dict[str, list[str]]:
    """The runs among ``results`` (``(name, results.json contents)``) not made by ``current``
    (default: this process's code) alone, grouped by :func:`run_code_label`: every code a run
    records (``code``, and ``code_before_resume`` of a run resumed across code) must be
    :func:`same_code` as ``current``.  So a run without a record is other code, and so is a run
    recorded before the package digest unless its commit is ``current``'s, both unedited."""
    current = code_identity() if current is None else current
    out: dict[str, list[str]] = {}
    for name, res in results:
        res = res or {}
        codes = [res.get("code"), *(res.get("code_before_resume") or [])]
        if not all(same_code(c, current) for c in codes):
            out.setdefault(run_code_label(res, current), []).append(name)
    return out


def other_code_note(other: Mapping[str, list[str]], total: int) -> str:
    """One sentence on runs reused from other code (``other``: :func:`other_code`),
    ``total`` runs in all; empty when there are none."""
    n = sum(len(v) for v in other.values())
    if not n:
        return ""
    parts = ", ".join(f"{label}: {len(v)}" for label, v in sorted(other.items()))
    return (f"{n} of the {total} runs were reused from other code than this code "
            f"({code_label(code_identity())}): {parts}; rerun them in fresh run folders to "
            "measure this code alone.")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def machine_identity() -> dict[str, Any]:
    """``{"cpu", "cpu_capability", "cores", "python", "torch"}`` of this machine.

    Training is deterministic on one machine, but the same code has trained to other numbers
    in another session, most likely on another CPU (whose vector instructions,
    ``cpu_capability``: torch's kernel set such as AVX2 or AVX512, round differently, so that
    runs drift apart over many steps); every run records where it ran."""
    import torch

    return {"cpu": _cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__}


def machine_text(m: dict[str, Any] | None = None) -> str:
    """:func:`machine_identity` (or ``m``, one it returned) as a result file's header says it:
    ``"<cpu> (<capability>, <n> cores), torch <version>"``."""
    m = machine_identity() if m is None else m
    return f"{m['cpu']} ({m['cpu_capability']}, {m['cores']} cores), torch {m['torch']}"


def command_line(script: str, argv: Iterable[str], root: str | Path) -> str:
    """The shell command that ran ``script`` with ``argv``, as a result file records it: paths
    inside ``root`` (the repository) are written relative to it, as typed from there, so the
    record names no one's home directory (``--out=/abs/path`` and ``key=/abs/path`` overrides
    too); paths outside it stay as they are."""
    import shlex

    root = Path(root).resolve()

    def rel(arg: str) -> str:
        key, eq, value = arg.partition("=") if "=" in arg else ("", "", arg)
        p = Path(value)
        if p.is_absolute():
            try:
                value = p.resolve().relative_to(root).as_posix() or "."
            except ValueError:
                pass
        return f"{key}{eq}{value}"

    return shlex.join(["python", script, *(rel(a) for a in argv)])
