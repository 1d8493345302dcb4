"""meta.clip_grad: θ's meta-gradient clipped at a multiple of the recent median norm."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from metasparsity.meta import RelativeClip


def _grads(norm: float) -> dict[str, torch.Tensor | None]:
    """A float64 and a float32 tensor (and a missing gradient) whose joint norm is ``norm``."""
    a = torch.tensor([1.8, 2.4], dtype=torch.float64)  # norm² 9
    b = torch.tensor([2.4, 0.0, 3.2], dtype=torch.float32)  # norm² 16: jointly 5
    return {"a": a * norm / 5, "b": b * norm / 5, "none": None}


def _norm(grads) -> float:
    return math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads.values() if g is not None))


def test_nothing_is_clipped_until_min_history_norms_are_known():
    clip = RelativeClip(1.0, window=20, min_history=3)
    for n in (1.0, 1.0, 100.0):
        g = _grads(n)
        assert clip(g) == (pytest.approx(n), 1.0)
        assert _norm(g) == pytest.approx(n)


def test_a_spike_is_scaled_to_the_multiple_of_the_median():
    clip = RelativeClip(2.0, window=4, min_history=3)
    for n in (1.0, 3.0, 2.0, 10.0):  # the window keeps the last 4 unclipped norms
        clip(_grads(n))
    assert clip.history == pytest.approx([1.0, 3.0, 2.0, 10.0])
    g = _grads(50.0)
    norm, scale = clip(g)
    cap = 2.0 * statistics.median([1.0, 3.0, 2.0, 10.0])  # 5.0
    assert norm == pytest.approx(50.0) and scale == pytest.approx(cap / 50.0)
    assert _norm(g) == pytest.approx(cap)
    want = _grads(50.0)  # every tensor scaled by the same factor, in its own dtype
    for k in ("a", "b"):
        assert g[k].dtype == want[k].dtype
        assert torch.allclose(g[k], want[k] * scale)
    assert clip.history == pytest.approx([3.0, 2.0, 10.0, 50.0])  # the unclipped norm enters
    g = _grads(4.0)  # below the cap: untouched
    assert clip(g)[1] == 1.0 and _norm(g) == pytest.approx(4.0)


def test_multiple_zero_measures_and_never_clips():
    clip = RelativeClip(0.0, min_history=1)
    for n in (1.0, 1000.0):
        g = _grads(n)
        assert clip(g) == (pytest.approx(n), 1.0) and _norm(g) == pytest.approx(n)


def test_state_round_trip_gives_the_same_decisions():
    a = RelativeClip(1.5, window=5)
    for n in (1.0, 2.0, 1.5, 0.5, 3.0, 2.5):
        a(_grads(n))
    b = RelativeClip(1.5, window=5)
    b.load_state_dict(a.state_dict())
    ga, gb = _grads(9.0), _grads(9.0)
    ra, rb = a(ga), b(gb)
    assert ra == rb and ra[1] < 1.0 and torch.equal(ga["a"], gb["a"])
    assert a.history == b.history
    fresh = RelativeClip(1.5, window=5)  # without the history nothing would be clipped
    assert fresh(_grads(9.0))[1] == 1.0


def test_a_median_of_zero_caps_nothing():
    clip = RelativeClip(1.0, window=5, min_history=2)
    for _ in range(3):
        clip({"a": torch.zeros(2)})
    g = _grads(3.0)
    assert clip(g) == (pytest.approx(3.0), 1.0) and _norm(g) == pytest.approx(3.0)


@pytest.mark.parametrize("args", [(-1.0,), (1.0, 0), (1.0, 20, 0)])
def test_bad_arguments_are_refused(args):
    with pytest.raises(ValueError, match="RelativeClip"):
        RelativeClip(*args)
