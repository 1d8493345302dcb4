"""``sparsity.penalize: removable``: the penalty only on groups whose zero removes a channel."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from tests.recipes.micro import MICRO, cli
from tests.sparsity.test_budget import micro_model

from metasparsity.config import ConfigError, load_config
from metasparsity.sparsity import (
    BackboneCost,
    ProxAdam,
    channel_groups,
    group_gradient_ratios,
    penalised_layers,
    project_to_budget,
    prox_param_groups,
    removable_layers,
)
from metasparsity.utils.io import read_json


def test_removable_layers_are_exactly_those_where_one_zero_group_lowers_the_cost():
    """The defining property, checked against the pruned network's own cost: zeroing a single
    group of a penalised layer removes a channel (the MACs fall); of an unpenalised one, nothing."""
    model, x = micro_model()
    layers = channel_groups(model)
    marked = removable_layers(model, x, layers)
    assert [g.name for g in marked] == [g.name for g in layers]  # order kept: per-layer λ's index
    cost = BackboneCost(model, x, layers)
    dense = cost.fraction(model, "macs")
    params = dict(model.named_parameters())
    for g, m in zip(layers, marked):
        assert m.group_weight in (0.0, g.group_weight), g.name
        saved = params[g.name].detach().clone()
        with torch.no_grad():
            params[g.name][:, 1] = 0.0
        lowered = cost.fraction(model, "macs") < dense
        with torch.no_grad():
            params[g.name].copy_(saved)
        assert lowered == (m.group_weight > 0), g.name
    # in a ResNet: conv2 of each block reads conv1 alone; conv1, the downsample and the stem share
    kept = {g.module_name.removeprefix("backbone.") for g in marked if g.group_weight > 0}
    assert kept == {f"layer{s}.{b}.conv2" for s in range(1, 5) for b in range(2)}


def test_all_leaves_the_layers_as_they_are_and_an_unknown_choice_is_refused():
    model, x = micro_model()
    layers = channel_groups(model)
    assert penalised_layers(model, x, layers, "all") == layers
    with pytest.raises(ValueError, match="penalize"):
        penalised_layers(model, x, layers, "some")
    with pytest.raises(ConfigError, match="sparsity.penalize"):
        load_config(None, ["sparsity.penalize=some"])


def marked_stepped_model() -> tuple:
    """The micro model (float64) with ``removable`` layers and their ProxAdam, after three plain
    Adam steps on random gradients (so that ``D`` differs between elements)."""
    model, x = micro_model()
    model.double()
    marked = removable_layers(model, x.double(), channel_groups(model))
    opt = ProxAdam(prox_param_groups(model, marked), lr=1e-2, num_layers=len(marked))
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
        opt.step(lam=None)
    return model, opt, marked


def test_unpenalised_layers_take_no_prox_and_have_no_threshold():
    model, opt, marked = marked_stepped_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    thr = opt.zero_thresholds(model, marked, 1.0)
    scores = opt.prox_scores(model, marked)
    opt.apply_prox(1e3)  # far above every threshold: every penalised group goes
    params = dict(model.named_parameters())
    for g in marked:
        norms = params[g.name].flatten(2).norm(dim=(0, 2))
        if g.group_weight > 0:
            assert bool((norms == 0).all()), g.name
            assert bool(torch.isfinite(thr[g.name]).all() and torch.isfinite(scores[g.name]).all())
        else:
            assert torch.equal(params[g.name], before[g.name]), g.name
            assert bool((thr[g.name] == math.inf).all() and (scores[g.name] == math.inf).all())
    grads = {g.name: torch.ones(g.shape) for g in marked}
    ratios = group_gradient_ratios(grads, marked)  # the auto λ0's sample: penalised groups only
    assert ratios.numel() == sum(g.num_groups for g in marked if g.group_weight > 0)
    assert bool(torch.isfinite(ratios).all())
    assert group_gradient_ratios(grads, [replace(g, group_weight=0.0) for g in marked]).numel() == 0


def test_a_resumed_optimizer_takes_the_group_weights_of_its_layers_now():
    """``load_state_dict`` restores the saved ``w_g`` of each prox group; ``set_group_weights``
    (what a resumed run calls) puts back those of its current layers."""
    model, opt, marked = marked_stepped_model()
    saved = opt.state_dict()
    every = channel_groups(model)
    fresh = ProxAdam(prox_param_groups(model, every), lr=1e-2, num_layers=len(every))
    fresh.load_state_dict(saved)
    weights = [grp["group_weight"] for grp in fresh.param_groups if "prox_layer" in grp]
    assert weights == [g.group_weight for g in marked]  # the saved run's, not `every`'s
    fresh.set_group_weights(every)
    weights = [grp["group_weight"] for grp in fresh.param_groups if "prox_layer" in grp]
    assert weights == [g.group_weight for g in every] and 0.0 not in weights


def test_the_safety_net_never_zeroes_an_unpenalised_group():
    """The budget's rounding net (``project_to_budget``) zeroes penalised groups only: with a
    target only unpenalised groups could meet, it leaves the model as it was."""
    model, opt, marked = marked_stepped_model()
    x = torch.zeros(1, 3, 32, 32, dtype=torch.float64)
    cost = BackboneCost(model, x, marked)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    floor = cost.floor(model, "groups")
    assert project_to_budget(model, cost, "groups", floor / 2, opt.prox_scores(model, marked)) == 0
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    k = project_to_budget(model, cost, "groups", (1 + floor) / 2, opt.prox_scores(model, marked))
    params = dict(model.named_parameters())
    assert k > 0 and cost.fraction(model, "groups") <= (1 + floor) / 2
    for g in marked:
        if g.group_weight == 0:
            assert torch.equal(params[g.name], before[g.name]), g.name


def test_the_floor_counts_only_the_groups_the_penalty_can_zero():
    model, x = micro_model()
    layers = channel_groups(model)
    all_floor = BackboneCost(model, x, layers).floor(model, "groups")
    marked = removable_layers(model, x, layers)
    floor = BackboneCost(model, x, marked).floor(model, "groups")
    unpenalised = sum(g.num_groups for g in marked if g.group_weight == 0)
    assert all_floor == 0.0
    assert floor == pytest.approx(unpenalised / sum(g.num_groups for g in layers), abs=1e-12)


@pytest.mark.parametrize("command,extra", [
    ("train", ["sparsity.lam=0.05", "train.max_steps=6"]),
    ("meta-train", ["meta.target=0.7", "meta.target_measure=macs", "meta.steps=8",
                    "meta.lambda_lr=0.3", "meta.val_every=8"]),
])
def test_runs_zero_groups_only_where_a_channel_goes(tmp_path, command, extra):
    run = tmp_path / "run"
    assert cli(command, "--out", run, *MICRO, "sparsity.penalize=removable", *extra) == 0
    res = read_json(run / "results.json")
    per_layer = {r["name"]: r["zero_groups"] for r in res["sparsity"]["per_layer"]}
    model, x = micro_model()
    marked = {g.name: g.group_weight for g in removable_layers(model, x, channel_groups(model))}
    assert sum(per_layer.values()) > 0
    assert all(per_layer[n] == 0 for n, w in marked.items() if w == 0), per_layer
    if command == "meta-train":
        assert res["budget"]["cost"]["macs"] <= 0.7
        # fine-tuning at the multiplier reads sparsity.penalize from the source's config
        ft = tmp_path / "ft"
        assert cli("finetune", str(run), "--out", ft, "finetune.lam=source", "finetune.steps=8",
                   "finetune.keep_zeros=none") == 0
        per_layer = {r["name"]: r["zero_groups"]
                     for r in read_json(ft / "results.json")["sparsity"]["per_layer"]}
        assert sum(per_layer.values()) > 0
        assert all(per_layer[n] == 0 for n, w in marked.items() if w == 0), per_layer


def test_a_target_only_the_unpenalised_groups_block_is_refused_before_anything_runs(tmp_path,
                                                                                    capsys):
    """30 % of the groups is reachable when every group can go, not when only own convs' can
    (about half of the micro model's groups): compare and meta-train both say so, exit 2."""
    from metasparsity.recipes.compare import check_compare
    from metasparsity.utils.errors import UserError

    target = [*MICRO, "meta.target=0.3", "meta.target_measure=groups",
              "compare.methods=[meta_sparsity]", "train.max_steps=40"]
    check_compare(load_config(None, target))
    with pytest.raises(UserError, match="meta.target: 0.3 is out of reach"):
        check_compare(load_config(None, [*target, "sparsity.penalize=removable"]))
    out = tmp_path / "run"
    assert cli("meta-train", "--out", out, *target, "sparsity.penalize=removable") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "meta.target: 0.3 is out of reach" in err[0]
    assert not out.exists()
