"""Bad input to the metrics, the task losses and Δm: non-finite predictions, mismatched shapes,
targets outside their conventions, specs and results of the wrong kind."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from metasparsity.builders import build_model
from metasparsity.config import load_config
from metasparsity.data import IGNORE_INDEX, TASKS, build_dataset, resolve_tasks
from metasparsity.eval.delta import default_spec, delta_m
from metasparsity.eval.metrics import (
    BinaryMetric,
    DepthMetric,
    EdgeMetric,
    NormalMetric,
    SegmentationMetric,
    build_metrics,
)

SYNTH = str(Path(__file__).resolve().parents[2] / "configs" / "synthscenes.yaml")
NAN, INF = float("nan"), float("inf")
B, H, W = 2, 8, 8


def _valid_batch(kind: str) -> tuple:
    """A metric, a finite prediction and a valid target of ``kind``."""
    g = torch.Generator().manual_seed(0)
    if kind == "segmentation":
        return (SegmentationMetric(6), torch.randn(B, 6, H, W, generator=g),
                torch.randint(0, 6, (B, H, W), generator=g))
    if kind == "depth":
        return DepthMetric(), torch.rand(B, 1, H, W, generator=g), torch.rand(B, 1, H, W) + 0.1
    if kind == "normal":
        t = torch.nn.functional.normalize(torch.randn(B, 3, H, W, generator=g), dim=1)
        return NormalMetric(), torch.randn(B, 3, H, W, generator=g), t
    if kind == "edge":
        return (EdgeMetric(), torch.randn(B, 1, H, W, generator=g),
                (torch.rand(B, 1, H, W, generator=g) < 0.05).float())
    return BinaryMetric(), torch.randn(4, 1, generator=g), torch.tensor([0.0, 1.0, 0.0, 1.0])


KINDS = ["segmentation", "depth", "normal", "edge", "binary"]


# ------------------------------------------------------------------------------------------------
# finding 3: a NaN / inf prediction makes every value of the metric NaN
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
@pytest.mark.parametrize("kind", KINDS)
def test_nonfinite_prediction_gives_nan_for_every_key(kind, bad):
    metric, pred, target = _valid_batch(kind)
    metric.update(pred, target)
    assert all(math.isfinite(v) for k, v in metric.compute().items() if k != "auroc")
    metric.update(torch.full_like(pred, bad), target)  # a later batch diverged
    out = metric.compute()
    assert set(out) == set(metric.higher_is_better)
    assert all(math.isnan(v) for v in out.values()), out
    metric.update(pred, target)  # stays NaN until reset
    assert all(math.isnan(v) for v in metric.compute().values())
    metric.reset()
    metric.update(pred, target)
    assert all(math.isfinite(v) for k, v in metric.compute().items() if k != "auroc")


@pytest.mark.parametrize("kind", KINDS)
def test_single_nonfinite_value_is_enough(kind):
    metric, pred, target = _valid_batch(kind)
    pred = pred.clone()
    pred.view(-1)[0] = NAN
    metric.update(pred, target)
    assert all(math.isnan(v) for v in metric.compute().values())


def test_segmentation_nan_logits_of_ignored_pixels_are_not_looked_at():
    # as in the loss, which never sees the logits of ignored pixels
    metric, pred, target = _valid_batch("segmentation")
    target = target.clone()
    target[0, 0, 0] = IGNORE_INDEX
    nan_there = pred.clone()
    nan_there[0, :, 0, 0] = NAN
    metric.update(nan_there, target)
    ref = SegmentationMetric(6)
    ref.update(pred, target)
    assert metric.compute() == ref.compute()
    assert math.isfinite(float(TASKS["segment"].loss(nan_there, target)))


def test_probe_cases_of_finding_3():
    m = SegmentationMetric(6)
    m.update(torch.full((2, 6, 8, 8), NAN), torch.zeros(2, 8, 8, dtype=torch.long))
    assert all(math.isnan(v) for v in m.compute().values())  # was mIoU 100, pixel acc 100
    m = DepthMetric()
    m.update(torch.full((B, 1, H, W), NAN), torch.rand(B, 1, H, W) + 0.1)
    assert math.isnan(m.compute()["delta1"])  # was 0.0


# ------------------------------------------------------------------------------------------------
# finding 4: the losses do not broadcast mismatched shapes
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "pred", "target"),
    [
        ("depth", (4, 1, 16, 16), (4, 16, 16)),
        ("depth", (1, 1, H, W), (B, 1, H, W)),
        ("depth", (B, 1, H, W), (B, 1, 2 * H, 2 * W)),
        ("normal", (B, 3, H, W), (B, 3, 1, 1)),
        ("normal", (1, 3, H, W), (B, 3, H, W)),
        ("edge", (B, 1, H, W), (B, H, W)),
        ("edge", (B, 1, H, W), (1, 1, H, W)),
        ("segment", (B, 6, H, W), (B, 1, H, W)),
        ("segment", (1, 6, H, W), (B, H, W)),
        ("has_sphere", (2, 2), (4,)),
        ("has_sphere", (B, 1), (B, 1, 1)),
        ("has_sphere", (1, 1), (B,)),
        ("has_sphere", (B, 3), (B,)),
    ],
)
def test_loss_rejects_mismatched_shapes(task, pred, target):
    t = TASKS[task]
    p = torch.rand(pred)
    y = torch.zeros(target, dtype=torch.long) if t.type == "segmentation" else torch.rand(target)
    if t.type == "depth":
        y = y + 0.1
    with pytest.raises(ValueError, match="loss: prediction") as e:
        t.loss(p, y)
    assert str(tuple(pred)) in str(e.value) and str(tuple(target)) in str(e.value)


@pytest.mark.parametrize("ignored", [False, True])
def test_segmentation_loss_checks_shapes_of_an_all_ignored_batch(ignored):
    target = torch.full((B, 1, H, W), IGNORE_INDEX if ignored else 0)
    with pytest.raises(ValueError, match="segmentation loss"):
        TASKS["segment"].loss(torch.rand(B, 6, H, W), target)


def test_the_pipeline_shapes_pass():
    """What the data set and the model hand the losses and metrics today."""
    cfg = load_config(SYNTH,
                      ["data.image_size=32", "data.train_size=2", "model.width=0.25",
                       "model.head_channels=8"])
    tasks = resolve_tasks(cfg)
    ds = build_dataset(cfg, "train")
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    model = build_model(cfg, list(tasks)).eval()
    with torch.no_grad():
        out = model(batch[0], tasks=list(tasks))
    metrics = build_metrics(tasks)
    for t, task in tasks.items():
        assert math.isfinite(float(task.loss(out[t], batch[1][t])))
        metrics[t].update(out[t], batch[1][t])


# ------------------------------------------------------------------------------------------------
# finding 12: targets outside their conventions
# ------------------------------------------------------------------------------------------------


def test_edge_target_outside_unit_range_is_an_error():
    pred = torch.randn(B, 1, H, W)
    gray = torch.randint(0, 255, (B, 1, H, W)).float()  # a grayscale image, not {0, 1}
    gray[0, 0, 0, 0] = 17.0
    with pytest.raises(ValueError, match=r"edge loss: target values must lie in \[0, 1\]"):
        TASKS["edge"].loss(pred, gray)
    with pytest.raises(ValueError, match=r"edge metric: target values must lie in \[0, 1\]"):
        EdgeMetric().update(pred, gray)


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8])
def test_edge_ignore_label_still_accepted(dtype):
    target = (torch.rand(B, 1, H, W) < 0.2).to(dtype)
    target[:, :, :2] = IGNORE_INDEX
    pred = torch.randn(B, 1, H, W)
    assert math.isfinite(float(TASKS["edge"].loss(pred, target)))
    m = EdgeMetric()
    m.update(pred, target)
    assert math.isfinite(m.compute()["ods_f"])


@pytest.mark.parametrize("bad", [5.0, -1.0, NAN, 255.0])
def test_binary_loss_target_outside_unit_range_is_an_error(bad):
    with pytest.raises(ValueError, match=r"binary loss: target values must lie in \[0, 1\]"):
        TASKS["has_sphere"].loss(torch.rand(B, 1), torch.tensor([0.0, bad]))


@pytest.mark.parametrize("target", [torch.randint(0, 6, (B, H, W)).float(),
                                    torch.rand(B, H, W) * 5])
def test_float_segmentation_target_is_an_error(target):
    with pytest.raises(ValueError, match="segmentation loss: target must hold integer labels"):
        TASKS["segment"].loss(torch.randn(B, 6, H, W), target)
    with pytest.raises(ValueError, match="segmentation metric: target must hold integer labels"):
        SegmentationMetric(6).update(torch.randn(B, 6, H, W), target)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_integer_segmentation_targets_with_ignore_label_accepted(dtype):
    target = torch.randint(0, 6, (B, H, W)).to(dtype)
    target[0, :2] = IGNORE_INDEX
    pred = torch.randn(B, 6, H, W)
    assert math.isfinite(float(TASKS["segment"].loss(pred, target)))
    m = SegmentationMetric(6)
    m.update(pred, target)
    assert math.isfinite(m.compute()["miou"])


# ------------------------------------------------------------------------------------------------
# finding 11 / 23: Δm's spec and results
# ------------------------------------------------------------------------------------------------

RES = {"segment": {"miou": 50.0, "pixel_acc": 80.0}, "depth": {"abs_err": 0.5, "rel_err": 0.2}}
BASE = {"segment": {"miou": 40.0, "pixel_acc": 70.0}, "depth": {"abs_err": 0.6, "rel_err": 0.25}}


@pytest.mark.parametrize("direction", ["lower", "False", "True", None, 1])
def test_delta_spec_direction_must_be_a_bool(direction):
    with pytest.raises(TypeError, match=r"spec\['depth'\]\['abs_err'\] must be a bool"):
        delta_m(RES, BASE, {"depth": {"abs_err": direction}})
    assert delta_m(RES, BASE, {"depth": {"abs_err": False}}) == pytest.approx(100 / 6)


def test_delta_spec_task_entry_must_be_a_mapping():
    with pytest.raises(TypeError, match=r"spec\['depth'\] must be \{metric"):
        delta_m(RES, BASE, {"depth": ["abs_err", "rel_err"]})


def test_delta_flat_results_name_the_task():
    spec = default_spec({"segment": "segmentation", "depth": "depth"})
    with pytest.raises(TypeError, match=r"results\['segment'\] must be \{metric: value\}"):
        delta_m({"segment": 50.0, "depth": 0.5}, BASE, spec)
    with pytest.raises(TypeError, match=r"baseline\['depth'\] must be"):
        delta_m(RES, {**BASE, "depth": 0.6}, spec)


@pytest.mark.parametrize("value", ["abc", [50.0], {"x": 1}])
def test_delta_non_number_value_names_the_metric(value):
    spec = default_spec({"segment": "segmentation"})
    with pytest.raises(ValueError, match=r"results\['segment'\]\['miou'\] is not a finite number"):
        delta_m({"segment": {"miou": value, "pixel_acc": 80.0}}, BASE, spec)


# ------------------------------------------------------------------------------------------------
# finding 17: build_metrics and default_spec take Task objects and type strings
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synth_tasks():
    return resolve_tasks(load_config(SYNTH, []), ["segment", "depth", "edge"])


def test_default_spec_takes_tasks_or_types(synth_tasks):
    types = {t: task.type for t, task in synth_tasks.items()}
    assert default_spec(synth_tasks) == default_spec(types)
    assert default_spec(types)["segment"] == {"miou": True, "pixel_acc": True}


def test_build_metrics_takes_tasks_or_types(synth_tasks):
    ms = build_metrics({"depth": "depth", "edge": "edge", "a": "binary", "n": "normal"})
    assert [type(m) for m in ms.values()] == [DepthMetric, EdgeMetric, BinaryMetric, NormalMetric]
    ms = build_metrics(synth_tasks)
    assert isinstance(ms["segment"], SegmentationMetric) and ms["segment"].num_classes == 6
    with pytest.raises(TypeError, match=r"'segment' is given as the type string.*num_classes.*Task"):
        build_metrics({"segment": "segmentation"})


@pytest.mark.parametrize("fn", [build_metrics, default_spec])
@pytest.mark.parametrize("bad", [["segment", "depth"], {"segment": ["segmentation"]},
                                 {"segment": 3}])
def test_wrong_kind_of_tasks_is_a_type_error(fn, bad):
    with pytest.raises(TypeError, match="Task"):
        fn(bad)


@pytest.mark.parametrize("spec", [["segment", "depth"], "segment"])
def test_a_spec_that_is_not_a_mapping_is_named(spec):
    """A list of task names gave an AttributeError ('list' object has no attribute 'items')."""
    from metasparsity.eval.delta import usable_spec

    base = {"depth": {"abs_err": 0.5}}
    with pytest.raises(TypeError, match=r"the spec must be \{task"):
        delta_m(base, base, spec)
    with pytest.raises(TypeError, match=r"the spec must be \{task"):
        usable_spec(spec, base)


@pytest.mark.parametrize(("pred", "target"), [((4, 2), (4, 2)), ((2, 2), (4,)), ((4, 1), (4, 1))])
def test_binary_metric_takes_the_losses_shapes_only(pred, target):
    """[B, 2] against [B, 2] (a one-hot target) was flattened and scored as 2B samples."""
    with pytest.raises(ValueError, match=r"logits \[B, 1\] or \[B\] against targets \[B\]"):
        BinaryMetric().update(torch.zeros(pred), torch.zeros(target))
