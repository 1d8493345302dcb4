"""Which code made a run folder that a sweep, a comparison or a benchmark reuses or continues.

A finished run says so in its ``results.json`` (``"code"``, and ``"code_before_resume"`` when a
resume crossed code); an unfinished one in its last checkpoint's ``state.json`` (``"code"``: every
code that trained it so far, oldest first; a checkpoint from before the record has none).  A
continued run of other code would mix two codes in one result, so it counts as other code too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from metasparsity.training.checkpoint import checkpoint_path
from metasparsity.utils.io import load_json, read_json
from metasparsity.utils.provenance import code_identity, code_label, other_code, other_code_note

RESULTS = "results.json"

#: What a sweep or comparison reads of a finished sub-run's ``results.json`` (other keys free).
RUN_RESULTS_SHAPE = {"kind": str, "val": dict, "test?": (dict, type(None)),
                     "sparsity": {"group_sparsity": float, "param_sparsity": float,
                                  "per_layer": list}}


def read_run_results(run_dir: str | Path) -> dict[str, Any]:
    """A finished run's ``results.json``; a damaged one is a one-line
    :class:`~metasparsity.utils.errors.UserError` naming it."""
    return load_json(Path(run_dir) / RESULTS, RUN_RESULTS_SHAPE, what="results file")


def check_finished_sub_runs(out: str | Path) -> None:
    """Before a continued sweep or comparison in ``out`` changes anything: every finished
    sub-run's ``results.json`` below ``out`` can be reused (:func:`read_run_results`)."""
    from metasparsity.utils.errors import UserError

    out = Path(out)
    for p in sorted(out.rglob(RESULTS)):
        if p.parent != out:
            try:
                read_run_results(p.parent)
            except UserError as e:
                raise UserError(f"{e}; nothing was changed (delete that file to finish the "
                                "sub-run again from its checkpoint)") from None


def checkpoint_codes(meta: dict[str, Any] | None) -> list[dict[str, Any] | None]:
    """The codes a checkpoint's meta records, oldest first (``[None]``: saved before the
    record existed; ``[]`` for no checkpoint)."""
    if meta is None:
        return []
    codes = meta.get("code")
    return list(codes) if isinstance(codes, list) and codes else [None]


def run_code(run_dir: str | Path) -> dict[str, Any] | None:
    """What :func:`~metasparsity.utils.provenance.other_code` reads of a run folder: its
    ``results.json`` when it finished; for an unfinished run with a checkpoint, the codes that
    checkpoint records as ``{"code": newest, "code_before_resume": older, "unfinished": True}``;
    None for a folder with neither (nothing was made yet)."""
    run_dir = Path(run_dir)
    if (run_dir / RESULTS).is_file():
        return load_json(run_dir / RESULTS, dict, what="results file")
    ck = checkpoint_path(run_dir, "last")
    if ck is None or not (ck / "state.json").is_file():
        return None
    try:
        codes = checkpoint_codes(read_json(ck / "state.json"))
    except (OSError, ValueError):
        return None
    return {"code": codes[-1], "code_before_resume": codes[:-1], "unfinished": True}


def reused_from_other_code(run_dirs: Iterable[str | Path],
                           root: str | Path | None = None) -> dict[str, list[str]]:
    """Of ``run_dirs`` (relative to ``root`` if given, and named so), the finished runs and the
    unfinished ones with a checkpoint that were made (so far) by other code than this
    process's, grouped by :func:`~metasparsity.utils.provenance.run_code_label`."""
    base = Path(root) if root is not None else Path()
    made = [(str(d), run_code(base / d)) for d in run_dirs]
    return other_code([(d, res) for d, res in made if res is not None])


def check_reuse(run_dirs: Iterable[str | Path], *, refuse: bool, error: Callable[[str], Any],
                root: str | Path | None = None) -> tuple[dict[str, list[str]], str]:
    """A benchmark's check before it reuses or continues ``run_dirs``: the runs made by other
    code (named relative to ``root`` when they lie under it) and the
    :func:`~metasparsity.utils.provenance.other_code_note` on them (empty when none), warned
    about on stderr; with ``refuse`` any such run is passed to ``error`` (e.g.
    ``ArgumentParser.error``: exit 2) instead."""
    dirs = [Path(d) for d in run_dirs]
    if root is not None:
        r = Path(root).resolve()
        dirs = [d.resolve().relative_to(r) if d.resolve().is_relative_to(r) else d for d in dirs]
    other = reused_from_other_code(dirs, root)
    note = other_code_note(other, len(dirs))
    if note and refuse:
        error(f"--current-code-only: {note}")
    if note:
        print(f"warning: {note}", file=sys.stderr, flush=True)
    return other, note


def reuse_note(run_dir: str | Path, res: dict[str, Any] | None) -> str:
    """The stderr note of a sweep or comparison that reuses (``res``: its ``results.json``)
    or continues (``res``: :func:`run_code` of its checkpoint) a run of other code; empty for
    a run of this code (:func:`~metasparsity.utils.provenance.same_code`)."""
    if res is None:
        return ""
    other = other_code([(str(run_dir), res)])
    if not other:
        return ""
    what = "continuing" if res.get("unfinished") else "reusing"
    label = next(iter(other))
    return (f"note: {what} {run_dir}, made by other code ({label}; this is "
            f"{code_label(code_identity())})")
