"""Builders at the config boundary that need more than one layer: the configured model for named
tasks (the tasks' kinds and channels come from the data set, the rest from ``cfg.model``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from metasparsity.data import resolve_tasks
from metasparsity.models import MultiTaskNet, build_model_from_tasks
from metasparsity.utils.errors import UserError


def build_model(cfg: Any, tasks: Sequence[str] | None) -> MultiTaskNet:
    """The model of config ``cfg`` (sections ``model`` and ``data``) for the named ``tasks``
    (None: ``data.tasks``).

    Channels and kinds of the tasks come from the configured data set
    (``metasparsity.data.resolve_tasks``); see :func:`build_model_from_tasks` for the rest.
    """
    m = cfg.model
    resolved = resolve_tasks(cfg, tasks)
    model = build_model_from_tasks(
        resolved, depth=m.depth, width=m.width,
        output_stride=m.output_stride, dense_head=m.dense_head, image_head=m.image_head,
        head_channels=m.head_channels, aspp_rates=m.aspp_rates, pretrained=m.pretrained)
    check_head_outputs(model, resolved)
    return model


PROBE_SIZE = 32
"""The side of the zero image :func:`check_head_outputs` runs through the model."""


def check_head_outputs(model: MultiTaskNet, tasks: Mapping[str, Any]) -> None:
    """Run one ``[1, 3, 32, 32]`` zero image through ``model`` (eval mode, no gradient, its
    mode put back) and check each head's output against its task: ``[1, C, 32, 32]`` for a dense
    task, ``[1, C]`` (or ``[1]`` when ``C = 1``) for an image-level one.  A head of one's own
    that misses the input's size or the task's channels is a UserError naming it here, at
    set-up, instead of a shape error in the loss at the first step, after the run was opened."""
    was_training = model.training
    x = torch.zeros(1, 3, PROBE_SIZE, PROBE_SIZE,
                    dtype=next(model.parameters()).dtype, device=next(model.parameters()).device)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    finally:
        model.train(was_training)
    for name, task in tasks.items():
        c = task.channels
        want = ([(1, c, PROBE_SIZE, PROBE_SIZE)] if task.kind == "dense"
                else [(1, c)] + ([(1,)] if c == 1 else []))
        got = tuple(out[name].shape)
        if got not in want:
            raise UserError(f"the head of task {name!r} ({type(model.heads[name]).__name__}) "
                            f"gives {list(got)} for a {PROBE_SIZE}×{PROBE_SIZE} image; a "
                            f"{task.kind} task with {c} channel(s) needs "
                            f"{' or '.join(str(list(w)) for w in want)}")
