"""A run's checkpoints as a whole: the one to resume or load (its pointer, else the newest complete
one, with a note), whether a run has any, and the last good one after a divergence.  Readers trust nothing: when checkpoints exist but none is complete, loading stops
with a :class:`UserError` (a resumed run never silently restarts from step 0).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from metasparsity.training.checkpoint import (
    CKPT_DIR,
    Checkpoint,
    CheckpointThreat,
    NoCompleteCheckpoint,
    checkpoint_dirs,
    checkpoint_path,
    checkpoint_step,
    load_checkpoint,
    nonfinite_tensors,
    pointed_dir,
    read_pointer,
)
from metasparsity.utils.errors import UserError
from metasparsity.utils.io import atomic_write_text
from metasparsity.utils.rundir import CONFIG_FILE, LAYOUTS, run_layout

CHECKPOINT_CHOICES = ("best", "last")
"""The checkpoints a run's model is loaded from (``--which``)."""


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def has_checkpoints(run_dir: str | Path) -> bool:
    """Whether a run directory holds any checkpoint or pointer (complete or not).

    What a comparison or sweep checks to decide that a sub-run is to be resumed rather than
    started afresh: a sub-run with none has nothing a restart could lose.
    """
    root = Path(run_dir) / CKPT_DIR
    return bool(checkpoint_dirs(root)) or any((root / w).is_file() for w in ("last", "best"))


def kept_checkpoint_note(run_dir: str | Path) -> str:
    """``"the last good checkpoint (step N) is kept in DIR"``, or that none was saved yet."""
    p = checkpoint_path(run_dir, "last")
    if p is None:
        return f"no checkpoint had been saved yet in {run_dir}"
    return f"the last good checkpoint (step {checkpoint_step(p)}) is kept in {p}"


def _rel(root: Path, p: Path) -> str:
    return f"{CKPT_DIR}/{p.relative_to(root)}" if p.is_relative_to(root) else str(p)


def check_which(which: object) -> None:
    """Refuse a ``which`` other than ``"best"`` or ``"last"`` (:data:`CHECKPOINT_CHOICES`): a
    typo would otherwise load the newest checkpoint."""
    if not isinstance(which, str) or which not in CHECKPOINT_CHOICES:
        raise UserError(f"--which must be {' or '.join(map(repr, CHECKPOINT_CHOICES))}, "
                        f"got {which!r}")


def find_checkpoint(run_dir: str | Path, which: str = "last") -> Checkpoint | None:
    """The complete checkpoint the ``which`` pointer names (``best`` falls back to ``last``).

    When the pointer names a missing or incomplete checkpoint: the newest complete checkpoint,
    with a one-line note on stderr.  None when the run has no checkpoint at all;
    :class:`NoCompleteCheckpoint` when it has some but none is complete;
    :class:`CheckpointThreat` (never a fallback) for a file that would run code;
    :class:`UserError` for a ``which`` other than ``best`` or ``last``.
    """
    check_which(which)
    root = Path(run_dir) / CKPT_DIR
    problems: list[str] = []
    tried: set[Path] = set()
    for w in [which] + (["last"] if which == "best" else []):
        name = read_pointer(root, w)
        if name is None:
            continue
        path = pointed_dir(root, name)
        if path is None:
            problems.append(f"{CKPT_DIR}/{w} names {name!r}, which does not exist")
            continue
        if path in tried:
            continue
        tried.add(path)
        try:
            ck = load_checkpoint(path)
        except CheckpointThreat:
            raise
        except UserError as e:
            problems.append(f"{CKPT_DIR}/{w} names an unusable checkpoint: {e}")
            continue
        if problems:
            _note(f"{run_dir}: {problems[0]}; using {CKPT_DIR}/{w} ({path.name}) instead")
        return ck
    found = checkpoint_dirs(root)
    if found and not problems:
        problems.append(f"{CKPT_DIR}/last is missing")
    for path in found:
        if path in tried:
            continue
        try:
            ck = load_checkpoint(path)
        except CheckpointThreat:
            raise
        except UserError as e:
            problems.append(str(e))
            continue
        _note(f"{run_dir}: {problems[0]}; using the newest complete checkpoint "
              f"{_rel(root, path)} (step {checkpoint_step(path)}) instead")
        return ck
    if problems:
        raise NoCompleteCheckpoint(f"{run_dir} has no complete checkpoint ({'; '.join(problems[:3])})")
    return None


def load_run_checkpoint(run_dir: str | Path, which: str = "best") -> Checkpoint:
    """The ``best`` (falling back to ``last``) or ``last`` checkpoint of a run directory; a
    pointer to a missing or incomplete checkpoint falls back to the newest complete one."""
    root = Path(run_dir) / CKPT_DIR
    if root.exists() and not root.is_dir():
        raise UserError(f"{root} is not a directory: {run_dir} is not a complete run directory")
    ck = find_checkpoint(run_dir, which)
    if ck is None:
        layout = run_layout(run_dir)
        if layout not in (None, "training"):  # a sweep or comparison: its runs have them
            runs = sorted((p.parent.relative_to(run_dir)
                           for p in Path(run_dir).glob(f"*/**/{CONFIG_FILE}")
                           if (p.parent / CKPT_DIR).is_dir()), key=lambda p: (len(p.parts), p))
            named = ", ".join(str(Path(run_dir) / p) for p in runs[:3]) or "none yet"
            raise UserError(f"{run_dir} is {LAYOUTS[layout]}, which has no checkpoint of its "
                            f"own: give one of its runs ({named}{' …' if len(runs) > 3 else ''})")
        raise UserError(f"{run_dir} has no checkpoint (expected {CKPT_DIR}/{which})")
    require_finite(ck)
    return ck


def require_finite(ck: Checkpoint) -> None:
    """Refuse a checkpoint whose weights hold a NaN or an infinity: training never saves one
    (:func:`~metasparsity.training.checkpoint.save_checkpoint` refuses), so it was damaged
    since, and anything read from it would be NaN."""
    bad = nonfinite_tensors(ck.model)
    if bad:
        raise UserError(f"checkpoint {ck.path} holds NaN or infinite weights ({', '.join(bad[:2])}"
                        f"{' …' if len(bad) > 2 else ''}): it was damaged after it was saved; "
                        "nothing was read from it or written")


def repoint(run_dir: str | Path, which: str, step: int) -> bool:
    """Point ``which`` at the checkpoint of ``step`` if it is complete (True), else leave the
    pointer as it is (False)."""
    root = Path(run_dir) / CKPT_DIR
    name = f"step_{int(step):07d}"
    path = pointed_dir(root, name)
    if path is None:
        return False
    try:
        load_checkpoint(path)
    except UserError:
        return False
    if read_pointer(root, which) != name:
        atomic_write_text(root / which, name + "\n")
    return True


def point_last_at(run_dir: str | Path, ck: Checkpoint) -> None:
    """Make ``last`` name ``ck`` (a resumed run repairs a pointer it fell back from)."""
    root = Path(run_dir) / CKPT_DIR
    name = f"step_{checkpoint_step(ck.path):07d}"
    if read_pointer(root, "last") != name:
        atomic_write_text(root / "last", name + "\n")


def _logged_steps(run_dir: Path) -> bool:
    """Whether ``metrics.jsonl`` records any step > 0 (a run that trained before)."""
    p = run_dir / "metrics.jsonl"
    try:
        with open(p, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] > 0:
                    return True
    except OSError:
        return False
    return False


def resume_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    """The checkpoint a resumed run continues from: the one ``last`` names, or (pointer missing
    or naming an incomplete checkpoint) the newest complete one, with a note.

    None only when the run has neither a checkpoint nor logged steps (it stopped before its first
    step: it starts again from step 0 in the same directory).  A run with checkpoints or logged
    steps but no complete checkpoint is refused (:class:`UserError`), never restarted.
    """
    run_dir = Path(run_dir)
    for w in ("last", "best"):  # rewritten by the resumed run: a folder there would stop it late
        pointer = run_dir / CKPT_DIR / w
        if pointer.exists() and not pointer.is_file():
            raise UserError(f"cannot resume {run_dir}: {pointer} is not a pointer file; remove "
                            "it (the run falls back to its newest complete checkpoint)")
    advice = (f"nothing was changed; to start it again from step 0, use --out {run_dir} "
              "--overwrite (this deletes the run)")
    try:
        ck = find_checkpoint(run_dir, "last")
    except NoCompleteCheckpoint as e:
        raise NoCompleteCheckpoint(f"cannot resume: {e}; {advice}") from None
    if ck is None and (_logged_steps(run_dir) or (run_dir / CKPT_DIR).is_dir()
                       and any((run_dir / CKPT_DIR).iterdir())):
        raise NoCompleteCheckpoint(f"cannot resume {run_dir}: it has logged training steps "
                                   f"but no complete checkpoint to continue from; {advice}")
    if ck is not None:
        require_finite(ck)
    return ck


def keep_last_good(run_dir: str | Path, validation_finite: Callable[[Checkpoint], bool]) -> str:
    """After a divergence: make ``last`` name the newest checkpoint (at or before the one it
    names now) whose weights are finite and whose validation is finite; return the note for
    the message (``"the last good checkpoint (step N) is kept in DIR"``).

    A checkpoint saved at a validation records ``val_finite`` in its ``state.json``; one saved
    in between (``ckpt_every``, Ctrl-C, a stop) is validated by ``validation_finite(ck)``.  One
    that fails is set aside as ``.step_N.diverged/`` (kept for inspection, never resumed from);
    incomplete ones are left as they are.
    """
    run_dir = Path(run_dir)
    root = run_dir / CKPT_DIR
    last = pointed_dir(root, read_pointer(root, "last"))
    found = checkpoint_dirs(root)
    if not found:
        return f"no checkpoint had been saved yet in {run_dir}"
    if last is not None:
        found = [p for p in found if checkpoint_step(p) <= checkpoint_step(last)]
    for path in found:
        try:
            ck = load_checkpoint(path)
        except UserError:
            continue
        if not nonfinite_tensors(ck.model) and (ck.meta.get("val_finite") is True
                                                 or validation_finite(ck)):
            name = f"step_{checkpoint_step(path):07d}"
            if read_pointer(root, "last") != name:
                atomic_write_text(root / "last", name + "\n")
            return f"the last good checkpoint (step {checkpoint_step(path)}) is kept in {path}"
        name = f"step_{checkpoint_step(path):07d}"
        aside = root / f".{name}.diverged"
        if aside.exists():
            shutil.rmtree(aside)
        path.rename(aside)
        for w in ("last", "best"):
            if read_pointer(root, w) == name:
                (root / w).unlink()
    if (root / "last").is_file() and pointed_dir(root, read_pointer(root, "last")) is None:
        (root / "last").unlink()
    return f"no checkpoint with finite weights and validation is left in {run_dir}"


def load_model_state(model: torch.nn.Module, ck: Checkpoint, run_dir: str | Path,
                     action: str = "resume") -> None:
    """``model.load_state_dict(ck.model)`` with a clear :class:`UserError` when they differ
    (``cannot <action> RUN: …``)."""
    own = model.state_dict()
    problems = []
    for what, keys in (
            ("missing", [k for k in own if k not in ck.model]),
            ("unexpected", [k for k in ck.model if k not in own]),
            ("of another shape", [k for k in own if k in ck.model and own[k].shape != ck.model[k].shape])):
        if keys:
            problems.append(f"{len(keys)} {what} (e.g. {', '.join(keys[:2])})")
    if problems:
        raise UserError(
            f"cannot {action} {run_dir}: the checkpoint {ck.path.name} does not fit the model built "
            f"from the config (were model.* or the tasks changed?): tensors {'; '.join(problems)}")
    model.load_state_dict(ck.model)
