"""meta.final_zero_window: the last outer step lands on the mean group sparsity of the N steps
before it (the learned λ's zero set is a sawtooth; one step's is a sample of it)."""

from __future__ import annotations

import pytest
import torch
from tests.recipes.micro import MICRO, cli, same_tensors

from metasparsity.config import load_config
from metasparsity.recipes.meta_train import MetaTrainer
from metasparsity.sparsity import channel_groups, sparsity_stats
from metasparsity.training.run_checkpoints import load_run_checkpoint
from metasparsity.utils.io import read_json, read_jsonl

# λ0 = 0.3 on the micro model: the zero set grows over the 10 steps (45 % → 81 %), so the
# window's mean (steps 6–9) is well below the last step's own prox
WINDOW = ["meta.steps=10", "meta.val_every=5", "meta.lambda_init=0.3",
          "meta.final_zero_window=4"]


def _meta_records(run):
    return [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "meta"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("window") / "m"
    assert cli("meta-train", "--out", run, *MICRO, *WINDOW) == 0
    return run


def test_the_last_step_lands_on_the_windows_mean(straight):
    recs = _meta_records(straight)
    assert len(recs) == 10
    mean = sum(r["group_sparsity"] for r in recs[-5:-1]) / 4  # the 4 steps before the last
    res = read_json(straight / "results.json")
    win = res["final_zero_window"]
    assert win["window"] == 4 and win["landing"]["window"] == 4
    assert win["landing"]["mean_group_sparsity"] == pytest.approx(mean, abs=1e-6)
    model = load_run_checkpoint(straight, "last").model
    groups = sum(g.num_groups for g in channel_groups(_model(straight, model)))
    final = res["sparsity"]["group_sparsity"]
    assert final == recs[-1]["group_sparsity"]
    # the fewest groups that reach the mean: ⌈mean⌉ zero groups, exactly
    counts = [round(r["group_sparsity"] * groups) for r in recs[-5:-1]]
    k = -(-sum(counts) // 4)
    assert win["landing"]["target_zero_groups"] == k
    assert round(final * groups) == k and mean <= final < mean + 1 / groups
    # the prox at λ itself would have kept more zeros here: the landing revived groups
    assert win["landing"]["groups_vs_lambda"] < 0 and win["landing"]["scale"] < 1
    assert win["projected_groups"] == 0  # no safety-net rounding was needed
    assert res["budget"] is None


def _model(run, state):
    from metasparsity.builders import build_model

    cfg = load_config(run / "config.yaml", [])
    model = build_model(cfg, cfg.data.seen_tasks)
    model.load_state_dict(state)
    assert sparsity_stats(model).group_sparsity > 0.5
    return model


def test_a_resumed_run_lands_as_the_straight_one(straight, tmp_path):
    """The window's sparsities are in the checkpoint: stopping inside the window and resuming
    lands on the same zero set, bit for bit."""
    cfg = load_config(None, [*MICRO, *WINDOW])
    mt = MetaTrainer(cfg, tmp_path / "m")
    mt.setup()
    assert mt.train(stop_after=7) is None
    mt = MetaTrainer(cfg, tmp_path / "m", resume=True)
    mt.setup()
    assert len(mt.recent_zeros) == 4
    res = mt.train()
    a, b = load_run_checkpoint(straight, "last"), load_run_checkpoint(tmp_path / "m", "last")
    assert same_tensors(a.model, b.model) == []
    assert res["final_zero_window"] == read_json(straight / "results.json")["final_zero_window"]


def test_a_resume_with_a_smaller_window_averages_only_its_own_steps(tmp_path):
    cfg = load_config(None, [*MICRO, *WINDOW])
    mt = MetaTrainer(cfg, tmp_path / "m")
    mt.setup()
    assert mt.train(stop_after=7) is None
    mt = MetaTrainer(load_config(None, [*MICRO, *WINDOW, "meta.final_zero_window=2"]),
                     tmp_path / "m", resume=True)
    mt.setup()
    assert len(mt.recent_zeros) == 2
    assert mt.train()["final_zero_window"]["landing"]["window"] == 2


def test_budget_mode_lands_on_its_target_not_on_the_window(tmp_path):
    run = tmp_path / "b"
    assert cli("meta-train", "--out", run, *MICRO, *WINDOW, "meta.target=0.6") == 0
    res = read_json(run / "results.json")
    assert res["final_zero_window"] is None and res["budget"]["landing"] is not None
