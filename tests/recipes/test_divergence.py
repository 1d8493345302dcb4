"""Divergence is caught: non-finite validation / test results or parameters stop a run like a
NaN loss (exit 2, one line naming the step and suggesting a resume with a smaller LR), and the
checkpoint kept as "last good" has finite weights and a finite validation.  Also: progress bars
stay silent when stderr is not a terminal."""

from __future__ import annotations

import io
import math

import pytest
import torch
from tests.recipes.micro import MICRO, cli

import metasparsity.recipes.meta_train as metatrain
import metasparsity.recipes.train as mtl
from metasparsity.recipes.evaluate_run import evaluate_run
from metasparsity.training.checkpoint import load_checkpoint, save_checkpoint
from metasparsity.training.divergence import nonfinite_metrics
from metasparsity.training.logs import progress_bar
from metasparsity.training.run_checkpoints import load_run_checkpoint
from metasparsity.utils.errors import UserError
from metasparsity.utils.io import read_json, read_jsonl


def _finite(ck) -> bool:
    return all(torch.isfinite(v).all() for v in ck.model.values() if v.is_floating_point())


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("note:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _checkpoints(run):
    root = run / "checkpoints"
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_")) \
        if root.is_dir() else []


# 1e38: Adam's step size lr/(1 − β1) no longer fits in float32, so PyTorch refuses to form
# the update (a RuntimeError, not a NaN); it is a divergence all the same
@pytest.mark.parametrize("lr", ["1e8", "1e30", "1e38"])
def test_a_huge_lr_exits_2_and_keeps_no_diverged_checkpoint(tmp_path, capsys, lr):
    run = tmp_path / "run"
    assert cli("train", "--out", run, *MICRO, f"train.lr={lr}", "train.lr_schedule=constant") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "non-finite" in line and "at step" in line and "smaller learning rate" in line
    assert not (run / "results.json").exists()
    for ck in _checkpoints(run):  # whatever was kept is usable
        c = load_checkpoint(ck)
        assert _finite(c) and c.meta["val_finite"] is True


@pytest.mark.parametrize("lr", ["1e8", "1e30"])
def test_diverging_after_a_good_checkpoint_keeps_it_and_a_smaller_lr_resumes(tmp_path, capsys, lr):
    run = tmp_path / "run"
    assert cli("train", "--out", run, *MICRO, "train.max_steps=2") == 0
    capsys.readouterr()
    assert cli("train", "--resume", run, f"train.lr={lr}", "train.lr_schedule=constant",
               "train.max_steps=6") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "the last good checkpoint (step 2) is kept" in line
    assert f"resume with a smaller learning rate: --resume {run} train.lr=" in line
    last = load_run_checkpoint(run, "last")
    assert last.meta["step"] == 2 and _finite(last) and last.meta["val_finite"] is True
    assert all(_finite(load_checkpoint(p)) for p in _checkpoints(run))
    # the suggested resume works: continues from step 2
    assert cli("train", "--resume", run, "train.lr=1e-3", "train.max_steps=4") == 0
    recs = read_jsonl(run / "metrics.jsonl")
    assert [r["from_step"] for r in recs if r["kind"] == "resume"][-1] == 2
    res = read_json(run / "results.json")
    assert res["steps"] == 4 and not nonfinite_metrics(res["val"]) and not nonfinite_metrics(res["test"])


def test_a_checkpoint_saved_between_validations_is_validated_before_it_is_kept(tmp_path, capsys):
    """ckpt_every saves a checkpoint without validating it; after a divergence it is only kept
    as "last good" if its validation is finite, else set aside and `last` goes back."""
    run = tmp_path / "run"
    assert cli("train", "--out", run, *MICRO, "train.max_steps=2") == 0
    capsys.readouterr()
    assert cli("train", "--resume", run, "train.lr=1e8", "train.lr_schedule=constant",
               "train.max_steps=8", "train.ckpt_every=1", "train.val_every=4") == 2
    line = _one_error_line(capsys.readouterr().err)
    last = load_run_checkpoint(run, "last")
    assert f"the last good checkpoint (step {last.meta['step']}) is kept" in line
    assert _finite(last)
    if last.meta["step"] != 2:  # an unvalidated one was kept: it must validate finite
        assert not nonfinite_metrics(evaluate_run(run, "val", "last")["metrics"])
    diverged = sorted(p.name for p in (run / "checkpoints").glob(".step_*.diverged"))
    assert diverged, "an unvalidated checkpoint of the diverged steps must be set aside, not lost"
    for name in diverged:
        assert (run / "checkpoints" / "last").read_text().strip() < name[1:13]


def test_nan_validation_stops_the_run_and_is_never_best(tmp_path, monkeypatch, capsys):
    real = mtl.evaluate
    calls = {"n": 0}

    def evaluate(*args, **kwargs):
        res = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:  # the validation at step 4
            res["depth"]["loss"] = float("nan")
            res["depth"]["abs_err"] = float("nan")
        return res

    monkeypatch.setattr(mtl, "evaluate", evaluate)
    run = tmp_path / "run"
    assert cli("train", "--out", run, *MICRO, "train.max_steps=6") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("metasparsity train: error: non-finite validation metrics at step 4 "
                           "(depth.loss)")
    assert "the last good checkpoint (step 2) is kept" in line
    assert load_run_checkpoint(run, "best").meta["step"] == 2
    assert load_run_checkpoint(run, "last").meta["step"] == 2
    assert [p.name for p in _checkpoints(run)] == ["step_0000002"]
    assert not (run / "results.json").exists()


def test_nan_test_metrics_stop_the_run(tmp_path, monkeypatch, capsys):
    real = mtl.evaluate
    calls = {"n": 0}

    def evaluate(*args, **kwargs):
        res = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:  # val@2, val@4, then the final val and test of the best
            res["segment"]["loss"] = float("inf")
        return res

    monkeypatch.setattr(mtl, "evaluate", evaluate)
    run = tmp_path / "run"
    assert cli("train", "--out", run, *MICRO) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "non-finite test metrics at step" in line and "segment.loss" in line
    assert "check the test data" in line and "smaller learning rate would not help" in line
    assert "--resume" not in line  # resuming would only test the same checkpoint again
    assert not (run / "results.json").exists()


def test_a_nan_score_never_makes_a_checkpoint_best(tmp_path, monkeypatch):
    real = mtl.selection_score
    calls = {"n": 0}

    def score(*args, **kwargs):
        calls["n"] += 1
        return float("nan") if calls["n"] == 1 else real(*args, **kwargs)

    monkeypatch.setattr(mtl, "selection_score", score)
    run = tmp_path / "run"
    assert cli("train", "--out", run, *MICRO) == 0
    assert read_json(run / "results.json")["best_step"] == 4
    assert load_run_checkpoint(run, "best").meta["step"] == 4


def test_non_finite_parameters_stop_the_run(tmp_path, monkeypatch, capsys):
    real = mtl.check_finite_params

    def poisoned(tensors, step):
        if step == 3:  # right after the update of step 3 (a state_dict shares the storage)
            with torch.no_grad():
                tensors["backbone.conv1.weight"][0, 0, 0, 0] = float("inf")
        return real(tensors, step)

    monkeypatch.setattr(mtl, "check_finite_params", poisoned)
    run = tmp_path / "run"
    assert cli("train", "--out", run, *MICRO, "train.max_steps=6") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "non-finite parameters at step 3 (backbone.conv1.weight)" in line
    assert "the last good checkpoint (step 2) is kept" in line
    assert _finite(load_run_checkpoint(run, "last"))


def test_save_checkpoint_refuses_non_finite_weights(tmp_path):
    with pytest.raises(UserError, match="non-finite weights in w"):
        save_checkpoint(tmp_path / "run", 1, {"w": torch.tensor([1.0, math.nan])}, {}, {})
    assert not (tmp_path / "run" / "checkpoints" / "step_0000001").exists()


# ----------------------------------------------------------------------------- meta-training


@pytest.mark.parametrize("lr", ["1e8", "1e30"])
def test_meta_train_diverging_keeps_a_finite_last_good_checkpoint(tmp_path, capsys, lr):
    run = tmp_path / "meta"
    assert cli("meta-train", "--out", run, *MICRO, "meta.steps=2") == 0
    capsys.readouterr()
    assert cli("meta-train", "--resume", run, f"meta.outer_lr={lr}", "meta.steps=6") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "non-finite" in line and "the last good checkpoint (step 2) is kept" in line
    assert "meta.outer_lr=" in line
    last = load_run_checkpoint(run, "last")
    assert last.meta["step"] == 2 and _finite(last) and last.meta["val_finite"] is True
    assert cli("meta-train", "--resume", run, "meta.outer_lr=1e-3", "meta.steps=4") == 0


def test_meta_train_nan_validation_stops(tmp_path, monkeypatch, capsys):
    real = metatrain.MetaTrainer.validate
    calls = {"n": 0}

    def validate(self):
        res = real(self)
        calls["n"] += 1
        if calls["n"] == 2:
            res["has_sphere"]["loss"] = float("nan")
        return res

    monkeypatch.setattr(metatrain.MetaTrainer, "validate", validate)
    run = tmp_path / "meta"
    assert cli("meta-train", "--out", run, *MICRO) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "non-finite validation metrics at step 4 (has_sphere.loss)" in line
    assert "the last good checkpoint (step 2) is kept" in line
    assert load_run_checkpoint(run, "best").meta["step"] == 2
    assert not (run / "results.json").exists()


# ----------------------------------------------------------------------------- progress bars


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    it = range(3)
    assert progress_bar(it, enabled=True) is it
    monkeypatch.setattr("sys.stderr", _Terminal())
    bar = progress_bar(it, enabled=True)
    assert bar is not it and list(bar) == [0, 1, 2]
    assert progress_bar(it, enabled=False) is it


def test_a_redirected_run_writes_no_carriage_returns(tmp_path, capsys):
    assert cli("train", "--out", tmp_path / "run", *MICRO, "train.progress=true") == 0
    out = capsys.readouterr()
    assert "\r" not in out.err and "\r" not in out.out


def test_a_diverged_sub_run_points_at_the_resume_of_the_whole_sweep(tmp_path, capsys):
    """Resuming the sub-run itself would not help: the sweep's own resume rewrites the
    sub-run's config.yaml with the sweep's LR. The hint resumes the sweep, and that works."""
    out = tmp_path / "sweep"
    assert cli("sweep-lambda", "--out", out, "--grid", "0.001", *MICRO, "train.lr=1e30",
               "train.lr_schedule=constant") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"resume the whole sweep-lambda with a smaller learning rate: metasparsity " \
           f"sweep-lambda --resume {out} train.lr=" in line
    assert "--resume " + str(out / "dense_mtl") not in line
    assert cli("sweep-lambda", "--resume", out, "train.lr=1e-3") == 0
    assert (out / "sweep.json").is_file() and read_json(out / "dense_mtl" / "results.json")
