"""Bad input to the meta-learning API: clear errors at entry (or a documented non-finite
outcome), never a silently wrong λ, a zeroed backbone or an error deep inside autograd."""

import copy
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
from tests.recipes.micro import MICRO

import metasparsity.recipes.meta_train as metatrain
from metasparsity.config import load_config
from metasparsity.meta import (
    LearnedLambda,
    RelativeClip,
    TaskSubsetSampler,
    implicit_lambda_grad,
    meta_step,
    outer_update,
)
from metasparsity.meta.prox_path import make_prox_path, prox_tau_derivative
from metasparsity.sparsity import ProxAdam, metric_prox
from metasparsity.sparsity.proxadam import prox_param_groups
from metasparsity.training.divergence import NonFiniteError
from metasparsity.training.run_checkpoints import load_run_checkpoint
from metasparsity.utils.errors import UserError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.meta.toy_meta import ALPHA, make_batches, make_lam  # noqa: E402

from toy_models import toy_batch, toy_loss  # noqa: E402

NAN, INF = float("nan"), float("inf")


def _state(model, lam):
    return {k: v.clone() for k, v in model.state_dict().items()}, lam.rho.detach().clone()


def _unchanged(model, lam, before):
    params, rho = before
    return (all(torch.equal(v, params[k]) for k, v in model.state_dict().items())
            and torch.equal(lam.rho.detach(), rho))


# ---------------------------------------------------------------- LearnedLambda
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_lambda_init_must_be_finite(value):
    with pytest.raises(ValueError, match="lambda_init"):
        LearnedLambda(lambda_init=value)


def test_lambda_init_auto_points_to_auto_lambda0():
    with pytest.raises(TypeError, match="auto_lambda0"):
        LearnedLambda(lambda_init="auto")


def test_lambda_init_from_a_tensor_that_requires_grad_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert LearnedLambda(torch.tensor(0.1, requires_grad=True)).value() == pytest.approx(0.1)


def test_lambda_init_accepts_a_0d_numpy_array():
    np = pytest.importorskip("numpy")
    assert LearnedLambda(np.array(0.1)).value() == pytest.approx(0.1)
    with pytest.raises(TypeError, match="lambda_init must be a number"):
        LearnedLambda(np.array([0.1, 0.2]))


def test_lambda_init_accepts_a_one_element_tensor():
    lam = LearnedLambda(lambda_init=torch.tensor(1e-2, dtype=torch.float64))
    assert torch.equal(lam.rho.detach(), LearnedLambda(1e-2).rho.detach())
    assert lam.learnable and lam.value() == pytest.approx(1e-2)


@pytest.mark.parametrize("num_layers", [3.0, "3"])
def test_num_layers_must_be_an_int(num_layers):
    with pytest.raises(TypeError, match="num_layers"):
        LearnedLambda(1e-2, scope="layer", num_layers=num_layers)


# ---------------------------------------------------------------- outer_update
def _outer_setup(model, layers):
    lam = make_lam("global", len(layers))
    res = meta_step(model, lam, layers, make_batches(), toy_loss, ALPHA, 1, "lambda_path")
    opt = ProxAdam(prox_param_groups(model, layers), lr=1e-3)
    return lam, res, opt, torch.optim.Adam([lam.rho], lr=0.05)


def test_non_finite_rho_gradient_is_a_divergence_before_anything_changes(model, layers):
    lam, res, opt, opt_rho = _outer_setup(model, layers)
    res.grad_rho = torch.full_like(res.grad_rho, NAN)
    before = _state(model, lam)
    with pytest.raises(NonFiniteError, match="λ"):
        outer_update(model, lam, res, opt, opt_rho, 1e-3, layers)
    assert _unchanged(model, lam, before)


@pytest.mark.parametrize("prox_step", [NAN, INF, -1.0])
def test_prox_step_must_be_finite_and_non_negative(model, layers, prox_step):
    lam, res, _, opt_rho = _outer_setup(model, layers)
    before = _state(model, lam)
    with pytest.raises(ValueError, match="prox_step"):
        outer_update(model, lam, res, torch.optim.Adam(model.parameters(), lr=1e-3), opt_rho,
                     prox_step, layers)
    assert _unchanged(model, lam, before)


def test_prox_step_is_not_checked_when_no_prox_is_taken(model, layers):
    """Without a prox (take_prox=False, or λ disabled) prox_step is not used, so not refused."""
    lam, res, _, opt_rho = _outer_setup(model, layers)
    outer_update(model, lam, res, torch.optim.SGD(model.parameters(), lr=1e-3), opt_rho, NAN,
                 layers, take_prox=False)


def test_optimizers_must_hold_the_model_and_rho(model, layers):
    lam, res, opt, opt_rho = _outer_setup(model, layers)
    other = copy.deepcopy(model)
    before = _state(model, lam)
    with pytest.raises(ValueError, match="opt_theta does not hold"):
        outer_update(model, lam, res, ProxAdam(prox_param_groups(other, layers), lr=1e-3),
                     opt_rho, 1e-3, layers)
    with pytest.raises(ValueError, match="opt_rho does not hold lam.rho"):
        outer_update(model, lam, res, opt,
                     torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.05),
                     1e-3, layers)
    assert _unchanged(model, lam, before)


# ---------------------------------------------------------------- RelativeClip
@pytest.mark.parametrize("multiple", [NAN, INF, -1.0])
def test_relative_clip_refuses_a_non_finite_or_negative_multiple(multiple):
    with pytest.raises(ValueError, match="multiple"):
        RelativeClip(multiple)


def test_relative_clip_skips_non_finite_norms():
    clip = RelativeClip(2.0, window=5, min_history=1)
    clip({"a": torch.ones(4)})  # norm 2
    nan = {"a": torch.full((4,), NAN)}
    assert clip(nan)[1] == 1.0 and clip.history == [2.0]
    big = {"a": torch.full((4,), 50.0)}  # norm 100: still clipped to 2 × 2
    norm, scale = clip(big)
    assert norm == pytest.approx(100.0) and scale == pytest.approx(0.04)
    inf = {"a": torch.tensor([INF, 1.0])}
    assert clip(inf) == (INF, 1.0)  # left for the divergence check, not turned into NaN
    assert torch.equal(inf["a"], torch.tensor([INF, 1.0]))
    assert clip.history == pytest.approx([2.0, 100.0])


# ---------------------------------------------------------------- meta_step
def _ms(model, layers, **kw):
    args = dict(model=model, lam=make_lam("global", len(layers)), layers=layers,
                batches=make_batches(), loss_fn=toy_loss, inner_lr=ALPHA, inner_steps=1,
                mode="lambda_path")
    args.update(kw)
    return meta_step(**args)


@pytest.mark.parametrize("inner_lr", [-0.01, 0.0, NAN, INF])
def test_meta_step_inner_lr_must_be_finite_positive(model, layers, inner_lr):
    with pytest.raises(ValueError, match="inner_lr"):
        _ms(model, layers, inner_lr=inner_lr)


@pytest.mark.parametrize("mode", ["lambda_path", "first_order"])
@pytest.mark.parametrize("inner_steps", [-1, 1.5])
def test_meta_step_inner_steps_must_be_a_non_negative_int(model, layers, mode, inner_steps):
    lam = make_lam("global", len(layers), learnable=mode != "first_order")
    with pytest.raises(ValueError, match="inner_steps"):
        _ms(model, layers, lam=lam, mode=mode, inner_steps=inner_steps)


def test_meta_step_zero_inner_steps_is_still_allowed(model, layers):
    res = _ms(model, layers, inner_steps=0)
    assert math.isfinite(res.loss) and not res.inner_loss


def test_meta_step_reads_an_iterator_of_batches_once(model, layers):
    """The checks used to exhaust an iterator: an empty meta-step (loss 0, no subset)."""
    lam = make_lam("global", len(layers))
    listed = meta_step(model, lam, layers, make_batches(), toy_loss, ALPHA, 1, "lambda_path")
    once = meta_step(model, lam, layers, iter(make_batches()), toy_loss, ALPHA, 1, "lambda_path")
    assert once.subsets == listed.subsets and once.loss == listed.loss != 0


def test_meta_step_lam_must_be_a_learned_lambda(model, layers):
    with pytest.raises(TypeError, match="LearnedLambda"):
        _ms(model, layers, lam=0.01)


def test_meta_step_loss_fn_must_return_total_and_per_task(model, layers):
    with pytest.raises(TypeError, match=r"loss_fn.*\(total, \{task: loss\}\)"):
        _ms(model, layers, loss_fn=lambda o, y, s: toy_loss(o, y, s)[0])


@pytest.mark.parametrize("subset", [(), "depth", ["depth", 3]])
def test_meta_step_subset_must_be_a_non_empty_tuple_of_names(model, layers, subset):
    sx, sy = toy_batch(4)
    qx, qy = toy_batch(4)
    with pytest.raises(TypeError, match="subset"):
        _ms(model, layers, batches=[(subset, sx, sy, qx, qy)])


def test_meta_step_one_entry_instead_of_a_list(model, layers):
    with pytest.raises(TypeError, match=r"batches\[0\] must be \(subset, support_x"):
        _ms(model, layers, batches=make_batches()[0])


# ---------------------------------------------------------------- TaskSubsetSampler
def test_sampler_refuses_a_string_of_tasks():
    with pytest.raises(UserError, match="string 'depth'"):
        TaskSubsetSampler("depth")


def test_sampler_refuses_subsets_given_as_strings():
    with pytest.raises(UserError, match="string 'a'"):
        TaskSubsetSampler(["a", "b"], subsets=["a", "b"])


# ---------------------------------------------------------------- prox path
def _prox_inputs():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 3, 3, 3, generator=g, dtype=torch.float64)
    d = torch.ones_like(z)
    return z, metric_prox(z, d, 0.5), d


def test_prox_tau_derivative_checks_shapes():
    z, y, d = _prox_inputs()
    y_other = torch.cat([y, y], dim=1)[:, :2]  # [4, 2, 3, 3]: reshapes, silently, otherwise
    with pytest.raises(ValueError, match="shape"):
        prox_tau_derivative(z, y_other, d, 0.5)
    with pytest.raises(ValueError, match="shape"):
        prox_tau_derivative(z, y, d[:, :2], 0.5)


@pytest.mark.parametrize("tau", [0.0, -1.0, NAN])
def test_prox_tau_derivative_needs_a_positive_tau(tau):
    z, y, d = _prox_inputs()
    with pytest.raises(ValueError, match="tau"):
        prox_tau_derivative(z, y, d, tau)


def test_make_prox_path_checks_its_arguments_when_built(model, layers):
    opt = ProxAdam(prox_param_groups(model, layers), lr=1e-3)
    x, y = toy_batch(4)
    with pytest.raises(ValueError, match="at least one"):
        make_prox_path(model, layers, opt, [], toy_loss)
    with pytest.raises(TypeError, match=r"batches\[0\] must be \(subset, \(x, y\)\)"):
        make_prox_path(model, layers, opt, [(("seg",), x, y)], toy_loss)
    with pytest.raises(TypeError, match="ProxAdam"):
        make_prox_path(model, layers, torch.optim.Adam(model.parameters()),
                       [(("seg",), (x, y))], toy_loss)


# ---------------------------------------------------------------- implicit_lambda_grad
def _quadratic(p):
    return sum((t ** 2).sum() for t in p.values())


@pytest.mark.parametrize("alpha", [NAN, INF])
def test_implicit_lambda_grad_alpha_must_be_finite_positive(model, layers, alpha):
    params = dict(model.named_parameters())
    with pytest.raises(ValueError, match="alpha"):
        implicit_lambda_grad(params, layers, 0.01, _quadratic, _quadratic, alpha=alpha,
                             terms=[0])


def test_implicit_lambda_grad_names_a_missing_grouped_weight(model, layers):
    params = {n: p for n, p in model.named_parameters() if n != layers[0].name}
    with pytest.raises(ValueError, match=f"lacks the grouped weight.*{layers[0].name}"):
        implicit_lambda_grad(params, layers, 0.01, _quadratic, _quadratic, alpha=0.1,
                             terms=[0])


def test_non_finite_rho_gradient_stops_meta_training_as_a_divergence(tmp_path, monkeypatch):
    """The recipe's divergence handling still applies: the run stops at the step it names, the
    last good checkpoint is kept (this guards the choice of NonFiniteError over a ValueError in
    outer_update)."""
    real, calls = metatrain.meta_step, {"n": 0}

    def poisoned(*args, **kwargs):
        res = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3 and res.grad_rho is not None:
            res.grad_rho = torch.full_like(res.grad_rho, NAN)
        return res

    monkeypatch.setattr(metatrain, "meta_step", poisoned)
    tr = metatrain.MetaTrainer(load_config(None, MICRO), tmp_path / "meta")
    tr.setup()
    assert tr.lam.learnable
    with pytest.raises(NonFiniteError) as e:
        tr.train()
    assert e.value.task == "λ" and "last good checkpoint (step 2)" in str(e.value)
    assert e.value.step == 3 and "non-finite meta-gradient of λ" in str(e.value)
    assert "at step 3" in str(e.value)
    assert load_run_checkpoint(tmp_path / "meta", "last").meta["step"] == 2
