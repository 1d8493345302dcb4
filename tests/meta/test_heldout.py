"""λ's held-out meta-gradient (DESIGN §2.4, ``meta.lambda_objective = heldout``).

* ``meta_step(..., lambda_batches=...)``: λ's gradient is d/dλ of
  ``f(λ) = Σ_S L_S(φ_K(θ, λ); λ-validation batch)``, checked against float64 central finite
  differences of the whole computation (the inner loop rerun by ``inner_loop`` at λ ± h);
  θ's (and the loss weights') gradients are those of the query objective, bit for bit, whatever
  the λ-validation batch holds.
* ``meta_stream_split``: support, query and λ-validation ids are a partition of the training ids.
* ``MetaTrainer``: three disjoint streams under ``heldout``, none for λ under ``query``; the
  logged ``lambda_val_loss``; stop + resume is bit-identical to a straight run.
"""

import math
import sys
from pathlib import Path

import pytest
import torch
from tests.recipes.micro import MICRO, same_tensors
from torch.func import functional_call

from metasparsity.config import load_config
from metasparsity.meta import (
    batch_stat_buffers,
    broadcast_lambda,
    inner_loop,
    meta_step,
)
from metasparsity.meta.sampler import meta_stream_split
from metasparsity.recipes.meta_train import MetaTrainer
from metasparsity.sparsity import channel_groups, group_norms
from metasparsity.training.run_checkpoints import load_run_checkpoint
from metasparsity.utils.errors import UserError
from metasparsity.utils.io import read_jsonl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.meta.toy_meta import (  # noqa: E402
    ALPHA,
    SUBSETS,
    central_differences,
    make_batches,
    make_lam,
    uncertainty,
)

from toy_models import ToyMultiTaskNet, toy_batch, toy_loss  # noqa: E402

# (mode, K): lambda_path is exact for K = 1 only; second_order for any K
EXACT = [("lambda_path", 1), ("second_order", 1), ("second_order", 2)]


@pytest.fixture
def model():
    torch.manual_seed(0)
    return ToyMultiTaskNet().double()




def make_val(seed=100, n=6):
    g = torch.Generator().manual_seed(seed)
    return [toy_batch(n, generator=g) for _ in SUBSETS]






def log_vars():
    return {t: torch.tensor(0.2 + 0.1 * i, dtype=torch.float64, requires_grad=True)
            for i, t in enumerate(("seg", "depth", "attr"))}


def heldout_objective(model, layers, batches, val, lam_vec, K, loss_fn=toy_loss):
    """f(λ) = Σ_S L_S(φ_K(θ, λ); val_S), φ_K from ``inner_loop`` (values only), λ of shape [L]."""
    params = dict(model.named_parameters())
    buffers = batch_stat_buffers(model)
    total = 0.0
    for (subset, sx, sy, _, _), (vx, vy) in zip(batches, val):
        phi, _ = inner_loop(model, params, buffers, lam_vec, layers, sx, sy, subset, loss_fn,
                            ALPHA, K, "first_order")
        out = functional_call(model, (phi, buffers), (vx,), {"tasks": list(subset)})
        total += float(loss_fn(out, vy, subset)[0].detach())
    return total


def min_group_norm(model, layers, batches, lam_vec, K):
    """Smallest group norm over every point where ∇Ω is evaluated (φ_0 … φ_{K−1}) and φ_K."""
    params = dict(model.named_parameters())
    buffers = batch_stat_buffers(model)
    low = math.inf
    for subset, sx, sy, _, _ in batches:
        for k in range(K + 1):
            phi, _ = inner_loop(model, params, buffers, lam_vec, layers, sx, sy, subset,
                                toy_loss, ALPHA, k, "first_order")
            low = min(low, min(float(group_norms(phi[g.name].detach()).min()) for g in layers))
    return low


def heldout_differences(model, layers, batches, val, lam_vec, K, rel_h=1e-4):
    """Central differences of the held-out objective in every entry of λ, h = rel_h·λ_l.

    h = 1e-4·λ_l: the FD error is then ~1e-7 relative (truncation ~h², rounding ~eps·f/h); with
    1e-6·λ_l rounding alone reaches ~1e-5 on the smallest per-layer entries.
    """
    return central_differences(
        lambda lam: heldout_objective(model, layers, batches, val,
                                      broadcast_lambda(lam, len(layers)), K), lam_vec, rel_h)


# ---------------------------------------------------------------- 1. finite differences
@pytest.mark.parametrize("mode,K", EXACT)
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("outer_penalty", [False, True])
def test_heldout_lambda_gradient_matches_finite_differences(model, mode, K, scope,
                                                            outer_penalty):
    layers = channel_groups(model)
    batches, val = make_batches(), make_val()
    lam = make_lam(scope, len(layers))
    lam_vec = lam().detach().clone()
    assert lam_vec.shape == ((len(layers),) if scope == "layer" else (1,))
    # the group lasso is smooth away from zero groups: keep every evaluated group well off zero
    assert min_group_norm(model, layers, batches, broadcast_lambda(lam_vec, len(layers)),
                          K) > 0.1

    res = meta_step(model, lam, layers, batches, toy_loss, ALPHA, K, mode,
                    outer_penalty=outer_penalty, lambda_batches=val)
    fd = heldout_differences(model, layers, batches, val, lam_vec, K)
    assert res.grad_lambda.shape == lam_vec.shape
    assert fd.abs().min() > 1e-4  # a real signal in every entry, far above the FD noise
    torch.testing.assert_close(res.grad_lambda, fd, rtol=1e-5, atol=0)
    # held out, λ's objective has no Ω term, outer_penalty or not
    assert (res.grad_lambda_explicit == 0).all()
    torch.testing.assert_close(res.grad_lambda_implicit, res.grad_lambda, rtol=0, atol=0)
    torch.testing.assert_close(res.grad_rho, res.grad_lambda * lam_vec, rtol=1e-12, atol=0)
    # the summed λ-validation loss at λ itself
    f0 = heldout_objective(model, layers, batches, val, broadcast_lambda(lam_vec, len(layers)), K)
    assert res.lambda_val_loss == pytest.approx(f0, rel=1e-12)

    # the check can fail: the query objective's λ gradient is a different number
    q = meta_step(model, lam, layers, batches, toy_loss, ALPHA, K, mode,
                  outer_penalty=outer_penalty)
    assert q.lambda_val_loss is None
    assert not torch.allclose(q.grad_lambda, fd, rtol=1e-2, atol=0)


def test_lambda_path_is_only_an_approximation_for_two_steps(model):
    """With K = 2, lambda_path drops Hessian terms: the FD check sees the difference."""
    layers = channel_groups(model)
    batches, val = make_batches(), make_val()
    lam = make_lam("global", len(layers))
    lam_vec = lam().detach().clone()
    fd = heldout_differences(model, layers, batches, val, lam_vec, 2)
    approx = meta_step(model, lam, layers, batches, toy_loss, ALPHA, 2, "lambda_path",
                       lambda_batches=val).grad_lambda
    assert not torch.allclose(approx, fd, rtol=1e-5, atol=0)


# ---------------------------------------------------------------- 2. θ never sees λ-validation
@pytest.mark.parametrize("mode,K", [("lambda_path", 1), ("lambda_path", 2), ("second_order", 2)])
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("outer_penalty", [False, True])
def test_theta_gradient_ignores_the_lambda_validation_batch(model, mode, K, scope,
                                                            outer_penalty):
    layers = channel_groups(model)
    batches, val = make_batches(), make_val()
    lam = make_lam(scope, len(layers))
    s = log_vars()
    loss_fn = uncertainty(s)

    def step(lambda_batches):
        return meta_step(model, lam, layers, batches, loss_fn, ALPHA, K, mode,
                         outer_penalty=outer_penalty, extra_params=s,
                         lambda_batches=lambda_batches)

    base = step(None)
    g = torch.Generator().manual_seed(7)
    scaled = [(100 * x, y) for x, y in val]
    rand = [(torch.randn(x.shape, dtype=x.dtype, generator=g), toy_batch(x.shape[0],
                                                                          generator=g)[1])
            for x, _ in val]
    results = [step(v) for v in (val, scaled, rand)]
    for res in results:
        assert res.grads_theta.keys() == base.grads_theta.keys()
        for n, want in base.grads_theta.items():
            assert want is not None, n
            assert torch.equal(res.grads_theta[n], want), n
        assert res.grads_extra.keys() == s.keys()
        for n, want in base.grads_extra.items():
            assert torch.equal(res.grads_extra[n], want), n
        assert res.loss == base.loss and res.query_total == base.query_total
        assert math.isfinite(res.lambda_val_loss)
    # ... while λ's gradient and the λ-validation loss do follow the batch
    lams = [r.grad_lambda for r in results]
    assert not torch.equal(lams[0], lams[1]) and not torch.equal(lams[0], lams[2])
    assert not torch.allclose(lams[0], base.grad_lambda, rtol=1e-3, atol=0)
    assert len({r.lambda_val_loss for r in results}) == 3
    assert base.lambda_val_loss is None


def test_lambda_batches_must_match_the_meta_batch(model):
    layers = channel_groups(model)
    lam = make_lam("global", len(layers))
    with pytest.raises(ValueError, match="λ-validation"):
        meta_step(model, lam, layers, make_batches(), toy_loss, ALPHA, 1, "lambda_path",
                  lambda_batches=make_val()[:2])


# ---------------------------------------------------------------- 3. meta_stream_split
@pytest.mark.parametrize("n,held", [(3, 1), (7, 1), (20, 3), (32, 5), (100, 15), (1000, 150)])
def test_meta_stream_split_partitions_the_training_ids(n, held):
    sup, qry, val = meta_stream_split(n, seed=3, lambda_val_fraction=0.15)
    assert len(val) == held
    assert sup and qry
    assert abs(len(sup) - len(qry)) <= 1
    assert set(sup).isdisjoint(qry) and set(sup).isdisjoint(val) and set(qry).isdisjoint(val)
    assert sorted(sup + qry + val) == list(range(n))
    assert meta_stream_split(n, 3, 0.15) == (sup, qry, val)  # deterministic per seed
    if n >= 20:
        assert meta_stream_split(n, 4, 0.15) != (sup, qry, val)


def test_the_lambda_validation_ids_themselves_depend_on_the_seed():
    """Not only the support/query halves: each seed holds out its own λ-validation ids."""
    held = {tuple(meta_stream_split(40, seed, 0.25)[2]) for seed in range(4)}
    assert len(held) == 4


def test_meta_stream_split_fraction():
    assert len(meta_stream_split(100, 0, 0.3)[2]) == 30
    assert len(meta_stream_split(100, 0, 0.01)[2]) == 1
    assert len(meta_stream_split(10, 0, 0.001)[2]) == 1  # at least one id


@pytest.mark.parametrize("n", [0, 1, 2])
def test_meta_stream_split_refuses_too_little_data(n):
    with pytest.raises(UserError):
        meta_stream_split(n, 0, 0.15)


# ---------------------------------------------------------------- 4. MetaTrainer end to end
# fixed λ0 (no auto measurement) and no intermediate validation: keeps the runs short
HELDOUT = MICRO + ["meta.lambda_init=0.01", "meta.val_every=100"]


def _indices(stream):
    return set(stream.indices)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """A straight heldout run of the micro budget."""
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("heldout") / "run"
    mt = MetaTrainer(load_config(None, HELDOUT), run, overwrite=True)
    mt.setup()
    streams = (mt.support, mt.query, mt.lambda_val)
    res = mt.train()
    return {"run": run, "streams": streams, "res": res, "ck": load_run_checkpoint(run, "last")}


def test_heldout_trainer_has_three_disjoint_streams(straight):
    sup, qry, val = (_indices(s) for s in straight["streams"])
    assert sup and qry and val
    assert sup.isdisjoint(qry) and sup.isdisjoint(val) and qry.isdisjoint(val)
    assert len(sup | qry | val) == 32  # data.train_size
    assert len(val) == round(0.15 * 32)
    recs = [r for r in read_jsonl(straight["run"] / "metrics.jsonl") if r["kind"] == "meta"]
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    for r in recs:
        assert isinstance(r["lambda_val_loss"], float) and math.isfinite(r["lambda_val_loss"])
        assert r["lambda_val_loss"] > 0
        assert r["lambda_objective"] == "heldout"
    assert straight["res"]["lambda_objective"] == "heldout"
    assert straight["ck"].meta["lambda"] != 0.01  # λ was learned


def test_query_objective_has_no_lambda_stream(tmp_path):
    cfg = load_config(None, HELDOUT + ["meta.lambda_objective=query"])
    mt = MetaTrainer(cfg, tmp_path / "run", overwrite=True)
    mt.setup()
    assert mt.lambda_val is None
    sup, qry = _indices(mt.support), _indices(mt.query)
    assert sup.isdisjoint(qry) and len(sup | qry) == 32
    mt.train()
    recs = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "meta"]
    assert len(recs) == 4
    assert all(r["lambda_val_loss"] is None for r in recs)
    assert all(r["lambda_objective"] == "query" for r in recs)


def test_fixed_lambda_has_no_lambda_stream(tmp_path):
    cfg = load_config(None, HELDOUT + ["meta.learn_lambda=false"])
    mt = MetaTrainer(cfg, tmp_path / "run", overwrite=True)
    mt.setup()
    assert mt.lambda_val is None


def test_heldout_stop_and_resume_is_bit_identical(straight, tmp_path):
    cfg = load_config(None, HELDOUT)
    mt = MetaTrainer(cfg, tmp_path / "m", overwrite=True)
    mt.setup()
    assert mt.train(stop_after=2) is None
    assert load_run_checkpoint(tmp_path / "m", "last").meta["step"] == 2
    mt = MetaTrainer(cfg, tmp_path / "m", resume=True)
    mt.setup()
    assert mt.step == 2
    res = mt.train()
    a, b = straight["ck"], load_run_checkpoint(tmp_path / "m", "last")
    assert res["steps"] == 4 and b.meta["step"] == 4
    assert same_tensors(a.model, b.model) == []
    assert torch.equal(a.state["lam"]["rho"], b.state["lam"]["rho"])
    assert a.meta["lambda"] == b.meta["lambda"] != 0.01
    assert a.meta["lambda_val"] == b.meta["lambda_val"]
    recs = [r for r in read_jsonl(tmp_path / "m" / "metrics.jsonl") if r["kind"] == "meta"]
    want = [r for r in read_jsonl(straight["run"] / "metrics.jsonl") if r["kind"] == "meta"]
    assert [r["lambda_val_loss"] for r in recs] == [r["lambda_val_loss"] for r in want]
