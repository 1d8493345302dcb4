"""``meta.lambda_init: auto`` (DESIGN §2.3): λ0 is the median over the backbone's groups of
``‖∇_g L‖/w_g`` at the initial θ, measured without touching the model, and kept on resume."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from tests.recipes.micro import MICRO, cli

from metasparsity.config import load_config
from metasparsity.recipes.meta_train import AUTO_LAMBDA_BATCHES, MetaTrainer
from metasparsity.training.batches import to_device
from metasparsity.utils.io import read_json


def test_auto_lambda0_is_the_median_group_gradient_ratio_and_touches_nothing(tmp_path):
    cfg = load_config(None, [*MICRO, "meta.steps=2"])
    assert cfg.meta.lambda_init == "auto"  # the default
    tr = MetaTrainer(cfg, tmp_path / "run")
    tr.setup()
    # independently: a plain backward of the seen tasks' summed loss on a copy of the initial
    # model, in train mode (batch statistics), over the same first batches of the BN stream
    torch.manual_seed(cfg.train.seed)
    model = copy.deepcopy(tr.model).train()
    tr.bn_stream.load_state_dict({"epoch": 0, "pos": 0})
    grads = {g.name: torch.zeros(g.shape) for g in tr.layers}
    named = dict(model.named_parameters())
    for _ in range(AUTO_LAMBDA_BATCHES):
        x, y = to_device(next(tr.bn_stream), tr.device)
        model.zero_grad()
        out = model(x, tasks=list(tr.tasks))
        sum(tr.tasks[t].loss(out[t], y[t]) for t in tr.tasks).backward()
        for g in tr.layers:
            grads[g.name] += named[g.name].grad / AUTO_LAMBDA_BATCHES
    ratios = np.concatenate([
        np.linalg.norm(grads[g.name].numpy().transpose(1, 0, 2, 3).reshape(g.num_groups, -1), axis=1)
        / np.sqrt(g.group_size) for g in tr.layers])
    assert tr.lambda0 == pytest.approx(float(np.median(ratios)), rel=1e-4)
    assert tr.lam.value() == pytest.approx(tr.lambda0, rel=1e-6)
    # the measurement used batch statistics: the model's BatchNorm running statistics are untouched
    fresh = MetaTrainer(load_config(None, [*MICRO, "meta.lambda_init=0.001"]), tmp_path / "other")
    fresh.setup()
    for (k, a), b in zip(tr.model.state_dict().items(), fresh.model.state_dict().values()):
        if "running" in k or "num_batches" in k:
            assert torch.equal(a, b), k


def test_auto_lambda0_is_printed_logged_and_kept_on_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("meta-train", "--out", run, *MICRO, "meta.steps=2") == 0
    out = capsys.readouterr().out
    res = read_json(run / "results.json")
    assert res["lambda_init_auto"] is True and res["lambda_init"] > 0
    assert f"λ0 = auto: {res['lambda_init']:.3g}" in out
    assert cli("meta-train", "--resume", run, "meta.steps=4") == 0
    assert "λ0 = auto" not in capsys.readouterr().out  # not measured again: from the checkpoint
    assert read_json(run / "results.json")["lambda_init"] == res["lambda_init"]


def test_lambda_init_takes_auto_a_number_or_zero_and_nothing_else():
    assert load_config(None, ["meta.lambda_init=0.01"]).meta.lambda_init == 0.01
    assert load_config(None, ["meta.lambda_init=0"]).meta.lambda_init == 0.0
    for bad in ("autox", "-1", "Auto"):
        with pytest.raises(Exception, match="meta.lambda_init"):
            load_config(None, [f"meta.lambda_init={bad}"])


def test_auto_lambda0_is_clamped_into_its_range(tmp_path):
    tr = MetaTrainer(load_config(None, [*MICRO, "meta.lambda_min=1e-7", "meta.lambda_max=1e-6"]),
                     tmp_path / "run")
    tr.setup()
    assert tr.lambda0 == 1e-6  # the measured median (~4e-3 here) is above lambda_max
