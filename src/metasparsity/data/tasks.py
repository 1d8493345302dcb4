"""Task registry: what a task predicts, its loss, and which metric scores it.

Conventions for targets (one sample; a batch adds a leading ``B``):

=============  =======  =================================  ======================================
type           kind     target                             prediction (model output)
=============  =======  =================================  ======================================
segmentation   dense    int64 ``[H, W]``, 255 = ignore      logits ``[B, C, H, W]``
depth          dense    float32 ``[1, H, W]``, 0 = invalid  ``[B, 1, H, W]``
normal         dense    float32 ``[3, H, W]`` unit vectors, ``[B, 3, H, W]`` (normalised by the
                        all-zero = invalid                  loss / metric)
edge           dense    float32 ``[1, H, W]`` in {0, 1}     logits ``[B, 1, H, W]``
binary         image    float32 ``[]`` in {0, 1}            logits ``[B, 1]``
=============  =======  =================================  ======================================

Losses: cross-entropy with ignore label; L1 on valid depth pixels; ``1 − cos`` on valid normal
pixels; class-balanced BCE for edges (positives weighted by the share of negatives in the batch,
as in HED); BCE with logits for binary attributes.  A batch with no valid pixel gives a zero loss
that is still connected to the graph.  Shapes must match these conventions exactly (no
broadcasting: a ValueError names both shapes), segmentation targets must be integers, and valid
edge and binary targets must lie in [0, 1] (ValueError otherwise).

Register your own with :func:`register_task` (and :func:`register_loss` for a new loss type).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from metasparsity.utils.errors import TargetError
from metasparsity.utils.registry import Registry
from metasparsity.utils.tensors import check_unit_range

IGNORE_INDEX = 255

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: Registry[LossFn] = Registry("loss")


@dataclass(frozen=True)
class Task:
    """One prediction task.

    Attributes:
        name: task name, e.g. ``"segment"``.
        kind: ``"dense"`` (per-pixel, ASPP head) or ``"image"`` (image-level, classification head).
        type: selects the loss (``LOSSES``) and the metric (``metasparsity.eval.metrics.METRICS``):
            ``segmentation``, ``depth``, ``normal``, ``edge``, ``binary`` or a registered one.
        channels: output channels of the head (classes for segmentation, 1 for depth/edge/binary,
            3 for normals).
        num_classes: classes of a segmentation task (None otherwise).
        description: one line for docs and reports.
    """

    name: str
    kind: str
    type: str
    channels: int
    num_classes: int | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a task's name must be a non-empty string, got {self.name!r}")
        if self.kind not in ("dense", "image"):
            raise ValueError(f"task {self.name!r}: kind must be 'dense' or 'image', got {self.kind!r}")
        for key in ("channels", "num_classes"):
            v = getattr(self, key)
            if v is None and key == "num_classes":
                continue
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"task {self.name!r}: {key} must be a whole number >= 1, "
                                 f"got {v!r}")
            object.__setattr__(self, key, int(v))  # a NumPy integer stored as an int
        if self.type == "segmentation" and self.num_classes != self.channels:
            raise ValueError(f"task {self.name!r}: a segmentation task has one channel per class; "
                             f"num_classes is {self.num_classes!r}, channels {self.channels}")

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss of a batch prediction against its target (see the module docstring); a
        target value the loss cannot take is a :class:`TargetError` naming this task."""
        try:
            return LOSSES.get(self.type)(pred, target)
        except TargetError as e:
            raise TargetError(f"task {self.name!r}: {e} (a target of the data set)") from None

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        """Turn raw head output into a prediction: labels, depth, unit normals, probabilities."""
        if self.type == "segmentation":
            return out.argmax(1)
        if self.type == "normal":
            return F.normalize(out, dim=1, eps=1e-12)
        if self.type in ("edge", "binary"):
            return torch.sigmoid(out)
        return out


TASKS: Registry[Task] = Registry("task")


def register_task(task: Task, overwrite: bool = False) -> Task:
    """Add a task to :data:`TASKS` (its ``type`` must have a loss in :data:`LOSSES`: register
    the loss first, :func:`register_loss`)."""
    if task.type not in LOSSES:
        raise ValueError(f"task {task.name!r}: no loss for type {task.type!r} (known: "
                         f"{', '.join(LOSSES.names())}); register_loss({task.type!r}, fn) first")
    TASKS.register(task.name, task, overwrite=overwrite)
    return task


def register_loss(type_name: str, fn: LossFn | None = None, overwrite: bool = False):
    """Register the loss of a task type: ``fn(pred, target) -> scalar``."""
    return LOSSES.register(type_name, fn, overwrite=overwrite)


def _zero_like_graph(pred: torch.Tensor) -> torch.Tensor:
    return pred.sum() * 0.0


def _shape_error(kind: str, pred: torch.Tensor, target: torch.Tensor, expected: str) -> ValueError:
    return ValueError(f"{kind} loss: prediction {tuple(pred.shape)} and target "
                      f"{tuple(target.shape)} do not match; expected {expected}")


def _check_same_shape(kind: str, pred: torch.Tensor, target: torch.Tensor, layout: str) -> None:
    if pred.shape != target.shape:
        raise _shape_error(kind, pred, target, f"the same shape, {layout}")


@register_loss("segmentation")
def segmentation_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over valid pixels. pred ``[B, C, H, W]`` logits, target int ``[B, H, W]``."""
    if pred.dim() != target.dim() + 1 or pred.shape[:1] + pred.shape[2:] != target.shape:
        raise _shape_error("segmentation", pred, target, "logits [B, C, H, W], target [B, H, W]")
    if target.is_floating_point() or target.is_complex():
        raise ValueError("segmentation loss: target must hold integer labels, got dtype "
                         f"{target.dtype}")
    labels = target.long()  # first: a narrow dtype (uint8) would wrap the class count
    valid = labels != IGNORE_INDEX
    out_of_range = valid & ((labels < 0) | (labels >= pred.shape[1]))
    any_valid, any_bad = torch.stack((valid.any(), out_of_range.any())).tolist()  # one sync
    if any_bad:  # cross_entropy: an IndexError on the CPU, a device-side assert on a GPU
        raise TargetError(f"segmentation loss: labels must lie in [0, {pred.shape[1]}) or be "
                          f"the ignore label {IGNORE_INDEX}, got "
                          f"{labels[out_of_range].flatten()[0].item()!r}")
    if not any_valid:
        return _zero_like_graph(pred)
    return F.cross_entropy(pred, labels, ignore_index=IGNORE_INDEX)


@register_loss("depth")
def depth_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean ``|p − g|`` over valid pixels (``g > 0``). Shapes ``[B, 1, H, W]``."""
    _check_same_shape("depth", pred, target, "[B, 1, H, W]")
    mask = target > 0
    n = mask.sum()
    if n == 0:
        return _zero_like_graph(pred)
    return ((pred - target).abs() * mask).sum() / n


@register_loss("normal")
def normal_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean ``1 − cos(p, g)`` over valid pixels (``|g| > 0``), p L2-normalised. ``[B, 3, H, W]``."""
    _check_same_shape("normal", pred, target, "[B, 3, H, W]")
    mask = target.abs().sum(1) > 0
    n = mask.sum()
    if n == 0:
        return _zero_like_graph(pred)
    cos = (F.normalize(pred, dim=1, eps=1e-12) * target).sum(1)
    return ((1.0 - cos) * mask).sum() / n


@register_loss("edge")
def edge_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Class-balanced BCE (HED): positives weighted by β = share of negatives, negatives by 1 − β.

    pred ``[B, 1, H, W]`` logits, target ``[B, 1, H, W]`` in {0, 1}; pixels equal to 255 ignored.
    """
    _check_same_shape("edge", pred, target, "[B, 1, H, W]")
    valid = target != IGNORE_INDEX
    check_unit_range("edge loss", target, valid)
    t = torch.where(valid, target, torch.zeros_like(target)).to(
        torch.promote_types(pred.dtype, torch.float32))
    n = valid.sum()
    if n == 0:
        return _zero_like_graph(pred)
    beta = 1.0 - (t * valid).sum() / n
    w = torch.where(t > 0.5, beta, 1.0 - beta) * valid
    return F.binary_cross_entropy_with_logits(pred, t, weight=w, reduction="sum") / n


@register_loss("binary")
def binary_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE with logits. pred ``[B, 1]`` (or ``[B]``), target ``[B]`` in {0, 1}."""
    if target.dim() != 1 or pred.shape not in (target.shape, (*target.shape, 1)):
        raise _shape_error("binary", pred, target, "logits [B, 1] or [B], target [B]")
    check_unit_range("binary loss", target)
    dtype = torch.promote_types(pred.dtype, torch.float32)  # float64 models stay in float64
    return F.binary_cross_entropy_with_logits(pred.reshape(-1), target.reshape(-1).to(dtype))


# The SynthScenes tasks (DESIGN §3.1).  Other data sets override channels/classes through their
# own task tables (see ``metasparsity.data.DATASETS``).
SYNTH_CLASSES = ["floor", "wall", "ceiling", "sphere", "box", "cylinder"]

for _t in (
    Task("segment", "dense", "segmentation", len(SYNTH_CLASSES), len(SYNTH_CLASSES),
         "semantic classes: " + ", ".join(SYNTH_CLASSES)),
    Task("depth", "dense", "depth", 1, None, "z-depth in scene units"),
    Task("normal", "dense", "normal", 3, None, "unit surface normal in the camera frame"),
    Task("edge", "dense", "edge", 1, None, "1-px boundaries where class, depth or normal change"),
    Task("has_sphere", "image", "binary", 1, None, "a sphere is visible"),
    Task("many_objects", "image", "binary", 1, None, "three or more objects are visible"),
    Task("light_left", "image", "binary", 1, None, "the light is left of the camera axis"),
):
    register_task(_t)
