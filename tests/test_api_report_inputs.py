"""Bad input to the report and cost API called directly (not through the command line): a
samples.npz with no sample, results of another kind, empty / NaN / out-of-range plot data, a
shape instead of an input tensor.  A one-line error naming the argument or file, before anything
is written; and the numbers and pictures of valid input as before."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import matplotlib.axes
import numpy as np
import pytest
import torch
from tests.recipes.micro import MICRO, cli

from metasparsity.builders import build_model
from metasparsity.config import load_config
from metasparsity.eval.cost import (
    cost_table,
    count_macs,
    count_parameters,
    measure_latency,
    stage_costs,
)
from metasparsity.eval.delta import pareto_points
from metasparsity.report import plots
from metasparsity.report.compare import prepare_report, write_report
from metasparsity.sparsity import SparsityStats
from metasparsity.utils.errors import UserError
from metasparsity.utils.io import read_json

NAN = float("nan")


def _snapshot(root: Path) -> list[tuple[str, bytes]]:
    return sorted((str(p.relative_to(root)), p.read_bytes()) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cmp") / "run"
    assert cli("compare", "--out", out, *MICRO, "compare.methods=[mtl,meta_sparsity]",
               "compare.budget=16") == 0
    return out


@pytest.fixture
def run(compared, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(compared, dst)
    for p in [*dst.glob("*.png"), dst / "report.md"]:
        p.unlink()
    return dst


# ------------------------------------------------------------------------- samples.npz (3, 9)

def test_a_samples_file_with_no_sample_is_refused_before_anything_is_written(run, capsys):
    with np.load(run / "samples.npz") as z:
        arrays = {k: z[k] if k in ("tasks", "types") else z[k][:0] for k in z.files}
    np.savez(run / "samples.npz", **arrays)
    before = _snapshot(run)
    with pytest.raises(UserError, match=r"samples file .*samples\.npz.* holds no sample"):
        write_report(run, read_json(run / "results.json"))
    assert _snapshot(run) == before
    assert cli("report", run) == 2
    err = capsys.readouterr().err
    assert "holds no sample" in err and "Traceback" not in err
    assert _snapshot(run) == before


def test_plot_samples_refuses_arrays_with_no_sample(tmp_path):
    data = {"image": np.zeros((0, 8, 8, 3)), "tasks": np.array(["segment"]),
            "types": np.array(["segmentation"]), "gt_segment": np.zeros((0, 8, 8), int),
            "pred_segment": np.zeros((0, 8, 8), int)}
    with pytest.raises(ValueError, match="holds no sample"):
        plots.plot_samples(data, tmp_path / "s.png")
    assert not (tmp_path / "s.png").exists()


def _seg_images(monkeypatch, tmp_path, labels: np.ndarray) -> list:
    """The images plot_samples draws of a one-sample segmentation task whose GT is ``labels``."""
    drawn = []
    imshow = matplotlib.axes.Axes.imshow
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow",
                        lambda self, *a, **k: drawn.append(imshow(self, *a, **k)) or drawn[-1])
    data = {"image": np.zeros((1, *labels.shape, 3)), "tasks": np.array(["segment"]),
            "types": np.array(["segmentation"]), "gt_segment": labels[None],
            "pred_segment": np.zeros((1, *labels.shape), int)}
    plots.plot_samples(data, tmp_path / "s.png")
    return drawn[1:]  # after the input image: GT, prediction


def test_segmentation_classes_beyond_ten_get_a_colour_each(monkeypatch, tmp_path):
    labels = np.arange(16).reshape(4, 4) % 13  # NYU-v2's 13 classes
    labels[0, 0] = 255  # ignored
    gt, pred = _seg_images(monkeypatch, tmp_path, labels)
    for im in (gt, pred):  # GT and prediction coloured alike
        colours = {tuple(c) for c in im.to_rgba(np.arange(13))}
        assert len(colours) == 13
        assert tuple(im.to_rgba(255)) not in colours  # ignored pixels stand apart
    assert gt.get_clim() == pred.get_clim()


def test_a_few_classes_keep_the_tab10_colours(monkeypatch, tmp_path):
    """SynthScenes' 6 classes: the demo's samples.png as before."""
    labels = np.arange(16).reshape(4, 4) % 6
    for im in _seg_images(monkeypatch, tmp_path, labels):
        assert im.get_cmap().name == "tab10" and im.get_clim() == (0, 9)


# ---------------------------------------------------------------------- results.json (11)

def _results(run: Path) -> dict:
    return read_json(run / "results.json")


@pytest.mark.parametrize(("edit", "words"), [
    (lambda r: {"kind": "train", "val": {}, "test": {}}, ["'config' is missing"]),  # a run's
    (lambda r: {"grid": [0.1], "rows": [], "spec": {}}, ["'config' is missing"]),  # sweep.json
    (lambda r: {**r, "seeds": []}, ["no seeds"]),
    (lambda r: {**r, "methods": []}, ["no methods"]),
    (lambda r: {**r, "summary": {}}, ["KeyError", "'stl'"]),
    (lambda r: "runs/x/results.json", ["expected an object"]),
    (lambda r: None, ["expected an object"]),
], ids=["train-results", "sweep", "no-seeds", "no-methods", "no-summary", "path", "none"])
def test_results_of_another_kind_are_refused_before_anything_is_written(run, edit, words):
    results = edit(_results(run))
    before = _snapshot(run)
    for call in (prepare_report, write_report):
        with pytest.raises(UserError) as e:
            call(run, results)
        msg = str(e.value)
        assert f"compare results file {run / 'results.json'} is malformed" in msg
        for w in words:
            assert w in msg, (w, msg)
    assert _snapshot(run) == before


def test_a_method_without_a_defined_delta_m_is_left_out_of_the_plot(run):
    """results.json holds a NaN mean as null: the report draws the other methods."""
    res = _results(run)
    for key in ("param_sparsity", "delta_m_seen"):
        res["summary"]["meta_sparsity"][key] = {"mean": None, "std": None, "n": 0}
    (run / "results.json").write_text(json.dumps(res))
    assert cli("report", run) == 0
    assert (run / "delta_vs_sparsity.png").is_file()


def test_a_meta_training_log_without_meta_records_draws_no_lambda_plot(run):
    log = run / "seed_0" / "meta_sparsity" / "metrics.jsonl"
    log.write_text("".join(line + "\n" for line in log.read_text().splitlines()
                           if '"kind": "meta"' not in line))
    assert cli("report", run) == 0
    assert not (run / "lambda.png").exists()
    assert "lambda.png" not in (run / "report.md").read_text()


# ----------------------------------------------------------------------- plot inputs (10, 12)

def test_pareto_front_never_holds_a_nan_point():
    assert plots.pareto_front([(NAN, 1.0), (1.0, NAN), (0.5, 0.5)]) == [2]
    assert pareto_points([(NAN, 5.0), (1.0, 1.0), (2.0, NAN)]) == [(1.0, 1.0)]
    assert pareto_points([(1.0, 2.0), (2.0, 1.0), (0.5, 0.5)]) == [(1.0, 2.0), (2.0, 1.0)]


def test_delta_plot_leaves_out_undefined_points_and_refuses_percentages(tmp_path):
    rows = [{"label": "a", "group_sparsity": 0.2, "delta_m": 1.0},
            {"label": "b", "group_sparsity": 0.5, "delta_m": None},
            {"label": "c", "group_sparsity": NAN, "delta_m": NAN}]
    extra = [{"label": "m", "group_sparsity": 0.3, "delta_m": NAN}]
    assert plots.plot_delta_vs_sparsity(rows, tmp_path / "d.png", extra=extra).is_file()
    with pytest.raises(ValueError, match=r"rows\[1\] \('b'\) has group_sparsity = 50.*\[0, 1\]"):
        plots.plot_delta_vs_sparsity([rows[0], {**rows[0], "label": "b", "group_sparsity": 50}],
                                     tmp_path / "p.png")
    with pytest.raises(ValueError, match=r"extra\[0\].*param_sparsity"):
        plots.plot_delta_vs_sparsity([], tmp_path / "p.png", key="param_sparsity", extra=rows)
    assert not (tmp_path / "p.png").exists()


def test_a_delta_plot_with_no_defined_point_says_so_instead_of_empty_axes(tmp_path,
                                                                          monkeypatch):
    import warnings

    saved = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.setdefault("fig", fig) and path)
    rows = [{"label": "a", "group_sparsity": 0.2, "delta_m": None},
            {"label": "b", "group_sparsity": 0.5, "delta_m": NAN}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib's "No artists with labels" legend warning
        plots.plot_delta_vs_sparsity(rows, tmp_path / "d.png")
    ax = saved["fig"].axes[0]
    assert [t.get_text() for t in ax.texts] == ["no point to draw: Δm is undefined for every run"]
    assert ax.get_legend() is None


def test_a_plot_is_written_in_the_format_of_its_suffix(tmp_path):
    rows = [{"label": "a", "group_sparsity": 0.2, "delta_m": 1.0}]
    plots.plot_delta_vs_sparsity(rows, tmp_path / "d.pdf")
    assert (tmp_path / "d.pdf").read_bytes()[:5] == b"%PDF-"
    plots.plot_delta_vs_sparsity(rows, tmp_path / "d.png")
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("d.txt", "d"):
        with pytest.raises(ValueError, match="cannot write a picture"):
            plots.plot_per_layer_sparsity([{"name": "w", "group_sparsity": 0.5}], tmp_path / name)
        assert not (tmp_path / name).exists()


LAYERS = [{"name": f"backbone.l{i}.weight", "group_sparsity": 0.1 * i} for i in range(4)]


@pytest.mark.parametrize(("per_layer", "kwargs", "error", "words"), [
    ([], {}, ValueError, "holds no layer"),
    ({}, {}, ValueError, "empty mapping"),
    ({"a": LAYERS, "b": []}, {}, ValueError, "per_layer['b'] holds no layer"),
    ({"a": LAYERS, "b": LAYERS[:2]}, {}, ValueError, "other layers"),
    ([{"name": "w", "group_sparsity": NAN}], {}, ValueError, "per_layer[0]"),
    ([{"name": "w", "group_sparsity": 50}], {}, ValueError, "in [0, 1]"),
    (LAYERS, {"lambdas": [1e-3] * 7}, ValueError, "lambdas has 7 values for 4 layers"),
    ("stats", {}, TypeError, "got SparsityStats"),
], ids=["list", "mapping", "empty-series", "other-layers", "nan", "percent", "lambdas", "stats"])
def test_per_layer_plot_refuses_what_it_cannot_draw(tmp_path, per_layer, kwargs, error, words):
    if per_layer == "stats":
        per_layer = SparsityStats(0.25, 0.25, 4, 1, 36, 9, per_layer=LAYERS)
    with pytest.raises(error) as e:
        plots.plot_per_layer_sparsity(per_layer, tmp_path / "p.png", **kwargs)
    assert words in str(e.value) and "plot_per_layer_sparsity" in str(e.value)
    assert not (tmp_path / "p.png").exists()


REC = [{"step": i, "lambda": 1e-2, "group_sparsity": 0.1, "grad_lambda_implicit": 0.1,
        "grad_lambda_explicit": 0.0} for i in range(3)]


@pytest.mark.parametrize(("records", "error", "words"), [
    ([], ValueError, "records: none given"),
    ([{"label": "a", "records": REC}, {"label": "b", "records": []}], ValueError,
     "records of run 'b': none given"),
    ([{**r, "lambda": []} for r in REC], ValueError, "step 0 has an empty 'lambda' list"),
    ("runs/x/metrics.jsonl", TypeError, "records must be a list"),
], ids=["empty", "empty-run", "empty-lambda", "path"])
def test_meta_training_plot_refuses_what_it_cannot_draw(tmp_path, records, error, words):
    with pytest.raises(error, match=r"plot_meta_training: .*") as e:
        plots.plot_meta_training(records, tmp_path / "m.png")
    assert words in str(e.value)
    assert not (tmp_path / "m.png").exists()


# --------------------------------------------------------------------------------- cost (4, 13)

@pytest.fixture(scope="module")
def model():
    cfg = load_config(None, MICRO)
    return build_model(cfg, list(cfg.data.tasks)).eval()


def test_stage_costs_of_a_whole_multi_task_model_add_up(model):
    x = torch.randn(1, 3, 32, 32)
    rows = {r["name"]: r for r in stage_costs(model, x)}
    assert rows["backbone"]["macs"] == count_macs(model.backbone, x) > 0
    assert rows["backbone"]["macs"] + rows["heads"]["macs"] == count_macs(model, x)
    assert rows["heads"]["params"] == count_parameters(model.heads)
    stages = stage_costs(model.backbone, x)  # a backbone: its stages, as before
    assert sum(r["macs"] for r in stages) == count_macs(model.backbone, x)


@pytest.mark.parametrize("shape", [(1, 3, 32, 32), [1, 3, 32, 32], torch.Size([1, 3, 32, 32])],
                         ids=["tuple", "list", "size"])
def test_a_shape_is_not_an_example_input(model, shape):
    for call in (lambda: count_macs(model, shape), lambda: stage_costs(model, shape),
                 lambda: measure_latency(model, shape, warmup=0, repeats=1),
                 lambda: cost_table(model, shape)):
        with pytest.raises(TypeError, match="example_input must be an input tensor.*not its shape"):
            call()


def test_an_empty_batch_and_a_model_of_another_kind_are_refused(model):
    with pytest.raises(ValueError, match=r"example_input is empty \(shape \[0, 3, 32, 32\]\)"):
        measure_latency(model, torch.zeros(0, 3, 32, 32), warmup=0, repeats=1)
    with pytest.raises(ValueError, match="batch size >= 1"):
        count_macs(model, torch.zeros(0, 3, 32, 32))
    for call in (lambda: count_parameters("runs/x"), lambda: count_macs("runs/x", torch.zeros(1)),
                 lambda: measure_latency(Path("runs/x"), torch.zeros(1))):
        with pytest.raises(TypeError, match="must be a torch.nn.Module"):
            call()
    assert math.isfinite(measure_latency(model, torch.zeros(1, 3, 32, 32), warmup=0, repeats=1)["median_ms"])
