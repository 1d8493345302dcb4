"""Budget mode of ``train`` (``sparsity.target``): the multiplier's dual ascent against the
(ramped) target, the landing on the target, resuming, fine-tuning from such a run, and the
commands that refuse the setting."""

from __future__ import annotations

import math

import pytest
from tests.recipes.micro import MICRO, cli, same_tensors

from metasparsity.builders import build_model
from metasparsity.config import ConfigError, load_config
from metasparsity.meta.lam import ramped_target
from metasparsity.recipes.train import TRAIN_BUDGET, Trainer, settings_from_config, train_settings
from metasparsity.sparsity import channel_groups, zero_group_masks
from metasparsity.training.run_checkpoints import load_run_checkpoint
from metasparsity.utils.io import read_json, read_jsonl

# Measured on the micro model (32 px, width 0.125, batch 8, 40 steps, ~7 s on one thread): the
# target falls from 0.89 to 0.5 by step 12; the cost stays at 1.0 for 4 steps, follows from
# above and first falls under 0.55 at step 16, then the last step lands on 0.5.  In between
# the path depends on the CPU's rounding (groups revive in Adam's metric, a few at a time on
# this small model: the cost moves by up to 0.09 in one step).  On an AVX2 machine it stayed in
# [0.37, 0.47] and the multiplier (0.004 → 0.027 at step 15) only fell after that; on an AVX-512
# one it dipped to 0.44, rebounded to 0.553 at step 20, and the multiplier rose 2 % again
# (0.0253 → 0.0258, step 22) before it fell to 0.0096.  The test asks what holds for both and
# fails for a multiplier that keeps climbing or a cost that escapes its target.
TARGET, RATE, LAM0, STEPS, RAMP = 0.5, 0.3, 0.004, 40, 0.3
BUDGET = [f"sparsity.target={TARGET}", "sparsity.target_measure=groups", f"sparsity.lam={LAM0}",
          f"sparsity.dual_rate={RATE}", f"sparsity.target_ramp={RAMP}", "train.lr=5e-3",
          f"train.max_steps={STEPS}", "train.val_every=20"]


def n_groups() -> int:
    cfg = load_config(None, MICRO)
    return sum(g.num_groups for g in channel_groups(build_model(cfg, cfg.data.seen_tasks)))


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("train_budget") / "run"
    assert cli("train", "--out", run, *MICRO, *BUDGET) == 0
    records = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"]
    return run, records, read_json(run / "results.json")


def test_the_multiplier_moves_by_the_dual_step_against_the_ramped_target(budget_run):
    _, records, res = budget_run
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    ramp = round(RAMP * STEPS)
    assert [r["target"] for r in records] == [
        pytest.approx(ramped_target(TARGET, k, ramp), abs=1e-15) for k in range(1, STEPS + 1)]
    rho = [math.log(LAM0)] + [math.log(r["lambda"]) for r in records]
    for k, r in enumerate(records):
        step = RATE * (r["cost"] - r["target"]) / r["target"]
        assert rho[k + 1] - rho[k] == pytest.approx(step, abs=1e-9), k
        assert r["cost"] == pytest.approx(1.0 - r["group_sparsity"], abs=1e-12)  # measure: groups
    assert res["kind"] == TRAIN_BUDGET and res["lam"] == LAM0
    assert res["budget"]["lambda_final"] == pytest.approx(records[-1]["lambda"], rel=1e-12)


def test_budget_training_reaches_the_target_and_ends_on_it(budget_run):
    _, records, res = budget_run
    cost = [r["cost"] for r in records[:-1]]  # the last step lands on the target by its own prox
    assert cost[0] > 0.9
    reached = next((i for i, c in enumerate(cost) if c <= TARGET + 0.05), None)
    assert reached is not None and reached < 3 * STEPS // 4, cost
    late = cost[reached:]
    # held: one revival step (≤ 0.1) above the target at most, and on average not above it
    assert all(TARGET - 0.2 <= c <= TARGET + 0.1 for c in late), late
    assert sum(late) / len(late) <= TARGET + 0.01, late
    lam = [r["lambda"] for r in records]
    assert max(lam) >= 3 * LAM0  # the multiplier had to grow to cut half of the groups
    peak = max(range(len(lam)), key=lam.__getitem__)
    assert peak <= reached + STEPS // 4, (peak, reached)  # it stopped rising soon after
    assert lam[-1] < 0.5 * lam[peak]  # and then fell while the cost stayed under the target
    final = res["budget"]["cost"]["groups"]
    assert TARGET - 1.0 / n_groups() - 1e-12 <= final <= TARGET, final
    assert res["budget"]["measure"] == "groups" and res["budget"]["target"] == TARGET
    assert res["best_step"] == STEPS  # the landed model is the one kept
    assert final == pytest.approx(1.0 - res["sparsity"]["group_sparsity"], abs=1e-12)


def test_a_resumed_budget_run_is_bit_identical(budget_run, tmp_path):
    run, _, res = budget_run
    cfg = load_config(None, [*MICRO, *BUDGET])

    def trainer(resume: bool) -> Trainer:
        return Trainer(cfg, tmp_path / "r", train_settings(cfg), resume=resume)

    tr = trainer(False)
    tr.setup()
    assert tr.train(stop_after=7) is None  # inside the ramp (12 steps)
    tr = trainer(True)
    tr.setup()
    got = tr.train()
    assert got["budget"] == res["budget"]
    a, b = load_run_checkpoint(run, "last"), load_run_checkpoint(tmp_path / "r", "last")
    assert same_tensors(a.model, b.model) == []


def test_fine_tuning_a_budget_run_keeps_its_budget_at_its_multiplier(budget_run, tmp_path):
    run, _, res = budget_run
    out = tmp_path / "ft"
    assert cli("finetune", run, "--out", out, "finetune.steps=4", "finetune.lam=source") == 0
    ft = read_json(out / "results.json")
    records = [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "train"]
    first = records[0]
    # λ starts at the source's final multiplier (not at its λ0) and the budget holds, moved at
    # the source's sparsity.dual_rate
    assert ft["lam"] == pytest.approx(res["budget"]["lambda_final"], rel=1e-12)
    rho = [math.log(ft["lam"])] + [math.log(r["lambda"]) for r in records]
    for k, r in enumerate(records):
        assert rho[k + 1] - rho[k] == pytest.approx(RATE * (r["cost"] - TARGET) / TARGET,
                                                    abs=1e-9), k
    assert ft["budget"]["target"] == TARGET and ft["budget"]["measure"] == "groups"
    assert TARGET - 1.0 / n_groups() - 1e-12 <= ft["budget"]["cost"]["groups"] <= TARGET
    assert first["target"] == TARGET  # fine-tuning holds the final target from its first step
    # a new target for the fine-tuning
    out2 = tmp_path / "ft2"
    assert cli("finetune", run, "--out", out2, "finetune.steps=4", "finetune.lam=source",
               "sparsity.target=0.4") == 0
    assert read_json(out2 / "results.json")["budget"]["target"] == 0.4


@pytest.mark.parametrize("bad,match", [
    (["sparsity.target=0", "sparsity.lam=1e-3"], "sparsity.target"),
    (["sparsity.target=1.5", "sparsity.lam=1e-3"], "sparsity.target"),
    (["sparsity.target=0.5", "sparsity.lam=1e-3", "sparsity.target_measure=flops"],
     "sparsity.target_measure"),
    (["sparsity.target=0.5", "sparsity.lam=1e-3", "sparsity.target_ramp=2"], "sparsity.target_ramp"),
    (["sparsity.target=0.5", "sparsity.lam=1e-3", "sparsity.dual_rate=0"], "sparsity.dual_rate"),
])
def test_bad_train_budget_configs_are_refused(bad, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, bad)


@pytest.mark.parametrize("command,extra", [
    ("meta-train", []),
    ("sweep-lambda", ["--grid", "1e-3"]),
    ("compare", ["compare.methods=[mtl]"]),
    ("demo", ["compare.methods=[mtl]"]),
])
def test_commands_without_train_budget_refuse_it_before_writing(tmp_path, capsys, command, extra):
    out = tmp_path / "run"  # sparsity.lam = 0: the refusal comes before train's own check
    assert cli(command, "--out", out, *MICRO, "sparsity.target=0.5", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sparsity.target" in err[0] and command in err[0], err
    assert not out.exists()


def test_fine_tuning_a_run_without_a_train_budget_refuses_one(tmp_path, capsys):
    src = tmp_path / "src"
    assert cli("train", "--out", src, *MICRO, "sparsity.lam=1e-3") == 0
    capsys.readouterr()
    out = tmp_path / "ft"
    assert cli("finetune", src, "--out", out, "sparsity.target=0.5") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sparsity.target" in err[0] and "fixed_lambda" in err[0], err
    assert not out.exists()


def test_a_target_out_of_reach_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli("train", "--out", out, *MICRO, "sparsity.lam=1e-3", "sparsity.target=0.001") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out of reach" in err[0] and "use sparsity.target >=" in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("lam", ["0", "20"])
def test_a_multiplier_without_a_usable_start_is_refused_before_anything_is_written(
        tmp_path, capsys, lam):
    out = tmp_path / "run"
    assert cli("train", "--out", out, *MICRO, f"sparsity.lam={lam}", "sparsity.target=0.5") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sparsity.lam" in err[0] and "sparsity.target" in err[0], err
    assert not out.exists()


def test_fine_tuning_without_the_prox_keeps_the_zeros_and_refuses_a_new_target(budget_run,
                                                                               tmp_path, capsys):
    run, _, res = budget_run
    out = tmp_path / "ft0"
    assert cli("finetune", run, "--out", out, "finetune.steps=2", "finetune.val_every=2") == 0
    ft = read_json(out / "results.json")
    assert "budget" not in ft  # finetune.lam = 0: no multiplier, the source's zeros kept
    assert ft["sparsity"]["num_zero_groups"] == res["sparsity"]["num_zero_groups"]
    capsys.readouterr()
    for extra in (["sparsity.target=0.4"],
                  ["sparsity.target=0.4", "finetune.lam=source", "finetune.freeze_backbone=true"]):
        bad = tmp_path / "ft_bad"
        assert cli("finetune", run, "--out", bad, "finetune.steps=2", *extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "sparsity.target" in err[0] and "finetune.lam" in err[0], err
        assert not bad.exists()
    # a budget fine-tuning is itself a budget-mode source: fine-tuning it again keeps the budget
    first, again = tmp_path / "ft_first", tmp_path / "ft_again"
    for src, out_dir in ((run, first), (first, again)):
        assert cli("finetune", src, "--out", out_dir, "finetune.steps=2", "finetune.val_every=2",
                   "finetune.lam=source") == 0
    got = read_json(again / "results.json")
    assert got["budget"]["target"] == TARGET and got["source_kind"] == "finetune"
    # a fine-tuning that held no budget carries its source's sparsity.target as a record: it
    # can be fine-tuned again without removing it (and gets no budget)
    plain = tmp_path / "ft_plain"
    assert cli("finetune", out, "--out", plain, "finetune.steps=2", "finetune.val_every=2") == 0
    assert "budget" not in read_json(plain / "results.json")
    assert got["lam"] == pytest.approx(read_json(first / "results.json")["budget"]["lambda_final"],
                                       rel=1e-12)


def test_resuming_with_or_without_a_budget_other_than_at_the_start_is_refused(budget_run,
                                                                              tmp_path, capsys):
    import shutil

    run = tmp_path / "budget"
    shutil.copytree(budget_run[0], run)
    fixed, dense = tmp_path / "fixed", tmp_path / "dense"
    for d, lam in ((fixed, "1e-3"), (dense, "0")):
        assert cli("train", "--out", d, *MICRO, f"sparsity.lam={lam}", "train.max_steps=2",
                   "train.val_every=2") == 0
    capsys.readouterr()
    # the refusal comes before any state is loaded (a dense run's optimizer has other groups)
    for d, extra in ((fixed, ["sparsity.target=0.5", "train.max_steps=4"]),
                     (dense, ["sparsity.lam=1e-3", "sparsity.target=0.5", "train.max_steps=4"]),
                     (run, ["sparsity.target=null", f"train.max_steps={STEPS + 2}"])):
        assert cli("train", "--resume", d, *extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--resume" in err[0] and "budget" in err[0], err
        assert "(sparsity.target)" in err[0], err  # the key of the budget, not meta.target


def test_settings_for_sweeps_and_comparisons_carry_no_budget():
    cfg = load_config(None, [*MICRO, "sparsity.lam=1e-3", "sparsity.target=0.5",
                             "sparsity.target_ramp=0.5", "sparsity.dual_rate=0.2"])
    assert settings_from_config(cfg).budget is None  # only `train` turns it on
    s = train_settings(cfg)
    assert (s.budget, s.dual_rate, s.target_ramp_steps, s.kind) == (
        ("macs", 0.5), 0.2, 2, TRAIN_BUDGET)  # ramp: half of MICRO's 4 steps


LAND = 0.5  # sparsity.target_land: land at step 20 of 40, then train on within the budget


@pytest.fixture(scope="module")
def early_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("train_budget_early") / "run"
    assert cli("train", "--out", run, *MICRO, *BUDGET, f"sparsity.target_land={LAND}",
               "train.val_every=10") == 0
    records = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"]
    vals = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "val"]
    return run, records, vals, read_json(run / "results.json")


def test_an_early_landing_freezes_the_multiplier_and_the_zero_set(early_run):
    _, records, vals, res = early_run
    land = round(LAND * STEPS)
    assert res["budget"]["landing_step"] == land and res["budget"]["landing"] is not None
    before, after = records[:land], records[land - 1:]
    rho = [math.log(LAM0)] + [math.log(r["lambda"]) for r in before]
    for k, r in enumerate(before):  # dual ascent up to the landing step
        assert rho[k + 1] - rho[k] == pytest.approx(RATE * (r["cost"] - r["target"]) / r["target"],
                                                    abs=1e-9), k
    assert {r["lambda"] for r in after} == {before[-1]["lambda"]}  # then frozen
    cost = [r["cost"] for r in after]
    assert TARGET - 1.0 / n_groups() - 1e-12 <= cost[0] <= TARGET  # landed on the target
    assert cost == [cost[0]] * len(cost)  # the zero set is fixed from the landing on
    assert res["budget"]["lambda_final"] == pytest.approx(before[-1]["lambda"], rel=1e-12)
    assert res["budget"]["cost"]["groups"] == pytest.approx(cost[-1], abs=1e-12)
    # the best validated checkpoint from the landing on is kept, none before it
    scores = {v["step"]: v["score"] for v in vals}
    assert sorted(scores) == [10, 20, 30, 40]
    assert res["best_step"] == min((s for s in scores if s >= land), key=scores.get)


def test_an_early_landing_resumed_after_it_is_bit_identical_and_keeps_its_zeros(early_run,
                                                                                tmp_path):
    run, _, _, res = early_run
    cfg = load_config(None, [*MICRO, *BUDGET, f"sparsity.target_land={LAND}",
                             "train.val_every=10"])
    land = round(LAND * STEPS)
    zeros = []
    for resume, stop in ((False, land), (True, land + 3), (True, None)):
        tr = Trainer(cfg, tmp_path / "r", train_settings(cfg), resume=resume)
        tr.setup()
        got = tr.train(stop_after=stop)
        zeros.append({k: v.clone() for k, v in
                      zero_group_masks(tr.model, layers=channel_groups(tr.model)).items()})
        tr.cleanup()
    assert got["budget"] == res["budget"] and got["best_step"] == res["best_step"]
    a, b = load_run_checkpoint(run, "last"), load_run_checkpoint(tmp_path / "r", "last")
    assert same_tensors(a.model, b.model) == []
    landed, final = zeros[0], zeros[-1]
    assert any(m.any() for m in landed.values())
    assert all(bool((final[k] == m).all()) for k, m in landed.items())  # the landed zero set


@pytest.mark.parametrize("land, kept", [(1.0, 40), (LAND, 30)])
def test_budget_mode_keeps_the_best_validation_from_its_landing_on(tmp_path, monkeypatch,
                                                                    land, kept):
    """Validation scores (lower is better) of steps 10, 20, 30, 40 set to -10, -1, -3, -2:
    the best, step 10, is before the landing (step 20, or the last) and is not kept."""
    import metasparsity.recipes.train as train_mod

    scores = iter([-10.0, -1.0, -3.0, -2.0])
    monkeypatch.setattr(train_mod, "selection_score", lambda *a, **k: next(scores))
    run = tmp_path / "run"
    assert cli("train", "--out", run, *MICRO, *BUDGET, f"sparsity.target_land={land}",
               "train.val_every=10") == 0
    assert read_json(run / "results.json")["best_step"] == kept


def test_resuming_with_another_landing_or_multiplier_is_refused_unless_it_is_ahead(
        tmp_path, capsys):
    base = [*MICRO, *BUDGET, f"sparsity.target_land={LAND}", "train.val_every=10"]
    landed, early = tmp_path / "landed", tmp_path / "early"
    for run, stop in ((landed, round(LAND * STEPS) + 3), (early, 7)):
        cfg = load_config(None, base)
        tr = Trainer(cfg, run, train_settings(cfg))
        tr.setup()
        assert tr.train(stop_after=stop) is None
        tr.cleanup()
    capsys.readouterr()
    for run, extra, match in (
            (landed, ["sparsity.target_land=0.75"], "landed on its budget at step 20"),
            (landed, ["sparsity.target_land=1.0"], "landed on its budget at step 20"),
            (early, ["sparsity.target_land=0.1"], "this config lands at step 4"),
            (early, ["sparsity.target_measure=macs", "sparsity.multiplier_on=removable"],
             "sparsity.multiplier_on=all")):
        assert cli("train", "--resume", run, *extra) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--resume" in err[0] and match in err[0], err
    # a landing still ahead may move: the run lands at the new step
    assert cli("train", "--resume", early, "sparsity.target_land=0.75") == 0
    assert read_json(early / "results.json")["budget"]["landing_step"] == 30


@pytest.mark.parametrize("bad", ["0", "1.5", "-0.1"])
def test_a_landing_share_outside_zero_to_one_is_refused(bad):
    with pytest.raises(ConfigError, match="sparsity.target_land"):
        load_config(None, ["sparsity.target=0.5", "sparsity.lam=1e-3",
                           f"sparsity.target_land={bad}"])


def test_a_multiplier_on_the_removable_layers_leaves_the_others_at_sparsity_lam(tmp_path):
    import torch

    from metasparsity.sparsity import removable_layers

    run = tmp_path / "run"
    extra = ["sparsity.target_measure=macs", "sparsity.multiplier_on=removable"]
    assert cli("train", "--out", run, *MICRO, *BUDGET, *extra) == 0
    records = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"]
    res = read_json(run / "results.json")
    cfg = load_config(None, MICRO)
    model = build_model(cfg, cfg.data.seen_tasks)
    x = torch.randn(1, 3, cfg.data.image_size, cfg.data.image_size)
    on = [g.group_weight > 0 for g in removable_layers(model, x, channel_groups(model))]
    assert res["budget"]["multiplier_on"] == on and 0 < sum(on) < len(on)
    lam = [[LAM0] * len(on)] + [r["lambda"] for r in records]
    for k, r in enumerate(records):
        step = RATE * (r["cost"] - r["target"]) / r["target"]
        for i, o in enumerate(on):
            if o:  # the multiplier: dual ascent in log space
                assert math.log(lam[k + 1][i]) - math.log(lam[k][i]) == pytest.approx(
                    step, abs=1e-9), (k, i)
            else:  # held at sparsity.lam
                assert lam[k + 1][i] == LAM0, (k, i)
    assert max(v for v, o in zip(lam[-1], on) if o) != LAM0
    assert TARGET - 0.05 <= res["budget"]["cost"]["macs"] <= TARGET
    # fine-tuning it at its multiplier keeps the multiplier where it was
    out = tmp_path / "ft"
    assert cli("finetune", run, "--out", out, "finetune.steps=3", "finetune.lam=source") == 0
    ft = read_json(out / "results.json")
    steps = [r["lambda"] for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "train"]
    assert ft["budget"]["multiplier_on"] == on and ft["lam"] == lam[-1]
    assert all(v[i] == LAM0 for v in steps for i, o in enumerate(on) if not o)
    assert all(steps[-1][i] != lam[-1][i] for i, o in enumerate(on) if o)


def test_a_target_the_moved_layers_alone_cannot_reach_is_refused(tmp_path, capsys):
    """With ``multiplier_on=removable`` the landing cuts only the removable layers: a target
    below what they reach alone (though above the floor of every layer) is refused up front."""
    import torch

    from metasparsity.sparsity import BackboneCost, removable_layers

    cfg = load_config(None, MICRO)
    model = build_model(cfg, cfg.data.seen_tasks).eval()
    x = torch.randn(1, 3, cfg.data.image_size, cfg.data.image_size)
    layers = channel_groups(model)
    on = [g.group_weight > 0 for g in removable_layers(model, x, layers)]
    cost = BackboneCost(model, x, layers)
    low, moved = cost.floor(model, "macs"), cost.floor(model, "macs", on)
    assert low < moved < 1.0
    with pytest.raises(ValueError, match="flags"):
        cost.floor(model, "macs", on[:-1])
    target = (low + moved) / 2
    base = [*MICRO, f"sparsity.target={target:.4f}", "sparsity.target_measure=macs",
            "sparsity.lam=1e-3"]
    run = tmp_path / "run"
    assert cli("train", "--out", run, *base, "sparsity.multiplier_on=removable") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sparsity.target" in err[0] and "out of reach" in err[0]
    assert f"{moved:.3f}" in err[0] and "multiplier_on=removable" in err[0]
    assert "sparsity.multiplier_on=all" in err[0]
    least = float(err[0].split(">= ")[1].split(",")[0])
    assert moved <= least < moved + 0.0011  # the suggested target is itself within reach
    assert not run.exists()
    # compare refuses it too, before any method trains
    out = tmp_path / "cmp"
    assert cli("compare", "--out", out, *MICRO, "compare.methods=[mtl,train_budget]",
               f"meta.target={target:.4f}", "sparsity.lam=1e-3",
               "sparsity.multiplier_on=removable") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "meta.target" in err[0] and "out of reach of the multiplier" in err[0]
    assert not out.exists()
    # the multiplier on every layer can reach it: accepted (one step suffices to show it)
    assert cli("train", "--out", run, *base, "train.max_steps=1", "train.val_every=1") == 0


def test_the_safety_net_cuts_only_the_layers_it_is_given():
    import torch

    from metasparsity.sparsity import BackboneCost, group_norms, project_to_budget

    cfg = load_config(None, MICRO)
    model = build_model(cfg, cfg.data.seen_tasks).eval()
    x = torch.randn(1, 3, cfg.data.image_size, cfg.data.image_size)
    layers = channel_groups(model)
    cost = BackboneCost(model, x, layers)
    params = dict(model.named_parameters())
    scores = {g.name: group_norms(params[g.name].detach()) for g in layers}
    only = [i % 2 == 0 for i in range(len(layers))]
    before = {g.name: params[g.name].detach().clone() for g in layers}
    k = project_to_budget(model, cost, "groups", 0.9, scores, only)
    assert k > 0 and cost.fraction(model, "groups") <= 0.9
    for i, g in enumerate(layers):
        zeroed = int((group_norms(params[g.name].detach()) == 0).sum())
        if only[i]:
            continue
        assert zeroed == 0 and torch.equal(params[g.name], before[g.name]), g.name
