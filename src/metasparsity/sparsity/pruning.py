"""Physical removal of channels that no layer reads (DESIGN §2.6), through Torch-Pruning's
dependency graph (imported lazily, STYLE §9): :func:`prune_zero_channels` and its report.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from metasparsity.sparsity.groups import channel_groups
from metasparsity.utils.tensors import Inputs, forward_args

#: Relative tolerance of the self-check in :func:`prune_zero_channels` (``max |Δ| / (1 + max |y|)``).
VERIFY_RTOL = 1e-4


@dataclass(frozen=True)
class Consumer:
    """A layer that reads a feature-map group: ``pairs`` = ``(local input index, root channel)``."""

    name: str
    kind: str  # "conv" or "linear"
    pairs: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class FeatureMapGroup:
    """The channels produced by ``root`` (its out channels) and every layer coupled to them.

    Attributes:
        root: name of the conv whose out channels index the group.
        size: number of channels.
        producers: convs / BNs whose out channels are these channels (removed together).
        consumers: convs / linears that read them (their input channels are removed together).
        blocked: why the group is left alone (``None`` when it can be pruned).
    """

    root: str
    size: int
    producers: tuple[str, ...]
    consumers: tuple[Consumer, ...]
    blocked: str | None = None


@dataclass
class GroupPlan:
    """What :func:`plan_pruning` decided for one group."""

    group: FeatureMapGroup
    removable: list[int] = field(default_factory=list)  # root channels no consumer reads
    remove: list[int] = field(default_factory=list)  # what is removed (all but one if all go)


# ----------------------------------------------------------------------------- graph analysis

@contextmanager
def _traceable(model: nn.Module) -> Iterator[None]:
    """Eval mode and ``requires_grad`` everywhere (tracing needs autograd), restored after."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)


def _build_graph(model: nn.Module, example_input: Inputs) -> Any:
    import torch_pruning as tp

    args = forward_args(example_input)
    return tp.DependencyGraph().build_dependency(
        model, example_inputs=args, forward_fn=lambda m, a: m(*a), verbose=False)


def _root_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Producing convs: those of ``model.backbone`` when there is one, else every conv."""
    backbone = getattr(model, "backbone", None)
    prefix, scope = ("backbone.", backbone) if isinstance(backbone, nn.Module) else ("", model)
    return [(prefix + n if n else prefix.rstrip("."), m) for n, m in scope.named_modules()
            if isinstance(m, nn.Conv2d)]


def _analyse_group(dg: Any, group: Any, names: dict[nn.Module, str], root: str,
                   size: int) -> tuple[FeatureMapGroup, list[nn.Module]]:
    import torch_pruning as tp

    ops = tp.ops.OPTYPE
    passthrough = {ops.ELEMENTWISE, ops.CONCAT, ops.SPLIT, ops.RESHAPE, ops.SLICE, ops.EXPAND,
                   ops.UNBIND}
    producers: list[str] = []
    producer_modules: list[nn.Module] = []
    consumers: list[Consumer] = []
    blocked: str | None = None
    for item in group:
        dep, idxs = item
        node = dep.target
        module = node.module
        label = names.get(module, node.name) if isinstance(module, nn.Module) else node.name
        if node.type in passthrough:
            continue
        out_fn = dg.is_out_channel_pruning_fn(dep.handler)
        if isinstance(module, nn.Conv2d) and node.type == ops.CONV and module.groups == 1:
            if dep.handler == tp.prune_conv_out_channels:
                producers.append(label)
                producer_modules.append(module)
            else:
                consumers.append(Consumer(label, "conv", tuple(zip(idxs, item.root_idxs))))
        elif isinstance(module, nn.Linear) and node.type == ops.LINEAR:
            if dep.handler == tp.prune_linear_out_channels:
                producers.append(label)
                producer_modules.append(module)
            else:
                consumers.append(Consumer(label, "linear", tuple(zip(idxs, item.root_idxs))))
        elif node.type == ops.BN and out_fn:
            producers.append(label)
        elif node.type == ops.OUTPUT:
            blocked = blocked or "its channels reach a model output"
        else:
            blocked = blocked or f"it touches {label} ({type(module).__name__}), not handled"
    if not consumers and blocked is None:
        blocked = "no conv or linear reads it (its channels reach a model output)"
    cg = FeatureMapGroup(root=root, size=size, producers=tuple(producers),
                         consumers=tuple(consumers), blocked=blocked)
    return cg, producer_modules


def _groups_of(dg: Any, model: nn.Module) -> list[FeatureMapGroup]:
    import torch_pruning as tp

    names = {m: n for n, m in model.named_modules()}
    seen: set[int] = set()
    out: list[FeatureMapGroup] = []
    for name, conv in _root_convs(model):
        if id(conv) in seen or conv not in dg.module2node:
            continue
        idxs = list(range(conv.out_channels))
        group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs)
        cg, produced_by = _analyse_group(dg, group, names, name, conv.out_channels)
        seen.update(id(m) for m in produced_by)
        seen.add(id(conv))
        out.append(cg)
    return out


def feature_map_groups(model: nn.Module, example_input: Inputs) -> list[FeatureMapGroup]:
    """The coupled groups of the feature maps produced by ``model``'s (backbone's) convs.

    ``example_input`` (e.g. ``[1, 3, H, W]``) is run once to trace the graph; the model's modes
    and ``requires_grad`` flags are restored afterwards and no weight changes.
    """
    with _traceable(model):
        dg = _build_graph(model, example_input)
        return _groups_of(dg, model)


def removable_channels(model: nn.Module, group: FeatureMapGroup) -> list[int]:
    """Root channels of ``group`` that no consumer reads (all their input weights exactly 0)."""
    if group.blocked is not None:
        return []
    modules = dict(model.named_modules())
    read: set[int] = set()
    with torch.no_grad():
        for c in group.consumers:
            w = modules[c.name].weight
            # conv [O, I, kh, kw] and linear [O, I]: column i is input channel i.
            used = w.detach().reshape(w.shape[0], w.shape[1], -1).ne(0).any(dim=2).any(dim=0)
            read.update(root for local, root in c.pairs if bool(used[local]))
    return [c for c in range(group.size) if c not in read]


def plan_pruning(model: nn.Module, groups: Sequence[FeatureMapGroup]) -> list[GroupPlan]:
    """For each group, the removable channels and the ones actually removed (one kept if all go)."""
    plans = []
    for g in groups:
        removable = removable_channels(model, g)
        remove = removable[1:] if len(removable) == g.size else list(removable)
        plans.append(GroupPlan(g, removable, remove))
    return plans


def removed_zero_masks(model: nn.Module, example_input: Inputs,
                       layers: Sequence[Any] | None = None) -> dict[str, torch.Tensor]:
    """``{weight name: bool [I]}``, True on the zero input-channel groups whose channel
    :func:`prune_zero_channels` removes (every layer reading it has a zero group there).

    A subset of :func:`~metasparsity.sparsity.groups.zero_group_masks`: a zero group whose
    channel another layer still reads (a block's first conv on the residual stream, a
    downsample) stays in the pruned model as zeros, so it costs the same whatever its weights.
    ``layers``: the grouped conv weights (default ``channel_groups(model)``).
    """
    layers = channel_groups(model) if layers is None else layers
    weight_of = {g.module_name: g.name for g in layers}
    masks = {g.name: torch.zeros(g.num_groups, dtype=torch.bool) for g in layers}
    for plan in plan_pruning(model, feature_map_groups(model, example_input)):
        gone = set(plan.remove)
        for c in plan.group.consumers:
            if c.name in weight_of:
                for local, root in c.pairs:
                    if root in gone:
                        masks[weight_of[c.name]][local] = True
    return masks


# ----------------------------------------------------------------------------- pruning

def _flat_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flat_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flat_outputs(v)]
    return []


def _run_eval(model: nn.Module, args: tuple[Any, ...]) -> list[torch.Tensor]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return _flat_outputs(model(*args))
    finally:
        for m, training in modes:
            m.training = training


def max_output_difference(a: nn.Module, b: nn.Module, example_input: Inputs) -> float:
    """``max |a(x) − b(x)|`` over every output tensor, both in eval mode (inf if shapes differ)."""
    args = forward_args(example_input)
    ya, yb = _run_eval(a, args), _run_eval(b, args)
    if len(ya) != len(yb) or any(p.shape != q.shape for p, q in zip(ya, yb)):
        return float("inf")
    return max((float((p - q).abs().max()) for p, q in zip(ya, yb) if p.numel()), default=0.0)


def prune_zero_channels(model: nn.Module, example_input: Inputs, *,
                        verify: bool = True) -> nn.Module:
    """A deep copy of ``model`` without the channels that no layer reads.

    A zero group ``W_l[:, c]`` of conv ``l`` means that conv never reads feature map ``c``.  Feature map
    ``c`` of a *producer* (the conv that computes it, with its BN, ReLU, pooling, residual additions on
    the way) can be deleted only when **every** consumer ignores it.  Torch-Pruning's dependency graph
    finds, for the out channels of each producing conv, the coupled *feature-map group*: every producer
    whose out channels are tied to them (all convs and BNs feeding one residual stream are added
    together) and every consumer that reads them (convs' / linears' input channels: the next block's
    ``conv1``, the ``downsample`` conv, the heads' first convs, …).  We decide ourselves which indices
    go; Torch-Pruning only rewrites the shapes.

    Rule.  Root channel ``c`` of a group is removable iff, for every consumer in the group and every
    input index ``i`` it maps ``c`` to, ``W_consumer[:, i]`` is exactly zero.  Residual streams are one
    group, so a stream channel is removable only when it is zero in *all* convs that read the stream
    anywhere (each block's ``conv1``, the next stage's ``conv1`` and ``downsample``); the identity
    additions only carry the channel on to those convs, and the layer4 stream is read by every task
    head (never sparsified), so it always stays.  The main wins are the internal channels of blocks
    (``conv1 → conv2``, ``conv2 → conv3``), which have a single consumer.

    Why removal is exact.  Whatever value a removable channel holds (a producer's filter may be
    non-zero, its BN adds ``β_c`` even to a zero filter, ReLU / max-pool / residual additions act per
    channel), it enters the rest of the network only through its consumers, multiplied by weights that
    are all exactly zero: it contributes exactly ``0`` to every sum.  Deleting the producer's filter
    ``c``, its BN channel and the consumers' input column ``c`` therefore leaves every output unchanged
    (up to floating-point summation order).  A channel that *some* consumer reads is never deleted, so
    no BN bias that reaches an output is lost.

    A group whose channels are *all* removable (e.g. a block whose ``conv2`` has every input group at
    zero) keeps one channel: Torch-Pruning cannot shrink a layer to 0 channels, and a conv with no
    output would break the block's forward.  The kept channel is read only through zero weights, so
    outputs stay exact; it costs one channel.

    Conservative limits: groups that touch anything other than convs (``groups = 1``), linears,
    BatchNorm and channel-wise ops (activation, pooling, addition, concatenation, reshape/flatten) —
    e.g. GroupNorm, LayerNorm, depthwise convs, attention — or that reach a model output directly are
    left untouched.  :func:`prune_zero_channels` finally checks the pruned model's outputs against the
    dense model's on the example input.

    Torch-Pruning is imported lazily (STYLE §9).

    Args:
        model: e.g. a ``MultiTaskNet``; left untouched.  When it has a ``backbone``, only the
            feature maps of backbone convs are considered (heads are never sparsified).
        example_input: one input, e.g. ``[1, 3, H, W]``, used to trace the graph (and to check).
        verify: compare the outputs of the pruned and the dense model in eval mode on
            ``example_input`` and raise if they differ by more than ``VERIFY_RTOL·(1 + max|y|)``.

    Returns:
        The pruned copy, in the same train/eval modes as ``model``.  In eval mode its outputs
        equal the dense model's up to float summation order.  ``backbone.out_channels`` is updated
        when the backbone has that attribute.  See :func:`pruning_report` for the per-layer counts.
    """
    import torch_pruning as tp

    if verify:  # the reference first: non-finite outputs make the check meaningless
        ref = _run_eval(model, forward_args(example_input))
        peaks = [float(t.abs().max()) for t in ref if t.numel()]
        if not all(math.isfinite(p) for p in peaks):
            raise ValueError(
                "the model's outputs on example_input are not finite (NaN or inf), so pruning "
                "cannot be checked against them: check the weights and example_input, or pass "
                "verify=False")
    pruned = copy.deepcopy(model)
    with _traceable(pruned):
        dg = _build_graph(pruned, example_input)
        plans = plan_pruning(pruned, _groups_of(dg, pruned))
        modules = dict(pruned.named_modules())
        for plan in plans:
            if not plan.remove:
                continue
            root = modules[plan.group.root]
            dg.get_pruning_group(root, tp.prune_conv_out_channels, plan.remove).prune()
    # Parameters that Torch-Pruning replaced start with requires_grad=True; mirror the source.
    src_flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for n, p in pruned.named_parameters():
        p.requires_grad_(src_flags.get(n, True))
    _refresh_out_channels(pruned, example_input)
    if verify:
        scale = max(peaks, default=0.0)
        diff = max_output_difference(model, pruned, example_input)
        if not diff <= VERIFY_RTOL * (1.0 + scale):
            raise RuntimeError(
                f"pruning changed the model's outputs (max |Δ| = {diff:.3g} at output scale "
                f"{scale:.3g}); the model contains an operation the channel analysis does not "
                "model correctly")
    return pruned


def _refresh_out_channels(model: nn.Module, example_input: Inputs) -> None:
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module) or not hasattr(backbone, "out_channels"):
        return
    ff = getattr(model, "forward_features", None)
    if ff is None:
        return
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            backbone.out_channels = int(ff(*forward_args(example_input)).shape[1])
    finally:
        for m, training in modes:
            m.training = training


# ----------------------------------------------------------------------------- reporting

def _channels(m: nn.Module) -> tuple[int, int] | None:
    if isinstance(m, nn.Conv2d):
        return m.in_channels, m.out_channels
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return m.num_features, m.num_features
    return None


def pruning_report(dense: nn.Module, pruned: nn.Module) -> dict[str, Any]:
    """Per-layer channel counts before / after pruning, and parameter totals.

    Returns:
        ``{"layers": [{"name", "type", "in_before", "in_after", "out_before", "out_after",
        "params_before", "params_after"}, …]`` for every conv, linear and BN (in
        ``named_modules`` order), ``"params_before"``, ``"params_after"``, ``"changed_layers"``
        (how many layers lost channels) and ``"conv_channels_removed"`` (sum of removed conv out
        channels).
    """
    after = dict(pruned.named_modules())
    layers = []
    removed = changed = 0
    for name, m in dense.named_modules():
        ch = _channels(m)
        if ch is None or name not in after:
            continue
        p = after[name]
        ch_after = _channels(p) or (0, 0)
        row = {
            "name": name, "type": type(m).__name__,
            "in_before": ch[0], "in_after": ch_after[0],
            "out_before": ch[1], "out_after": ch_after[1],
            "params_before": sum(t.numel() for t in m.parameters(recurse=False)),
            "params_after": sum(t.numel() for t in p.parameters(recurse=False)),
        }
        layers.append(row)
        if ch != ch_after:
            changed += 1
        if isinstance(m, nn.Conv2d):
            removed += ch[1] - ch_after[1]
    return {
        "layers": layers,
        "params_before": sum(t.numel() for t in dense.parameters()),
        "params_after": sum(t.numel() for t in pruned.parameters()),
        "changed_layers": changed,
        "conv_channels_removed": removed,
    }
