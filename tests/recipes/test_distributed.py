"""Several processes (Gloo on CPU) compute what one process computes, and only rank 0 writes.

* function level (two processes started with ``torch.multiprocessing``): one meta-step split over
  two ranks, uneven shares, a head reached on one rank only and a head reached nowhere, gives the
  single-process gradients, θ, λ and zero groups; the ranks end bit-identical;
* end to end with the documented command, ``python -m torch.distributed.run --standalone
  --nproc_per_node=2 -m metasparsity meta-train|train …``, against the single-process command;
* files: each rank runs the CLI from its own working directory; rank 1's stays empty.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tests.recipes.micro import MICRO, cli

from metasparsity.builders import build_model
from metasparsity.config import load_config
from metasparsity.data import build_dataset, resolve_tasks
from metasparsity.meta import LearnedLambda, meta_step, outer_update
from metasparsity.meta.meta_batch import distributed_meta_step, local_subsets
from metasparsity.sparsity import channel_groups, sparsity_stats
from metasparsity.training.collectives import init_distributed, params_checksum, shutdown
from metasparsity.training.run_checkpoints import load_run_checkpoint
from metasparsity.training.weighting import LossWeighting
from metasparsity.utils.io import read_json, read_jsonl

CPU = MICRO + ["train.device=cpu"]
# 3 subsets over 2 ranks (uneven shares: 0, 1 | 2); 2 steps x 3 batches of 4 cross an epoch of
# the 16-sample support / query halves; λ and the outer rate large enough for the prox to zero
# some groups.
META = CPU + ["meta.steps=2", "meta.val_every=2", "meta.meta_batch=3", "meta.lambda_init=0.03",
              "meta.lambda_max=1.0", "meta.outer_lr=0.05", "meta.lambda_scope=layer",
              "meta.lambda_through_prox=true"]
# Both sides of the end-to-end comparisons compute in float64 (see float64_cli.py for why).
FLOAT64_CLI = str(Path(__file__).with_name("float64_cli.py"))
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            FLOAT64_CLI]
ONE_PROCESS = [sys.executable, FLOAT64_CLI]


def _run(launcher: list[str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "METASPARSITY_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([*launcher, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _torchrun(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """Two ranks (Gloo), float64."""
    return _run(TORCHRUN, cwd, *args)


def _one_process(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """The same command in one process, float64."""
    return _run(ONE_PROCESS, cwd, *args)


# ----------------------------------------------------------------------------- function level

SUBSETS = [("segment",), ("segment", "depth"), ("has_sphere",)]  # rank 0: 0, 1; rank 1: 2
MODEL_TASKS = ["segment", "depth", "has_sphere", "edge"]  # edge: in no subset


def _meta_setup():
    cfg = load_config(None, MICRO)
    tasks = resolve_tasks(cfg, MODEL_TASKS)
    torch.manual_seed(0)
    model = build_model(cfg, MODEL_TASKS).double()
    ds = build_dataset(cfg, "train")

    def batch(lo: int):
        xs, ys = zip(*[ds[i] for i in range(lo, lo + 4)])
        y = {t: torch.stack([v[t] for v in ys]) for t in MODEL_TASKS}
        return torch.stack(xs).double(), {t: v.double() if v.is_floating_point() else v
                                          for t, v in y.items()}

    batches = []
    for j, s in enumerate(SUBSETS):
        (sx, sy), (qx, qy) = batch(4 * j), batch(16 + 4 * j)
        batches.append((s, sx, sy, qx, qy))
    return model, tasks, batches


def _one_step(model, tasks, batches, *, distributed: bool):
    layers = channel_groups(model)
    lam = LearnedLambda(0.5, scope="layer", num_layers=len(layers), lambda_max=1.0)
    weighting = LossWeighting(list(tasks), "uncertainty").double()

    def loss_fn(out, y, subset):
        losses = {t: tasks[t].loss(out[t], y[t]) for t in subset}
        return weighting(losses), losses

    extra = dict(weighting.named_parameters())
    opt_theta = torch.optim.Adam(list(model.parameters()) + list(weighting.parameters()), lr=0.05)
    opt_rho = torch.optim.Adam([lam.rho], lr=0.05)
    kw = dict(inner_lr=0.1, inner_steps=1, mode="lambda_path", extra_params=extra)
    if distributed:
        info = init_distributed("cpu")
        mine = [batches[j] for j in local_subsets(len(batches), info)]
        res = distributed_meta_step(model, lam, layers, mine, loss_fn, subsets=SUBSETS, **kw)
    else:
        res = meta_step(model, lam, layers, batches, loss_fn, **kw)
    outer_update(model, lam, res, opt_theta, opt_rho, prox_step=0.3, layers=layers,
                 extra_params=extra)
    return res, lam, weighting


def _check_meta_step(rank: int, world: int) -> None:
    model, tasks, batches = _meta_setup()
    ref_model = copy.deepcopy(model)
    res, lam, weighting = _one_step(model, tasks, batches, distributed=True)
    # every rank holds the same θ, λ and loss weights, bit for bit
    sums = [None] * world
    dist.all_gather_object(sums, (params_checksum(model), lam.rho.detach().clone(),
                                  params_checksum(weighting)))
    for other in sums[1:]:
        assert all(torch.equal(a, b) for a, b in zip(sums[0], other))
    if rank != 0:
        return
    ref, ref_lam, ref_w = _one_step(ref_model, tasks, batches, distributed=False)
    # gradients: None exactly where one process has None (heads.edge: no subset reaches it;
    # heads.has_sphere: rank 1 only), equal sums elsewhere
    none = {n for n, g in ref.grads_theta.items() if g is None}
    assert none == {n for n, g in res.grads_theta.items() if g is None}
    assert none and all(n.startswith("heads.edge.") for n in none)
    for n, g in ref.grads_theta.items():
        if g is not None:
            torch.testing.assert_close(res.grads_theta[n], g, rtol=1e-10, atol=1e-12)
    for n, g in ref.grads_extra.items():
        torch.testing.assert_close(res.grads_extra[n], g, rtol=1e-10, atol=1e-12)
    for f in ("grad_lambda", "grad_lambda_explicit", "grad_lambda_implicit", "grad_rho"):
        torch.testing.assert_close(getattr(res, f), getattr(ref, f), rtol=1e-10, atol=1e-14)
    assert res.query_loss.keys() == ref.query_loss.keys()
    for t in ref.query_loss:
        assert res.query_loss[t] == pytest.approx(ref.query_loss[t], rel=1e-10)
        assert res.inner_loss[t] == pytest.approx(ref.inner_loss[t], rel=1e-10)
    assert res.loss == pytest.approx(ref.loss, rel=1e-10)
    assert res.subsets == ref.subsets
    # after Adam and the prox: the same θ, λ and zero groups as one process
    ref_params = dict(ref_model.named_parameters())
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, ref_params[n], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lam.rho, ref_lam.rho, rtol=1e-12, atol=1e-14)
    assert not torch.equal(lam.rho, torch.full_like(lam.rho, lam.rho.flatten()[0].item()))
    st, st_ref = sparsity_stats(model), sparsity_stats(ref_model)
    assert 0 < st.group_sparsity == st_ref.group_sparsity < 1
    assert [la["group_sparsity"] for la in st.per_layer] == [la["group_sparsity"]
                                                           for la in st_ref.per_layer]


def _check_files(rank: int, root: Path) -> None:
    cwd = root / f"cwd{rank}"
    cwd.mkdir()
    os.chdir(cwd)
    # meta.meta_batch below the number of processes: a clear error on every rank, nothing written
    assert cli("meta-train", "--out", "bad", *CPU, "meta.meta_batch=1") == 2
    assert cli("train", "--out", "run", *CPU, "train.max_steps=1", "train.batch_size=4") == 0
    assert cli("meta-train", "--out", "meta", *CPU, "meta.steps=1") == 0
    dist.barrier()
    if rank != 0:
        assert sorted(p.name for p in cwd.iterdir()) == []  # not even an empty run directory
    else:
        assert sorted(p.name for p in cwd.iterdir()) == ["meta", "run"]
        assert (cwd / "run" / "results.json").is_file()
        assert (cwd / "meta" / "meta_training.png").is_file()


def _worker(rank: int, world: int, store: str, root: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      LOCAL_WORLD_SIZE=str(world), METASPARSITY_NUM_THREADS="1")
    torch.set_num_threads(1)
    # a file store: no port to probe, so no other process can take it in between
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        _check_meta_step(rank, world)
        _check_files(rank, Path(root))
    finally:
        shutdown()


def test_two_ranks_meta_step_and_files_match_one_process(tmp_path, tmp_path_factory):
    store = tmp_path_factory.mktemp("store") / "rendezvous"
    mp.spawn(_worker, args=(2, str(store), str(tmp_path)), nprocs=2, join=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd0", "cwd1"]


# ----------------------------------------------------------------------------- end to end


# Float64 runs agree to rounding (~1e-16) amplified at most by Adam's 1/ε near zero gradients
# (lr·1e-16/1e-8 per step, lr ≤ 0.05): 1e-9 leaves four orders of margin, while a real defect
# (unsynchronised BatchNorm, a wrong data split, a missing all-reduce) moves elements by ~lr.
RTOL, ATOL = 1e-9, 1e-10


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Every floating tensor within RTOL/ATOL of the other; integer buffers equal."""
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=RTOL, atol=ATOL, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


def b_dtype(run: Path) -> torch.dtype:
    """dtype of the run's first floating parameter (the launcher really computed in float64)."""
    m = load_run_checkpoint(run, "last").model
    return next(v.dtype for v in m.values() if v.is_floating_point())


def test_torchrun_meta_train_matches_single_process(tmp_path):
    _torchrun(tmp_path, "meta-train", "--out", "two", *META)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two"]  # rank 1 wrote nothing here
    assert b_dtype(tmp_path / "two") == torch.float64
    _one_process(tmp_path, "meta-train", "--out", "one", *META)
    # rank 0 wrote what one process writes: config, log, checkpoints, results, plots
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir())
    a, b = load_run_checkpoint(tmp_path / "one", "last"), load_run_checkpoint(tmp_path / "two", "last")
    assert a.meta["step"] == b.meta["step"] == 2
    assert a.meta["support"] == b.meta["support"] and a.meta["query"] == b.meta["query"]
    assert a.meta["sampler"] == b.meta["sampler"]
    _close(a.model, b.model)  # θ and the re-estimated BN statistics
    torch.testing.assert_close(a.state["lam"]["rho"], b.state["lam"]["rho"], rtol=RTOL, atol=ATOL)
    ra, rb = read_json(tmp_path / "one" / "results.json"), read_json(tmp_path / "two" / "results.json")
    assert ra["lambda_final"] == pytest.approx(rb["lambda_final"], rel=RTOL)
    assert 0 < ra["sparsity"]["group_sparsity"] == rb["sparsity"]["group_sparsity"] < 1
    assert len(b.state["rng_ranks"]) == 2  # rank 1's RNG states, for an exact resume
    # the logged values are the whole meta-batch's
    la = [r for r in read_jsonl(tmp_path / "one" / "metrics.jsonl") if r["kind"] == "meta"]
    lb = [r for r in read_jsonl(tmp_path / "two" / "metrics.jsonl") if r["kind"] == "meta"]
    assert [r["subsets"] for r in la] == [r["subsets"] for r in lb]
    for x, y in zip(la, lb):
        assert x["query_loss"] == pytest.approx(y["query_loss"], rel=RTOL)
        assert x["lambda"] == pytest.approx(y["lambda"], rel=RTOL)
        assert x["grad_lambda_implicit"] == pytest.approx(y["grad_lambda_implicit"], rel=1e-6,
                                                          abs=1e-12)
        # λ's part through the outer prox: every rank's λ-validation batches, summed
        assert x["grad_lambda_prox"] != 0
        assert x["grad_lambda_prox"] == pytest.approx(y["grad_lambda_prox"], rel=1e-6, abs=1e-12)


def test_torchrun_train_matches_single_process_with_double_batch(tmp_path):
    # fixed-λ prox and learned loss weights included.  Tasks whose loss is a mean over equally
    # many elements on each rank (SynthScenes labels every pixel); the edge loss weights its
    # classes by the batch's own edge share, which differs between a slice and the whole batch.
    train = CPU + ["train.max_steps=3", "train.val_every=3", "sparsity.lam=0.05",
                   "train.loss_weighting=uncertainty", "train.warmup_steps=1",
                   "train.tasks=[segment,depth,has_sphere,many_objects]"]
    _torchrun(tmp_path, "train", "--out", "two", *train, "train.batch_size=4")
    _one_process(tmp_path, "train", "--out", "one", *train, "train.batch_size=8")
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir())
    assert b_dtype(tmp_path / "two") == torch.float64
    a, b = load_run_checkpoint(tmp_path / "one", "last"), load_run_checkpoint(tmp_path / "two", "last")
    assert a.meta["stream"] == b.meta["stream"]  # the same global batches
    _close(a.model, b.model)  # parameters and synchronised BN statistics
    _close(a.state["weighting"], b.state["weighting"])
    la = [r["losses"] for r in read_jsonl(tmp_path / "one" / "metrics.jsonl") if r["kind"] == "train"]
    lb = [r["losses"] for r in read_jsonl(tmp_path / "two" / "metrics.jsonl") if r["kind"] == "train"]
    assert len(la) == len(lb) == 3
    for x, y in zip(la, lb):
        assert x == pytest.approx(y, rel=RTOL)
