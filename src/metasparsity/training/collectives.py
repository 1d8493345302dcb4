"""Several processes, one run: ``torchrun`` and ``torch.distributed``, nothing home-made.

``torchrun --nproc_per_node=N -m metasparsity CMD ...`` starts N copies of the command; each
joins the process group at its recipe boundary (:func:`init_distributed`): NCCL on GPUs
(``cuda:LOCAL_RANK``), Gloo on the CPU.  Without torchrun every function here is the
single-process identity.  Rank 0 alone evaluates and writes the run directory; what the others
need to know it decides in :func:`from_main`.  How each recipe splits its work is said in
``docs/distributed.md``.
"""

from __future__ import annotations

import atexit
import datetime
import gc
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from metasparsity.utils.device import resolve_device
from metasparsity.utils.env import check_torchrun_env, env_int
from metasparsity.utils.errors import UserError

T = TypeVar("T")

# Rank 0 evaluates and writes alone while the others wait in a collective: allow it time.
TIMEOUT = datetime.timedelta(hours=1)


# ----------------------------------------------------------------------------- process group


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that writes files."""
    return rank() == 0


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the run: ``rank`` of ``world_size``, ``local_rank`` on its node,
    and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _process_device(name: str, local_rank: int) -> torch.device:
    dev = resolve_device(name)
    if dev.type != "cuda":
        return dev
    if dev.index is not None:
        raise UserError(f"train.device={name!r}: under torchrun every process takes "
                        "cuda:LOCAL_RANK; set train.device=cuda (or auto)")
    n = torch.cuda.device_count()
    if n == 1:  # one GPU visible per process (CUDA_VISIBLE_DEVICES set per rank)
        return torch.device("cuda", 0)
    if local_rank >= n:
        raise UserError(f"LOCAL_RANK={local_rank} but this node has {n} GPUs: start at most "
                        f"{n} processes per node (--nproc_per_node)")
    return torch.device("cuda", local_rank)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the run's process group (once) and pick this process's device.

    Single process (no ``$WORLD_SIZE`` or ``1``, and no group): rank 0 of 1 on
    :func:`~metasparsity.utils.device.resolve_device` ``(device)``.  Under torchrun: backend NCCL
    when the device is CUDA (``cuda:LOCAL_RANK``), Gloo otherwise, then a barrier, so that no
    rank writes anything before every rank has checked its arguments.  A group initialised by
    the caller (a test, a notebook) is used as it is.
    """
    if dist.is_available() and dist.is_initialized():
        world, r = dist.get_world_size(), dist.get_rank()
        local = env_int("LOCAL_RANK", r)
        dev = _process_device(device, local) if world > 1 else resolve_device(device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return DistInfo(r, world, local, dev)
    world = check_torchrun_env()
    if world == 1:
        return DistInfo(0, 1, 0, resolve_device(device))
    local = env_int("LOCAL_RANK", 0)
    dev = _process_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=dev)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)
    atexit.register(shutdown)
    dist.barrier()
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, dev)


def shutdown() -> None:
    """Leave the process group (registered to run at exit by :func:`init_distributed`).

    Unreachable DistributedDataParallel wrappers are collected first: a reducer that outlives
    its process group until interpreter teardown can abort the process ("terminate called
    without an active exception") after the run has finished.
    """
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` of rank ``src`` on every rank (pickled; for small things: decisions, results)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, …]`` on every rank."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def from_main(fn: Callable[[], T]) -> T:
    """``fn()`` run on rank 0 only; its result, or the exception it raised, on every rank.

    For what rank 0 alone may do (read or write the run directory, decide whether a sub-run is
    finished) while every rank must take the same branch afterwards.
    """
    if not is_distributed():
        return fn()
    payload: tuple[bool, Any] | None = None
    if is_main():
        try:
            payload = (True, fn())
        except Exception as e:  # re-raised on every rank below
            payload = (False, e)
    ok, value = broadcast_object(payload)
    if not ok:
        raise value
    return value


def broadcast_state(*modules: nn.Module) -> None:
    """Copy rank 0's parameters and buffers into every rank's ``modules`` (in place)."""
    if not is_distributed():
        return
    with torch.no_grad():
        for module in modules:
            for t in module.state_dict().values():
                dist.broadcast(t, src=0)


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over ranks (a copy; the input itself in a single process)."""
    if not is_distributed():
        return values
    out = values.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is true on any rank (a collective; ``flag`` itself in one process)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def average_gradients(params) -> None:
    """Replace each ``.grad`` of ``params`` by its mean over ranks (in place; None stays None).

    For parameters outside DistributedDataParallel (learned loss weights)."""
    if not is_distributed():
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(dist.get_world_size())


def params_checksum(module: nn.Module) -> torch.Tensor:
    """``[Σ p, Σ p², Σ i·p_i]`` over every parameter in float64: a cheap fingerprint that equal
    parameters share bit for bit (tests compare it across ranks)."""
    acc = torch.zeros(3, dtype=torch.float64)
    for p in module.parameters():
        v = p.detach().reshape(-1).to("cpu", torch.float64)
        idx = torch.arange(1, v.numel() + 1, dtype=torch.float64)
        acc += torch.stack([v.sum(), (v * v).sum(), (v * idx).sum()])
    return acc


def data_parallel(module: nn.Module, info: DistInfo) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel (gradients averaged over ranks, parameters
    broadcast from rank 0 once), or ``module`` itself in a single process."""
    if not info.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    # Synchronised BatchNorm keeps the running statistics equal on every rank: no buffer
    # broadcast needed at every forward (only at construction, with the parameters).
    no_sync = ({"forward_sync_buffers": False}
               if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
               else {"broadcast_buffers": False})
    return DistributedDataParallel(
        module, device_ids=[info.device.index] if info.device.type == "cuda" else None,
        **no_sync)
