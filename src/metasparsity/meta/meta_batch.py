"""The meta-batch over several processes (DESIGN §2.4): which subsets this rank meta-steps, which
support / query batches it loads, and the sum of every rank's :class:`MetaStepResult`.

Every rank draws the same ``M`` subsets and meta-steps one contiguous block of them
(:func:`local_subsets`); subset ``j`` of a step gets the ``j``-th batch of each stream of that step
on whichever rank holds it (:func:`batch_filter`).  The outer objective is a sum over subsets, so
:func:`reduce_meta_result` all-reduces (SUM) the per-rank meta-gradients: the single-process
result up to the order of floating-point additions.  Without a process group every function here
is the single-process identity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from metasparsity.meta.lam import LearnedLambda
from metasparsity.meta.meta_step import MetaStepResult, lambda_gradient, meta_step
from metasparsity.utils.errors import UserError


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def check_meta_batch(meta_batch: int, world: int) -> None:
    if meta_batch < world:
        raise UserError(f"meta.meta_batch={meta_batch} is smaller than the number of processes "
                        f"({world}): every process meta-steps at least one task subset; raise "
                        "meta.meta_batch or start fewer processes")


def local_subsets(meta_batch: int, info: Any) -> list[int]:
    """Positions ``j`` in the meta-batch that this rank meta-steps (``info``: its ``rank`` of
    ``world_size``, e.g. a :class:`~metasparsity.training.collectives.DistInfo`): a contiguous
    block, blocks in rank order, the first ``M mod W`` ranks one subset more (``M = 5, W = 2``:
    0–2 | 3–4)."""
    q, rem = divmod(meta_batch, info.world_size)
    start = info.rank * q + min(info.rank, rem)
    return list(range(start, start + q + (info.rank < rem)))


def batch_filter(start: int, meta_batch: int, mine: Sequence[int]) -> Callable[[int], bool]:
    """``keep(n)`` for a meta-batch stream (:meth:`BatchStream.select`): batch ``n`` belongs to
    subset ``(n − start) mod M`` of its step, counted from the step boundary ``start`` where the
    run (re)started, and is loaded here when that subset is this rank's."""
    mine = set(mine)

    def keep(n: int) -> bool:
        return (n - start) % meta_batch in mine

    return keep


_LAMBDA_FIELDS = ("grad_lambda", "grad_lambda_explicit", "grad_lambda_implicit")


def reduce_meta_result(res: MetaStepResult, subsets: Sequence[Sequence[str]], model: nn.Module,
                       lam: LearnedLambda,
                       extra_params: Mapping[str, torch.Tensor] | None = None) -> MetaStepResult:
    """Sum one rank's :class:`MetaStepResult` over ranks: the result of the whole meta-batch.

    ``res`` comes from :func:`metasparsity.meta.meta_step` on this rank's share of the meta-batch
    ``subsets`` (the full list, the same on every rank).  Summed (all-reduce SUM, one flat buffer
    per dtype): the gradients of θ and of ``extra_params``, λ's gradient and its explicit and
    implicit parts, the meta loss, the query total and the λ-validation loss.  Then, as in
    ``meta_step``: λ's gradient = explicit + implicit (closed-form modes) or its implicit part =
    total − explicit (``second_order``), and ``grad_rho = grad_lambda · dλ/dρ``.  A gradient
    that is None on a rank counts as zeros; None on every rank stays None.  Per-task query /
    inner losses are means over all subsets holding the task (as in one process).  Unchanged:
    the penalty Ω(θ) and λ, the same on every rank.
    """
    if not _distributed():
        return res
    params = dict(model.named_parameters())
    extra = dict(extra_params or {})
    rho = lam.rho
    # slots: (kind, name, local tensor or None, shape, dtype of the sum)
    slots: list[tuple[str, str, torch.Tensor | None, torch.Size, torch.dtype]] = []
    for name, g in res.grads_theta.items():
        slots.append(("theta", name, g, params[name].shape, params[name].dtype))
    for name in extra:
        g = res.grads_extra.get(name)
        slots.append(("extra", name, g, extra[name].shape, extra[name].dtype))
    for name in _LAMBDA_FIELDS:
        g = getattr(res, name)
        # λ's gradients have the model's dtype: summed in it, so that the sum is the one a
        # single process makes
        slots.append(("lam", name, g, rho.shape, g.dtype if g is not None else rho.dtype))

    device = next(iter(params.values())).device
    local = [tuple(s) for s in res.subsets]
    tasks = list(dict.fromkeys(t for s in subsets for t in s))
    count = {t: sum(t in s for s in local) for t in tasks}
    scalars = [res.loss, res.query_total, res.lambda_val_loss or 0.0]
    for t in tasks:
        q = res.query_loss.get(t)
        i = res.inner_loss.get(t)
        scalars += [0.0 if q is None else q * count[t], float(count[t]),
                    0.0 if i is None else i * count[t], 0.0 if i is None else 1.0]
    flags = [0.0 if g is None else 1.0 for _, _, g, _, _ in slots]
    head = torch.tensor(scalars + flags, dtype=torch.float64, device=device)

    by_dtype: dict[torch.dtype, list[int]] = {}
    for k, (_, _, _, _, dtype) in enumerate(slots):
        by_dtype.setdefault(dtype, []).append(k)
    flat: dict[torch.dtype, torch.Tensor] = {}
    for dtype, ks in by_dtype.items():
        parts = []
        for k in ks:
            _, _, g, shape, _ = slots[k]
            parts.append(torch.zeros(shape.numel(), dtype=dtype, device=device) if g is None
                         else g.detach().reshape(-1).to(device=device, dtype=dtype))
        flat[dtype] = torch.cat(parts) if parts else torch.zeros(0, dtype=dtype, device=device)
    # fixed order on every rank: the float64 head first, then one buffer per dtype
    dist.all_reduce(head, op=dist.ReduceOp.SUM)
    for dtype in sorted(flat, key=str):
        dist.all_reduce(flat[dtype], op=dist.ReduceOp.SUM)

    head_l = head.tolist()
    n_sc = len(scalars)
    present = [v > 0 for v in head_l[n_sc:]]
    summed: list[torch.Tensor | None] = [None] * len(slots)
    for dtype, ks in by_dtype.items():
        offset = 0
        for k in ks:
            _, _, g, shape, _ = slots[k]
            n = shape.numel()
            if present[k]:
                v = flat[dtype][offset:offset + n].reshape(shape)
                summed[k] = v.to(g.dtype) if g is not None else v
            offset += n

    theta: dict[str, torch.Tensor | None] = {}
    grads_extra: dict[str, torch.Tensor | None] = {}
    lam_fields: dict[str, torch.Tensor | None] = {}
    for (kind, name, _, _, _), v in zip(slots, summed):
        {"theta": theta, "extra": grads_extra, "lam": lam_fields}[kind][name] = v
    expl, impl = lam_fields["grad_lambda_explicit"], lam_fields["grad_lambda_implicit"]
    grad_lam, grad_rho = lam_fields["grad_lambda"], None
    if grad_lam is not None and expl is not None and impl is not None:
        grad_lam, impl = lambda_gradient(res.mode, expl, implicit=impl, total=grad_lam)
        grad_rho = lam.rho_grad(grad_lam)
    query_loss, inner_loss = {}, {}
    for k, t in enumerate(tasks):
        q_sum, cnt, i_sum, i_has = head_l[3 + 4 * k: 7 + 4 * k]
        if cnt > 0:
            query_loss[t] = q_sum / cnt
            if i_has > 0:
                inner_loss[t] = i_sum / cnt
    return dataclasses.replace(
        res, subsets=[tuple(s) for s in subsets], loss=head_l[0], query_total=head_l[1],
        query_loss=query_loss, inner_loss=inner_loss, grads_theta=theta,
        grads_extra=grads_extra, grad_lambda=grad_lam, grad_lambda_explicit=expl,
        grad_lambda_implicit=impl, grad_rho=grad_rho,
        lambda_val_loss=None if res.lambda_val_loss is None else head_l[2])


def distributed_meta_step(model: nn.Module, lam: LearnedLambda, layers: Sequence[Any],
                          batches: Sequence[Any], loss_fn: Callable, *,
                          subsets: Sequence[Sequence[str]] | None = None,
                          extra_params: Mapping[str, torch.Tensor] | None = None,
                          **kwargs: Any) -> MetaStepResult:
    """:func:`metasparsity.meta.meta_step` on this rank's ``batches``, summed over ranks.

    ``subsets``: the whole meta-batch (every rank's subsets, in meta-batch order; default: this
    rank's).  ``kwargs``: ``inner_lr``, ``inner_steps``, ``mode``, ``outer_penalty``.  In a single
    process it is ``meta_step`` itself.  Follow it with
    :func:`metasparsity.meta.outer_update` on every rank.
    """
    res = meta_step(model, lam, layers, batches, loss_fn, extra_params=extra_params, **kwargs)
    if not _distributed():
        return res
    return reduce_meta_result(res, subsets if subsets is not None else res.subsets, model, lam,
                              extra_params)
