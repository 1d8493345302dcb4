"""Checkpoints that survive a kill mid-save and never unpickle code.

Layout inside a run directory::

    checkpoints/
      step_000200/            one complete checkpoint
        model.safetensors     every parameter and buffer (safetensors: no code on load)
        state.pt              optimizer / scheduler / RNG tensors, read with weights_only=True
        state.json            step, λ, tasks, sampler and data-order state, metrics
      last                    text file naming the newest complete checkpoint directory
      best                    text file naming the best-on-validation checkpoint directory

A checkpoint is written into ``.<name>.tmp/``, its files are fsync'ed, and the directory is
renamed into place; only then are the ``last`` / ``best`` pointers (atomically) updated.  A
process killed at any moment therefore leaves the previous pointer aimed at a complete
checkpoint.  Saving a step that already exists moves the old copy aside to ``.<name>.old/``
first; a reader that finds the pointer's directory missing (killed between the two renames)
uses that copy.

Readers trust nothing: a checkpoint is *complete* when its three files are present and
readable.  A ``last`` / ``best`` pointer that names a missing or incomplete checkpoint falls back
to the newest complete one, with a one-line note on stderr; when checkpoints exist but none is
complete, loading stops with a :class:`UserError` (a resumed run never silently restarts from
step 0).  A checkpoint with non-finite weights is never written; after a divergence
(:func:`keep_last_good`) ``last`` names a checkpoint whose weights and validation are finite.

Loading never executes code from the files: weights come from safetensors, the optimizer / RNG
state from ``torch.load(weights_only=True)`` (which refuses any pickled object other than
tensors and plain containers), the rest from JSON.  A file that would run code is refused with
a :class:`UserError`; a damaged file is reported as ``corrupt/unreadable checkpoint file PATH``.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from metasparsity.utils.errors import UserError
from metasparsity.utils.io import atomic_write_text, to_jsonable

CKPT_DIR = "checkpoints"


@dataclass
class Checkpoint:
    path: Path
    model: dict[str, torch.Tensor]
    state: dict[str, Any]  # tensors (optimizer etc.), loaded with weights_only=True
    meta: dict[str, Any]  # JSON


def _contiguous_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared / non-contiguous storage: store independent contiguous copies.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def save_checkpoint(run_dir: str | Path, step: int, model_state: dict[str, torch.Tensor],
                    state: dict[str, Any], meta: dict[str, Any], *, best: bool = False,
                    keep: int = 1) -> Path:
    """Write ``checkpoints/step_<step>/`` atomically and point ``last`` (and ``best``) at it.

    Refuses (:class:`UserError`) weights with a NaN or infinite value: such a checkpoint could
    only make a resumed run fail again.
    """
    bad = nonfinite_tensors(model_state)
    if bad:
        raise UserError(f"refusing to save a checkpoint of step {step}: non-finite weights in "
                        f"{', '.join(bad[:3])}" + (f" and {len(bad) - 3} more" if len(bad) > 3 else ""))
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    final = root / name
    tmp = root / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_file(_contiguous_state(model_state), str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
        (tmp / "state.json").write_text(json.dumps(to_jsonable({"step": step, **meta}), indent=1))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)  # the older complete checkpoints stay
        raise UserError(f"cannot write checkpoint {final}: {_write_error(e, root)}") from None
    if final.exists():
        # Same step saved again (e.g. an interrupt right after a validation save): replace it.
        old = root / f".{name}.old"
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    _fsync_dir(root)
    atomic_write_text(root / "last", name + "\n")
    if best:
        atomic_write_text(root / "best", name + "\n")
    _prune(root, keep, step)
    return final


def _write_error(e: BaseException, where: Path) -> str:
    """One line for a failed checkpoint write, saying so when the disk is (nearly) full."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        free = None
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if free is not None and free < 64 * 2**20:
        return f"no space left on device ({free // 2**20} MiB free)"
    return first


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


_STEP_DIR = re.compile(r"step_\d+")
_OLD_DIR = re.compile(r"\.(step_\d+)\.old")


def _pointer(root: Path, which: str) -> str | None:
    """The name the ``which`` pointer file holds (None: no pointer file, or an empty one)."""
    p = root / which
    if not p.is_file():
        return None
    try:
        name = p.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return "?"
    return name or None


def _pointed(root: Path, name: str | None) -> Path | None:
    """The directory a pointer's ``name`` refers to (its ``.old`` copy when only that is left)."""
    if name is None or not _STEP_DIR.fullmatch(name):
        return None
    for cand in (root / name, root / f".{name}.old"):
        if cand.is_dir():
            return cand
    return None


def _on_disk(root: Path) -> list[Path]:
    """Checkpoint directories, newest first: ``step_N``, or ``.step_N.old`` where only that
    copy is left (a kill between the renames of a re-saved step)."""
    if not root.is_dir():
        return []
    found: dict[str, Path] = {}
    olds: dict[str, Path] = {}
    for d in root.iterdir():
        if not d.is_dir():
            continue
        if _STEP_DIR.fullmatch(d.name):
            found[d.name] = d
        elif (m := _OLD_DIR.fullmatch(d.name)) is not None:
            olds[m.group(1)] = d
    for name, d in olds.items():
        found.setdefault(name, d)
    return sorted(found.values(), key=checkpoint_step, reverse=True)


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr, flush=True)


def _prune(root: Path, keep: int, saved: int) -> None:
    """Delete complete checkpoints not referenced by ``last``/``best`` beyond the newest ``keep``.

    Only checkpoints older than the one just ``saved`` are deleted: a newer one (left by an
    earlier attempt of a resumed run) is never removed by the run that resumed before it.
    """
    protected = {_pointer(root, "last"), _pointer(root, "best")}
    steps = sorted(d.name for d in root.iterdir()
                   if d.is_dir() and _STEP_DIR.fullmatch(d.name) and checkpoint_step(d) <= saved)
    extra = [s for s in steps if s not in protected]
    for name in extra[: max(0, len(extra) - max(0, keep - 1))]:
        shutil.rmtree(root / name, ignore_errors=True)
    for d in root.iterdir():  # leftovers of a killed save
        if not d.is_dir():
            continue
        if d.name.endswith(".tmp"):
            shutil.rmtree(d, ignore_errors=True)
        elif d.name.endswith(".old"):
            name = d.name[1:-4]
            if (root / name).is_dir() or name not in protected:
                shutil.rmtree(d, ignore_errors=True)


def checkpoint_path(run_dir: str | Path, which: str = "last") -> Path | None:
    """The directory the ``last`` or ``best`` pointer of a run names, or None if there is none
    (no pointer, or it names a directory that does not exist).  Not checked for completeness:
    :func:`load_run_checkpoint` / :func:`resume_checkpoint` do that."""
    root = Path(run_dir) / CKPT_DIR
    return _pointed(root, _pointer(root, which))


def has_checkpoints(run_dir: str | Path) -> bool:
    """Whether a run directory holds any checkpoint or pointer (complete or not).

    What a comparison or sweep checks to decide that a sub-run is to be resumed rather than
    started afresh: a sub-run with none has nothing a restart could lose.
    """
    root = Path(run_dir) / CKPT_DIR
    return bool(_on_disk(root)) or any((root / w).is_file() for w in ("last", "best"))


def checkpoint_step(path: str | Path) -> int:
    """The step of a checkpoint directory, from its name (``step_0000200`` -> 200)."""
    m = re.search(r"step_(\d+)", Path(path).name)
    if m is None:
        raise UserError(f"{path} is not a checkpoint directory (expected a name like step_0000200)")
    return int(m.group(1))


def kept_checkpoint_note(run_dir: str | Path) -> str:
    """``"the last good checkpoint (step N) is kept in DIR"``, or that none was saved yet."""
    p = checkpoint_path(run_dir, "last")
    if p is None:
        return f"no checkpoint had been saved yet in {run_dir}"
    return f"the last good checkpoint (step {checkpoint_step(p)}) is kept in {p}"


def nonfinite_tensors(tensors: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of ``tensors`` holding a NaN or an infinity."""
    floats = [(k, v) for k, v in tensors.items()
              if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex())]
    if not floats:
        return []
    flags = [torch.isfinite(v.detach()).all() for _, v in floats]
    if len({f.device for f in flags}) > 1:
        flags = [f.cpu() for f in flags]
    ok = torch.stack(flags).cpu()  # one device synchronisation for all of them
    if bool(ok.all()):
        return []
    return [k for (k, _), good in zip(floats, ok.tolist()) if not good]


class CheckpointThreat(UserError):
    """A checkpoint file that holds pickled objects other than tensors (code could run)."""


class NoCompleteCheckpoint(UserError):
    """A run has checkpoints (or pointers to them), but none of them is complete."""


def _reason(e: BaseException) -> str:
    """The first line of an error, without PyTorch's advice to load with weights_only=False."""
    text = str(e)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:  # the weights-only unpickler names the actual problem on its own line
        if "WeightsUnpickler error:" in ln:
            return ln.split("WeightsUnpickler error:", 1)[1].strip() or type(e).__name__
    first = lines[0] if lines else type(e).__name__
    for cut in (" In PyTorch", "Re-running", " If you are seeing", " Please file", " This is an internal"):
        if cut in first:
            first = first[: first.index(cut)].strip()
    return (first or type(e).__name__)[:200]


def _unreadable(path: Path, reason: str) -> UserError:
    return UserError(f"corrupt/unreadable checkpoint file {path} ({reason})")


def _archive_intact(path: Path) -> bool | None:
    """Whether a zip archive's members all match their CRC (None: not a zip archive)."""
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except zipfile.BadZipFile:
        return None
    except Exception:
        return False


def _safe_torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``; a damaged file and a file that would run code are
    told apart: only an intact file (every CRC of its archive matches) whose pickle asks for
    non-tensor objects is a threat, anything else is corrupt."""
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 253": noise of a damaged file
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([A-Za-z_][\w.]*)", str(e))
        intact = _archive_intact(path)
        if intact or (intact is None and found):
            raise CheckpointThreat(
                f"refusing to load {path}: it holds pickled objects that could run code when "
                f"loaded (checkpoints are read as plain tensors only"
                + (f"; it asks for {found.group(1)}" if found else "") + ")") from None
        raise _unreadable(path, _reason(e)) from None
    except Exception as e:  # truncated / garbled archives raise all sorts of errors
        raise _unreadable(path, _reason(e)) from None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a complete checkpoint directory; never executes code from the files.

    Raises :class:`UserError` when one of ``model.safetensors``, ``state.pt``, ``state.json``
    is missing or unreadable (:class:`CheckpointThreat` for a file that would run code).
    """
    p = Path(path)
    if not (p / "model.safetensors").is_file():
        raise UserError(f"{p} is not a checkpoint directory (no model.safetensors)")
    for name in ("state.pt", "state.json"):
        if not (p / name).is_file():
            raise UserError(f"incomplete checkpoint {p}: {name} is missing")
    try:
        model = load_file(str(p / "model.safetensors"))
    except Exception as e:  # safetensors raises its own error types
        raise _unreadable(p / "model.safetensors", _reason(e)) from None
    state = _safe_torch_load(p / "state.pt")
    try:
        meta = json.loads((p / "state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _unreadable(p / "state.json", _reason(e)) from None
    if not isinstance(state, dict):
        raise _unreadable(p / "state.pt", f"holds a {type(state).__name__}, not a dict")
    if not isinstance(meta, dict) or not isinstance(meta.get("step", 0), int):
        raise _unreadable(p / "state.json", "not a checkpoint's state")
    return Checkpoint(p, model, state, meta)


def _rel(root: Path, p: Path) -> str:
    return f"{CKPT_DIR}/{p.relative_to(root)}" if p.is_relative_to(root) else str(p)


def find_checkpoint(run_dir: str | Path, which: str = "last") -> Checkpoint | None:
    """The complete checkpoint the ``which`` pointer names (``best`` falls back to ``last``).

    When the pointer names a missing or incomplete checkpoint: the newest complete checkpoint,
    with a one-line note on stderr.  None when the run has no checkpoint at all;
    :class:`NoCompleteCheckpoint` when it has some but none is complete;
    :class:`CheckpointThreat` (never a fallback) for a file that would run code.
    """
    root = Path(run_dir) / CKPT_DIR
    problems: list[str] = []
    tried: set[Path] = set()
    for w in [which] + (["last"] if which == "best" else []):
        name = _pointer(root, w)
        if name is None:
            continue
        path = _pointed(root, name)
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
    found = _on_disk(root)
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
    ck = find_checkpoint(run_dir, which)
    if ck is None:
        raise UserError(f"{run_dir} has no checkpoint (expected {CKPT_DIR}/{which})")
    return ck


def repoint(run_dir: str | Path, which: str, step: int) -> bool:
    """Point ``which`` at the checkpoint of ``step`` if it is complete (True), else leave the
    pointer as it is (False)."""
    root = Path(run_dir) / CKPT_DIR
    name = f"step_{int(step):07d}"
    path = _pointed(root, name)
    if path is None:
        return False
    try:
        load_checkpoint(path)
    except UserError:
        return False
    if _pointer(root, which) != name:
        atomic_write_text(root / which, name + "\n")
    return True


def point_last_at(run_dir: str | Path, ck: Checkpoint) -> None:
    """Make ``last`` name ``ck`` (a resumed run repairs a pointer it fell back from)."""
    root = Path(run_dir) / CKPT_DIR
    name = f"step_{checkpoint_step(ck.path):07d}"
    if _pointer(root, "last") != name:
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
    last = _pointed(root, _pointer(root, "last"))
    found = _on_disk(root)
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
            if _pointer(root, "last") != name:
                atomic_write_text(root / "last", name + "\n")
            return f"the last good checkpoint (step {checkpoint_step(path)}) is kept in {path}"
        name = f"step_{checkpoint_step(path):07d}"
        aside = root / f".{name}.diverged"
        if aside.exists():
            shutil.rmtree(aside)
        path.rename(aside)
        for w in ("last", "best"):
            if _pointer(root, w) == name:
                (root / w).unlink()
    if (root / "last").is_file() and _pointed(root, _pointer(root, "last")) is None:
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


def rng_state() -> dict[str, Any]:
    """Torch / NumPy / Python RNG states as tensors (safe with weights_only=True)."""
    import random

    import numpy as np

    np_state = np.random.get_state()
    py_state = random.getstate()
    out = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype("int64")),
        "numpy_pos": torch.tensor([np_state[2], np_state[3]], dtype=torch.int64),
        "numpy_gauss": torch.tensor([np_state[4]], dtype=torch.float64),
        "python": torch.tensor(py_state[1], dtype=torch.int64),
        "python_gauss": torch.tensor([float("nan") if py_state[2] is None else py_state[2]],
                                     dtype=torch.float64),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype("uint32"),
                         int(state["numpy_pos"][0]), int(state["numpy_pos"][1]),
                         float(state["numpy_gauss"][0])))
    gauss = float(state["python_gauss"][0]) if "python_gauss" in state else float("nan")
    random.setstate((3, tuple(int(x) for x in state["python"].tolist()),
                     None if gauss != gauss else gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (validation, BN re-estimation) without consuming the global RNG streams.

    Whatever the block draws from torch / NumPy / Python's RNGs, they are put back afterwards,
    so training after it sees the same random numbers whether or not (or when) it ran: a run
    validated at different steps, or resumed, stays bit-identical.
    """
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)
