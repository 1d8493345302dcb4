"""The compute device, its threads and mixed precision, decided once at the recipe boundary."""

from __future__ import annotations

import contextlib
import os

import torch

from metasparsity.utils.errors import UserError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available else CPU; ``cpu``/``cuda``/``cuda:N`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device={name!r} but CUDA is not available on this machine")
    return dev


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast for forward passes on CUDA (``train.amp``); a no-op on CPU or when off."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def set_threads(num_threads: int | None) -> None:
    """Set torch's intra-op threads: ``num_threads``, else ``$METASPARSITY_NUM_THREADS``, else the
    number of cores available (at most 8), shared among the processes torchrun started on this
    node (``$LOCAL_WORLD_SIZE``)."""
    if (num_threads is None or num_threads <= 0) and os.environ.get("METASPARSITY_NUM_THREADS"):
        num_threads = int(os.environ["METASPARSITY_NUM_THREADS"])
    if num_threads is None or num_threads <= 0:
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
