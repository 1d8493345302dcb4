"""Builders at the config boundary that need more than one layer: the configured model for named
tasks (the tasks' kinds and channels come from the data set, the rest from ``cfg.model``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from metasparsity.data import resolve_tasks
from metasparsity.models import MultiTaskNet, build_model_from_tasks


def build_model(cfg: Any, tasks: Sequence[str] | None) -> MultiTaskNet:
    """The model of config ``cfg`` (sections ``model`` and ``data``) for the named ``tasks``
    (None: ``data.tasks``).

    Channels and kinds of the tasks come from the configured data set
    (``metasparsity.data.resolve_tasks``); see :func:`build_model_from_tasks` for the rest.
    """
    m = cfg.model
    return build_model_from_tasks(
        resolve_tasks(cfg, tasks), depth=m.depth, width=m.width,
        output_stride=m.output_stride, dense_head=m.dense_head, image_head=m.image_head,
        head_channels=m.head_channels, aspp_rates=m.aspp_rates, pretrained=m.pretrained)
