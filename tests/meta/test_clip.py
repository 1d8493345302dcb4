"""meta.clip_grad: θ's meta-gradient clipped at a multiple of the recent median norm."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from metasparsity.meta import RelativeClip


def _grads(norm: float) -> dict[str, torch.Tensor | None]:
    """Two tensors (and a missing gradient) whose joint norm is ``norm``."""
    a = torch.tensor([3.0, 4.0], dtype=torch.float64)  # norm 5
    return {"a": a * norm / 5, "b": torch.zeros(3, dtype=torch.float32), "none": None}


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
    assert clip.history == [1.0, 3.0, 2.0, 10.0]
    g = _grads(50.0)
    norm, scale = clip(g)
    cap = 2.0 * statistics.median([1.0, 3.0, 2.0, 10.0])  # 5.0
    assert norm == pytest.approx(50.0) and scale == pytest.approx(cap / 50.0)
    assert _norm(g) == pytest.approx(cap)
    assert g["b"].abs().sum() == 0  # every tensor scaled by the same factor
    assert clip.history == [3.0, 2.0, 10.0, 50.0]  # the unclipped norm enters the history
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


@pytest.mark.parametrize("args", [(-1.0,), (1.0, 0), (1.0, 20, 0)])
def test_bad_arguments_are_refused(args):
    with pytest.raises(ValueError, match="RelativeClip"):
        RelativeClip(*args)
