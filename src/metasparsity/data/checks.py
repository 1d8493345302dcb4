"""The first sample of every split, checked against the task table when the split is built
(:func:`check_first_sample`, called by :func:`metasparsity.data.build_dataset`).

A data set that serves a wrong layout (an empty split, numpy arrays, a ``uint8`` or 0–255 image,
an image of another size than ``data.image_size``, a missing target, a depth map ``[H, W]``,
float segmentation labels…) stops at set-up with a one-line :class:`UserError` naming the data
set, the split, the task and what was expected, before a run writes anything, rather than deep
inside torch at the first step, at the first validation after training, or not at all.  Only
item 0 is read, with the global random generators left as they were, so a run's results do not
change.  The layouts are those of :mod:`metasparsity.data.tasks`; a task type registered
without a layout here is checked for presence only.
"""

from __future__ import annotations

import copy
import numbers
import random
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from metasparsity.data.tasks import IGNORE_INDEX, Task
from metasparsity.utils.errors import UserError, os_error_message

MAX_IMAGE_VALUE = 100.0
"""An image in [0, 1] normalised with any std >= 0.01 stays below this; a 0–255 one normalised
does not (a 0–255 one as it is: whole numbers >= 0 up to more than 1.5, also refused)."""

TARGET_LAYOUTS: dict[str, tuple[str, str]] = {
    # type: (dtype, shape with the image's H and W)
    "segmentation": ("integer", "[H, W]"),
    "depth": ("floating", "[1, H, W]"),
    "normal": ("floating", "[3, H, W]"),
    "edge": ("floating", "[1, H, W]"),
    "binary": ("any", "[]"),
}


def _shape(layout: str, h: int, w: int) -> tuple[int, ...]:
    return {"[H, W]": (h, w), "[1, H, W]": (1, h, w), "[3, H, W]": (3, h, w), "[]": ()}[layout]


@contextmanager
def _global_rng_kept() -> Iterator[None]:
    """Torch's, NumPy's and Python's global generators as they were, whatever runs inside."""
    state = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        torch.random.set_rng_state(state[0])
        np.random.set_state(state[1])
        random.setstate(state[2])


def first_sample(dataset: Any) -> Any:
    """Item 0 of ``dataset``: through ``seeded_item(0, generator)`` when it has one (a fixed
    generator), else ``dataset[0]``; the global generators are left as they were, and the read
    goes through a shallow copy, so that a handle a data set opens lazily on its first read (an
    HDF5 file, an LMDB environment) is opened by each DataLoader worker, not here."""
    try:
        dataset = copy.copy(dataset)
    except Exception:  # noqa: BLE001 (an object that cannot be copied is read as it is)
        pass
    with _global_rng_kept():
        if callable(getattr(dataset, "seeded_item", None)):
            return dataset.seeded_item(0, torch.Generator().manual_seed(0))
        return dataset[0]


def check_first_sample(dataset: Any, tasks: Mapping[str, Task], where: str,
                       image_size: int | None = None) -> None:
    """Check that ``dataset`` (``where``: e.g. ``"data set 'mine', split 'val'"``) is not empty
    and that its item 0 is ``(image, {task: target})`` as the package expects: ``image`` a float
    tensor ``[3, S, S]`` (``S = image_size`` when given), finite and not in 0–255; a target for
    every task of ``tasks``, a tensor with its type's dtype and shape (segmentation labels in
    ``[0, C)`` or the ignore label).  A :class:`UserError` naming the first problem else."""
    try:
        n = len(dataset)
    except TypeError:
        raise UserError(f"{where}: the builder returned {type(dataset).__name__}, which has no "
                        "len(); return a torch Dataset of (image, {task: target})") from None
    if n == 0:
        raise UserError(f"{where} is empty: every split needs at least one sample (an empty "
                        "validation or test split would score nothing)")
    try:
        sample = first_sample(dataset)
    except UserError:
        raise
    except OSError as e:  # a file of the data set's own that is missing or unreadable
        raise UserError(f"{where}: item 0 could not be read: {os_error_message(e)}") from e
    except Exception as e:  # a bug of a data set of one's own: its traceback, and where
        if hasattr(e, "add_note"):  # Python >= 3.11
            e.add_note(f"(raised reading item 0 of {where})")
        raise
    if not (isinstance(sample, (tuple, list)) and len(sample) == 2
            and isinstance(sample[1], Mapping)):
        raise UserError(f"{where}: item 0 must be (image, {{task: target}}), got "
                        f"{type(sample).__name__}")
    image, targets = sample
    _check_image(image, f"{where}: item 0's image", image_size)
    h, w = image.shape[1:]
    for name, task in tasks.items():
        if name not in targets:
            raise UserError(f"{where}: item 0 has no target for task {name!r} (it has "
                            f"{', '.join(map(repr, targets)) or 'none'})")
        _check_target(targets[name], task, f"{where}: item 0's target of task {name!r}", h, w)


def _check_image(image: Any, what: str, image_size: int | None) -> None:
    if not torch.is_tensor(image):
        raise UserError(f"{what} is a {type(image).__name__}; expected a torch tensor "
                        "[3, H, W] (torch.as_tensor it in the data set)")
    if not image.is_floating_point():
        raise UserError(f"{what} is {image.dtype}; expected floating point [3, H, W], scaled "
                        "to [0, 1] (then normalised)")
    if image.dim() != 3 or image.shape[0] != 3:
        raise UserError(f"{what} has shape {tuple(image.shape)}; expected [3, H, W] (channels "
                        "first)")
    if image_size is not None and tuple(image.shape[1:]) != (image_size, image_size):
        raise UserError(f"{what} is {image.shape[1]}×{image.shape[2]}; data.image_size is "
                        f"{image_size}: the data set must serve {image_size}×{image_size} "
                        "images (pruning, predict and the cost figures use that size)")
    if not torch.isfinite(image).all():
        raise UserError(f"{what} holds NaN or infinite values")
    top = float(image.abs().max())
    whole_0_255 = float(image.min()) >= 0 and top > 1.5 and bool((image == image.round()).all())
    if whole_0_255 or top > MAX_IMAGE_VALUE:
        raise UserError(f"{what} has values up to {top:g}; expected an image scaled to [0, 1] "
                        "(then normalised), not 0–255")


def _check_target(y: Any, task: Task, what: str, h: int, w: int) -> None:
    layout = TARGET_LAYOUTS.get(task.type)
    if task.kind == "image" and isinstance(y, (numbers.Number, np.generic)):
        y = torch.as_tensor(y)  # a scalar the DataLoader's collate makes a tensor of
    if not torch.is_tensor(y):
        kind = type(y)
        raise UserError(f"{what} is a {kind.__module__}.{kind.__qualname__}; expected a torch "
                        "tensor")
    if layout is None:  # a registered type: its layout is its loss's business
        return
    dtype, shape = layout
    if dtype == "integer" and (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool):
        raise UserError(f"{what} is {y.dtype}; expected integer labels {shape}")
    if dtype == "floating" and not y.is_floating_point():
        raise UserError(f"{what} is {y.dtype}; expected floating point {shape}")
    if tuple(y.shape) != _shape(shape, h, w):
        raise UserError(f"{what} has shape {tuple(y.shape)}; expected {shape} = "
                        f"{list(_shape(shape, h, w))} for a {task.type} task with the image's "
                        "size")
    if task.type == "segmentation" and task.num_classes is not None:
        labels = y[y != IGNORE_INDEX]
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= task.num_classes):
            raise UserError(f"{what} holds labels from {int(labels.min())} to "
                            f"{int(labels.max())}; expected 0 to {task.num_classes - 1} (or "
                            f"{IGNORE_INDEX}, ignored)")
