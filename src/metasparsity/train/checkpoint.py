"""Checkpoints that survive a kill mid-save and never unpickle code.

Layout inside a run directory::

    checkpoints/
      step_000200/            one complete checkpoint
        model.safetensors     every parameter and buffer (safetensors: no code on load)
        state.pt              optimizer / scheduler / RNG tensors, read with weights_only=True
        state.json            step, λ, tasks, sampler and data-order state, metrics
      last                    text file naming the newest complete checkpoint directory
      best                    text file naming the best-on-validation checkpoint directory

A checkpoint is written into ``<name>.tmp/`` and renamed into place; only then are the ``last``
/ ``best`` pointers (atomically) updated.  A process killed at any moment therefore leaves the
previous pointer aimed at a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import zipfile
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
        # Same step saved again (e.g. validation and periodic save coincide): replace it.
        old = root / f".{name}.old"
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
    atomic_write_text(root / "last", name + "\n")
    if best:
        atomic_write_text(root / "best", name + "\n")
    _prune(root, keep)
    return final


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
        if d.is_dir() and d.name.endswith(".tmp"):
            shutil.rmtree(d, ignore_errors=True)


def checkpoint_path(run_dir: str | Path, which: str = "last") -> Path | None:
    """Path of the ``last`` or ``best`` checkpoint of a run, or None if there is none."""
    root = Path(run_dir) / CKPT_DIR
    name = _pointer(root, which)
    if name is None or not (root / name / "model.safetensors").is_file():
        return None
    return root / name


def _safe_torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(
            f"refusing to load {path}: it contains objects that would run code when unpickled "
            f"({str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"cannot read checkpoint file {path}: {e}") from None


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
    random.setstate((3, tuple(int(x) for x in state["python"].tolist()), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
