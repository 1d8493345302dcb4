"""Every random-number stream of a run in one place: seeding, the state saved in a checkpoint (and
restored on resume), blocks that must not consume it, and each rank's own streams."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from metasparsity.training.collectives import DistInfo, all_gather_object, is_distributed


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch Generator seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def rng_state() -> dict[str, Any]:
    """Torch / NumPy / Python RNG states as tensors (safe with weights_only=True)."""
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


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """Seed of rank ``rank``'s global RNGs (``seed`` itself for rank 0 at step 0)."""
    if rank == 0 and step == 0:
        return seed
    return (seed * 1_000_003 + rank * 7_919 + step * 104_729) % (2**63)


def seed_rank(seed: int, info: DistInfo, state: Mapping[str, Any] | None = None,
              step: int = 0) -> None:
    """Give rank ≥ 1 its own global RNG streams, after everything that must agree was drawn.

    ``state``: a resumed checkpoint's training state; its ``rng_ranks`` (one entry per rank,
    saved by :func:`gather_rng`) restores each rank's own streams when the number of processes
    is unchanged; otherwise the streams are re-seeded from ``(seed, rank, step)``.  Rank 0 keeps
    the single-process stream (from the checkpoint's ``rng`` on resume).
    """
    if not info.enabled or info.is_main:
        return
    ranks = (state or {}).get("rng_ranks")
    if ranks is not None and len(ranks) == info.world_size:
        set_rng_state(ranks[info.rank])
    else:
        seed_everything(rank_seed(seed, info.rank, step))


def gather_rng(rng: Mapping[str, Any]) -> list[Any] | None:
    """Every rank's RNG state (for rank 0's checkpoint), or None in a single process."""
    return all_gather_object(dict(rng)) if is_distributed() else None
