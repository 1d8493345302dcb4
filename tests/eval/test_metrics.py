"""Metrics against independent NumPy computations, hand-worked cases and batch-split invariance."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from metasparsity.eval import metrics as M
from metasparsity.eval.metrics import (
    METRICS,
    BinaryMetric,
    DepthMetric,
    EdgeMetric,
    NormalMetric,
    SegmentationMetric,
    build_metric,
    build_metrics,
    compute_all,
    reset_all,
    update_all,
)

# ------------------------------------------------------------------------------------------------
# independent NumPy references (straightforward loops, no confusion matrices or max-pooling)
# ------------------------------------------------------------------------------------------------


def np_segmentation(logits: np.ndarray, target: np.ndarray, num_classes: int) -> dict:
    pred = logits.argmax(1)
    valid = target != 255
    ious = []
    for c in range(num_classes):
        inter = np.sum((pred == c) & (target == c) & valid)
        union = np.sum(((pred == c) | (target == c)) & valid)
        if union > 0:
            ious.append(inter / union)
    acc = np.sum((pred == target) & valid) / np.sum(valid)
    return {"miou": 100 * np.mean(ious), "pixel_acc": 100 * acc}


def np_depth(pred: np.ndarray, target: np.ndarray) -> dict:
    valid = target > 0
    p, g = pred[valid].astype(np.float64), target[valid].astype(np.float64)
    pc = np.maximum(p, M.DEPTH_MIN)
    ratio = np.maximum(pc / g, g / pc)
    out = {
        "abs_err": np.mean(np.abs(p - g)),
        "rel_err": np.mean(np.abs(p - g) / g),
        "rmse": np.sqrt(np.mean((p - g) ** 2)),
    }
    for k in (1, 2, 3):
        out[f"delta{k}"] = 100 * np.mean(ratio < 1.25**k)
    return out


def np_normal(pred: np.ndarray, target: np.ndarray) -> dict:
    p = np.moveaxis(pred.astype(np.float64), 1, -1).reshape(-1, 3)
    g = np.moveaxis(target.astype(np.float64), 1, -1).reshape(-1, 3)
    valid = np.any(g != 0, axis=1)
    p, g = p[valid], g[valid]
    p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    ang = np.degrees(np.arccos(np.clip(np.sum(p * g, axis=1), -1, 1)))
    return {
        "mean": ang.mean(),
        "median": np.median(ang),
        "a11": 100 * np.mean(ang < 11.25),
        "a22": 100 * np.mean(ang < 22.5),
        "a30": 100 * np.mean(ang < 30),
    }


def np_dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation of ``[..., H, W]`` with a (2r+1)² square, by explicit loops."""
    h, w = mask.shape[-2:]
    out = np.zeros_like(mask)
    for i in range(h):
        for j in range(w):
            win = mask[..., max(0, i - r) : i + r + 1, max(0, j - r) : j + r + 1]
            out[..., i, j] = win.reshape(*mask.shape[:-2], -1).any(-1)
    return out


def np_edge(logits: np.ndarray, target: np.ndarray, tolerance: int, thresholds) -> dict:
    prob = 1 / (1 + np.exp(-logits.astype(np.float64)))
    valid = target != 255
    gt = valid & (target > 0.5)
    gt_near = np_dilate(gt, tolerance)
    best = None
    for t in thresholds:
        pe = valid & (prob >= t)
        pe_near = np_dilate(pe, tolerance)
        n_pred = pe.sum()
        prec = (pe & gt_near).sum() / n_pred if n_pred else 0.0
        rec = (gt & pe_near).sum() / gt.sum()
        f = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
        if best is None or f > best[0]:
            best = (f, prec, rec, t)
    f, prec, rec, t = best
    return {"ods_f": 100 * f, "precision": 100 * prec, "recall": 100 * rec, "threshold": t}


def np_binary(logits: np.ndarray, labels: np.ndarray) -> dict:
    yhat = logits > 0
    y = labels.astype(bool)
    tp, fp, fn = np.sum(yhat & y), np.sum(yhat & ~y), np.sum(~yhat & y)
    f1 = 100.0 if tp + fp + fn == 0 else 100 * 2 * tp / (2 * tp + fp + fn)
    pos, neg = logits[y], logits[~y]
    if len(pos) and len(neg):
        wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
        auroc = 100 * wins / (len(pos) * len(neg))
    else:
        auroc = float("nan")
    return {"accuracy": 100 * np.mean(yhat == y), "f1": f1, "auroc": auroc}


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def assert_close(got: dict, want: dict, tol: float = 1e-9) -> None:
    assert set(got) == set(want), (got, want)
    for k in want:
        g, w = got[k], float(want[k])
        if math.isnan(w):
            assert math.isnan(g), (k, g)
        else:
            assert g == pytest.approx(w, rel=tol, abs=tol), (k, g, w)


def run(metric, pred: torch.Tensor, target: torch.Tensor, chunks=None) -> dict:
    """Feed ``(pred, target)`` in batches cut at ``chunks`` (indices along dim 0)."""
    metric.reset()
    bounds = [0, *(chunks or []), pred.shape[0]]
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b > a:
            metric.update(pred[a:b], target[a:b])
    return metric.compute()


def random_cuts(n: int, rng: np.random.Generator) -> list[int]:
    k = int(rng.integers(0, n))
    return (
        sorted(rng.choice(np.arange(1, n), size=min(k, n - 1), replace=False).tolist())
        if n > 1
        else []
    )


def seg_batch(rng, b, c, h, w, p_ignore=0.2):
    logits = torch.from_numpy(rng.normal(size=(b, c, h, w)).astype(np.float32))
    target = torch.from_numpy(rng.integers(0, c, size=(b, h, w))).long()
    target[torch.from_numpy(rng.random((b, h, w)) < p_ignore)] = 255
    return logits, target


def depth_batch(rng, b, h, w, p_invalid=0.3):
    target = rng.uniform(0.5, 5.0, size=(b, 1, h, w)).astype(np.float32)
    target[rng.random(target.shape) < p_invalid] = 0
    pred = (target + rng.normal(scale=1.0, size=target.shape)).astype(np.float32)
    return torch.from_numpy(pred), torch.from_numpy(target)


def normal_batch(rng, b, h, w, p_invalid=0.2):
    target = rng.normal(size=(b, 3, h, w))
    target /= np.linalg.norm(target, axis=1, keepdims=True)
    target[np.broadcast_to(rng.random((b, 1, h, w)) < p_invalid, target.shape)] = 0
    pred = target + rng.normal(scale=0.5, size=target.shape)
    return torch.from_numpy(pred.astype(np.float32)), torch.from_numpy(target.astype(np.float32))


def edge_batch(rng, b, h, w, p_ignore=0.1):
    target = (rng.random((b, 1, h, w)) < 0.2).astype(np.float32)
    target[rng.random(target.shape) < p_ignore] = 255
    logits = rng.normal(size=target.shape) + 2.0 * (target == 1)
    return torch.from_numpy(logits.astype(np.float32)), torch.from_numpy(target)


# ------------------------------------------------------------------------------------------------
# registry and contract
# ------------------------------------------------------------------------------------------------


def test_registry_covers_every_task_type():
    from metasparsity.data.tasks import TASKS

    for name in TASKS:
        assert TASKS.get(name).type in METRICS
    assert set(METRICS.names()) >= {"segmentation", "depth", "normal", "edge", "binary"}


@pytest.mark.parametrize(
    ("metric", "pred", "target"),
    [
        (SegmentationMetric(4), *seg_batch(np.random.default_rng(0), 2, 4, 5, 6)),
        (DepthMetric(), *depth_batch(np.random.default_rng(0), 2, 5, 6)),
        (NormalMetric(), *normal_batch(np.random.default_rng(0), 2, 5, 6)),
        (EdgeMetric(), *edge_batch(np.random.default_rng(0), 2, 5, 6)),
        (
            BinaryMetric(),
            torch.tensor([[0.3], [-1.0], [2.0], [-0.1]]),
            torch.tensor([1.0, 0.0, 0.0, 1.0]),
        ),
    ],
    ids=["segmentation", "depth", "normal", "edge", "binary"],
)
def test_contract_keys_directions_reset(metric, pred, target):
    out = run(metric, pred, target)
    assert set(out) == set(metric.higher_is_better)
    assert set(metric.primary) <= set(out)
    assert all(isinstance(v, float) for v in out.values())
    assert all(math.isfinite(out[k]) for k in metric.primary)
    metric.reset()
    assert all(math.isnan(v) for v in metric.compute().values())  # empty split: undefined
    metric.update(pred, target)
    assert metric.compute() == out


def test_build_metrics_and_helpers():
    tasks = {
        "seg": SimpleNamespace(type="segmentation", num_classes=3),
        "dep": SimpleNamespace(type="depth", num_classes=None),
        "attr": SimpleNamespace(type="binary", num_classes=None),
    }
    ms = build_metrics(tasks)
    assert isinstance(ms["seg"], SegmentationMetric) and ms["seg"].num_classes == 3
    assert isinstance(ms["dep"], DepthMetric) and isinstance(ms["attr"], BinaryMetric)
    rng = np.random.default_rng(1)
    logits, seg = seg_batch(rng, 2, 3, 4, 4)
    dp, dt = depth_batch(rng, 2, 4, 4)
    preds = {"seg": logits, "dep": dp, "attr": torch.tensor([[1.0], [-1.0]])}
    targets = {"seg": seg, "dep": dt, "attr": torch.tensor([1.0, 1.0])}
    update_all(ms, preds, targets)
    res = compute_all(ms)
    assert_close(res["seg"], np_segmentation(logits.numpy(), seg.numpy(), 3))
    assert_close(res["dep"], np_depth(dp.numpy(), dt.numpy()))
    assert res["attr"]["accuracy"] == 50.0 and math.isnan(res["attr"]["auroc"])
    reset_all(ms)
    assert math.isnan(ms["dep"].compute()["abs_err"])
    assert isinstance(build_metric("segmentation", num_classes=5), SegmentationMetric)
    with pytest.raises(ValueError):
        build_metric("segmentation", num_classes=0)


# ------------------------------------------------------------------------------------------------
# segmentation
# ------------------------------------------------------------------------------------------------


def one_hot_logits(labels: torch.Tensor, c: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, c).permute(0, 3, 1, 2).float()


def test_segmentation_hand_worked_absent_class_and_ignore():
    target = torch.tensor([[[0, 0], [1, 255]]])
    pred = torch.tensor([[[0, 1], [1, 2]]])  # class 2 only at the ignored pixel
    out = run(SegmentationMetric(3), one_hot_logits(pred, 3), target)
    # class 0: 1/2, class 1: 1/2, class 2: absent from both on valid pixels -> left out
    assert out["miou"] == pytest.approx(50.0)
    assert out["pixel_acc"] == pytest.approx(200.0 / 3)
    # label maps are accepted as predictions too
    assert run(SegmentationMetric(3), pred, target) == out


def test_segmentation_perfect_and_split_level_not_batch_mean():
    target = torch.tensor([[[0, 1], [2, 2]], [[2, 2], [2, 2]]])
    out = run(SegmentationMetric(4), one_hot_logits(target, 4), target)
    assert out == {"miou": 100.0, "pixel_acc": 100.0}
    # image 1 fully right, image 2 half wrong: one confusion matrix, not a mean of per-image mIoU
    pred = torch.tensor([[[0, 1], [2, 2]], [[2, 2], [0, 0]]])
    out = run(SegmentationMetric(3), pred, target)
    iou0, iou1, iou2 = 1 / 3, 1.0, 4 / 6
    assert out["miou"] == pytest.approx(100 * (iou0 + iou1 + iou2) / 3)
    assert out["pixel_acc"] == pytest.approx(100 * 6 / 8)


def test_segmentation_rejects_bad_labels_and_channels():
    m = SegmentationMetric(3)
    with pytest.raises(ValueError):
        m.update(torch.zeros(1, 3, 2, 2), torch.full((1, 2, 2), 3))
    with pytest.raises(ValueError):
        m.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


@pytest.mark.parametrize("label", [3, 254, -1])
def test_segmentation_refuses_target_labels_outside_the_classes_by_name(label):
    """Any label other than ``0..C-1`` and the ignore index (254 is not 255) is refused with the
    metric's own message, not a confusion-matrix reshape or bincount error."""
    target = torch.tensor([[[0, 1], [2, label]]])
    with pytest.raises(ValueError, match="target labels must be in"):
        SegmentationMetric(3).update(torch.zeros(1, 3, 2, 2), target)
    with pytest.raises(ValueError, match="predicted labels must be in"):
        SegmentationMetric(3).update(target, torch.zeros(1, 2, 2, dtype=torch.long))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 4),
    c=st.integers(1, 5),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    p_ignore=st.sampled_from([0.0, 0.3, 0.9]),
)
def test_segmentation_property_numpy_and_split(seed, b, c, h, w, p_ignore):
    rng = np.random.default_rng(seed)
    logits, target = seg_batch(rng, b, c, h, w, p_ignore)
    m = SegmentationMetric(c)
    out = run(m, logits, target)
    if (target != 255).any():
        assert_close(out, np_segmentation(logits.numpy(), target.numpy(), c))
    else:
        assert all(math.isnan(v) for v in out.values())
    assert_close(run(m, logits, target, random_cuts(b, rng)), out)


# ------------------------------------------------------------------------------------------------
# depth
# ------------------------------------------------------------------------------------------------


def test_depth_hand_worked_invalid_pixels():
    target = torch.tensor([[[[2.0, 0.0], [4.0, 1.0]]]])
    pred = torch.tensor([[[[1.0, 100.0], [4.0, 1.5]]]])  # 100 sits on an invalid pixel
    out = run(DepthMetric(), pred, target)
    assert_close(
        out,
        {
            "abs_err": 0.5,
            "rel_err": 1 / 3,
            "rmse": math.sqrt(1.25 / 3),
            "delta1": 100 / 3,
            "delta2": 200 / 3,
            "delta3": 200 / 3,
        },
    )


def test_depth_delta_is_strict_inequality():
    out = run(DepthMetric(), torch.full((1, 1, 1, 2), 5.0), torch.tensor([[[[4.0, 6.25]]]]))
    # ratios 1.25 and 1.25 exactly: not < 1.25, but < 1.25²
    assert out["delta1"] == 0.0 and out["delta2"] == 100.0


def test_depth_perfect_and_negative_prediction():
    target = torch.rand(2, 1, 3, 3) + 0.5
    out = run(DepthMetric(), target.clone(), target)
    assert out["abs_err"] == 0 and out["rel_err"] == 0 and out["rmse"] == 0
    assert out["delta1"] == 100.0
    out = run(DepthMetric(), -target, target)  # clamped for the ratio: never within δ
    assert out["delta3"] == 0.0 and out["abs_err"] == pytest.approx(2 * target.mean().item())


def test_depth_rejects_broadcasting_shapes():
    with pytest.raises(ValueError):
        DepthMetric().update(torch.ones(2, 1, 3, 3), torch.ones(2, 3, 3))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    b=st.integers(1, 4),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    p_invalid=st.sampled_from([0.0, 0.5, 0.95]),
)
def test_depth_property_numpy_and_split(seed, b, h, w, p_invalid):
    rng = np.random.default_rng(seed)
    pred, target = depth_batch(rng, b, h, w, p_invalid)
    m = DepthMetric()
    out = run(m, pred, target)
    if (target > 0).any():
        assert_close(out, np_depth(pred.numpy(), target.numpy()))
    else:
        assert all(math.isnan(v) for v in out.values())
    assert_close(run(m, pred, target, random_cuts(b, rng)), out)


# ------------------------------------------------------------------------------------------------
# normals
# ------------------------------------------------------------------------------------------------


def test_normal_hand_worked_zero_target_and_scale():
    # pixels: 90°, 45°, 0° (scaled prediction), and one invalid (all-zero) target
    pred = torch.tensor([[5.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]])
    target = torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    out = run(NormalMetric(), pred.reshape(1, 3, 1, 4), target.reshape(1, 3, 1, 4))
    assert_close(
        out, {"mean": 45.0, "median": 45.0, "a11": 100 / 3, "a22": 100 / 3, "a30": 100 / 3}, 1e-6
    )


def test_normal_perfect_and_opposite():
    _, target = normal_batch(np.random.default_rng(2), 2, 4, 4, p_invalid=0.0)
    out = run(NormalMetric(), 3.0 * target, target)
    assert out["mean"] < 1e-4 and out["median"] < 1e-4 and out["a11"] == 100.0
    out = run(NormalMetric(), -target, target)
    assert out["mean"] == pytest.approx(180.0, abs=1e-4) and out["a30"] == 0.0


def test_normal_accuracy_counts_angles_strictly_below_the_threshold():
    """An angle exactly at a threshold is not within it: orthogonal prediction and target give
    exactly 90°, which a 90° threshold does not count."""

    class RightAngle(NormalMetric):
        thresholds = (11.25, 22.5, 90.0)

    pred = torch.tensor([0.0, 0.0, 1.0]).reshape(1, 3, 1, 1)
    target = torch.tensor([0.0, 1.0, 0.0]).reshape(1, 3, 1, 1)
    out = run(RightAngle(), pred, target)
    assert out["mean"] == 90.0 and out["a30"] == 0.0  # the key of the third threshold (90° here)


def test_normal_target_whose_components_sum_to_zero_is_valid():
    """Validity is a non-zero target vector, not a non-zero component sum: (1, −1, 0)/√2."""
    target = (torch.tensor([1.0, -1.0, 0.0]) / math.sqrt(2)).reshape(1, 3, 1, 1)
    m = NormalMetric()
    out = run(m, target.clone(), target)
    assert m.n == 1
    assert out["mean"] == pytest.approx(0.0, abs=1e-4) and out["a11"] == 100.0


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 4), h=st.integers(1, 5))
def test_normal_property_numpy_and_split(seed, b, h):
    rng = np.random.default_rng(seed)
    pred, target = normal_batch(rng, b, h, h + 1, p_invalid=0.3)
    m = NormalMetric()
    out = run(m, pred, target)
    if (target != 0).any():
        want = np_normal(pred.numpy(), target.numpy())
        # the median comes from angles stored in float32
        assert out["median"] == pytest.approx(want.pop("median"), abs=1e-4)
        assert_close({k: out[k] for k in want}, want)
    assert_close(run(m, pred, target, random_cuts(b, rng)), out)


# ------------------------------------------------------------------------------------------------
# edges
# ------------------------------------------------------------------------------------------------


def test_edge_tolerance_hand_worked():
    target = torch.zeros(1, 1, 5, 5)
    target[0, 0, 2, 2] = 1
    logits = torch.full((1, 1, 5, 5), -10.0)
    logits[0, 0, 2, 3] = 10.0  # one pixel off the true edge
    out = run(EdgeMetric(tolerance=1), logits, target)
    assert out["ods_f"] == pytest.approx(100.0) and out["precision"] == pytest.approx(100.0)
    assert out["threshold"] == pytest.approx(0.01)  # lowest threshold among ties
    assert run(EdgeMetric(tolerance=0), logits, target)["ods_f"] == 0.0


def test_edge_ignored_pixels_and_no_edges():
    target = torch.zeros(1, 1, 4, 4)
    target[0, 0, 0, 0] = 1
    target[0, 0, 3, 3] = 255
    logits = torch.full((1, 1, 4, 4), -10.0)
    logits[0, 0, 0, 0] = 10.0
    logits[0, 0, 3, 3] = 10.0  # confident prediction on an ignored pixel: not a false positive
    out = run(EdgeMetric(tolerance=0), logits, target)
    assert out["precision"] == pytest.approx(100.0) and out["recall"] == pytest.approx(100.0)
    out = run(EdgeMetric(), logits, torch.zeros(1, 1, 4, 4))
    assert all(math.isnan(v) for v in out.values())


def test_edge_prediction_on_an_ignored_pixel_recalls_no_true_edge():
    """An ignored pixel is no prediction, also for recall: a confident logit there, right next
    to the only true edge, leaves that edge unrecalled."""
    target = torch.zeros(1, 1, 5, 5)
    target[0, 0, 2, 2] = 1
    target[0, 0, 2, 3] = 255
    logits = torch.full((1, 1, 5, 5), -10.0)
    logits[0, 0, 2, 3] = 10.0
    out = run(EdgeMetric(tolerance=1), logits, target)
    assert out["recall"] == 0.0 and out["ods_f"] == 0.0
    assert_close(out, np_edge(logits.numpy(), target.numpy(), 1, EdgeMetric().thresholds))


def test_edge_probability_exactly_at_a_threshold_is_an_edge_there():
    """Predicted edges are ``sigmoid(pred) >= t``: logit 0 (probability 0.5, on the default
    grid) on the true edge is an edge at t = 0.5, where the decoys at 0.495 are not."""
    target = torch.zeros(1, 1, 3, 3)
    target[0, 0, 0, 0] = 1
    logits = torch.full((1, 1, 3, 3), math.log(0.495 / 0.505))  # decoys between 0.49 and 0.5
    logits[0, 0, 0, 0] = 0.0
    out = run(EdgeMetric(tolerance=0), logits, target)
    assert out["threshold"] == 0.5
    assert out["recall"] == 100.0 and out["precision"] == 100.0 and out["ods_f"] == 100.0


@pytest.mark.parametrize("tolerance", [0, 1, 2])
def test_edge_numpy_and_split(tolerance):
    rng = np.random.default_rng(tolerance)
    logits, target = edge_batch(rng, 5, 7, 9)
    thresholds = [0.1, 0.3, 0.5, 0.7, 0.9]
    m = EdgeMetric(tolerance=tolerance, thresholds=thresholds)
    out = run(m, logits, target)
    assert_close(out, np_edge(logits.numpy(), target.numpy(), tolerance, thresholds))
    assert run(m, logits, target, [1, 3]) == out  # integer counts: exactly equal
    full = EdgeMetric(tolerance=tolerance)
    assert np.allclose(full.thresholds, np.arange(1, 100) / 100)
    assert_close(
        run(full, logits, target),
        np_edge(logits.numpy(), target.numpy(), tolerance, full.thresholds),
    )


# ------------------------------------------------------------------------------------------------
# binary
# ------------------------------------------------------------------------------------------------


def test_binary_auroc_ties_hand_worked():
    out = run(
        BinaryMetric(), torch.tensor([[0.0], [0.0], [1.0], [1.0]]), torch.tensor([0, 1, 0, 1])
    )
    assert out["auroc"] == pytest.approx(50.0)
    out = run(BinaryMetric(), torch.tensor([-2.0, 0.5, 0.5, 3.0]), torch.tensor([0, 0, 1, 1]))
    # pairs (pos, neg): (0.5, -2) win, (0.5, 0.5) tie, (3, -2) win, (3, 0.5) win -> 3.5 / 4
    assert out["auroc"] == pytest.approx(87.5)
    assert out["accuracy"] == pytest.approx(75.0) and out["f1"] == pytest.approx(100 * 4 / 5)


def test_binary_f1_without_positives():
    out = run(BinaryMetric(), torch.tensor([[-1.0], [-2.0]]), torch.tensor([0.0, 0.0]))
    assert out["f1"] == 100.0 and out["accuracy"] == 100.0 and math.isnan(out["auroc"])
    out = run(BinaryMetric(), torch.tensor([[1.0], [-2.0]]), torch.tensor([0.0, 0.0]))
    assert out["f1"] == 0.0 and out["accuracy"] == 50.0
    with pytest.raises(ValueError):
        BinaryMetric().update(torch.zeros(2, 1), torch.tensor([0.0, 2.0]))


@pytest.mark.parametrize("seed", range(5))
def test_binary_numpy_and_split(seed):
    rng = np.random.default_rng(seed)
    n = 40
    labels = rng.integers(0, 2, size=n)
    logits = np.round(rng.normal(size=n) + labels, 1)  # rounding makes ties
    m = BinaryMetric()
    pred, target = torch.from_numpy(logits).float()[:, None], torch.from_numpy(labels).float()
    out = run(m, pred, target)
    assert_close(out, np_binary(pred.numpy()[:, 0].astype(np.float64), labels))
    assert run(m, pred, target, random_cuts(n, rng)) == out


# ------------------------------------------------------------------------------------------------
# batch-split invariance of every metric on larger random batches
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["segmentation", "depth", "normal", "edge", "binary"])
def test_batch_split_invariance(kind):
    rng = np.random.default_rng(7)
    b = 12
    if kind == "segmentation":
        metric, (pred, target) = SegmentationMetric(5), seg_batch(rng, b, 5, 8, 8)
    elif kind == "depth":
        metric, (pred, target) = DepthMetric(), depth_batch(rng, b, 8, 8)
    elif kind == "normal":
        metric, (pred, target) = NormalMetric(), normal_batch(rng, b, 8, 8)
    elif kind == "edge":
        metric, (pred, target) = EdgeMetric(), edge_batch(rng, b, 8, 8)
    else:
        metric = BinaryMetric()
        target = torch.from_numpy(rng.integers(0, 2, size=b)).float()
        pred = torch.from_numpy(rng.normal(size=(b, 1))).float()
    whole = run(metric, pred, target)
    perm_free_cuts = [random_cuts(b, rng) for _ in range(3)] + [list(range(1, b))]
    for cuts in perm_free_cuts:
        assert_close(run(metric, pred, target, cuts), whole)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["segmentation", "depth", "normal", "edge", "binary"])
def test_cuda_inputs_give_the_cpu_result(kind):
    rng = np.random.default_rng(11)
    if kind == "segmentation":
        make, (pred, target) = (lambda: SegmentationMetric(5)), seg_batch(rng, 4, 5, 8, 8)
    elif kind == "depth":
        make, (pred, target) = DepthMetric, depth_batch(rng, 4, 8, 8)
    elif kind == "normal":
        make, (pred, target) = NormalMetric, normal_batch(rng, 4, 8, 8)
    elif kind == "edge":
        make, (pred, target) = EdgeMetric, edge_batch(rng, 4, 8, 8)
    else:
        make = BinaryMetric
        pred, target = torch.randn(9, 1), torch.from_numpy(rng.integers(0, 2, size=9)).float()
    cpu = run(make(), pred, target)
    assert_close(run(make(), pred.cuda(), target.cuda()), cpu, 1e-6)
