"""A NaN / infinite loss or λ stops the run naming the step and task; the last good checkpoint stays."""

from __future__ import annotations

import pytest
import torch
from tests.recipes.micro import MICRO, cli

import metasparsity.recipes.meta_train as metatrain
import metasparsity.recipes.train as mtl
from metasparsity.config import load_config
from metasparsity.training.divergence import NonFiniteError
from metasparsity.training.run_checkpoints import load_run_checkpoint


def test_nan_loss_stops_train_with_exit_2(tmp_path, monkeypatch, capsys):
    real = mtl.task_losses
    calls = {"n": 0}

    def poisoned(tasks, outputs, targets):
        calls["n"] += 1
        losses = real(tasks, outputs, targets)
        if calls["n"] == 3:  # the loss of step 3
            losses["depth"] = losses["depth"] * float("nan")
        return losses

    monkeypatch.setattr(mtl, "task_losses", poisoned)
    run = tmp_path / "run"
    assert cli("train", "--out", run, *MICRO) == 2
    err = capsys.readouterr().err
    assert "non-finite loss at step 3 for task 'depth'" in err
    assert "the last good checkpoint (step 2) is kept" in err and "Traceback" not in err
    ck = load_run_checkpoint(run, "last")
    assert ck.meta["step"] == 2 and all(torch.isfinite(v).all() for v in ck.model.values())
    assert not (run / "results.json").exists()


def test_non_finite_lambda_stops_meta_training(tmp_path, monkeypatch):
    real = metatrain.outer_update
    calls = {"n": 0}

    def poisoned(model, lam, *args, **kwargs):
        out = real(model, lam, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            with torch.no_grad():
                lam.rho.fill_(float("nan"))
        return out

    monkeypatch.setattr(metatrain, "outer_update", poisoned)
    cfg = load_config(None, MICRO)
    tr = metatrain.MetaTrainer(cfg, tmp_path / "meta")
    tr.setup()
    with pytest.raises(NonFiniteError, match="λ became non-finite at step 3") as e:
        tr.train()
    assert e.value.step == 3 and e.value.task == "λ"
    assert "last good checkpoint (step 2)" in str(e.value)
    assert load_run_checkpoint(tmp_path / "meta", "last").meta["step"] == 2


def test_infinite_query_loss_before_any_checkpoint(tmp_path, monkeypatch):
    real = metatrain.meta_step

    def poisoned(*args, **kwargs):
        res = real(*args, **kwargs)
        res.query_loss["has_sphere"] = torch.tensor(float("inf"))
        return res

    monkeypatch.setattr(metatrain, "meta_step", poisoned)
    cfg = load_config(None, MICRO + ["meta.subsets=[[has_sphere]]", "meta.meta_batch=1"])
    tr = metatrain.MetaTrainer(cfg, tmp_path / "meta")
    tr.setup()
    with pytest.raises(NonFiniteError, match="step 1 for task 'has_sphere'") as e:
        tr.train()
    assert "no checkpoint had been saved yet" in str(e.value)
