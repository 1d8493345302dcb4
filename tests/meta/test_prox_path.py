"""λ's gradient through the outer step's prox (``meta.lambda_through_prox``, DESIGN §2.4).

* ``prox_tau_derivative``: ``dθ/dτ`` of the metric prox (and the Euclidean one) against float64
  central finite differences of ``metric_prox`` / ``prox``; 0 on the groups it zeroes.
* ``outer_update(..., prox_path=...)``: the part it adds to λ's gradient equals a central finite
  difference of the whole outer step, ``f(λ) = Σ_S L_S(θ_{t+1}(λ); λ-validation batch)`` with
  ``θ_{t+1}`` the Adam step and the prox at ``λ ± h`` from the same state (1e-5 relative, global
  and per-layer λ, both prox metrics); θ's update is bit for bit the one without it, and ρ moves
  by ``dλ/dρ`` times the sum.
* ``MetaTrainer``: the part is logged every step, stop + resume stays bit-identical, and the
  configurations where it has no meaning are refused (exit 2, nothing written).
"""

import math
import sys
from pathlib import Path

import pytest
import torch
from tests.recipes.micro import MICRO, cli, same_tensors
from torch.func import functional_call

from metasparsity.config import load_config
from metasparsity.meta import batch_stat_buffers, meta_step, outer_update
from metasparsity.meta.prox_path import make_prox_path, prox_tau_derivative
from metasparsity.recipes.meta_train import MetaTrainer
from metasparsity.sparsity import ProxAdam, channel_groups, group_norms, metric_prox, prox
from metasparsity.sparsity.proxadam import prox_param_groups
from metasparsity.training.run_checkpoints import load_run_checkpoint
from metasparsity.utils.io import read_json, read_jsonl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.meta.toy_meta import (  # noqa: E402
    ALPHA,
    SUBSETS,
    central_differences,
    make_batches,
    make_lam,
)

from toy_models import ToyMultiTaskNet, toy_batch, toy_loss  # noqa: E402

REL_H = 1e-4  # FD step relative to τ for the prox alone (smooth away from the thresholds)
# FD step relative to λ through the network: small enough that no ReLU of the toy model changes
# side between λ − h and λ + h (at 1e-4 some do: 0.5 % off); rounding stays ~1e-7 relative
REL_H_NET = 1e-6


# ---------------------------------------------------------------- 1. the prox's derivative
@pytest.mark.parametrize("metric", ["adam", "euclidean"])
def test_prox_tau_derivative_matches_finite_differences(metric):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 7, 3, 3, generator=g, dtype=torch.float64)
    z[:, :3] *= torch.linspace(0.1, 0.3, 3, dtype=torch.float64).reshape(1, 3, 1, 1)
    if metric == "adam":
        d = 0.5 + 1.5 * torch.rand(z.shape, generator=g, dtype=torch.float64)
        fn = lambda t: metric_prox(z, d, t)  # noqa: E731
    else:
        d = torch.ones_like(z)
        fn = lambda t: prox(z, t)  # noqa: E731
    # the threshold between the sorted ||d ⊙ z_g||, far from every one of them
    scores = group_norms(d * z).sort().values
    tau = float(scores[2] + scores[3]) / 2
    assert float(((group_norms(d * z) - tau).abs() / tau).min()) > 1e-2
    y = fn(tau)
    zero = group_norms(y) == 0
    assert 0 < int(zero.sum()) < z.shape[1]  # zeroed and kept groups both checked
    h = REL_H * tau
    fd = (fn(tau + h) - fn(tau - h)) / (2 * h)
    dy = prox_tau_derivative(z, y, d, tau)
    assert (dy[:, zero] == 0).all()
    torch.testing.assert_close(dy, fd, rtol=1e-5, atol=1e-9)
    assert float(dy.abs().max()) > 1e-2  # a real signal
    if metric == "euclidean":  # the block soft-threshold: −z_g/||z_g|| on a kept group
        kept = ~zero
        torch.testing.assert_close(
            dy[:, kept], -z[:, kept] / group_norms(z)[kept].reshape(1, -1, 1, 1),
            rtol=1e-12, atol=0)


# ---------------------------------------------------------------- 2. the whole outer step
def make_val(seed=100, n=6):
    g = torch.Generator().manual_seed(seed)
    return [toy_batch(n, generator=g) for _ in SUBSETS]


def val_objective(model, val):
    """f = Σ_S L_S(θ; val_S) at the model's current parameters, batch statistics (values only)."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = batch_stat_buffers(model)
    total = 0.0
    with torch.no_grad():
        for subset, (vx, vy) in zip(SUBSETS, val):
            out = functional_call(model, (params, buffers), (vx,), {"tasks": list(subset)})
            total += float(toy_loss(out, vy, subset)[0])
    return total


class OuterStep:
    """A float64 toy model, a ProxAdam with two plain steps of state behind it, a held-out
    meta-step result, and λ scaled so that the prox zeroes some groups and keeps the others,
    every group far from its threshold."""

    def __init__(self, metric: str, scope: str) -> None:
        torch.manual_seed(0)
        self.model = ToyMultiTaskNet().double()
        self.layers = channel_groups(self.model)
        self.opt = ProxAdam(prox_param_groups(self.model, self.layers), lr=0.05,
                            prox_metric=metric, num_layers=len(self.layers))
        g = torch.Generator().manual_seed(1)
        for _ in range(2):
            for p in self.model.parameters():
                p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
            self.opt.step(lam=None)
        for p in self.model.parameters():
            p.grad = None
        self.lam = make_lam(scope, len(self.layers))
        self.batches, self.val = make_batches(), make_val()
        self.res = meta_step(self.model, self.lam, self.layers, self.batches, toy_loss, ALPHA, 1,
                             "lambda_path", lambda_batches=self.val)
        self.model_state = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.opt_state = self._copy(self.opt.state_dict())
        # factors s from which the prox at s·λ zeroes each group, after this step's Adam step
        self._adam_step()
        per_layer = list(self.opt.zero_thresholds(self.model, self.layers,
                                                  self.lam().detach()).values())
        self.restore()
        # the widest gap between neighbouring thresholds below the point where a layer would
        # lose its last group (a layer without input channels makes the loss constant)
        s = torch.cat(per_layer).sort().values
        bound = min(float(t.max()) for t in per_layer)
        top = int((s <= bound).sum()) - 1
        k = max(range(top), key=lambda j: float(s[j + 1] / s[j]))
        c = math.sqrt(float(s[k] * s[k + 1]))
        assert float(s[k + 1] / s[k]) > 1.02  # λ ± h crosses no threshold
        with torch.no_grad():
            self.lam.rho.add_(math.log(c))
        self.zeroed = k + 1
        # the meta-step at the λ the update uses; every group still well off its threshold
        self.res = meta_step(self.model, self.lam, self.layers, self.batches, toy_loss, ALPHA, 1,
                             "lambda_path", lambda_batches=self.val)
        self._adam_step()
        s = torch.cat(list(self.opt.zero_thresholds(self.model, self.layers,
                                                    self.lam().detach()).values()))
        self.restore()
        assert float(s.log().abs().min()) > 5e-3

    def restore(self):
        self.model.load_state_dict(self.model_state)
        self.opt.load_state_dict(self._copy(self.opt_state))

    @staticmethod
    def _copy(st):
        return {"state": {i: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                          for i, s in st["state"].items()},
                "param_groups": [dict(grp) for grp in st["param_groups"]]}

    def _set_grads(self):
        for n, p in self.model.named_parameters():
            gr = self.res.grads_theta.get(n)
            p.grad = None if gr is None else gr.detach().clone()

    def _adam_step(self):
        self._set_grads()
        self.opt.step(lam=None)

    def f(self, lam_vec):
        """Σ_S L_S(θ_{t+1}(λ); val_S): the outer step (Adam, then the prox at λ) from the saved
        state."""
        self.restore()
        self._set_grads()
        self.opt.step(lam=lam_vec)
        out = val_objective(self.model, self.val)
        self.restore()
        return out

    def update(self, prox_path: bool, rho_lr: float = 1.0):
        self.restore()
        opt_rho = torch.optim.SGD([self.lam.rho], lr=rho_lr)
        path = (make_prox_path(self.model, self.layers, self.opt,
                               list(zip(SUBSETS, self.val)), toy_loss) if prox_path else None)
        rho0 = self.lam.rho.detach().clone()
        upd = outer_update(self.model, self.lam, self.res, self.opt, opt_rho, prox_step=0.0,
                           layers=self.layers, prox_path=path)
        theta = {k: v.clone() for k, v in self.model.state_dict().items()}
        rho1 = self.lam.rho.detach().clone()
        with torch.no_grad():
            self.lam.rho.copy_(rho0)
        self.restore()
        return upd, theta, rho1


@pytest.mark.parametrize("metric", ["adam", "euclidean"])
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_prox_path_matches_finite_differences_of_the_outer_step(metric, scope):
    step = OuterStep(metric, scope)
    lam_vec = step.lam().detach().clone()
    upd, _, _ = step.update(prox_path=True)
    got = upd["grad_lambda_prox"]
    assert got.shape == lam_vec.shape
    fd = central_differences(step.f, lam_vec, REL_H_NET)
    # the prox zeroed some groups and kept the others (global λ: exactly the planned ones)
    step.restore()
    step._set_grads()
    step.opt.step(lam=lam_vec)
    zeros = sum(int((group_norms(p.detach()) == 0).sum())
                for n, p in step.model.named_parameters() if n in {g.name for g in step.layers})
    step.restore()
    total = sum(g.num_groups for g in step.layers)
    assert 0 < zeros < total
    if scope == "global":
        assert zeros == step.zeroed
    assert fd.abs().max() > 1e-3  # a real signal
    torch.testing.assert_close(got, fd, rtol=1e-5, atol=1e-9 * float(fd.abs().max()))


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_prox_path_moves_rho_only(scope):
    step = OuterStep("adam", scope)
    lam_vec = step.lam().detach().clone()
    rho0 = step.lam.rho.detach().clone()
    with_path, theta_a, rho_a = step.update(prox_path=True)
    without, theta_b, rho_b = step.update(prox_path=False)
    assert without["grad_lambda_prox"] is None
    assert not same_tensors(theta_a, theta_b)  # θ's update is the same, bit for bit
    # SGD with rate 1 on ρ: ρ' = ρ − dλ/dρ · (grad_lambda [+ prox part]), dλ/dρ = λ
    torch.testing.assert_close(rho_b, rho0 - lam_vec * step.res.grad_lambda, rtol=1e-12, atol=0)
    torch.testing.assert_close(rho_a, rho0 - lam_vec * (step.res.grad_lambda
                                                        + with_path["grad_lambda_prox"]),
                               rtol=1e-12, atol=0)
    assert not torch.equal(rho_a, rho_b)


def test_no_prox_path_on_a_step_without_prox():
    """The landing step of budget mode takes its own prox: the prox path is not taken."""
    step = OuterStep("adam", "global")
    step.restore()
    called = []
    upd = outer_update(step.model, step.lam, step.res, step.opt,
                       torch.optim.SGD([step.lam.rho], lr=1.0), prox_step=0.0, layers=step.layers,
                       take_prox=False, prox_path=lambda before, lam: called.append(1))
    assert upd["grad_lambda_prox"] is None and not called
    step.restore()


# ---------------------------------------------------------------- 3. meta-training
PROX_PATH = MICRO + ["meta.lambda_init=0.01", "meta.val_every=100",
                     "meta.lambda_through_prox=true"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("prox_path") / "run"
    mt = MetaTrainer(load_config(None, PROX_PATH), run, overwrite=True)
    mt.setup()
    return {"run": run, "res": mt.train(), "ck": load_run_checkpoint(run, "last")}


def test_meta_train_logs_the_prox_part(straight):
    recs = [r for r in read_jsonl(straight["run"] / "metrics.jsonl") if r["kind"] == "meta"]
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    for r in recs:
        assert isinstance(r["grad_lambda_prox"], float) and math.isfinite(r["grad_lambda_prox"])
    assert any(r["grad_lambda_prox"] != 0 for r in recs)
    assert straight["res"]["lambda_through_prox"] is True
    assert read_json(straight["run"] / "results.json")["lambda_through_prox"] is True


def test_meta_train_without_the_prox_path_logs_none(tmp_path):
    cfg = load_config(None, PROX_PATH[:-1])
    mt = MetaTrainer(cfg, tmp_path / "run", overwrite=True)
    mt.setup()
    res = mt.train()
    recs = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "meta"]
    assert all(r["grad_lambda_prox"] is None for r in recs)
    assert res["lambda_through_prox"] is False


def test_prox_path_stop_and_resume_is_bit_identical(straight, tmp_path):
    cfg = load_config(None, PROX_PATH)
    mt = MetaTrainer(cfg, tmp_path / "m", overwrite=True)
    mt.setup()
    assert mt.train(stop_after=2) is None
    mt = MetaTrainer(cfg, tmp_path / "m", resume=True)
    mt.setup()
    mt.train()
    a, b = straight["ck"], load_run_checkpoint(tmp_path / "m", "last")
    assert not same_tensors(a.model, b.model)
    assert torch.equal(a.state["lam"]["rho"], b.state["lam"]["rho"])


@pytest.mark.parametrize("extra,words", [
    (["meta.lambda_objective=query"], "lambda_objective=heldout"),
    (["meta.learn_lambda=false"], "not learned"),
    (["meta.lambda_init=0"], "not learned"),
    (["meta.target=0.5"], "lambda_scope=layer"),
])
def test_prox_path_refused_where_it_means_nothing(tmp_path, capsys, extra, words):
    out = tmp_path / "run"
    assert cli("meta-train", "--out", out, *PROX_PATH, *extra) == 2
    err = capsys.readouterr().err
    assert "meta.lambda_through_prox" in err and words in err
    assert "Traceback" not in err
    assert not out.exists()
