"""The compute device, its threads and mixed precision, decided once at the recipe boundary."""

from __future__ import annotations

import contextlib
import os

import torch

from metasparsity.utils.env import check_environment, env_num_threads
from metasparsity.utils.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available else CPU; ``cpu``/``cuda``/``cuda:N``/``mps`` as given,
    checked to be usable here: a device this machine or PyTorch build lacks is a UserError
    naming ``train.device`` (before anything is written), not a RuntimeError mid-recipe.  The
    environment is checked too (:func:`check_environment`)."""
    check_environment()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"train.device={name!r} is not a device name; use auto, cpu, cuda, "
                        "cuda:N or mps") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"train.device={name!r} but CUDA is not available on this machine")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise UserError(f"train.device={name!r} but this machine has {n} CUDA device"
                            f"{'' if n == 1 else 's'} (cuda:0{f' to cuda:{n - 1}' if n > 1 else ''})")
        return dev
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            why = ("this PyTorch build has no MPS support" if mps is None or not mps.is_built()
                   else "MPS (Apple GPU) is not available on this machine")
            raise UserError(f"train.device={name!r} but {why}; use cpu or auto")
    try:  # any other device type: usable only if a tensor can live there
        torch.empty(0, device=dev)
    except Exception as e:  # RuntimeError, AssertionError, ImportError… by build and type
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"train.device={name!r} cannot be used here ({first}); use cpu or auto") from None
    return dev


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast for forward passes on CUDA (``train.amp``); a no-op on CPU or when off."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_threads(num_threads: int | None) -> None:
    """Set torch's intra-op threads: ``num_threads``, else ``$METASPARSITY_NUM_THREADS``, else the
    number of cores available (at most 8), shared among the processes torchrun started on this
    node (``$LOCAL_WORLD_SIZE``).  The environment is checked first (:func:`check_environment`)."""
    check_environment()
    if num_threads is None or num_threads <= 0:
        num_threads = env_num_threads() or 0
    if num_threads <= 0:
        try:
            num_threads = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - non-Linux
            num_threads = os.cpu_count() or 1
        try:
            per_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))
        except ValueError:
            per_node = 1
        num_threads = min(max(1, num_threads // per_node), 8)
    torch.set_num_threads(num_threads)
