"""Split-level metrics for every task type (DESIGN §4).

Every metric follows one protocol::

    m = build_metric("depth")
    for x, targets in loader:
        m.update(model(x)["depth"], targets["depth"])   # raw head output, target batch
    m.compute()   # {"abs_err": ..., "rel_err": ..., ...}
    m.reset()

``update`` takes the **raw model output** and the target batch with the conventions of
:mod:`metasparsity.data.tasks` (tensors on any device, gradients ignored).  Everything is
accumulated over the whole split on the CPU in float64 (or exact integers), so ``compute()`` does
not depend on how the split was cut into batches, and a metric is never an average of per-batch
averages.  ``compute()`` returns plain Python floats, in percent where the key says so; a value
that is undefined (no valid pixel, a single class for AUROC) is ``float("nan")``.  A prediction
holding a NaN or an infinity (a diverged model) makes **every** value NaN until ``reset()``,
rather than scoring, e.g., what the argmax of NaN logits happens to be (the task loss is then
non-finite too, which is how training detects the divergence).  Targets outside their convention
(a float segmentation target, an edge target outside [0, 1], a binary one not 0 or 1) are a
ValueError.

Each class carries ``higher_is_better`` (direction of every key that ``compute()`` returns) and
``primary`` (the keys that enter Δm by default, see :func:`metasparsity.eval.delta.default_spec`).

The definitions are the standard ones of the MTAN / LibMTL / Vandenhende literature:

=============  ================================================================  ==================
type           keys                                                              primary
=============  ================================================================  ==================
segmentation   ``miou`` (%), ``pixel_acc`` (%)                                   miou, pixel_acc
depth          ``abs_err``, ``rel_err``, ``rmse``, ``delta1/2/3`` (%)             abs_err, rel_err
normal         ``mean``, ``median`` (degrees), ``a11``, ``a22``, ``a30`` (%)      all five
edge           ``ods_f``, ``precision``, ``recall`` (%), ``threshold``            ods_f
binary         ``accuracy``, ``f1``, ``auroc`` (%)                                accuracy, f1
=============  ================================================================  ==================

Metrics are registered by task type in :data:`METRICS`; :func:`build_metrics` builds one per task
from its :class:`metasparsity.data.tasks.Task` (or anything with ``.type`` and ``.num_classes``),
or from its type string for the types that need nothing else.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from metasparsity.utils.errors import TargetError
from metasparsity.utils.registry import Registry
from metasparsity.utils.tensors import check_unit_range

IGNORE_INDEX = 255
"""Ignore label of segmentation and edge targets (same value as ``metasparsity.data.tasks``)."""

DEPTH_MIN = 1e-6
"""Predicted depth is clamped to at least this value inside the δ ratio ``max(p/g, g/p)`` only."""

NAN = float("nan")


class Metric(abc.ABC):
    """Abstract base class: accumulate with :meth:`update`, read with :meth:`compute`, clear with :meth:`reset`.

    Subclasses set ``higher_is_better`` (one entry per key of ``compute()``) and ``primary``
    (the keys that enter Δm by default).
    """

    higher_is_better: ClassVar[dict[str, bool]] = {}
    primary: ClassVar[tuple[str, ...]] = ()
    nonfinite: bool = False
    """Whether a prediction since the last :meth:`reset` held a NaN or an infinity: ``compute()``
    is then NaN for every key."""

    def __init__(self) -> None:
        self.reset()

    @classmethod
    def from_task(cls, task: Any) -> Metric:
        """Build the metric for a task-like object (``.type``, ``.num_classes``)."""
        return cls()

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget everything accumulated."""

    @abc.abstractmethod
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate one batch: raw model output ``pred`` against ``target``."""

    @abc.abstractmethod
    def compute(self) -> dict[str, float]:
        """The metric over everything accumulated since the last :meth:`reset`."""

    def _nan_result(self) -> dict[str, float]:
        return {k: NAN for k in self.higher_is_better}

    def _seen_nonfinite(self, pred: torch.Tensor, valid: torch.Tensor | None = None) -> bool:
        """Whether ``pred`` (with ``valid`` ``[B, H, W]``: its values along dim 1 at those pixels
        only), or a prediction before it since the last reset, held a NaN or an infinity; sets
        :attr:`nonfinite`.  ``update`` then skips the batch: the result is NaN anyway.  A metric
        that calls it sets ``self.nonfinite = False`` in its ``reset``, as every one here does."""
        if not self.nonfinite:
            finite = torch.isfinite(pred)
            if valid is not None:
                finite = finite.all(1)[valid]
            self.nonfinite = not bool(finite.all())
        return self.nonfinite


METRICS: Registry[type[Metric]] = Registry("metric")


def register_metric(type_name: str, cls: type[Metric] | None = None, overwrite: bool = False):
    """Register the metric class of a task type (usable as a class decorator)."""
    return METRICS.register(type_name, cls, overwrite=overwrite)


def _same_shape(name: str, pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"{name} metric: prediction {tuple(pred.shape)} and target {tuple(target.shape)} "
            "must have the same shape"
        )


def _count_ge(values: torch.Tensor, thresholds: torch.Tensor) -> np.ndarray:
    """``[#(values >= t) for t in thresholds]`` (thresholds sorted ascending), exact int64."""
    # searchsorted(right=True) = number of thresholds <= v, so v >= t_k  <=>  index > k.
    idx = torch.searchsorted(thresholds, values.contiguous(), right=True)
    bins = torch.bincount(idx.reshape(-1), minlength=thresholds.numel() + 1).cpu().numpy()
    above = np.cumsum(bins[::-1])[::-1]  # above[j] = #(index >= j)
    return above[1:].astype(np.int64)


# --------------------------------------------------------------------------------------------
# segmentation
# --------------------------------------------------------------------------------------------


@register_metric("segmentation")
class SegmentationMetric(Metric):
    """mIoU and pixel accuracy from one confusion matrix over all valid pixels of the split.

    ``update(pred, target)``: ``pred`` logits ``[B, C, H, W]`` (argmax over ``C``) or integer labels
    ``[B, H, W]``; ``target`` integer (int64) ``[B, H, W]`` with ``ignore_index`` for unlabelled
    pixels.  Logits of unlabelled pixels are not looked at (NaN there is no divergence).

    With the confusion matrix ``N[g, p]`` (ground truth ``g``, prediction ``p``):
    ``IoU_c = N[c, c] / (Σ_p N[c, p] + Σ_g N[g, c] − N[c, c])``; ``miou`` is the mean of ``IoU_c``
    over the classes whose union is non-zero (a class absent from both prediction and ground truth
    is left out), ``pixel_acc = Σ_c N[c, c] / Σ N``; both in percent.
    """

    higher_is_better: ClassVar[dict[str, bool]] = {"miou": True, "pixel_acc": True}
    primary: ClassVar[tuple[str, ...]] = ("miou", "pixel_acc")

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes is None or int(num_classes) < 1:
            raise ValueError(f"segmentation metric needs num_classes >= 1, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        super().__init__()

    @classmethod
    def from_task(cls, task: Any) -> SegmentationMetric:
        return cls(num_classes=task.num_classes)

    def reset(self) -> None:
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.nonfinite = False

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        c = self.num_classes
        logits = None
        if pred.dim() == target.dim() + 1:
            if pred.shape[1] != c:
                raise ValueError(
                    f"segmentation metric: {pred.shape[1]} logit channels, expected {c}"
                )
            logits, pred = pred, pred.argmax(1)
        _same_shape("segmentation", pred, target)
        if target.is_floating_point() or target.is_complex():
            raise ValueError(
                f"segmentation metric: target must hold integer labels, got dtype {target.dtype}"
            )
        target = target.long()
        pred = pred.long()
        valid = target != self.ignore_index
        if logits is not None and self._seen_nonfinite(logits, valid):
            return
        g, p = target[valid], pred[valid]
        if g.numel() and (g.min() < 0 or g.max() >= c):
            raise TargetError(
                f"segmentation metric: target labels must be in [0, {c}) or {self.ignore_index}"
            )
        if p.numel() and (p.min() < 0 or p.max() >= c):
            raise ValueError(f"segmentation metric: predicted labels must be in [0, {c})")
        counts = torch.bincount(g * c + p, minlength=c * c)
        self.confusion += counts.cpu().numpy().astype(np.int64).reshape(c, c)

    def compute(self) -> dict[str, float]:
        cm = self.confusion.astype(np.float64)
        total = cm.sum()
        if total == 0 or self.nonfinite:
            return self._nan_result()
        inter = np.diag(cm)
        union = cm.sum(0) + cm.sum(1) - inter
        present = union > 0
        iou = inter[present] / union[present]
        return {"miou": 100.0 * float(iou.mean()), "pixel_acc": 100.0 * float(inter.sum() / total)}


# --------------------------------------------------------------------------------------------
# depth
# --------------------------------------------------------------------------------------------


@register_metric("depth")
class DepthMetric(Metric):
    """Depth errors over all valid pixels (``g > 0``) of the split.

    ``update(pred, target)``: both ``[B, 1, H, W]`` (any equal shapes).  With ``n`` valid pixels:
    ``abs_err = Σ|p − g| / n``, ``rel_err = Σ(|p − g| / g) / n``, ``rmse = sqrt(Σ(p − g)² / n)``,
    ``delta{k} = 100 · #{max(p'/g, g/p') < 1.25^k} / n`` with ``p' = max(p, DEPTH_MIN)``.
    """

    higher_is_better: ClassVar[dict[str, bool]] = {
        "abs_err": False,
        "rel_err": False,
        "rmse": False,
        "delta1": True,
        "delta2": True,
        "delta3": True,
    }
    primary: ClassVar[tuple[str, ...]] = ("abs_err", "rel_err")

    def reset(self) -> None:
        self.n = 0
        self.sum_abs = 0.0
        self.sum_rel = 0.0
        self.sum_sq = 0.0
        self.n_delta = np.zeros(3, dtype=np.int64)
        self.nonfinite = False

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        _same_shape("depth", pred, target)
        if self._seen_nonfinite(pred):
            return
        valid = target > 0
        p = pred[valid].double()
        g = target[valid].double()
        if g.numel() == 0:
            return
        err = (p - g).abs()
        ratio = torch.maximum(p.clamp_min(DEPTH_MIN) / g, g / p.clamp_min(DEPTH_MIN))
        self.n += int(g.numel())
        self.sum_abs += float(err.sum())
        self.sum_rel += float((err / g).sum())
        self.sum_sq += float((err * err).sum())
        for k in range(3):
            self.n_delta[k] += int((ratio < 1.25 ** (k + 1)).sum())

    def compute(self) -> dict[str, float]:
        if self.n == 0 or self.nonfinite:
            return self._nan_result()
        n = self.n
        out = {
            "abs_err": self.sum_abs / n,
            "rel_err": self.sum_rel / n,
            "rmse": math.sqrt(self.sum_sq / n),
        }
        for k in range(3):
            out[f"delta{k + 1}"] = 100.0 * float(self.n_delta[k]) / n
        return out


# --------------------------------------------------------------------------------------------
# surface normals
# --------------------------------------------------------------------------------------------


@register_metric("normal")
class NormalMetric(Metric):
    """Angular error of surface normals over all valid pixels (``g ≠ 0``) of the split.

    ``update(pred, target)``: both ``[B, 3, H, W]``.  Prediction and target are L2-normalised per
    pixel (targets are unit vectors already, so normalising them only removes rounding), and the
    error is ``θ = degrees(arccos(clamp(p̂ · ĝ, −1, 1)))``; a zero prediction scores 90°.
    Keys: ``mean`` and ``median`` of θ (degrees), ``a11`` / ``a22`` / ``a30`` = share (%) of pixels
    with θ < 11.25°, 22.5°, 30°.

    ``mean`` and the shares come from float64 running sums.  The **median is exact** over all valid
    pixels of the split: the angles are kept (float32, 4 bytes per valid pixel — about 0.3 GB for
    the 654 NYU-v2 test images at 288×384), so it agrees with float64 to ~1e-6 degrees.
    """

    higher_is_better: ClassVar[dict[str, bool]] = {
        "mean": False,
        "median": False,
        "a11": True,
        "a22": True,
        "a30": True,
    }
    primary: ClassVar[tuple[str, ...]] = ("mean", "median", "a11", "a22", "a30")
    thresholds: ClassVar[tuple[float, ...]] = (11.25, 22.5, 30.0)

    def reset(self) -> None:
        self.n = 0
        self.sum_angle = 0.0
        self.n_under = np.zeros(len(self.thresholds), dtype=np.int64)
        self._angles: list[np.ndarray] = []
        self.nonfinite = False

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        _same_shape("normal", pred, target)
        if pred.dim() < 2 or pred.shape[1] != 3:
            raise ValueError(f"normal metric: expected [B, 3, H, W], got {tuple(pred.shape)}")
        if self._seen_nonfinite(pred):
            return
        valid = target.abs().sum(1) > 0  # [B, H, W]
        p = pred.double().movedim(1, -1)[valid]  # [n, 3]
        g = target.double().movedim(1, -1)[valid]
        if g.shape[0] == 0:
            return
        cos = (F.normalize(p, dim=-1, eps=1e-12) * F.normalize(g, dim=-1, eps=1e-12)).sum(-1)
        angle = torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))
        self.n += int(angle.numel())
        self.sum_angle += float(angle.sum())
        for k, t in enumerate(self.thresholds):
            self.n_under[k] += int((angle < t).sum())
        self._angles.append(angle.float().cpu().numpy())

    def compute(self) -> dict[str, float]:
        if self.n == 0 or self.nonfinite:
            return self._nan_result()
        angles = np.concatenate(self._angles).astype(np.float64)
        out = {"mean": self.sum_angle / self.n, "median": float(np.median(angles))}
        for key, cnt in zip(("a11", "a22", "a30"), self.n_under):
            out[key] = 100.0 * float(cnt) / self.n
        return out


# --------------------------------------------------------------------------------------------
# edges
# --------------------------------------------------------------------------------------------


@register_metric("edge")
class EdgeMetric(Metric):
    """ODS F-measure of edge maps: one threshold for the whole split, with a matching tolerance.

    ``update(pred, target)``: ``pred`` logits ``[B, 1, H, W]``, ``target`` ``[B, 1, H, W]`` in
    {0, 1} with ``ignore_index`` (255) for unlabelled pixels, which count neither as predictions
    nor as ground truth (a valid target value outside [0, 1] is a ValueError; > 0.5 is an edge).

    For each threshold ``t`` of a fixed grid (default 99 values 0.01, 0.02, …, 0.99) the predicted
    edges are the valid pixels with ``sigmoid(pred) >= t``.  Matching is **dilation-based** with
    Chebyshev radius ``tolerance`` (pixels): a predicted edge pixel is correct when a ground-truth
    edge lies within ``tolerance`` of it, and a ground-truth edge pixel is recalled when a predicted
    edge lies within ``tolerance`` of it (max-pooling with a ``(2·tolerance + 1)²`` window).
    ``precision = correct / predicted`` (0 without predicted edges), ``recall = recalled / ground
    truth``, ``F = 2PR / (P + R)``.  The counts are summed over the whole split for every threshold;
    ``ods_f`` is the best F over the grid (the lowest such threshold on ties), reported with its
    ``precision``, ``recall`` (all %) and ``threshold``.  A split without ground-truth edges
    gives NaN.

    This is a simplified matching: the BSDS benchmark matches predicted and true edge pixels
    one-to-one (bipartite assignment) within 0.75 % of the image diagonal, which can only be
    stricter than dilation.  The default ``tolerance=1`` fits our small images (the BSDS rule gives
    0.7 px at 64×64, 3.6 px at 288×384); pass a larger one for large images.
    """

    higher_is_better: ClassVar[dict[str, bool]] = {
        "ods_f": True,
        "precision": True,
        "recall": True,
        "threshold": True,  # not a score: reported for reference, never enters Δm
    }
    primary: ClassVar[tuple[str, ...]] = ("ods_f",)

    def __init__(
        self,
        tolerance: int = 1,
        thresholds: int | Sequence[float] = 99,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        if int(tolerance) != tolerance or tolerance < 0:
            raise ValueError(
                f"edge metric: tolerance must be a non-negative integer, got {tolerance}"
            )
        self.tolerance = int(tolerance)
        if isinstance(thresholds, int):
            grid = np.arange(1, thresholds + 1, dtype=np.float64) / (thresholds + 1)
        else:
            grid = np.asarray(thresholds, dtype=np.float64)
        if grid.ndim != 1 or grid.size == 0 or np.any(np.diff(grid) <= 0):
            raise ValueError("edge metric: thresholds must be a non-empty increasing sequence")
        self.thresholds = grid
        self.ignore_index = ignore_index
        super().__init__()

    def reset(self) -> None:
        k = self.thresholds.size
        self.n_pred = np.zeros(k, dtype=np.int64)  # predicted edge pixels per threshold
        self.n_correct = np.zeros(k, dtype=np.int64)  # ... of which near a true edge
        self.n_recalled = np.zeros(k, dtype=np.int64)  # true edge pixels near a predicted edge
        self.n_gt = 0
        self.nonfinite = False

    def _dilate(self, x: torch.Tensor) -> torch.Tensor:
        r = self.tolerance
        if r == 0:
            return x
        return F.max_pool2d(x, kernel_size=2 * r + 1, stride=1, padding=r)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        _same_shape("edge", pred, target)
        if pred.dim() != 4:
            raise ValueError(f"edge metric: expected [B, 1, H, W], got {tuple(pred.shape)}")
        valid = target != self.ignore_index
        check_unit_range("edge metric", target, valid)
        if self._seen_nonfinite(pred):
            return
        gt = valid & (target > 0.5)
        prob = torch.sigmoid(pred.double())
        thr = torch.as_tensor(self.thresholds, dtype=torch.float64, device=prob.device)
        near_gt = self._dilate(gt.double()) > 0
        # A true edge is recalled at threshold t iff max(prob of valid pixels within tolerance) >= t.
        nearest = self._dilate(torch.where(valid, prob, torch.full_like(prob, -1.0)))
        self.n_pred += _count_ge(prob[valid], thr)
        self.n_correct += _count_ge(prob[valid & near_gt], thr)
        self.n_recalled += _count_ge(nearest[gt], thr)
        self.n_gt += int(gt.sum())

    def compute(self) -> dict[str, float]:
        if self.n_gt == 0 or self.nonfinite:
            return self._nan_result()
        n_pred = self.n_pred.astype(np.float64)
        precision = np.divide(self.n_correct, n_pred, out=np.zeros_like(n_pred), where=n_pred > 0)
        recall = self.n_recalled / float(self.n_gt)
        denom = precision + recall
        f = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
        best = int(np.argmax(f))
        return {
            "ods_f": 100.0 * float(f[best]),
            "precision": 100.0 * float(precision[best]),
            "recall": 100.0 * float(recall[best]),
            "threshold": float(self.thresholds[best]),
        }


# --------------------------------------------------------------------------------------------
# image-level binary attributes
# --------------------------------------------------------------------------------------------


@register_metric("binary")
class BinaryMetric(Metric):
    """Accuracy, F1 and AUROC of a binary attribute over the split.

    ``update(pred, target)``: ``pred`` logits ``[B, 1]`` (or ``[B]``), ``target`` ``[B]`` in {0, 1}.
    A sample is predicted positive when its logit is > 0 (probability > 0.5).

    - ``accuracy`` = share of correct decisions (%).
    - ``f1`` = ``2·TP / (2·TP + FP + FN)`` for the positive class 1 (%); 100 when
      ``TP + FP + FN = 0`` (no positive predicted and none true: nothing to get wrong).
    - ``auroc``: area under the ROC curve of the logits (%), computed exactly from all scores of the
      split as the Mann–Whitney statistic with average ranks for ties,
      ``(R₊ − n₊(n₊ + 1)/2) / (n₊·n₋)``; NaN when the split holds only one class.

    Primary (Δm) keys are ``accuracy`` and ``f1``: AUROC is undefined on a single-class split and
    would make Δm NaN.
    """

    higher_is_better: ClassVar[dict[str, bool]] = {"accuracy": True, "f1": True, "auroc": True}
    primary: ClassVar[tuple[str, ...]] = ("accuracy", "f1")

    def reset(self) -> None:
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self.nonfinite = False

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        if target.dim() != 1 or pred.shape not in (target.shape, (*target.shape, 1)):
            raise ValueError(  # as the binary loss: no flattening of [B, 2] against [B, 2]
                f"binary metric: expected logits [B, 1] or [B] against targets [B], got pred "
                f"{tuple(pred.shape)}, target {tuple(target.shape)}"
            )
        s = pred.detach().reshape(-1).double().cpu().numpy()
        y = target.detach().reshape(-1).double().cpu().numpy()
        if not np.all((y == 0) | (y == 1)):
            raise ValueError("binary metric: targets must be 0 or 1")
        if self._seen_nonfinite(pred):
            return
        self._scores.append(s)
        self._labels.append(y.astype(bool))

    def compute(self) -> dict[str, float]:
        if not self._scores or self.nonfinite:
            return self._nan_result()
        s = np.concatenate(self._scores)
        y = np.concatenate(self._labels)
        if y.size == 0:
            return self._nan_result()
        yhat = s > 0
        tp = int(np.sum(yhat & y))
        fp = int(np.sum(yhat & ~y))
        fn = int(np.sum(~yhat & y))
        accuracy = 100.0 * float(np.mean(yhat == y))
        f1 = 100.0 if tp + fp + fn == 0 else 100.0 * 2 * tp / (2 * tp + fp + fn)
        n_pos = int(y.sum())
        n_neg = y.size - n_pos
        if n_pos == 0 or n_neg == 0:
            auroc = NAN
        else:
            ranks = rankdata(s)  # average ranks for ties
            u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
            auroc = 100.0 * float(u / (n_pos * n_neg))
        return {"accuracy": accuracy, "f1": f1, "auroc": auroc}


# --------------------------------------------------------------------------------------------
# builders and helpers
# --------------------------------------------------------------------------------------------


def build_metric(task_type: str, **kwargs: Any) -> Metric:
    """The metric of a task type, e.g. ``build_metric("segmentation", num_classes=13)``."""
    return METRICS.get(task_type)(**kwargs)


def _task_type(name: str, task: Any) -> str:
    """The type of a task given as a :class:`~metasparsity.data.tasks.Task` (anything with
    ``.type``) or as its type string; a TypeError names what is needed otherwise."""
    kind = task if isinstance(task, str) else getattr(task, "type", None)
    if not isinstance(kind, str):
        raise TypeError(
            f"task {name!r}: expected a Task (e.g. from metasparsity.data.resolve_tasks) or a "
            f"task type string such as 'depth', got {type(task).__name__} {task!r}"
        )
    return kind


def build_metrics(tasks: Mapping[str, Any]) -> dict[str, Metric]:
    """One fresh metric per task: ``{name: task}`` → ``{name: Metric}``.

    ``task`` is a :class:`~metasparsity.data.tasks.Task` (e.g. from
    :func:`metasparsity.data.resolve_tasks`; anything with ``.type``, a key of :data:`METRICS`,
    and, for segmentation, ``.num_classes``), or a type string such as ``"depth"`` for the types
    that need nothing else (segmentation needs its classes: a TypeError says so).
    """
    if not isinstance(tasks, Mapping):
        raise TypeError(
            f"build_metrics: expected {{task name: Task or type string}}, got {type(tasks).__name__}"
        )
    out: dict[str, Metric] = {}
    for name, task in tasks.items():
        cls = METRICS.get(_task_type(name, task))
        if not isinstance(task, str):
            out[name] = cls.from_task(task)
            continue
        try:
            out[name] = cls()
        except TypeError as e:
            raise TypeError(
                f"build_metrics: task {name!r} is given as the type string {task!r}, but that "
                f"metric needs more ({e}); pass its Task (metasparsity.data.resolve_tasks) instead"
            ) from None
    return out


def update_all(
    metrics: Mapping[str, Metric],
    preds: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
) -> None:
    """``metrics[t].update(preds[t], targets[t])`` for every task ``t`` of ``metrics``; a
    target value a metric cannot take is a :class:`TargetError` naming the task."""
    for name, metric in metrics.items():
        try:
            metric.update(preds[name], targets[name])
        except TargetError as e:
            raise TargetError(f"task {name!r}: {e} (a target of the data set)") from None


def compute_all(metrics: Mapping[str, Metric]) -> dict[str, dict[str, float]]:
    """``{task: metric.compute()}``."""
    return {name: metric.compute() for name, metric in metrics.items()}


def reset_all(metrics: Mapping[str, Metric]) -> None:
    """Reset every metric."""
    for metric in metrics.values():
        metric.reset()
