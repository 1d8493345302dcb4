"""Checkpoint files: written atomically (a kill mid-save leaves the previous one usable), read
without ever unpickling code, and the ``last`` / ``best`` pointers.

Layout inside a run directory::

    checkpoints/
      step_000200/            one complete checkpoint
        model.safetensors     every parameter and buffer (safetensors: no code on load)
        state.pt              optimizer / scheduler / RNG tensors, read with weights_only=True
        state.json            step, λ, tasks, sampler and data-order state, metrics
      last                    text file naming the newest complete checkpoint directory
      best                    text file naming the best-on-validation checkpoint directory

Which checkpoint a run resumes from, and what is kept after a divergence:
:mod:`metasparsity.training.run_checkpoints`.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from metasparsity.utils.errors import UserError
from metasparsity.utils.io import atomic_write_text, check_json_shape, save_safetensors, to_jsonable

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

    The checkpoint is written into ``.<name>.tmp/``, its files are fsync'ed and the directory
    renamed into place; only then are the pointers (atomically) updated.  Saving a step that
    already exists moves the old copy aside to ``.<name>.old/`` first; a reader that finds the
    pointer's directory missing (killed between the two renames) uses that copy.

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
        save_safetensors(_contiguous_state(model_state), tmp / "model.safetensors")
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
    if "inline_container" in first:  # torch.save cut short: "[enforce fail at ...] unexpected pos"
        return f"{first} (the file was not written whole: a full disk, a quota or a file size limit?)"
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


def read_pointer(root: Path, which: str) -> str | None:
    """The name the ``which`` pointer file holds (None: no pointer file, or an empty one)."""
    p = root / which
    if not p.is_file():
        return None
    try:
        name = p.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return "?"
    return name or None


def pointed_dir(root: Path, name: str | None) -> Path | None:
    """The directory a pointer's ``name`` refers to (its ``.old`` copy when only that is left)."""
    if name is None or not _STEP_DIR.fullmatch(name):
        return None
    for cand in (root / name, root / f".{name}.old"):
        if cand.is_dir():
            return cand
    return None


def checkpoint_dirs(root: Path) -> list[Path]:
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


def _prune(root: Path, keep: int, saved: int) -> None:
    """Delete complete checkpoints not referenced by ``last``/``best`` beyond the newest ``keep``.

    Only checkpoints older than the one just ``saved`` are deleted: a newer one (left by an
    earlier attempt of a resumed run) is never removed by the run that resumed before it.
    """
    protected = {read_pointer(root, "last"), read_pointer(root, "best")}
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
    return pointed_dir(root, read_pointer(root, which))


def checkpoint_step(path: str | Path) -> int:
    """The step of a checkpoint directory, from its name (``step_0000200`` -> 200)."""
    m = re.search(r"step_(\d+)", Path(path).name)
    if m is None:
        raise UserError(f"{path} is not a checkpoint directory (expected a name like step_0000200)")
    return int(m.group(1))


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


#: What the recipes read of a checkpoint's ``state.json`` (each key where a recipe wrote it;
#: other keys free): a damaged value is named on load, not met as a TypeError mid-recipe.
STATE_SHAPE = {"step?": int, "kind?": str, "tasks?": [str], "train_tasks?": [str],
               "stream?": dict, "support?": dict, "query?": dict, "lambda_val?": (dict, type(None)),
               "sampler?": dict, "best_score?": float, "best_step?": int, "history?": list,
               "reference_val?": (dict, type(None)), "source?": (str, type(None)),
               "source_path?": (str, type(None)),
               "lam?": (float, [float]), "lambda?": (float, [float]), "train_time?": float,
               "val_finite?": bool, "world_size?": int, "bn_stats?": str}


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
    problem = check_json_shape(meta, STATE_SHAPE, "state.json")
    if problem:
        raise _unreadable(p / "state.json", problem)
    return Checkpoint(p, model, state, meta)

