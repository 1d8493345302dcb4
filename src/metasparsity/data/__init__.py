"""Data sets and the task registry.

Public API:
    ``build_dataset(cfg, split)`` -> ``torch.utils.data.Dataset`` yielding ``(image, {task: target})``
    with ``image`` float32 ``[3, H, W]`` (normalised) and targets as in :mod:`metasparsity.data.tasks`.
    ``resolve_tasks(cfg, names)`` -> ``{name: Task}`` with the data set's channels / classes.
    ``TASKS``: the task registry; ``DATASETS``: the data-set registry.

Register your own data set without editing the package::

    from metasparsity.data import DATASETS, DatasetSpec
    DATASETS.register("mine", DatasetSpec(build=my_builder, tasks=my_tasks))

where ``my_builder(data_cfg, split)`` returns a Dataset and ``my_tasks(data_cfg)`` returns
``{name: Task}`` for every task it can serve.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from metasparsity.data.checks import check_first_sample
from metasparsity.data.tasks import IGNORE_INDEX, LOSSES, TASKS, Task, register_loss, register_task
from metasparsity.utils.errors import UserError
from metasparsity.utils.registry import Registry

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """How to build a data set (``build(data_cfg, split)``) and which tasks it serves.

    ``mean`` / ``std``: the per-channel statistics its images are normalised with (None:
    ImageNet's, as every built-in data set); ``prune`` writes them into ``model.json``, and
    ``predict`` normalises new images with them."""

    build: Callable[[Any, str], Dataset]
    tasks: Callable[[Any], dict[str, Task]]
    description: str = ""
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if not (callable(self.build) and callable(self.tasks)):
            raise TypeError("DatasetSpec: build(data_cfg, split) and tasks(data_cfg) must be "
                            "functions")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is None:
                continue
            try:
                values = tuple(float(x) for x in v)  # NumPy arrays too, stored as floats
            except (TypeError, ValueError):
                values = ()
            if len(values) != 3 or not all(math.isfinite(x) and (x > 0 or name == "mean")
                                           for x in values):
                raise ValueError(f"DatasetSpec: {name} must be 3 finite numbers (one per "
                                 f"channel{', > 0' if name == 'std' else ''}), got {v!r}")
            object.__setattr__(self, name, values)


DATASETS: Registry[DatasetSpec] = Registry("data set")


def _data_cfg(cfg: Any) -> Any:
    return getattr(cfg, "data", cfg)


def resolve_tasks(cfg: Any, names: Iterable[str] | None = None) -> dict[str, Task]:
    """``{name: Task}`` for ``names`` (task names; default ``data.tasks``) as served by the
    configured data set."""
    d = _data_cfg(cfg)
    spec = DATASETS.get(d.name)
    available = spec.tasks(d)
    if not isinstance(available, Mapping):
        raise UserError(f"data set {d.name!r}: its tasks function must return {{name: Task}}, "
                        f"got {type(available).__name__}")
    for n, t in available.items():
        if not isinstance(t, Task) or t.name != n:
            raise UserError(f"data set {d.name!r}: its tasks function must return {{name: "
                            f"Task}} with each Task's name as its key; the key {n!r} holds "
                            + (f"the Task named {t.name!r}" if isinstance(t, Task)
                               else f"a {type(t).__name__}"))
    if isinstance(names, str) or not isinstance(names, Iterable | None):
        raise UserError(f"tasks: give a list of task names, got {type(names).__name__} {names!r}"
                        + (f" (e.g. [{names!r}])" if isinstance(names, str) else ""))
    names = list(d.tasks if names is None else names)
    bad = [n for n in names if n not in available]
    if bad:
        raise UserError(
            f"data.tasks: {bad} not served by data set {d.name!r}; available: {', '.join(available)}")
    return {n: available[n] for n in names}


def build_dataset(cfg: Any, split: str) -> Dataset:
    """Build the configured data set's ``split`` (``train``, ``val`` or ``test``), its first
    sample checked against the task table (:func:`metasparsity.data.checks.check_first_sample`:
    a wrong layout is a UserError here, before a run writes anything)."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    d = _data_cfg(cfg)
    tasks = resolve_tasks(d)
    dataset = DATASETS.get(d.name).build(d, split)
    check_first_sample(dataset, tasks, f"data set {d.name!r}, split {split!r}",
                       getattr(d, "image_size", None))
    return dataset


def _register_builtin() -> None:
    # Imported here so that registering happens once, on first import of the package.
    for mod in ("synthscenes", "nyuv2", "celebamaskhq"):
        try:
            __import__(f"metasparsity.data.{mod}")
        except ModuleNotFoundError as e:  # only while those modules are not written yet
            if e.name != f"metasparsity.data.{mod}":
                raise


_register_builtin()

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "IGNORE_INDEX",
    "LOSSES",
    "SPLITS",
    "TASKS",
    "Task",
    "build_dataset",
    "register_loss",
    "register_task",
    "resolve_tasks",
]
