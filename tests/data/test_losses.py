"""The task losses of ``metasparsity.data.tasks`` against independent NumPy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metasparsity.data.tasks import IGNORE_INDEX, LOSSES, TASKS

# ------------------------------------------------------------------------------------------------
# NumPy references
# ------------------------------------------------------------------------------------------------


def np_bce(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Elementwise binary cross-entropy with logits, numerically stable."""
    return np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))


def np_cross_entropy(logits: np.ndarray, target: np.ndarray) -> float:
    b, c, h, w = logits.shape
    total, n = 0.0, 0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                g = target[i, y, x]
                if g == IGNORE_INDEX:
                    continue
                z = logits[i, :, y, x].astype(np.float64)
                total += np.log(np.sum(np.exp(z - z.max()))) + z.max() - z[g]
                n += 1
    return total / n


def np_depth(pred: np.ndarray, target: np.ndarray) -> float:
    valid = target > 0
    return float(np.abs(pred[valid] - target[valid]).mean())


def np_normal(pred: np.ndarray, target: np.ndarray) -> float:
    p = np.moveaxis(pred, 1, -1).astype(np.float64)
    g = np.moveaxis(target, 1, -1).astype(np.float64)
    valid = np.any(g != 0, axis=-1)
    p = p / np.maximum(np.linalg.norm(p, axis=-1, keepdims=True), 1e-12)
    return float((1 - np.sum(p * g, axis=-1))[valid].mean())


def np_edge(logits: np.ndarray, target: np.ndarray) -> float:
    valid = target != IGNORE_INDEX
    t = np.where(valid, target, 0).astype(np.float64)
    n = valid.sum()
    beta = np.sum(t[valid] == 0) / n  # share of negatives among valid pixels
    w = np.where(t > 0.5, beta, 1 - beta)
    return float((w * np_bce(logits.astype(np.float64), t))[valid].sum() / n)


def np_binary(logits: np.ndarray, target: np.ndarray) -> float:
    return float(np_bce(logits.reshape(-1).astype(np.float64), target.astype(np.float64)).mean())


# ------------------------------------------------------------------------------------------------
# random batches following the target conventions
# ------------------------------------------------------------------------------------------------


def batch(kind: str, rng: np.random.Generator, b: int = 3, h: int = 4, w: int = 5):
    if kind == "segmentation":
        pred = rng.normal(size=(b, 4, h, w))
        target = rng.integers(0, 4, size=(b, h, w))
        target[rng.random(target.shape) < 0.3] = IGNORE_INDEX
        return torch.tensor(pred, dtype=torch.float32), torch.tensor(target, dtype=torch.long)
    if kind == "depth":
        target = rng.uniform(0.5, 4, size=(b, 1, h, w))
        target[rng.random(target.shape) < 0.3] = 0
        pred = target + rng.normal(size=target.shape)
    elif kind == "normal":
        target = rng.normal(size=(b, 3, h, w))
        target /= np.linalg.norm(target, axis=1, keepdims=True)
        target[np.broadcast_to(rng.random((b, 1, h, w)) < 0.3, target.shape)] = 0
        pred = rng.normal(size=target.shape)
    elif kind == "edge":
        target = (rng.random((b, 1, h, w)) < 0.2).astype(np.float64)
        target[rng.random(target.shape) < 0.2] = IGNORE_INDEX
        pred = 2 * rng.normal(size=target.shape)
    else:
        target = rng.integers(0, 2, size=b).astype(np.float64)
        pred = 2 * rng.normal(size=(b, 1))
    return torch.tensor(pred, dtype=torch.float32), torch.tensor(target, dtype=torch.float32)


REFERENCES = {
    "segmentation": np_cross_entropy,
    "depth": np_depth,
    "normal": np_normal,
    "edge": np_edge,
    "binary": np_binary,
}


def test_every_builtin_task_has_a_loss():
    assert set(LOSSES.names()) >= set(REFERENCES)
    for name in TASKS:
        assert TASKS.get(name).type in LOSSES


@pytest.mark.parametrize("kind", sorted(REFERENCES))
@pytest.mark.parametrize("seed", range(3))
def test_loss_matches_numpy(kind, seed):
    rng = np.random.default_rng(seed)
    pred, target = batch(kind, rng)
    pred.requires_grad_(True)
    loss = LOSSES.get(kind)(pred, target)
    assert loss.dim() == 0
    want = REFERENCES[kind](pred.detach().numpy(), target.numpy())
    assert loss.item() == pytest.approx(want, rel=1e-5, abs=1e-6)
    loss.backward()
    assert torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("kind", sorted(REFERENCES))
def test_task_loss_dispatches_by_type(kind):
    task = next(TASKS.get(n) for n in TASKS if TASKS.get(n).type == kind)
    rng = np.random.default_rng(0)
    pred, target = batch(kind, rng, h=3, w=3)
    if kind == "segmentation":  # the registered task's class count; labels 0..3 stay valid
        pred = torch.randn(pred.shape[0], task.channels, 3, 3)
    assert torch.equal(task.loss(pred, target), LOSSES.get(kind)(pred, target))


@pytest.mark.parametrize(
    ("kind", "invalid"),
    [
        ("segmentation", lambda t: torch.full_like(t, IGNORE_INDEX)),
        ("depth", torch.zeros_like),
        ("normal", torch.zeros_like),
        ("edge", lambda t: torch.full_like(t, IGNORE_INDEX)),
    ],
)
def test_no_valid_pixel_gives_zero_loss_with_grad(kind, invalid):
    pred, target = batch(kind, np.random.default_rng(1))
    pred.requires_grad_(True)
    loss = LOSSES.get(kind)(pred, invalid(target))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


@pytest.mark.parametrize("kind", ["segmentation", "depth", "normal", "edge"])
def test_invalid_pixels_do_not_reach_the_loss(kind):
    pred, target = batch(kind, np.random.default_rng(2))
    if kind in ("depth",):
        invalid = target == 0
    elif kind == "normal":
        invalid = (target == 0).all(1, keepdim=True).expand_as(pred)
    elif kind == "segmentation":
        invalid = (target == IGNORE_INDEX).unsqueeze(1).expand_as(pred)
    else:
        invalid = target == IGNORE_INDEX
    assert invalid.any() and not invalid.all()
    pred.requires_grad_(True)
    LOSSES.get(kind)(pred, target).backward()
    assert torch.all(pred.grad[invalid] == 0)
    # changing the prediction on invalid pixels leaves the loss unchanged
    moved = pred.detach().clone()
    moved[invalid] += 100.0
    assert LOSSES.get(kind)(moved, target).item() == pytest.approx(
        LOSSES.get(kind)(pred.detach(), target).item(), rel=1e-6
    )


def test_edge_class_balancing_hand_worked():
    # 1 positive, 3 negatives, 1 ignored; logits 0 -> every BCE term is log 2
    target = torch.tensor([1.0, 0.0, 0.0, 0.0, IGNORE_INDEX]).reshape(1, 1, 1, 5)
    pred = torch.zeros(1, 1, 1, 5, requires_grad=True)
    loss = LOSSES.get("edge")(pred, target)
    beta = 3 / 4  # share of negatives: weight of the positive; negatives get 1 − β
    assert loss.item() == pytest.approx((beta * math.log(2) + 3 * (1 - beta) * math.log(2)) / 4)
    loss.backward()
    g = pred.grad.reshape(-1)
    # d/dx of w·BCE at x = 0 is w·(0.5 − t) / n
    assert g[0].item() == pytest.approx(beta * -0.5 / 4)
    assert g[1:4].tolist() == pytest.approx([(1 - beta) * 0.5 / 4] * 3)
    assert g[4].item() == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_edge_balancing_equalises_class_totals(seed):
    # β·n₊ = (1 − β)·n₋: at logits 0 the positive and negative gradients cancel exactly
    rng = np.random.default_rng(seed)
    _, target = batch("edge", rng, b=2, h=6, w=6)
    pred = torch.zeros_like(target, requires_grad=True)
    LOSSES.get("edge")(pred, target).backward()
    assert pred.grad.sum().item() == pytest.approx(0.0, abs=1e-7)
    assert (pred.grad[target == 1] < 0).all() and (pred.grad[target == 0] > 0).all()


def test_binary_accepts_flat_or_column_logits():
    pred, target = batch("binary", np.random.default_rng(3), b=6)
    assert LOSSES.get("binary")(pred, target).item() == pytest.approx(
        LOSSES.get("binary")(pred.reshape(-1), target).item()
    )
