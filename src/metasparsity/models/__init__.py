"""Models: torchvision-compatible ResNets, task heads and the multi-task network.

Public API:
    ``build_model_from_tasks(tasks, ...) -> MultiTaskNet``: the backbone and one head per task,
    from plain arguments (``metasparsity.builders.build_model(cfg, names)`` reads them from a
    config).
    ``build_head(cfg, task, in_channels)``: a fresh head for a task (e.g. an unseen one);
    ``make_head(...)``: the same from plain arguments.
    ``HEADS`` (``aspp``, ``mlp``): a registry, so that a head of one's own is chosen by name
    from YAML (``model.dense_head``, ``model.image_head``) and exported with compact models.
    ``BACKBONES`` (``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``): the ResNets that
    ``model.depth`` picks (``resnet{depth}``); the config, compact models and the cost tables
    know these ResNets only, so a backbone of another family is not chosen from YAML.
    ``load_pretrained(backbone, path)``: a torchvision ImageNet checkpoint into a :class:`ResNet`.

The multi-task backbone is built without ``fc`` (no unused parameter among the shared ones);
``load_pretrained`` then skips the checkpoint's ``fc``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch.nn as nn

from metasparsity.models.heads import HEADS, ASPPHead, MLPHead
from metasparsity.models.multitask import MultiTaskNet
from metasparsity.models.resnet import (
    BACKBONES,
    OUTPUT_STRIDES,
    BasicBlock,
    Bottleneck,
    ResNet,
    load_pretrained,
    resnet,
)


def _accepts(fn: Any, name: str) -> bool:
    params = inspect.signature(fn).parameters
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def make_head(name: str, in_channels: int, out_channels: int, channels: int = 256,
              rates: Sequence[int] | None = None) -> nn.Module:
    """``HEADS[name](in_channels, out_channels, channels[, rates])``; ``rates`` is passed only to
    heads whose constructor takes it (dense heads such as ASPP)."""
    cls = HEADS.get(name)
    kwargs: dict[str, Any] = {"in_channels": in_channels, "out_channels": out_channels,
                              "channels": channels}
    if rates is not None and _accepts(cls, "rates"):
        kwargs["rates"] = tuple(rates)
    return cls(**kwargs)


def _head_for(task: Any, in_channels: int, dense_head: str, image_head: str, head_channels: int,
              aspp_rates: Sequence[int]) -> nn.Module:
    # ``task`` is a metasparsity.data.Task (duck-typed: ``kind`` and ``channels``).
    name = dense_head if task.kind == "dense" else image_head
    rates = aspp_rates if task.kind == "dense" else None
    return make_head(name, in_channels, task.channels, head_channels, rates)


def build_model_from_tasks(tasks: Mapping[str, Any], depth: int = 18, width: float = 1.0,
                           output_stride: int = 8, dense_head: str = "aspp",
                           image_head: str = "mlp", head_channels: int = 256,
                           aspp_rates: Sequence[int] = (12, 24, 36),
                           pretrained: str | None = None) -> MultiTaskNet:
    """A :class:`MultiTaskNet` from plain arguments.

    Args:
        tasks: ``{name: Task}``; ``Task.kind`` picks ``dense_head`` or ``image_head`` and
            ``Task.channels`` is the head's output channels.
        depth, width, output_stride: the backbone ``BACKBONES[f"resnet{depth}"]``.
        head_channels: channels inside every head; ``aspp_rates``: dilations of dense heads.
        pretrained: torchvision ResNet checkpoint loaded into the backbone (width 1 only).
    """
    if not tasks:
        raise ValueError("build a multi-task model for at least one task")
    backbone = BACKBONES.get(f"resnet{depth}")(width=width, output_stride=output_stride,
                                               num_classes=None)
    if pretrained:
        load_pretrained(backbone, pretrained)
    heads = {name: _head_for(t, backbone.out_channels, dense_head, image_head, head_channels,
                             aspp_rates)
             for name, t in tasks.items()}
    return MultiTaskNet(backbone, heads)


def build_head(cfg: Any, task: Any, in_channels: int) -> nn.Module:
    """A freshly initialised head for ``task`` (a ``Task``) on ``in_channels`` backbone channels,
    as configured in ``cfg.model``; attach it with ``model.add_head(task.name, head)``."""
    m = cfg.model
    return _head_for(task, in_channels, m.dense_head, m.image_head, m.head_channels, m.aspp_rates)


__all__ = [
    "ASPPHead",
    "BACKBONES",
    "BasicBlock",
    "Bottleneck",
    "HEADS",
    "MLPHead",
    "MultiTaskNet",
    "OUTPUT_STRIDES",
    "ResNet",
    "build_head",
    "build_model_from_tasks",
    "load_pretrained",
    "make_head",
    "resnet",
]
