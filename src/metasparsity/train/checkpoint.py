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

Loading never executes code from the files: weights come from safetensors, the optimizer / RNG
state from ``torch.load(weights_only=True)`` (which refuses any pickled object other than
tensors and plain containers), the rest from JSON.  A file that would run code is refused with
a :class:`UserError`.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import zipfile
from collections.abc import Iterator
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
    """Write ``checkpoints/step_<step>/`` atomically and point ``last`` (and ``best``) at it."""
    root = Path(run_dir) / CKPT_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    final = root / name
    tmp = root / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_contiguous_state(model_state), str(tmp / "model.safetensors"))
    torch.save(state, tmp / "state.pt")
    (tmp / "state.json").write_text(json.dumps(to_jsonable({"step": step, **meta}), indent=1))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
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
    _prune(root, keep)
    return final


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


def _pointer(root: Path, which: str) -> str | None:
    p = root / which
    if not p.is_file():
        return None
    name = p.read_text().strip()
    return name or None


def _prune(root: Path, keep: int) -> None:
    """Delete complete checkpoints not referenced by ``last``/``best`` beyond the newest ``keep``."""
    protected = {_pointer(root, "last"), _pointer(root, "best")}
    steps = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name.startswith("step_"))
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
    """Path of the ``last`` or ``best`` checkpoint of a run, or None if there is none."""
    root = Path(run_dir) / CKPT_DIR
    name = _pointer(root, which)
    if name is None:
        return None
    for cand in (root / name, root / f".{name}.old"):
        if (cand / "model.safetensors").is_file():
            return cand
    return None


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


def _safe_torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        raise UserError(
            f"refusing to load {path}: it holds pickled objects that could run code when loaded "
            f"(checkpoints are read as plain tensors only"
            + (f"; it asks for {found.group(1)}" if found else "") + ")") from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"cannot read checkpoint file {path}: {str(e).splitlines()[0]}") from None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load a checkpoint directory; never executes code from the files."""
    p = Path(path)
    if not (p / "model.safetensors").is_file():
        raise UserError(f"{p} is not a checkpoint directory (no model.safetensors)")
    try:
        model = load_file(str(p / "model.safetensors"))
    except Exception as e:  # safetensors raises its own error types
        raise UserError(f"cannot read {p / 'model.safetensors'}: {e}") from None
    state = _safe_torch_load(p / "state.pt") if (p / "state.pt").is_file() else {}
    try:
        meta = json.loads((p / "state.json").read_text()) if (p / "state.json").is_file() else {}
    except json.JSONDecodeError as e:
        raise UserError(f"cannot read {p / 'state.json'}: {e}") from None
    return Checkpoint(p, model, state, meta)


def load_run_checkpoint(run_dir: str | Path, which: str = "best") -> Checkpoint:
    """The ``best`` (falling back to ``last``) or ``last`` checkpoint of a run directory."""
    p = checkpoint_path(run_dir, which)
    if p is None and which == "best":
        p = checkpoint_path(run_dir, "last")
    if p is None:
        raise UserError(f"{run_dir} has no checkpoint (expected {CKPT_DIR}/{which})")
    return load_checkpoint(p)


def resume_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    """The ``last`` checkpoint of a run being resumed, or None when it has none yet (a run
    stopped before its first save simply starts again from step 0 in the same directory)."""
    p = checkpoint_path(run_dir, "last")
    return None if p is None else load_checkpoint(p)


def load_model_state(model: torch.nn.Module, ck: Checkpoint, run_dir: str | Path) -> None:
    """``model.load_state_dict(ck.model)`` with a clear :class:`UserError` when they differ."""
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
            f"cannot resume {run_dir}: the checkpoint {ck.path.name} does not fit the model built "
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
