"""Δm: hand-worked values, sign conventions, default spec and errors."""

from __future__ import annotations

import math

import pytest

from metasparsity.eval.delta import (
    default_spec,
    delta_m,
    front_value,
    pareto_points,
    per_task_delta,
    usable_spec,
)

BASELINE = {
    "segment": {"miou": 50.0, "pixel_acc": 80.0},
    "depth": {"abs_err": 0.5, "rel_err": 0.2},
}
SPEC = {"segment": {"miou": True, "pixel_acc": True}, "depth": {"abs_err": False}}


def test_hand_worked_two_tasks():
    results = {
        "segment": {"miou": 55.0, "pixel_acc": 76.0},  # +10 %, −5 %
        "depth": {"abs_err": 0.4, "rel_err": 9.9},  # 20 % lower error; rel_err not in the spec
    }
    per_task = per_task_delta(results, BASELINE, SPEC)
    assert per_task["segment"] == pytest.approx(100 * (0.10 - 0.05) / 2)
    assert per_task["depth"] == pytest.approx(20.0)
    assert delta_m(results, BASELINE, SPEC) == pytest.approx((2.5 + 20.0) / 2)


def test_equal_to_baseline_is_zero():
    assert delta_m(BASELINE, BASELINE, SPEC) == 0.0
    assert (
        delta_m(BASELINE, BASELINE, default_spec({"segment": "segmentation", "depth": "depth"}))
        == 0.0
    )


def test_sign_conventions():
    worse_depth = {"segment": BASELINE["segment"], "depth": {"abs_err": 0.6}}
    assert delta_m(worse_depth, BASELINE, SPEC) == pytest.approx(-10.0)  # higher error: negative
    better_seg = {"segment": {"miou": 60.0, "pixel_acc": 80.0}, "depth": {"abs_err": 0.5}}
    assert delta_m(better_seg, BASELINE, SPEC) == pytest.approx(10.0 / 2)  # 20 %/2 metrics/2 tasks


def test_tasks_weigh_equally_whatever_their_metric_count():
    spec = {"segment": {"miou": True}, "depth": {"abs_err": False, "rel_err": False}}
    results = {"segment": {"miou": 50.0}, "depth": {"abs_err": 0.25, "rel_err": 0.2}}
    # depth: (50 % + 0 %) / 2 = 25 %; segment 0 %; Δm = 12.5
    assert delta_m(results, BASELINE, spec) == pytest.approx(12.5)


def test_default_spec_uses_primary_keys_and_directions():
    spec = default_spec(
        {"s": "segmentation", "d": "depth", "n": "normal", "e": "edge", "b": "binary"}
    )
    assert spec == {
        "s": {"miou": True, "pixel_acc": True},
        "d": {"abs_err": False, "rel_err": False},
        "n": {"mean": False, "median": False, "a11": True, "a22": True, "a30": True},
        "e": {"ods_f": True},
        "b": {"accuracy": True, "f1": True},
    }


@pytest.mark.parametrize(
    ("results", "baseline", "spec", "match"),
    [
        ({"segment": BASELINE["segment"]}, BASELINE, SPEC, "no task 'depth'"),
        (BASELINE, {"segment": {"miou": 50.0}, "depth": {"abs_err": 0.5}}, SPEC, "pixel_acc"),
        (BASELINE, {**BASELINE, "depth": {"abs_err": 0.0}}, SPEC, "is 0"),
        ({**BASELINE, "depth": {"abs_err": math.nan}}, BASELINE, SPEC, "finite"),
        (BASELINE, BASELINE, {}, "no task"),
        (BASELINE, BASELINE, {"segment": {}}, "no metric"),
    ],
)
def test_errors(results, baseline, spec, match):
    with pytest.raises(ValueError, match=match):
        delta_m(results, baseline, spec)


@pytest.mark.parametrize("bad", [math.nan, math.inf, 0.0, None])
def test_usable_spec_leaves_out_and_names_metrics_without_a_usable_baseline(bad):
    baseline = {"segment": {"miou": bad, "pixel_acc": 80.0}, "depth": {"abs_err": 0.5}}
    if bad is None:
        del baseline["segment"]["miou"]
    kept, dropped = usable_spec(SPEC, baseline)
    assert kept == {"segment": {"pixel_acc": True}, "depth": {"abs_err": False}}
    assert dropped == ["segment.miou"]
    delta_m(BASELINE, baseline, kept)  # what is kept is usable


def test_pareto_points_drop_points_that_are_only_tied_in_one_coordinate():
    """A point is beaten by one at least as good in both coordinates and better in one: equal
    sparsity and a lower Δm, or equal Δm and a lower sparsity, is off the front."""
    assert pareto_points([(10, 1), (10, 2), (5, 2)]) == [(10, 2)]
    assert pareto_points([(5, 3), (10, 2), (10, 2), (7, 2)]) == [(5, 3), (10, 2)]
    assert front_value([(10, 1), (10, 2)], 10) == 2
    assert front_value([(10, 1), (10, 2)], 4) == 2  # flat to the left of the front
    assert front_value([(5, 3), (10, 1)], 7.5) == pytest.approx(2.0)
    assert front_value([(5, 3), (10, 1)], 11) is None
