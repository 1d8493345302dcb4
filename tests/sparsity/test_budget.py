"""Budget mode (DESIGN §2.4): the backbone's cost read off the current zeros equals the cost of the
model that pruning really gives; the dual step on λ; meta-training reaches and holds its target;
the configuration checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tests.recipes.micro import MICRO, cli
from torch import nn

from metasparsity.builders import build_model
from metasparsity.config import ConfigError, load_config
from metasparsity.eval.cost import count_macs
from metasparsity.meta import LearnedLambda
from metasparsity.meta.lam import ramped_target
from metasparsity.recipes.meta_train import MetaTrainer
from metasparsity.sparsity import (
    BackboneCost,
    ProxAdam,
    channel_groups,
    group_norms,
    land_on_budget,
    land_prox,
    project_to_budget,
    prox_param_groups,
    prune_zero_channels,
    removable_layers,
    sparsity_stats,
)
from metasparsity.utils.errors import UserError
from metasparsity.utils.io import read_json, read_jsonl

# --------------------------------------------------------------------- cost from zeros == pruned


def micro_model(*extra: str) -> tuple[nn.Module, torch.Tensor]:
    cfg = load_config(None, [*MICRO, *extra])
    torch.manual_seed(0)
    model = build_model(cfg, cfg.data.seen_tasks).eval()
    return model, torch.randn(1, 3, cfg.data.image_size, cfg.data.image_size)


def zero_random_groups(model: nn.Module, fraction: float, seed: int) -> None:
    """Zero a random ``fraction`` of every backbone conv's input-channel groups."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.backbone.modules():
            if isinstance(m, nn.Conv2d):
                m.weight[:, torch.rand(m.in_channels, generator=g) < fraction] = 0.0


def zero_one_layer(model: nn.Module, name: str) -> None:
    """Zero every input-channel group of backbone conv ``name`` (a whole feature map unread)."""
    with torch.no_grad():
        dict(model.backbone.named_modules())[name].weight.zero_()


def real_cost(model: nn.Module, x: torch.Tensor) -> tuple[int, int, nn.Module]:
    """MACs and conv parameters of the backbone of the really pruned model."""
    pruned = prune_zero_channels(model, x)
    macs = count_macs(pruned.backbone, x)
    params = sum(m.weight.numel() for m in pruned.backbone.modules() if isinstance(m, nn.Conv2d))
    return macs, params, pruned


@pytest.mark.parametrize("pattern", ["dense", "random_30", "random_70", "one_layer",
                                     "one_layer_plus_random"])
def test_cost_from_zeros_equals_the_pruned_models_cost(pattern):
    model, x = micro_model()
    layers = channel_groups(model)
    cost = BackboneCost(model, x, layers)
    dense_macs = count_macs(model.backbone, x)
    dense_params = sum(m.weight.numel() for m in model.backbone.modules()
                       if isinstance(m, nn.Conv2d))
    assert cost.count(model, "macs") == dense_macs  # nothing zero yet: the dense counts
    assert cost.count(model, "params") == dense_params
    if pattern == "random_30":
        zero_random_groups(model, 0.3, seed=1)
    elif pattern == "random_70":
        zero_random_groups(model, 0.7, seed=2)
    elif pattern == "one_layer":
        zero_one_layer(model, "layer2.0.conv2")  # every group: the group keeps one channel
    elif pattern == "one_layer_plus_random":
        zero_random_groups(model, 0.5, seed=3)
        zero_one_layer(model, "layer1.1.conv2")
    macs, params, pruned = real_cost(model, x)
    assert cost.count(model, "macs") == macs
    assert cost.count(model, "params") == params
    assert cost.fraction(model, "macs") == pytest.approx(macs / dense_macs, abs=1e-12)
    assert cost.fraction(model, "params") == pytest.approx(params / dense_params, abs=1e-12)
    st = sparsity_stats(model, layers=layers)
    assert cost.fraction(model, "groups") == pytest.approx(1.0 - st.group_sparsity, abs=1e-12)
    assert cost.summary(model) == {m: cost.fraction(model, m) for m in ("macs", "params", "groups")}
    if pattern == "dense":
        assert cost.summary(model) == {"macs": 1.0, "params": 1.0, "groups": 1.0}
        assert macs == dense_macs
    else:  # a meaningful comparison: pruning really removed something
        assert macs < dense_macs and params < dense_params
        assert st.group_sparsity > 0
    if pattern == "random_70":
        assert cost.fraction(model, "macs") < 0.7
    if pattern == "one_layer":
        conv = dict(pruned.backbone.named_modules())["layer2.0.conv2"]
        assert conv.in_channels == 1  # all would go; one channel stays


def test_cost_of_a_model_with_a_different_depth_and_stride():
    """ResNet-50 (bottlenecks, strided downsamples) at output stride 16."""
    model, x = micro_model("model.depth=50", "model.output_stride=16")
    layers = channel_groups(model)
    cost = BackboneCost(model, x, layers)
    zero_random_groups(model, 0.5, seed=4)
    macs, params, _ = real_cost(model, x)
    assert cost.count(model, "macs") == macs
    assert cost.count(model, "params") == params


def test_fraction_refuses_an_unknown_measure():
    model, x = micro_model()
    with pytest.raises(ValueError, match="unknown cost measure"):
        BackboneCost(model, x, channel_groups(model)).fraction(model, "flops")


# --------------------------------------------------------------------- the last step's landing


def stepped_micro_model(scale: float = 1.0, dtype: torch.dtype = torch.float64
                        ) -> tuple[nn.Module, torch.Tensor, ProxAdam, list]:
    """The micro model (float64 by default) after two Adam steps without prox on random
    gradients (so that ``D`` differs between elements), then one more plain step: the weights
    the last outer step hands to the landing."""
    model, x = micro_model()
    model.to(dtype)
    layers = channel_groups(model)
    opt = ProxAdam(prox_param_groups(model, layers), lr=1e-2, num_layers=len(layers))
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        for p in model.parameters():
            p.grad = scale * torch.randn(p.shape, generator=g, dtype=p.dtype)
        opt.step(lam=None)
    return model, x.to(dtype), opt, layers


def test_step_is_the_adam_step_then_apply_prox():
    a, _, opt_a, layers = stepped_micro_model()
    b, _, opt_b, _ = stepped_micro_model()
    lam = torch.linspace(1e-3, 5e-2, len(layers), dtype=torch.float64)
    for p in a.parameters():
        p.grad = torch.ones_like(p)
    for p in b.parameters():
        p.grad = torch.ones_like(p)
    opt_a.step(lam=lam)
    opt_b.step(lam=None)
    opt_b.apply_prox(lam)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("lam", [0.02, "layer"])
def test_zero_thresholds_say_from_which_multiple_of_lambda_the_prox_zeroes_a_group(lam):
    model, _, opt, layers = stepped_micro_model()
    if lam == "layer":
        lam = torch.logspace(-3, -1, len(layers), dtype=torch.float64)
    thr = opt.zero_thresholds(model, layers, lam)
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = dict(model.named_parameters())
    hits = 0
    for q in (0.1, 0.5, 0.9):  # several cut points: each group's fate on either side of it
        s = float(torch.quantile(torch.cat(list(thr.values())), q, interpolation="lower"))
        for factor, expect in ((1 - 1e-9, False), (1 + 1e-9, True)):
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(saved[n])
            opt.apply_prox(lam * (s * factor))
            for g in layers:
                zero = params[g.name].flatten(2).norm(dim=(0, 2)) == 0
                at = (thr[g.name] - s).abs() <= 1e-12 * s
                # a group whose threshold is the cut point: alive just below it, zero just above
                assert bool((zero[at] == expect).all()), g.name
                hits += int(at.sum())
                assert bool((zero[thr[g.name] < s * (1 - 1e-6)]).all())
                assert not bool((zero[thr[g.name] > s * (1 + 1e-6)]).any())
    assert hits == 6  # each cut point is one group's threshold, seen from both sides


@pytest.mark.parametrize("measure", ["macs", "params", "groups"])
@pytest.mark.parametrize("side", ["few", "all"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_landing_meets_the_budget_at_the_smallest_multiplier_from_either_side(
        measure, side, dtype):
    """A λ that zeroes few groups (the landing takes s > 1: more) and one that zeroes them all
    (s < 1: groups the prox at λ would zero come back): either way the prox at s·λ zeroes
    exactly the groups whose threshold is at most s (float32 included: the last one needed
    too), is within the target, and just below the last of those thresholds it is not."""
    target = 0.5
    model, x, opt, layers = stepped_micro_model(dtype=dtype)
    cost = BackboneCost(model, x, layers)
    unit = torch.cat(list(opt.zero_thresholds(model, layers, 1.0).values()))  # λ of each group
    lam = float(torch.quantile(unit.double(), 0.05)) if side == "few" else 1.01 * float(unit.max())
    thr = opt.zero_thresholds(model, layers, lam)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    s = land_on_budget(model, cost, measure, target, thr)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # untouched

    def cost_at(mult: float) -> float:
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(before[n])
        opt.apply_prox(lam * mult)
        return cost.fraction(model, measure)

    at_lam = cost_at(1.0)
    assert cost_at(s) <= target
    params = dict(model.named_parameters())
    for g in layers:  # the zero set is exactly the groups at or under s
        zero = params[g.name].flatten(2).norm(dim=(0, 2)) == 0
        assert torch.equal(zero, thr[g.name] <= s), g.name
    last = max(float(t[t <= s].max()) for t in thr.values() if bool((t <= s).any()))
    assert cost_at(last * (1 - 1e-6)) > target  # the last group needed: without it, over budget
    if side == "few":
        assert at_lam > target and s > 1  # more zeros than λ gives
    else:
        assert at_lam < target and s < 1  # fewer: the landing gives groups back


@pytest.mark.parametrize("measure", ["macs", "params"])
def test_a_landing_that_scales_some_layers_leaves_the_others_at_their_prox_at_lambda(measure):
    """``land_prox(..., scaled=mask)``: the layers outside the mask get the prox at λ alone
    (bit for bit as ``apply_prox(λ)``); those inside land as a landing of their own would,
    their zero set being their groups with a threshold at most ``s``; the budget holds."""
    target = 0.5
    model, x, opt, layers = stepped_micro_model()
    cost = BackboneCost(model, x, layers)
    on = torch.tensor([g.group_weight > 0 for g in removable_layers(model, x, layers)])
    assert 0 < int(on.sum()) < len(layers)
    unit = torch.cat(list(opt.zero_thresholds(model, layers, 1.0).values()))
    lam = torch.full((len(layers),), float(torch.quantile(unit, 0.05)), dtype=torch.float64)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    thr = opt.zero_thresholds(model, layers, lam)
    landing, _ = land_prox(model, opt, cost, measure, target, lam, on)
    got = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert cost.fraction(model, measure) <= target and landing["scale"] > 1
    # the λ each layer's prox took: s·λ where scaled, λ elsewhere
    assert landing["lambda"] == pytest.approx(
        [v * (landing["scale"] if o else 1.0) for v, o in zip(lam.tolist(), on.tolist())],
        rel=1e-12)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(before[n])
    opt.apply_prox(lam)  # the reference for the layers held at λ
    params = dict(model.named_parameters())
    for g, scaled in zip(layers, on.tolist()):
        if scaled:
            zero = got[g.name].flatten(2).norm(dim=(0, 2)) == 0
            assert torch.equal(zero, thr[g.name] <= landing["scale"]), g.name
        else:
            assert torch.equal(got[g.name], params[g.name]), g.name


def test_the_landing_is_zero_when_the_weights_already_fit_and_inf_out_of_reach():
    model, x, opt, layers = stepped_micro_model()
    cost = BackboneCost(model, x, layers)
    thr = opt.zero_thresholds(model, layers, 0.05)
    assert land_on_budget(model, cost, "macs", 1.0, thr) == 0.0
    assert land_on_budget(model, cost, "macs", 1e-6, thr) == math.inf


def test_the_landing_stops_below_the_next_threshold_when_it_is_a_hair_above_the_last():
    """Thresholds 1.0 (the one group needed) and 1.00001 (the next): a hair above the last
    (``last·(1 + 1e-4)``) would pass the next one too, so the landing takes the midpoint."""
    model, x = micro_model()
    layers = channel_groups(model)
    cost = BackboneCost(model, x, layers)
    thr = {g.name: torch.full((g.num_groups,), math.inf, dtype=torch.float64) for g in layers}
    first, second = layers[3].name, layers[5].name
    thr[first][0], thr[second][1] = 1.0, 1.00001
    params = dict(model.named_parameters())
    saved = params[first].detach().clone()
    with torch.no_grad():
        params[first][:, 0] = 0.0
    target = cost.fraction(model, "groups")  # exactly the cost with the first group zero
    with torch.no_grad():
        params[first].copy_(saved)
    s = land_on_budget(model, cost, "groups", target, thr)
    assert 1.0 <= s < 1.00001


def test_the_safety_net_zeroes_the_lowest_scoring_groups_of_its_layers_first():
    """``project_to_budget`` returns ``k`` and zeroes exactly the first ``k`` groups of an
    ascending sort of the allowed layers' scores: the groups a smaller λ would zero."""
    model, x = micro_model()
    layers = channel_groups(model)
    cost = BackboneCost(model, x, layers)
    g = torch.Generator().manual_seed(11)
    scores = {grp.name: torch.rand(grp.num_groups, generator=g, dtype=torch.float64)
              for grp in layers}
    only = [i % 2 == 1 for i in range(len(layers))]
    k = project_to_budget(model, cost, "groups", 0.85, scores, only)
    allowed = [grp for grp, o in zip(layers, only) if o]
    flat = np.concatenate([scores[grp.name].numpy() for grp in allowed])
    keys = [(grp.name, c) for grp in allowed for c in range(grp.num_groups)]
    want = {keys[i] for i in np.argsort(flat, kind="stable")[:k]}
    params = dict(model.named_parameters())
    got = {(grp.name, c) for grp in layers
           for c in (group_norms(params[grp.name].detach()) == 0).nonzero().flatten().tolist()}
    assert 0 < k < len(keys)
    assert got == want
    assert cost.fraction(model, "groups") <= 0.85


def test_prox_scores_are_the_group_norms_in_adams_metric():
    """``prox_scores`` = ``‖D_g ⊙ θ_g‖/w_g`` with ``D = sqrt(v/(1 − β2^t)) + ε`` from Adam's
    state (NumPy), and ``η·λ`` times the thresholds at ``λ``."""
    model, _, opt, layers = stepped_micro_model()
    scores = opt.prox_scores(model, layers)
    params = dict(model.named_parameters())
    group_of = {id(p): grp for grp in opt.param_groups for p in grp["params"]}
    for g in layers:
        w = params[g.name]
        grp, state = group_of[id(w)], opt.state[w]
        t = float(state["step"])
        v = state["exp_avg_sq"].numpy()
        d = np.sqrt(v / (1 - grp["betas"][1] ** t)) + grp["eps"]
        want = np.sqrt(((d * w.detach().numpy()) ** 2).sum(axis=(0, 2, 3))) / g.group_weight
        np.testing.assert_allclose(scores[g.name].numpy(), want, rtol=1e-10, err_msg=g.name)
    thr = opt.zero_thresholds(model, layers, 0.03)
    for g in layers:
        lr = group_of[id(params[g.name])]["lr"]
        torch.testing.assert_close(thr[g.name] * (lr * 0.03), scores[g.name], rtol=1e-12, atol=0)


@pytest.mark.parametrize("measure", ["macs", "params", "groups"])
def test_a_target_exactly_at_the_floor_is_accepted(measure):
    """The floor is reachable (every penalised group zero): a target equal to it passes
    ``check_target``; one just below it is refused."""
    model, x = micro_model()
    layers = removable_layers(model, x, channel_groups(model))
    cost = BackboneCost(model, x, layers)
    floor = cost.floor(model, measure)
    assert 0 < floor < 1
    cost.check_target(model, measure, floor)
    with pytest.raises(UserError, match="out of reach"):
        cost.check_target(model, measure, floor * (1 - 1e-9))


# --------------------------------------------------------------------- dual step on ρ = log λ


def test_dual_step_moves_a_global_lambda_in_log_space():
    lam = LearnedLambda(1e-2, lambda_min=1e-6, lambda_max=1.0, learnable=False)
    rho0 = float(lam.rho.detach())
    lam.dual_step_(0.5, 0.2)  # over budget: λ grows by exp(0.1)
    assert float(lam.rho.detach()) == pytest.approx(rho0 + 0.1, abs=1e-12)
    assert lam.value() == pytest.approx(1e-2 * math.exp(0.1), rel=1e-12)
    lam.dual_step_(-0.25, 0.2)  # under budget: λ shrinks
    assert float(lam.rho.detach()) == pytest.approx(rho0 + 0.05, abs=1e-12)
    lam.dual_step_(0.0, 0.2)  # on target: unchanged
    assert float(lam.rho.detach()) == pytest.approx(rho0 + 0.05, abs=1e-12)


def test_dual_step_keeps_the_per_layer_pattern():
    lam = LearnedLambda(1e-2, scope="layer", num_layers=4, lambda_min=1e-6, lambda_max=1.0)
    with torch.no_grad():
        lam.rho.copy_(torch.tensor([-5.0, -4.0, -3.5, -6.0], dtype=torch.float64))
    before = lam.rho.detach().clone()
    lam.dual_step_(-0.4, 0.5)
    assert torch.allclose(lam.rho.detach(), before - 0.2, atol=1e-12, rtol=0)
    diffs = lam.rho.detach() - lam.rho.detach()[0]
    assert torch.allclose(diffs, before - before[0], atol=1e-12, rtol=0)  # pattern preserved
    assert lam.rho.requires_grad  # still the meta-gradient's parameter


def test_dual_step_respects_the_clamp():
    lam = LearnedLambda(0.5, lambda_min=1e-3, lambda_max=1.0)
    lam.dual_step_(10.0, 1.0)
    assert float(lam.rho.detach()) == pytest.approx(0.0, abs=1e-12) and lam.value() == pytest.approx(1.0)
    lam.dual_step_(-100.0, 1.0)
    assert float(lam.rho.detach()) == pytest.approx(math.log(1e-3), abs=1e-12)
    assert lam.value() == pytest.approx(1e-3)
    # per layer: entries at a bound stay there, the others move by the same step
    lam = LearnedLambda(0.5, scope="layer", num_layers=2, lambda_min=1e-3, lambda_max=1.0)
    with torch.no_grad():
        lam.rho.copy_(torch.tensor([math.log(0.9), math.log(0.1)], dtype=torch.float64))
    lam.dual_step_(1.0, 0.5)
    assert lam.value() == pytest.approx([1.0, 0.1 * math.exp(0.5)], rel=1e-12)


def test_dual_step_is_a_no_op_on_a_disabled_lambda():
    lam = LearnedLambda.disabled()
    rho0 = lam.rho.detach().clone()
    lam.dual_step_(3.0, 1.0)
    assert torch.equal(lam.rho.detach(), rho0)
    assert lam.value() == 0.0


# --------------------------------------------------------------------- budget mode end to end

# Measured on the micro model (ResNet-18 at width 0.125, 32 px, meta-batches of 2 × 4 images;
# ~10 s on one thread).  From λ0 = 0.004 (about the model's auto λ0, 0.0038) the multiplier rises
# ~10× in 7 steps, the cost is first within 5 points of 0.5 at step 11, and λ settles
# between 0.025 and 0.034 over steps 31–60 with the cost in [0.41, 0.56] (mean 0.48).  Controls,
# same settings: without the dual step (λ fixed at λ0) the cost over steps 31–59 stays in
# [0.64, 0.90] (mean 0.78); with its sign flipped λ falls to λ_min and nothing is zeroed before
# the last step (cost 1.0).
TARGET, RATE, LAM0, STEPS = 0.5, 0.3, 0.004, 60
BUDGET = [f"meta.target={TARGET}", "meta.target_measure=groups", f"meta.lambda_lr={RATE}",
          f"meta.lambda_init={LAM0}", "meta.outer_lr=5e-3", f"meta.steps={STEPS}",
          f"meta.val_every={STEPS}"]


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("budget") / "run"
    assert cli("meta-train", "--out", run, *MICRO, *BUDGET) == 0
    records = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "meta"]
    return records, read_json(run / "results.json")


def test_budget_mode_reaches_the_target_and_holds_it(budget_run):
    records, res = budget_run
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    # the dual ascent's own trajectory: steps 1 … STEPS−1 (the last step lands on the budget
    # by its own prox, which says nothing about the multiplier)
    cost = [r["cost"] for r in records[:-1]]
    lam = [r["lambda"] for r in records]
    half = STEPS // 2
    # reached: from the dense start (cost 1.0) to within a few points of the target in the
    # first third (measured: step 11)
    assert cost[0] > 0.95
    reached = next((i for i, c in enumerate(cost) if c <= TARGET + 0.05), None)
    assert reached is not None and reached < STEPS // 3, cost
    # held: over the second half the cost stays in a band around the target, centred on it,
    # and it ends near it (measured: [0.41, 0.56], mean 0.48; last ten 0.47; step 59 0.55)
    late = cost[half:]
    assert all(TARGET - 0.12 <= c <= TARGET + 0.12 for c in late), late
    assert abs(sum(late) / len(late) - TARGET) <= 0.05, late
    assert abs(sum(late[-10:]) / 10 - TARGET) <= 0.07, late[-10:]
    assert abs(cost[-1] - TARGET) <= 0.08, cost[-1]
    # the multiplier had to grow ~10× to get there (measured), then stopped rising and settled
    # (measured: within 0.025–0.034 over the second half, 0.026 at the end)
    assert max(lam) >= 3 * LAM0
    assert lam[-1] <= 1.05 * max(lam[half:])
    assert max(lam[half:]) <= 2 * min(lam[half:]), lam[half:]
    # the model that comes out is on the budget: the last step's prox at the multiplier that
    # just meets it leaves the cost at most one group below the target
    final = res["budget"]["cost"]["groups"]
    n_groups = sum(g.num_groups for g in channel_groups(micro_model()[0]))
    assert TARGET - 1.0 / n_groups - 1e-12 <= final <= TARGET, final
    landing = res["budget"]["landing"]
    assert landing["scale"] > 0 and landing["lambda"] == pytest.approx(
        landing["scale"] * records[-2]["lambda"], rel=1e-9)
    assert res["budget"]["projected_groups"] == 0  # nothing left for the rounding safety net


def test_budget_mode_moves_lambda_by_the_dual_step_alone(budget_run):
    """Global λ in budget mode: log λ moves by exactly rate·(cost − target)/target each step
    (the meta-gradient does not touch it), and the logs and results carry the budget."""
    records, res = budget_run
    rho = [math.log(LAM0)] + [math.log(r["lambda"]) for r in records]
    for k, r in enumerate(records):
        assert r["target"] == TARGET
        assert r["cost"] == pytest.approx(1.0 - r["group_sparsity"], abs=1e-12)
        step = RATE * (r["cost"] - TARGET) / TARGET  # the last one's cost: after its landing
        assert rho[k + 1] - rho[k] == pytest.approx(step, abs=1e-9), k
    assert res["budget"]["measure"] == "groups" and res["budget"]["target"] == TARGET
    final = res["budget"]["cost"]
    assert set(final) == {"macs", "params", "groups"}
    assert final["groups"] == pytest.approx(records[-1]["cost"], abs=1e-12)
    assert final["groups"] == pytest.approx(1.0 - res["sparsity"]["group_sparsity"], abs=1e-12)
    assert 0.0 < final["macs"] < 1.0 and 0.0 < final["params"] < 1.0
    assert res["lambda_final"] == pytest.approx(records[-1]["lambda"], rel=1e-12)
    assert res["lambda_objective"] is None  # λ is not learned by meta-gradient


def test_budget_modes_dual_step_keeps_its_rate_under_a_schedule(tmp_path):
    """θ's rate anneals with meta.lr_schedule; the dual step does not (the multiplier must
    follow the cost to the end): log λ moves by lambda_lr · (cost − target)/target every step."""
    steps = 8
    run = tmp_path / "run"
    assert cli("meta-train", "--out", run, *MICRO, *BUDGET, f"meta.steps={steps}",
               "meta.lr_schedule=cosine", "meta.warmup_steps=2", "meta.val_every=8") == 0
    records = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "meta"]
    rho = [math.log(LAM0)] + [math.log(r["lambda"]) for r in records]
    for k, r in enumerate(records[:-1]):
        step = RATE * (r["cost"] - TARGET) / TARGET
        assert rho[k + 1] - rho[k] == pytest.approx(step, abs=1e-9), k


def test_the_ramped_target_falls_cubically_from_dense_to_the_target_then_holds():
    # Zhu & Gupta's schedule written out: keep = T + (1 − T)(1 − t/R)³ for t < R
    for t, want in [(0, 1.0), (1, 0.5 + 0.5 * 0.9 ** 3), (5, 0.5 + 0.5 * 0.5 ** 3),
                    (9, 0.5 + 0.5 * 0.1 ** 3), (10, 0.5), (11, 0.5), (1000, 0.5)]:
        assert ramped_target(0.5, t, 10) == pytest.approx(want, abs=1e-15), t
    values = [ramped_target(0.3, t, 40) for t in range(41)]
    assert all(a > b for a, b in zip(values, values[1:]))  # strictly falling until it lands
    assert ramped_target(0.3, 7, 0) == 0.3  # no ramp: the target from the first step


def test_a_ramped_budget_runs_its_dual_step_against_the_ramped_target(tmp_path):
    """With meta.target_ramp the multiplier moves by rate·(cost − target_t)/target_t, target_t
    the ramp's value after the step (logged as ``target``); the ramp ends at meta.target and
    the last step still lands on meta.target."""
    steps, ramp = 10, 0.6
    run = tmp_path / "run"
    assert cli("meta-train", "--out", run, *MICRO, *BUDGET, f"meta.steps={steps}",
               f"meta.target_ramp={ramp}", f"meta.val_every={steps}") == 0
    records = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "meta"]
    targets = [r["target"] for r in records]
    assert targets == [pytest.approx(ramped_target(TARGET, k, 6), abs=1e-15)
                       for k in range(1, steps + 1)]
    assert targets[0] > 0.75 and targets[5:] == [TARGET] * 5  # 0.5 + 0.5·(5/6)³
    rho = [math.log(LAM0)] + [math.log(r["lambda"]) for r in records]
    for k, r in enumerate(records[:-1]):
        step = RATE * (r["cost"] - r["target"]) / r["target"]
        assert rho[k + 1] - rho[k] == pytest.approx(step, abs=1e-9), k
    res = read_json(run / "results.json")
    n_groups = sum(g.num_groups for g in channel_groups(micro_model()[0]))
    assert TARGET - 1.0 / n_groups - 1e-12 <= res["budget"]["cost"]["groups"] <= TARGET


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_budget_mode_learns_only_a_per_layer_lambda_by_meta_gradient(tmp_path, scope):
    cfg = load_config(None, [*MICRO, *BUDGET, f"meta.lambda_scope={scope}"])
    tr = MetaTrainer(cfg, tmp_path / "run")
    tr.setup()
    assert tr.budget and tr.cost is not None
    if scope == "global":  # the multiplier alone: dual ascent, no Adam on ρ
        assert not tr.lam.rho.requires_grad and tr.opt_rho is None
    else:  # the per-layer pattern keeps its meta-gradient; the dual step moves its level
        assert tr.lam.rho.requires_grad and tr.opt_rho is not None
    # meta.learn_lambda=false: no meta-gradient at either scope; λ is the multiplier alone
    cfg = load_config(None, [*MICRO, *BUDGET, f"meta.lambda_scope={scope}", "meta.learn_lambda=false"])
    tr = MetaTrainer(cfg, tmp_path / "fixed")
    tr.setup()
    assert tr.budget and tr.cost is not None and tr.lam.enabled
    assert not tr.lam.rho.requires_grad and tr.opt_rho is None


def test_per_layer_budget_mode_lands_at_a_multiple_of_the_last_steps_lambdas(tmp_path):
    """The landing scales the λ the last step used (before ρ's Adam and dual steps) and keeps
    the per-layer pattern; the model ends within one group of the target."""
    steps = 12
    run = tmp_path / "run"
    assert cli("meta-train", "--out", run, *MICRO, *BUDGET, "meta.lambda_scope=layer",
               f"meta.steps={steps}", f"meta.val_every={steps}") == 0
    records = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "meta"]
    res = read_json(run / "results.json")
    landing = res["budget"]["landing"]
    before = records[-2]["lambda"]  # λ after step 11 = the λ of step 12's prox
    assert isinstance(landing["lambda"], list) and len(landing["lambda"]) == len(before)
    assert landing["lambda"] == pytest.approx([landing["scale"] * v for v in before], rel=1e-9)
    n_groups = sum(g.num_groups for g in channel_groups(micro_model()[0]))
    assert TARGET - 1.0 / n_groups - 1e-12 <= res["budget"]["cost"]["groups"] <= TARGET
    assert res["budget"]["projected_groups"] == 0


# --------------------------------------------------------------------- configuration


@pytest.mark.parametrize("bad,match", [
    (["meta.target=0"], "meta.target"),
    (["meta.target=1.5"], "meta.target"),
    (["meta.target=-0.2"], "meta.target"),
    (["meta.target=0.5", "meta.lambda_init=0"], "meta.target"),
    (["meta.target=0.5", "meta.target_measure=foo"], "meta.target_measure"),
    (["meta.target_measure=flops"], "meta.target_measure"),
    (["meta.target=0.5", "meta.target_ramp=1.5"], "meta.target_ramp"),
    (["meta.target=0.5", "meta.target_ramp=-0.1"], "meta.target_ramp"),
])
def test_bad_budget_configs_are_refused(bad, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, bad)


def test_good_budget_configs_load():
    cfg = load_config(None, ["meta.target=1", "meta.target_measure=params"])
    assert cfg.meta.target == 1.0 and cfg.meta.target_measure == "params"
    cfg = load_config(None, ["meta.target=0.25", "meta.lambda_init=0.01"])
    assert cfg.meta.target == 0.25 and cfg.meta.target_measure == "macs"
    assert load_config(None, []).meta.target is None  # off by default
    # no meta-gradient for λ: budget mode moves it as the multiplier alone (what compare's
    # meta_budget method writes into its runs' config.yaml when meta.learn_lambda=false)
    cfg = load_config(None, ["meta.target=0.5", "meta.learn_lambda=false", "meta.lambda_scope=layer"])
    assert cfg.meta.target == 0.5 and not cfg.meta.learn_lambda


def test_a_target_below_an_empty_backbone_is_refused_before_anything_is_written(tmp_path, capsys):
    cfg = load_config(None, MICRO)
    model = build_model(cfg, cfg.data.seen_tasks).eval()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cost = BackboneCost(model, torch.randn(1, 3, 32, 32), channel_groups(model))
    floor = cost.floor(model, "macs")
    assert 0.0 < floor < 0.5  # the stem and the channels the heads read stay
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # restored
    out = tmp_path / "run"
    assert cli("meta-train", "--out", out, *MICRO, f"meta.target={floor / 2}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "meta.target" in err[0] and "out of reach" in err[0]
    assert not out.exists()


def test_a_run_stopped_after_its_landing_keeps_it_on_resume(tmp_path):
    """Stopped once the last step (and its landing) is saved but before the results are written
    (a Ctrl-C during the last validation), resumed: no step runs again, and the results carry
    the straight run's landing (it lives in the checkpoint)."""
    import shutil

    steps = 6
    cfg = load_config(None, [*MICRO, *BUDGET, f"meta.steps={steps}", "meta.val_every=3"])
    straight = MetaTrainer(cfg, tmp_path / "a")
    straight.setup()
    want = straight.train()["budget"]
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    (tmp_path / "b" / "results.json").unlink()
    mt = MetaTrainer(cfg, tmp_path / "b", resume=True)
    mt.setup()
    assert mt.step == steps
    got = mt.train()["budget"]
    assert want["landing"] is not None and got == want
