"""Bad input to the sparsity API fails loudly: λ and step sizes, NaN weights, stale layers,
example inputs of backbone_cut and prune_zero_channels."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from metasparsity.data import TASKS
from metasparsity.models import build_model_from_tasks
from metasparsity.sparsity import (
    ProxAdam,
    backbone_cut,
    channel_groups,
    group_norms,
    group_penalty,
    penalty_grad,
    penalty_per_layer,
    prox_,
    prox_param_groups,
    prox_params,
    prune_zero_channels,
    removable_layers,
    sparsity_stats,
)

X = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
NAN, INF = math.nan, math.inf


def _model(width: float = 0.125) -> nn.Module:
    torch.manual_seed(0)
    tasks = {n: TASKS.get(n) for n in ("segment", "depth")}
    return build_model_from_tasks(tasks, depth=18, width=width, output_stride=32,
                                  head_channels=8, aspp_rates=(1, 2, 3)).eval()


@pytest.fixture(scope="module")
def dense():
    return _model()


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def _with_nan_group(m: nn.Module) -> tuple[nn.Module, str]:
    m = copy.deepcopy(m)
    name = channel_groups(m)[3].name
    with torch.no_grad():
        dict(m.named_parameters())[name][:, 1] = NAN
    return m, name


# ----------------------------------------------------------------------------- λ and step

@pytest.mark.parametrize(("step", "lam"), [
    (NAN, 0.01), (-10.0, 0.01), (INF, 0.0), (0.1, NAN), (0.1, -1.0), (0.1, INF),
    (0.1, [0.01] * 19 + [NAN]), (0.1, torch.tensor(NAN)), (0.1, torch.full((20,), -1.0)),
])
def test_prox_refuses_a_step_or_lambda_not_finite_and_nonnegative(dense, step, lam):
    m = copy.deepcopy(dense)
    before = _state(m)
    with pytest.raises(ValueError, match="finite and >= 0"):
        prox_(m, step, lam)
    assert _same(before, _state(m))
    with pytest.raises(ValueError, match="finite and >= 0"):
        prox_params(dict(m.named_parameters()), channel_groups(m), step,
                    lam.tolist() if isinstance(lam, torch.Tensor) else lam)


@pytest.mark.parametrize("lam", [-1.0, NAN, INF, [0.1] * 19 + [-0.1]])
def test_penalty_refuses_a_lambda_not_finite_and_nonnegative(dense, lam):
    with pytest.raises(ValueError, match="finite and >= 0"):
        group_penalty(dense, lam)


@pytest.mark.parametrize(("call", "match"), [
    (lambda m: prox_(m, 0.1, None), "lam .* required"),
    (lambda m: prox_(m, "0.1", 0.01), "step must be a number"),
    (lambda m: prox_(m, 0.1, "0.1"), "lam .* must be a number"),
    (lambda m: group_penalty(m, "0.1"), "lam .* must be a number"),
])
def test_wrong_types_of_step_and_lambda_are_named(dense, call, match):
    with pytest.raises(TypeError, match=match):
        call(copy.deepcopy(dense))


def _opt(m: nn.Module, metric: str = "adam") -> ProxAdam:
    layers = channel_groups(m)
    opt = ProxAdam(prox_param_groups(m, layers), lr=1e-2, prox_metric=metric,
                   num_layers=len(layers))
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    return opt


@pytest.mark.parametrize("metric", ["adam", "euclidean"])
@pytest.mark.parametrize("lam", [NAN, -1.0, INF, torch.tensor([NAN]), [1e-3] * 19 + [-1e-3]])
def test_proxadam_refuses_a_bad_lambda_before_its_step(dense, metric, lam):
    """Both metrics alike, and nothing moves: not even the Adam half of the step."""
    m = copy.deepcopy(dense)
    opt = _opt(m, metric)
    before = _state(m)
    with pytest.raises(ValueError, match="finite and >= 0"):
        opt.step(lam=lam)
    assert _same(before, _state(m)) and not opt.state
    opt.step(lam=None)
    with pytest.raises(ValueError, match="finite and >= 0"):
        opt.apply_prox(lam)


def test_proxadam_wrong_lambda_type_and_num_layers(dense):
    m = copy.deepcopy(dense)
    with pytest.raises(TypeError, match="lam .* must be a number"):
        _opt(m).step(lam="1e-3")
    with pytest.raises(ValueError, match="num_layers=5.*prox_layer"):
        ProxAdam(prox_param_groups(m, channel_groups(m)), num_layers=5)


def test_proxadam_without_prox_groups_refuses_a_positive_lambda(dense):
    m = copy.deepcopy(dense)
    opt = ProxAdam(m.parameters(), lr=1e-3)
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    before = _state(m)
    with pytest.raises(ValueError, match="prox_param_groups"):
        opt.step(lam=10.0)
    assert _same(before, _state(m))
    opt.step(lam=0.0)  # no prox asked for: a plain Adam step
    opt.step(lam=None)


# ----------------------------------------------------------------------------- NaN weights

def test_a_nan_group_has_a_nan_norm_and_is_no_zero_group(dense):
    m, name = _with_nan_group(dense)
    w = dict(m.named_parameters())[name]
    norms = group_norms(w.detach())
    assert math.isnan(norms[1]) and torch.isfinite(norms[[0, 2]]).all()
    assert torch.isnan(penalty_grad(w.detach(), 3.0)[:, 1]).all()
    assert math.isnan(float(group_penalty(m).detach()))
    st = sparsity_stats(m)
    assert st.num_zero_groups == 0 and st.group_sparsity == 0.0
    # an all-NaN backbone is not "100 % sparse"
    with torch.no_grad():
        for g in channel_groups(m):
            dict(m.named_parameters())[g.name].fill_(NAN)
    assert sparsity_stats(m).group_sparsity == 0.0


def test_a_zero_group_keeps_norm_and_gradient_zero(dense):
    w = dict(dense.named_parameters())[channel_groups(dense)[3].name].detach().clone()
    w[:, 1] = 0.0
    w.requires_grad_(True)
    (g,) = torch.autograd.grad(group_norms(w).sum(), w, create_graph=True)
    (h,) = torch.autograd.grad(g.square().sum(), w)
    assert group_norms(w)[1] == 0 and (g[:, 1] == 0).all() and torch.isfinite(h).all()


# ----------------------------------------------------------------------------- stale layers

@pytest.mark.parametrize("call", [
    lambda m, L: sparsity_stats(m, layers=L),
    lambda m, L: group_penalty(m, 0.1, L),
    lambda m, L: prox_(m, 0.1, 0.01, L),
    lambda m, L: penalty_per_layer(dict(m.named_parameters()), L),
    lambda m, L: removable_layers(m, X, L),
])
def test_layers_of_another_model_are_refused(dense, call):
    other = channel_groups(_model(width=0.25))
    m = copy.deepcopy(dense)
    before = _state(m)
    with pytest.raises(ValueError, match="layers do not match the model.*channel_groups"):
        call(m, other)
    assert _same(before, _state(m))


def test_layers_from_before_pruning_are_refused(dense):
    m = copy.deepcopy(dense)
    layers = channel_groups(m)
    with torch.no_grad():
        m.backbone.layer1[0].conv2.weight[:, :3] = 0.0
    small = prune_zero_channels(m, X)
    with pytest.raises(ValueError, match="layers do not match the model: backbone.layer1.0.conv1.weight has shape"):
        sparsity_stats(small, layers=layers)
    assert sparsity_stats(small).num_groups < sparsity_stats(m, layers=layers).num_groups


# ----------------------------------------------------------------------------- example inputs

def test_backbone_cut_takes_a_list_as_prune_zero_channels_does(dense):
    cut = copy.deepcopy(dense)
    with torch.no_grad():
        cut.backbone.conv1.weight.zero_()
    assert backbone_cut(dense, [X]) is None and backbone_cut(cut, [X]) == "conv1"


@pytest.mark.parametrize(("model", "x", "error", "match"), [
    (None, torch.zeros(0, 3, 32, 32), ValueError, "empty"),
    (None, torch.zeros(1, 3, 32, 32, dtype=torch.long), TypeError, "floating point"),
    (nn.Sequential(nn.Conv2d(3, 4, 3)), X, TypeError, "forward_features"),
])
def test_backbone_cut_refuses_bad_input(dense, model, x, error, match):
    with pytest.raises(error, match=match):
        backbone_cut(dense if model is None else model, x)


@pytest.mark.parametrize("bad", ["weights", "input"])
def test_prune_with_non_finite_outputs_says_so(dense, bad):
    m, _ = _with_nan_group(dense) if bad == "weights" else (dense, None)
    x = X if bad == "weights" else torch.full_like(X, NAN)
    with pytest.raises(ValueError, match="not finite"):
        prune_zero_channels(m, x)


def test_prune_needs_a_tensor_not_a_shape(dense):
    with pytest.raises(TypeError, match=r"example_input must be an input tensor.*\(1, 3, 32, 32\)"):
        prune_zero_channels(dense, (1, 3, 32, 32))


def test_the_adam_metric_prox_keeps_a_nan_group_nan_and_the_others_as_they_were():
    """A NaN group was 'not kept' and came out an exact zero: a divergence the parameter check
    after the step could no longer see."""
    from metasparsity.sparsity.proxadam import metric_prox

    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 5, 3, 3, generator=g, dtype=torch.float64)
    d = torch.rand(4, 5, 3, 3, generator=g, dtype=torch.float64) + 0.5
    tau = torch.tensor([2.0, 2.0, 2.0, 50.0, 2.0], dtype=torch.float64)  # group 3: zeroed
    clean = metric_prox(z, d, tau)
    z[1, 2, 0, 0] = float("nan")
    y = metric_prox(z, d, tau)
    assert not torch.isfinite(y[:, 2]).any()
    others = [c for c in range(5) if c != 2]
    assert torch.equal(y[:, others], clean[:, others])
    assert (clean[:, 3] == 0).all() and (clean[:, 0] != 0).all()


@pytest.mark.parametrize("tol", [-1.0, float("nan"), "0"])
def test_sparsity_stats_refuses_a_bad_tolerance(tol):
    model = build_model_from_tasks({"depth": TASKS["depth"]}, width=0.25)
    with pytest.raises(ValueError, match="tol must be a number >= 0"):
        sparsity_stats(model, tol=tol)


def test_backbone_cut_names_non_finite_outputs_and_never_compares_an_input_with_itself():
    """A NaN input (or NaN weights) read as 'no cut'; an input equal to the fixed second one
    read as a cut at conv1."""
    from metasparsity.sparsity import backbone_cut

    model = build_model_from_tasks({"depth": TASKS["depth"]}, width=0.25)
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="outputs are not finite"):
        backbone_cut(model, torch.full_like(x, float("nan")))
    same = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) + 1.0
    assert backbone_cut(model, same) is None and backbone_cut(model, x) is None
