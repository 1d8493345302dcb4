"""The environment variables the package reads, checked before any command writes: a bad value
is a one-line :class:`~metasparsity.utils.errors.UserError` naming the variable
(:func:`check_environment`), never a traceback, a segfault or a run that crawls."""

from __future__ import annotations

import math
import os

import torch.distributed as dist

from metasparsity.utils.errors import UserError
from metasparsity.utils.limits import MAX_THREADS

NUM_THREADS_ENV = "METASPARSITY_NUM_THREADS"
"""Torch CPU threads where ``train.num_threads`` (or ``--threads``) is unset: 1 to
:data:`~metasparsity.utils.limits.MAX_THREADS`, like the setting."""


def env_num_threads() -> int | None:
    """``$METASPARSITY_NUM_THREADS`` as an integer in [1, ``MAX_THREADS``]; None when unset or
    empty.  Anything else (not an integer, 0, negative, too many) is a :class:`UserError` naming
    the variable and its value: torch would raise, ignore it, or crash far into the run."""
    value = os.environ.get(NUM_THREADS_ENV, "")
    if not value.strip():
        return None
    try:
        n = int(value)
    except ValueError:
        raise UserError(f"${NUM_THREADS_ENV}={value!r} is not an integer; set it to the torch "
                        f"CPU threads, 1 to {MAX_THREADS} (or unset it)") from None
    if not 1 <= n <= MAX_THREADS:
        raise UserError(f"${NUM_THREADS_ENV}={value!r} is out of range; it must be between 1 "
                        f"and {MAX_THREADS} (or unset)")
    return n


def check_environment() -> None:
    """Check the environment variables the package reads: ``$METASPARSITY_NUM_THREADS``
    (:func:`env_num_threads`), ``$METASPARSITY_SYNTH_MEMO_MB``
    (:func:`memo_limit`) and torchrun's ``$WORLD_SIZE``,
    ``$RANK``… (:func:`check_torchrun_env`).  A bad value is
    a one-line :class:`UserError` naming the variable, whether or not this command would read
    it.  :func:`~metasparsity.utils.device.resolve_device` and
    :func:`~metasparsity.utils.device.set_threads` call it: every recipe calls one of them
    before it writes anything."""
    env_num_threads()
    memo_limit()
    check_torchrun_env()


MEMO_ENV = "METASPARSITY_SYNTH_MEMO_MB"
MEMO_DEFAULT_MB = 2048


def memo_limit() -> int:
    """The bound of the in-process memory of rendered samples in bytes: ``$METASPARSITY_SYNTH_MEMO_MB``
    (megabytes, a number >= 0; 0 turns the memory off; default 2048 when unset or empty).  A value
    that is not a finite number >= 0 is a :class:`UserError` naming the variable and its value,
    checked at the recipe boundary (:func:`check_environment`) and
    when a split is built, before a run writes anything."""
    value = os.environ.get(MEMO_ENV, "")
    if not value.strip():
        return MEMO_DEFAULT_MB * 2**20
    try:
        mb = float(value)
        why = "" if mb >= 0 else "is negative"
        why = why if math.isfinite(mb) else "is not a finite number"
    except ValueError:
        why = "is not a number"
    if why:
        raise UserError(f"${MEMO_ENV}={value!r} {why}; set it to the megabytes of rendered "
                        f"samples a process keeps in memory, a number >= 0 (0 turns the memory "
                        f"off; default {MEMO_DEFAULT_MB})")
    return int(mb) * 2**20 + int(mb % 1 * 2**20)  # exact, and no float overflow for huge values


def env_int(name: str, default: int) -> int:
    """``$name`` as an integer (``default`` when unset, empty or blank, as
    :func:`env_num_threads` reads its variable); a UserError naming it else."""
    value = os.environ.get(name, "")
    try:
        return int(value) if value.strip() else default
    except ValueError:
        raise UserError(f"${name}={value!r} is not an integer") from None


def check_torchrun_env() -> int:
    """Check what torchrun sets and this module (or ``torch.distributed``'s ``env://``
    rendezvous) reads; return ``$WORLD_SIZE`` (default 1).  ``$WORLD_SIZE`` an integer >= 1; when
    it is > 1, ``$RANK`` an integer in [0, WORLD_SIZE), ``$LOCAL_RANK`` an integer,
    ``$MASTER_ADDR`` set and ``$MASTER_PORT`` a port number.  One missing or wrong is a
    :class:`UserError` naming it (torch would raise a ValueError).  Nothing is checked in a
    process group initialised by the caller (a test, a notebook), which does not read them.
    Part of :func:`check_environment`, so checked before anything is written."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    world = env_int("WORLD_SIZE", 1)
    if world < 1:
        raise UserError(f"$WORLD_SIZE={world} is out of range; it must be >= 1 (the number of "
                        "processes, set by torchrun)")
    if world == 1:
        return world
    if not dist.is_available():
        raise UserError("$WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name, "").strip():
            raise UserError(f"$WORLD_SIZE={world} but ${name} is not set; start the command "
                            "with torchrun, which sets it, or unset $WORLD_SIZE")
    r = env_int("RANK", 0)
    if not 0 <= r < world:
        raise UserError(f"$RANK={r} is out of range for $WORLD_SIZE={world}; it must be "
                        f"between 0 and {world - 1}")
    port = env_int("MASTER_PORT", 0)
    if not 0 <= port <= 65535:
        raise UserError(f"$MASTER_PORT={port} is out of range; it must be a port number, "
                        "0 to 65535")
    env_int("LOCAL_RANK", 0)
    return world
