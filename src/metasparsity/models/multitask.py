"""Hard parameter sharing: one backbone, one head per task (DESIGN §2.1).

``MultiTaskNet(x, tasks)`` runs the backbone **once** and every selected head on the shared
feature map.  The backbone is the attribute ``backbone`` (its parameters are ``backbone.…``: the
shared parameters that the sparsity penalty groups) and the heads live in ``heads`` (an
``nn.ModuleDict``, parameters ``heads.<task>.…``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch
import torch.nn as nn

from metasparsity.utils.errors import UserError


class WeightsMismatch(UserError, RuntimeError):
    """A state dict that does not fit the model: a :class:`UserError` (exit code 2, one line) that
    is also the ``RuntimeError`` ``nn.Module.load_state_dict`` raises, for callers that catch it."""


class MultiTaskNet(nn.Module):
    """Shared backbone + per-task heads.

    Args:
        backbone: a module with ``forward_features(x) -> [B, C, h, w]`` and ``out_channels = C``.
        heads: ``{task: head}``; each head is called as ``head(features, (H, W))``.

    ``forward`` stores nothing on the module and modifies no parameter, so the model can be run
    with substituted parameters through ``torch.func.functional_call``.
    """

    def __init__(self, backbone: nn.Module, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleDict(dict(heads))

    @property
    def tasks(self) -> list[str]:
        """Names of the tasks that have a head, in insertion order."""
        return list(self.heads.keys())

    @property
    def out_channels(self) -> int:
        """Channels of the shared feature map."""
        return int(self.backbone.out_channels)

    def _check(self, task: str) -> None:
        if task not in self.heads:
            raise UserError(f"unknown task {task!r}: the model has heads for "
                            f"{', '.join(self.heads.keys()) or 'no task'}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Shared features: ``[B, 3, H, W]`` → ``[B, C, H/os, W/os]``."""
        return self.backbone.forward_features(x)

    def forward_heads(self, features: torch.Tensor, size: Iterable[int],
                      tasks: Iterable[str] | str | None = None) -> dict[str, torch.Tensor]:
        """Run the heads of ``tasks`` (default all) on shared ``features``; ``size`` = (H, W)."""
        names = self._select(tasks)
        size = tuple(size)
        return {t: self.heads[t](features, size) for t in names}

    def _select(self, tasks: Iterable[str] | str | None) -> list[str]:
        if tasks is None:
            return self.tasks
        names = [tasks] if isinstance(tasks, str) else list(tasks)
        for t in names:
            self._check(t)
        return names

    def forward(self, x: torch.Tensor,
                tasks: Iterable[str] | str | None = None) -> dict[str, torch.Tensor]:
        """``{task: output}`` for ``tasks`` (default: every head), backbone run once.

        Dense outputs are ``[B, C_t, H, W]`` (the input's size), image-level ones ``[B, C_t]``.
        An empty ``tasks`` returns ``{}`` without running anything.
        """
        names = self._select(tasks)
        if not names:
            return {}
        return self.forward_heads(self.forward_features(x), x.shape[-2:], names)

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the backbone (named ``backbone.…`` in ``named_parameters()``)."""
        return self.backbone.parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        """Parameters of ``task``'s head (named ``heads.<task>.…``)."""
        self._check(task)
        return self.heads[task].parameters()

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True,
                        assign: bool = False):
        """As :meth:`torch.nn.Module.load_state_dict`; with ``strict``, weights that do not fit
        this model (saved by a run whose ``model.*`` values or tasks differ from those it was
        built with now) are a :class:`UserError` in one line naming the first differences, before
        anything is copied."""
        if strict:
            own = self.state_dict()
            problems = []
            for what, keys in (
                    ("missing", [k for k in own if k not in state_dict]),
                    ("unexpected", [k for k in state_dict if k not in own]),
                    ("of another shape", [k for k in own if k in state_dict
                                          and tuple(own[k].shape) != tuple(state_dict[k].shape)])):
                if keys:
                    problems.append(f"{len(keys)} {what} (e.g. {', '.join(keys[:2])})")
            if problems:
                raise WeightsMismatch(
                    "the weights do not fit this model (were model.* values or tasks changed from "
                    "those the weights were saved with? overrides cannot change the architecture "
                    f"of an existing run): tensors {'; '.join(problems)}")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def add_head(self, task: str, head: nn.Module, *, replace: bool = False) -> nn.Module:
        """Attach ``head`` for ``task`` (e.g. an unseen task after meta-training).

        The head is moved to the backbone's device and dtype.  An existing task is an error unless
        ``replace`` is true.
        """
        if task in self.heads and not replace:
            raise UserError(f"task {task!r} already has a head; pass replace=True to swap it")
        ref = next(self.backbone.parameters(), None)
        if ref is not None:
            head = head.to(device=ref.device, dtype=ref.dtype)
        self.heads[task] = head
        return head
