"""Cost of a model: parameters, multiply–accumulates (MACs) and measured latency.

MACs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` on one real forward pass,
and reported as ``MACs = FLOPs / 2`` of its count.  That counter covers the matrix products
(convolutions, linear layers, matmul/bmm, attention); it counts a multiply–add as 2 FLOPs and leaves
out biases, normalisation, activations, pooling and interpolation, so a convolution
``[B, I, H, W] → [B, O, Ho, Wo]`` with a ``kh × kw`` kernel and ``g`` groups costs exactly
``B·O·(I/g)·kh·kw·Ho·Wo`` MACs.  This is the convention of the MTL / pruning literature ("MACs"
of conv and linear layers); counts depend on the input size, so always report it with them.

Multi-task models (a ``backbone`` attribute and a ``heads`` :class:`torch.nn.ModuleDict`, see
DESIGN §6) get a breakdown with :func:`cost_table`.
"""

from __future__ import annotations

import inspect
import reprlib
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from metasparsity.utils.tensors import Inputs, forward_args


def _check_module(model: object, what: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what}: the model must be a torch.nn.Module (e.g. load_compact_model("
                        f"DIR)[0]), got {type(model).__name__} {reprlib.repr(model)}")


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``module`` (shared parameters counted once)."""
    _check_module(module, "count_parameters")
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Switch to eval mode (BN running statistics, no dropout), restore the previous modes after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _macs_of(fn: Callable[[], Any]) -> int:
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        fn()
    return int(counter.get_total_flops()) // 2


def count_macs(model: nn.Module, example_input: Inputs, **fwd_kwargs: Any) -> int:
    """MACs of ``model(*example_input, **fwd_kwargs)`` in eval mode (FLOPs / 2, see module doc).

    ``example_input`` is one tensor (e.g. ``[B, 3, H, W]``) or a tuple of positional arguments;
    the count is for the whole batch.
    """
    _check_module(model, "count_macs")
    args = forward_args(example_input)
    with _eval_mode(model):
        return _macs_of(lambda: model(*args, **fwd_kwargs))


def stage_costs(module: nn.Module, example_input: Inputs, **fwd_kwargs: Any) -> list[dict[str, Any]]:
    """Parameters and MACs of each direct child of ``module`` over one ``module(x)`` pass.

    For a backbone these are its stages (a ResNet's ``conv1``, ``bn1``, ``layer1`` … ``layer4``):
    where its cost lies.  MACs are those :func:`count_macs` counts, attributed to the child whose
    forward ran them (``torch.utils.flop_counter``'s module hierarchy), so they sum to
    ``count_macs(module, x)`` when every matrix product runs inside a child.  Children with
    neither parameters nor MACs (activations, pooling, children the forward never calls) are
    left out.

    Returns:
        ``[{"name", "params", "macs"}, …]`` in ``named_children`` order (MACs for the whole batch).
    """
    _check_module(module, "stage_costs")
    args = forward_args(example_input)
    counter = FlopCounterMode(display=False)
    with _eval_mode(module), torch.inference_mode(), counter:
        module(*args, **fwd_kwargs)
    flops = {k: int(sum(v.values())) for k, v in counter.get_flop_counts().items()}
    root = type(module).__name__
    out = []
    for name, child in module.named_children():
        params = count_parameters(child)
        macs = _subtree_flops(flops, f"{root}.{name}") // 2
        if params or macs:
            out.append({"name": name, "params": params, "macs": macs})
    return out


def _subtree_flops(flops: dict[str, int], key: str) -> int:
    """FLOPs recorded under module ``key``, or, when its own forward never ran, the sum over its
    outermost descendants that have a count (each one's count includes its own descendants)."""
    if key in flops:
        return flops[key]
    below = [k for k in flops if k.startswith(key + ".")]
    return sum(flops[k] for k in below
               if not any(k.startswith(a + ".") for a in below if a != k))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_of(model: nn.Module, args: tuple[Any, ...]) -> torch.device:
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.device
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def measure_latency(
    model: nn.Module,
    example_input: Inputs,
    warmup: int = 5,
    repeats: int = 30,
    **fwd_kwargs: Any,
) -> dict[str, Any]:
    """Wall-clock time of one forward pass on ``example_input``, in milliseconds.

    The model runs in eval mode under :func:`torch.inference_mode`; ``warmup`` untimed passes come
    first, then ``repeats`` passes are each timed with :func:`time.perf_counter` (on a CUDA device,
    bracketed by ``torch.cuda.synchronize``).  The model's train/eval modes are restored after.

    Returns:
        ``median_ms``, ``mean_ms``, ``p10_ms``, ``p90_ms``, ``min_ms``, ``max_ms`` (floats),
        ``repeats``, ``warmup`` (ints) and ``device`` (str).  Report the median: it is the least
        sensitive to other load on the machine.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(
            f"measure_latency: need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}"
        )
    _check_module(model, "measure_latency")
    args = forward_args(example_input)
    device = _device_of(model, args)
    times: list[float] = []
    with _eval_mode(model), torch.inference_mode():
        for _ in range(warmup):
            model(*args, **fwd_kwargs)
        _sync(device)
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            model(*args, **fwd_kwargs)
            _sync(device)
            times.append((time.perf_counter() - start) * 1e3)
    arr = np.asarray(times)
    return {
        "median_ms": float(statistics.median(times)),
        "mean_ms": float(arr.mean()),
        "p10_ms": float(np.percentile(arr, 10)),
        "p90_ms": float(np.percentile(arr, 90)),
        "min_ms": float(arr.min()),
        "max_ms": float(arr.max()),
        "repeats": int(repeats),
        "warmup": int(warmup),
        "device": str(device),
    }


def _accepts_tasks(model: nn.Module) -> bool:
    try:
        return "tasks" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def cost_table(model: nn.Module, example_input: Inputs) -> dict[str, Any]:
    """Parameters and MACs of a multi-task model, split into backbone / heads / total.

    ``model`` has ``.backbone`` and ``.heads`` (a :class:`torch.nn.ModuleDict`) and
    ``model(x)`` runs the backbone once and every head.  Backbone MACs come from
    ``model.forward_features(x)`` (or ``model.backbone(x)`` without it); the MACs of all heads
    are ``total − backbone``, and those of head ``t`` are ``MACs(model(x, tasks=[t])) − backbone``
    when ``forward`` takes ``tasks``.  Parameters are counted per module; ``other`` holds the
    parameters that belong to neither (e.g. learned loss weights), usually 0.

    Returns:
        ``{"backbone": {"params", "macs"}, "heads": {...}, "total": {...},
        "per_head": {task: {"params", "macs"}}, "other_params": int}`` (MACs for the whole batch
        of ``example_input``).
    """
    _check_module(model, "cost_table")
    if not hasattr(model, "backbone") or not isinstance(
        getattr(model, "heads", None), nn.ModuleDict
    ):
        raise ValueError("cost_table needs a model with .backbone and .heads (nn.ModuleDict)")
    args = forward_args(example_input)
    features = getattr(model, "forward_features", None) or model.backbone
    with _eval_mode(model):
        total_macs = _macs_of(lambda: model(*args))
        backbone_macs = _macs_of(lambda: features(*args))
        per_head: dict[str, dict[str, int]] = {}
        for name, head in model.heads.items():
            entry = {"params": count_parameters(head)}
            if _accepts_tasks(model):
                entry["macs"] = _macs_of(lambda n=name: model(*args, tasks=[n])) - backbone_macs
            per_head[name] = entry
    total_params = count_parameters(model)
    backbone_params = count_parameters(model.backbone)
    heads_params = count_parameters(model.heads)
    return {
        "backbone": {"params": backbone_params, "macs": backbone_macs},
        "heads": {"params": heads_params, "macs": total_macs - backbone_macs},
        "total": {"params": total_params, "macs": total_macs},
        "per_head": per_head,
        "other_params": total_params - backbone_params - heads_params,
    }
