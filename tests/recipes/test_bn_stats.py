"""BatchNorm statistics of meta-trained checkpoints: the ``bn_stats`` field of ``state.json``
says whether they are re-estimated before use, and checkpoints written before that field (with
``needs_bn_recalibration``) are read the same way."""

from __future__ import annotations

import json

from tests.recipes.micro import MICRO, cli

from metasparsity.recipes.evaluate_run import evaluate_run
from metasparsity.training.evaluation import bn_stats_to_recompute
from metasparsity.utils.io import read_json


def test_the_field_and_the_old_key():
    assert bn_stats_to_recompute({"bn_stats": "recompute"})
    assert not bn_stats_to_recompute({"bn_stats": "running"})
    assert bn_stats_to_recompute({"needs_bn_recalibration": True})
    assert not bn_stats_to_recompute({"needs_bn_recalibration": False})
    assert not bn_stats_to_recompute({})


def test_a_checkpoint_with_the_old_key_evaluates_and_fine_tunes_as_before(tmp_path):
    run = tmp_path / "meta"
    assert cli("meta-train", "--out", run, *MICRO, "meta.steps=2", "meta.val_every=2") == 0
    assert cli("train", "--out", tmp_path / "dense", *MICRO, "train.max_steps=2") == 0
    state = run / "checkpoints" / "step_0000002" / "state.json"
    meta = json.loads(state.read_text())
    assert meta["bn_stats"] == "recompute"
    assert read_json(tmp_path / "dense" / "checkpoints" / "step_0000002" / "state.json")[
        "bn_stats"] == "running"
    new = evaluate_run(run, "val")["metrics"]
    assert cli("finetune", str(run), "--out", tmp_path / "ft_new") == 0
    del meta["bn_stats"]
    state.write_text(json.dumps({**meta, "needs_bn_recalibration": True}))
    assert evaluate_run(run, "val")["metrics"] == new
    assert cli("finetune", str(run), "--out", tmp_path / "ft_old") == 0
    a, b = (read_json(tmp_path / d / "results.json") for d in ("ft_new", "ft_old"))
    assert a["test"] == b["test"] and a["val"] == b["val"]
