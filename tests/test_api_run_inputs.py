"""The Python API of the recipes that read a run or a compact model: ``which``, ``prune_run``'s
options, ``predict_files``' images and ``save_compact_model``'s meta are checked before anything
is loaded or written (the command line already limits most of them)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from tests.test_export_predict import OVERRIDES, TASKS, sparse_model

from metasparsity.config import load_config
from metasparsity.export import load_compact_model, save_compact_model
from metasparsity.recipes.load_run import load_run_model, run_tasks
from metasparsity.recipes.predict import predict_files, read_image
from metasparsity.recipes.prune import prune_run
from metasparsity.training.checkpoint import save_checkpoint
from metasparsity.utils.errors import UserError
from metasparsity.utils.rundir import RUN, write_marker


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs") / "tiny"
    d.mkdir()
    (d / "config.yaml").write_text(load_config(None, OVERRIDES).to_yaml())
    save_checkpoint(d, 7, sparse_model().state_dict(), {}, {"tasks": TASKS}, best=True)
    return d


@pytest.fixture(scope="module")
def model_dir(run_dir):
    return prune_run(run_dir, latency=False, threads=1)["out"]


@pytest.fixture
def image(tmp_path):
    p = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(p)
    return p


@pytest.mark.parametrize("which", ["bset", "step_0000007", "", 2, None])
def test_which_other_than_best_or_last_is_refused(run_dir, tmp_path, capsys, which):
    with pytest.raises(UserError, match="--which must be 'best' or 'last', got "):
        load_run_model(run_dir, which)
    with pytest.raises(UserError, match="--which must be 'best' or 'last'"):
        run_tasks(run_dir, load_config(run_dir / "config.yaml"), which)
    with pytest.raises(UserError, match="--which must be 'best' or 'last'"):
        prune_run(run_dir, tmp_path / "m", which=which, latency=False)
    assert not (tmp_path / "m").exists()
    assert "note:" not in capsys.readouterr().err  # no fallback was taken
    for ok in ("best", "last"):
        assert load_run_model(run_dir, ok)[2].path.name == "step_0000007"


def test_a_sweep_given_as_a_run_is_named_with_its_runs(tmp_path):
    sweep = tmp_path / "sweep"
    write_marker(sweep, RUN, layout="sweep")
    (sweep / "config.yaml").write_text(load_config(None, OVERRIDES).to_yaml())
    sub = sweep / "lam_0.1"
    sub.mkdir()
    (sub / "config.yaml").write_text(load_config(None, OVERRIDES).to_yaml())
    save_checkpoint(sub, 1, sparse_model().state_dict(), {}, {"tasks": TASKS}, best=True)
    with pytest.raises(UserError, match=r"is a sweep-lambda run, which has no checkpoint of its "
                                        r"own: give one of its runs \(.*lam_0.1\)"):
        load_run_model(sweep)
    assert load_run_model(sub)[2].path.name == "step_0000001"


@pytest.mark.parametrize("options, message", [
    ({"repeats": 0}, "--repeats must be an integer between 1 and 100000, got 0"),
    ({"repeats": 1.5}, "--repeats must be an integer between 1 and 100000"),
    ({"repeats": 10**9}, "--repeats must be an integer between 1 and 100000, got 1000000000"),
    ({"warmup": -1}, "--warmup must be an integer between 0 and 100000, got -1"),
    ({"warmup": True}, "--warmup must be an integer between 0 and 100000"),
    ({"warmup": 10**9}, "--warmup must be an integer between 0 and 100000, got 1000000000"),
    ({"batch_sizes": 16}, "--batch-sizes must be a list of integers, got 16"),
    ({"batch_sizes": "1,16"}, "--batch-sizes must be a list of integers"),
    ({"batch_sizes": [1.5]}, "--batch-sizes must be between 1 and 4096, got 1.5"),
    ({"batch_sizes": [True]}, "--batch-sizes must be between 1 and 4096"),
    ({"threads": True}, "--threads must be between 1 and 1024, got True"),
    ({"threads": 2.0}, "--threads must be between 1 and 1024"),
])
def test_prune_checks_its_options_before_loading_the_run(run_dir, tmp_path, monkeypatch, options,
                                                         message):
    import metasparsity.recipes.prune as prune

    def loaded(*args, **kwargs):
        raise AssertionError("the run was loaded before the options were checked")

    monkeypatch.setattr(prune, "load_run_model", loaded)
    with pytest.raises(UserError, match=message):
        prune.prune_run(run_dir, tmp_path / "m", **options)
    assert not (tmp_path / "m").exists()


def test_predict_refuses_no_images_a_bare_path_and_a_batch_size_that_is_no_int(model_dir,
                                                                                tmp_path, image):
    out = tmp_path / "out"
    with pytest.raises(UserError, match="no images given"):
        predict_files(model_dir, [], out)
    for bare in (str(image), image):
        with pytest.raises(UserError, match="IMAGE: give a list of image paths.*wrap it in a list"):
            predict_files(model_dir, bare, out)
    for bad in ("4", 2.5, True, 0):
        with pytest.raises(UserError, match="--batch-size must be an integer >= 1"):
            predict_files(model_dir, [image], out, batch_size=bad)
    assert not out.exists()
    assert len(predict_files(model_dir, (image,), out)["images"]) == 1


def _save(path, array):
    Image.fromarray(array).save(path)  # uint8: L; uint16: I;16; int32: I; float32: F
    return path


def test_16_bit_and_float_grey_images_are_scaled_not_clipped(tmp_path):
    grey = np.random.default_rng(1).integers(0, 256, (32, 32)).astype(np.uint8)
    eight = read_image(_save(tmp_path / "g8.png", grey), 32, [0.0] * 3, [1.0] * 3)
    p16 = _save(tmp_path / "g16.png", grey.astype(np.uint16) * 257)  # 0..65535, same greys
    assert Image.open(p16).mode.startswith("I")
    torch.testing.assert_close(read_image(p16, 32, [0.0] * 3, [1.0] * 3), eight)
    pf = _save(tmp_path / "f.tiff", grey.astype(np.float32) / 255)
    assert Image.open(pf).mode == "F"
    torch.testing.assert_close(read_image(pf, 32, [0.0] * 3, [1.0] * 3), eight)
    wide = _save(tmp_path / "i32.tiff", np.full((8, 8), 70000, np.int32))
    with pytest.raises(UserError, match=r"i32.tiff: its pixels \(mode I\) range from 70000"):
        read_image(wide, 32, [0.0] * 3, [1.0] * 3)
    nan = np.zeros((8, 8), np.float32)
    nan[2, 3] = np.nan
    for name, values, message in [("nan.tiff", nan, "hold NaN or infinite values"),
                                  ("two.tiff", np.full((8, 8), 2, np.float32), "range from 2 to 2")]:
        with pytest.raises(UserError, match=rf"{name}: its pixels \(mode F.*{message}"):
            read_image(_save(tmp_path / name, values), 32, [0.0] * 3, [1.0] * 3)


def test_predict_reads_a_16_bit_png_like_its_8_bit_twin(model_dir, tmp_path):
    grey = np.random.default_rng(2).integers(0, 256, (32, 32)).astype(np.uint8)
    a = _save(tmp_path / "a.png", grey)
    b = _save(tmp_path / "b.png", grey.astype(np.uint16) * 257)
    recs = predict_files(model_dir, [a, b], tmp_path / "out")["images"]
    pa, pb = (r["outputs"]["has_sphere"]["probability"] for r in recs)
    assert pa == pytest.approx(pb, abs=1e-5)


def test_save_refuses_a_meta_the_loader_would_refuse_and_non_finite_weights(model_dir, tmp_path):
    model, meta = load_compact_model(model_dir)
    bad = [({**meta, "version": 2}, "meta may not set 'version' \\(got 2\\)"),
           ({**meta, "format": "x"}, "meta may not set 'format'"),
           ({**meta, "architecture": {}}, "meta may not set 'architecture'"),
           ({**meta, "image_size": 0}, "meta image_size must be an integer from 16"),
           ({**meta, "tasks": [{"name": "foo", "kind": "dense", "type": "depth"}]},
            "meta lists tasks the model has no head for: 'foo' \\(its heads: segment, depth")]
    for i, (m, message) in enumerate(bad):
        with pytest.raises(UserError, match=f"cannot write model.json: {message}"):
            save_compact_model(model, tmp_path / f"m{i}", m)
        assert not (tmp_path / f"m{i}").exists()
    with torch.no_grad():
        next(model.parameters())[0, 0, 0, 0] = float("nan")
    with pytest.raises(UserError, match="cannot write model.safetensors: tensor "
                                        "backbone.conv1.weight holds NaN"):
        save_compact_model(model, tmp_path / "nan", meta)
    assert not (tmp_path / "nan").exists()
    model, meta = load_compact_model(model_dir)
    save_compact_model(model, tmp_path / "again", meta)  # a loaded meta is written back as it was
    assert json.loads((tmp_path / "again" / "model.json").read_text()) == json.loads(
        (model_dir / "model.json").read_text())
    save_compact_model(model, tmp_path / "bare", None)
    assert load_compact_model(tmp_path / "bare")[1]["format"] == "metasparsity-compact-model"


def test_predict_refuses_model_json_tasks_without_a_head(model_dir, tmp_path, image):
    edited = tmp_path / "model"
    shutil.copytree(model_dir, edited)
    doc = json.loads((edited / "model.json").read_text())
    doc["tasks"][0]["name"] = "foo"
    (edited / "model.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match=r"model.json: tasks lists tasks the model has no head "
                                        r"for: 'foo' \(its heads: segment, "):
        predict_files(edited, [image], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert load_compact_model(edited)[1]["tasks"][0]["name"] == "foo"  # not required: loads


def test_predict_runs_in_float32_whatever_the_default_dtype(model_dir, tmp_path, image):
    expected = predict_files(model_dir, [image], tmp_path / "a")["images"][0]["outputs"]
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model, _ = load_compact_model(model_dir)
        assert {p.dtype for p in model.parameters()} == {torch.float32}
        got = predict_files(model_dir, [image], tmp_path / "b")["images"][0]["outputs"]
        assert torch.get_default_dtype() == torch.float64  # left as it was
    finally:
        torch.set_default_dtype(old)
    assert got == expected


@pytest.mark.parametrize("kwargs, error, message", [
    ({"dense": "model"}, TypeError, "cost_comparison: dense must be a multi-task model"),
    ({"pruned": torch.nn.Linear(2, 2)}, TypeError, "pruned must be a multi-task model with a backbone"),
    ({"image_size": 0}, UserError, "image_size must be an integer between 16 and 4096, got 0"),
    ({"image_size": 32.0}, UserError, "image_size must be an integer between 16 and 4096"),
    ({"repeats": 0}, UserError, "--repeats must be an integer between 1 and 100000, got 0"),
    ({"warmup": -1}, UserError, "--warmup must be an integer between 0 and 100000, got -1"),
    ({"batch_sizes": (0,)}, UserError, "--batch-sizes must be between 1 and 4096, got 0"),
    ({"batch_sizes": (2, 2)}, UserError, "each batch size may appear only once, got 2,2"),
])
def test_cost_comparison_checks_its_arguments(model_dir, kwargs, error, message):
    from metasparsity.export import cost_comparison

    model = load_compact_model(model_dir)[0]
    args = {"dense": model, "pruned": model, "image_size": 32, "batch_sizes": (1,), "repeats": 1,
            "warmup": 0, **kwargs}
    with pytest.raises(error, match=message):
        cost_comparison(**args)


def test_cost_comparison_without_latency_ignores_the_latency_options(model_dir):
    from metasparsity.export import cost_comparison

    model = load_compact_model(model_dir)[0]
    out = cost_comparison(model, model, 32, batch_sizes=(0,), repeats=0, latency=False)
    assert out["ratio"]["total"]["params"] == 1.0 and "latency" not in out
