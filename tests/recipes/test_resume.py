"""Resuming: N steps straight == N/2 steps, stop (or Ctrl-C), resume, N/2 steps — bit for bit."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
import yaml
from tests.recipes.micro import (
    MICRO,
    cli,
    finish,
    interrupt_on_call,
    same_tensors,
    start_long_training,
)

from metasparsity.config import load_config
from metasparsity.recipes.meta_train import MetaTrainer
from metasparsity.recipes.train import Trainer, settings_from_config
from metasparsity.training.checkpoint import checkpoint_step
from metasparsity.training.run_checkpoints import load_run_checkpoint
from metasparsity.utils.io import read_json, read_jsonl, write_json
from metasparsity.utils.provenance import code_identity

# Everything that carries state across steps: warm-up + cosine LR, Adam, learned loss weights,
# the fixed-λ prox, and (meta) both Adam states, ρ, the subset sampler, support/query streams,
# the clip's norm history (clip_grad = 0.5: the sixth step is clipped; it needs 5 norms).
RESUME = MICRO + ["train.max_steps=6", "train.val_every=4", "train.warmup_steps=2",
                  "sparsity.lam=0.05", "train.loss_weighting=uncertainty",
                  "data.train_size=24", "meta.steps=6", "meta.val_every=4",
                  "meta.lr_schedule=cosine", "meta.warmup_steps=2",
                  "meta.clip_grad=0.5", "meta.outer_beta1=0.8"]


def _last(run_dir: Path):
    return load_run_checkpoint(run_dir, "last")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """6 steps without interruption, through the command line, for train and meta-train."""
    root = tmp_path_factory.mktemp("straight")
    torch.set_num_threads(1)
    assert cli("train", "--out", root / "train", *RESUME) == 0
    assert cli("meta-train", "--out", root / "meta", *RESUME) == 0
    return {"train": _last(root / "train"), "meta": _last(root / "meta"), "root": root}


@pytest.mark.parametrize("stop", [3, 4])  # 4: the stop coincides with a validation
def test_train_stop_and_resume_is_bit_identical(straight, tmp_path, stop):
    cfg = load_config(None, RESUME)
    tr = Trainer(cfg, tmp_path / "r", settings_from_config(cfg))
    tr.setup()
    assert tr.train(stop_after=stop) is None
    assert _last(tmp_path / "r").meta["step"] == stop
    assert not (tmp_path / "r" / "results.json").exists()

    tr = Trainer(cfg, tmp_path / "r", settings_from_config(cfg), resume=True)
    tr.setup()
    assert tr.step == stop
    res = tr.train()
    assert res["steps"] == 6  # stops at max_steps, not stop + 6
    a, b = straight["train"], _last(tmp_path / "r")
    assert b.meta["step"] == 6
    assert same_tensors(a.model, b.model) == []  # parameters and BN buffers
    assert same_tensors(a.state["weighting"], b.state["weighting"]) == []
    sa, sb = a.state["opt"]["state"], b.state["opt"]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    assert a.meta["best_step"] == b.meta["best_step"]
    # metrics.jsonl: one train record per step, the resume noted once
    recs = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    assert [r["step"] for r in recs if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["from_step"] for r in recs if r["kind"] == "resume"] == [stop]


def test_meta_train_stop_and_resume_is_bit_identical(straight, tmp_path):
    cfg = load_config(None, RESUME)
    mt = MetaTrainer(cfg, tmp_path / "m")
    mt.setup()
    # stop right after the validation at step 4: its BN re-estimation must not leak into the rest
    assert mt.train(stop_after=4) is None
    mt = MetaTrainer(cfg, tmp_path / "m", resume=True)
    mt.setup()
    res = mt.train()
    a, b = straight["meta"], _last(tmp_path / "m")
    assert res["steps"] == 6 and b.meta["step"] == 6
    assert same_tensors(a.model, b.model) == []
    assert torch.equal(a.state["lam"]["rho"], b.state["lam"]["rho"])
    assert a.meta["lambda"] == b.meta["lambda"] != 0.05  # λ was learned, identically
    assert a.meta["sampler"] == b.meta["sampler"]
    lam_steps = [r["step"] for r in res["lambda_trajectory"]]
    assert lam_steps == [1, 2, 3, 4, 5, 6]
    # the clip acted on the last step only (5 norms needed), in both runs alike
    recs = [r for r in read_jsonl(straight["root"] / "meta" / "metrics.jsonl")
            if r["kind"] == "meta"]
    assert [r["clip_scale"] == 1.0 for r in recs] == [True] * 5 + [False]
    assert a.state["clip"] == b.state["clip"] and len(a.state["clip"]["history"]) == 6
    assert all(g["betas"][0] == 0.8 for g in b.state["opt_theta"]["param_groups"])


def test_a_resumed_meta_train_takes_beta1_from_its_own_config(tmp_path):
    mt = MetaTrainer(load_config(None, RESUME), tmp_path / "m")
    mt.setup()
    assert mt.train(stop_after=2) is None
    assert all(g["betas"][0] == 0.8 for g in mt.opt_theta.param_groups)
    mt = MetaTrainer(load_config(None, [*RESUME, "meta.outer_beta1=0.7"]), tmp_path / "m",
                     resume=True)
    mt.setup()
    assert mt.step == 2
    assert all(g["betas"] == (0.7, 0.999) for g in mt.opt_theta.param_groups)


def test_meta_outer_lr_follows_its_schedule(monkeypatch, tmp_path):
    """θ's rate (and prox step) at outer step s is outer_lr · lr_factor(s): warm-up, then cosine;
    λ's is lambda_lr · lr_factor(s)."""
    import metasparsity.recipes.meta_train as mtmod
    from metasparsity.training.schedule import lr_factor

    cfg = load_config(None, RESUME)
    seen, rho_lr = [], []
    real = mtmod.outer_update

    def spy(model, lam, res, opt_theta, opt_rho, *a, **k):
        seen.append([g["lr"] for g in opt_theta.param_groups])
        rho_lr.append([g["lr"] for g in opt_rho.param_groups])
        return real(model, lam, res, opt_theta, opt_rho, *a, **k)

    monkeypatch.setattr(mtmod, "outer_update", spy)
    mt = MetaTrainer(cfg, tmp_path / "m")
    mt.setup()
    mt.train()
    m = cfg.meta
    want = [m.outer_lr * lr_factor("cosine", s, 6, 2) for s in range(6)]
    assert [lrs[0] for lrs in seen] == want and all(len(set(v)) == 1 for v in seen)
    assert want[0] == m.outer_lr / 2 and want[1] == m.outer_lr and want[-1] < 0.2 * m.outer_lr
    # λ anneals with θ: ρ's Adam rate is lambda_lr times the same factor
    assert [r[0] for r in rho_lr] == [m.lambda_lr * lr_factor("cosine", s, 6, 2) for s in range(6)]


def test_ctrl_c_saves_last_step_and_resume_matches(straight, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    interrupt_on_call(monkeypatch, "metasparsity.recipes.train", 3)  # during step 3
    assert cli("train", "--out", run, *RESUME) == 130
    err = capsys.readouterr().err
    assert f"interrupted at step 2; resume with: metasparsity train --resume {run}" in err
    assert "Traceback" not in err
    assert _last(run).meta["step"] == 2  # the last completed step, saved on the way out
    monkeypatch.undo()
    assert cli("train", "--resume", run) == 0
    assert same_tensors(straight["train"].model, _last(run).model) == []
    assert read_json(run / "results.json")["steps"] == 6


def test_ctrl_c_in_meta_train_then_resume_matches(straight, tmp_path, monkeypatch, capsys):
    run = tmp_path / "meta"
    # λ0 = auto reads 3 batches first; then each meta step moves 2 subsets x (support, query,
    # λ-validation) = 6 batches: call 3 + 19 is in step 4
    interrupt_on_call(monkeypatch, "metasparsity.recipes.meta_train", 3 + 19)
    assert cli("meta-train", "--out", run, *RESUME) == 130
    assert (f"interrupted at step 3; resume with: metasparsity meta-train --resume {run}"
            in capsys.readouterr().err)
    assert _last(run).meta["step"] == 3
    monkeypatch.undo()
    assert cli("meta-train", "--resume", run) == 0
    b = _last(run)
    assert same_tensors(straight["meta"].model, b.model) == []
    assert torch.equal(straight["meta"].state["lam"]["rho"], b.state["lam"]["rho"])


def test_resume_into_a_longer_run_updates_config(tmp_path):
    run = tmp_path / "run"
    assert cli("train", "--out", run, *MICRO) == 0
    assert cli("train", "--resume", run, "train.max_steps=6") == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 6
    assert read_json(run / "results.json")["steps"] == 6
    assert checkpoint_step(_last(run).path) == 6
    resume = [r for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "resume"]
    assert resume == [{**resume[0], "from_step": 4, "changed": {"train.max_steps": [4, 6]}}]
    # a finished run resumed without changes just re-scores itself; no step is trained again
    assert cli("train", "--resume", run) == 0
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"] == \
        [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_real_signal_saves_and_exits(tmp_path, sig, code):
    """A real Ctrl-C (SIGINT) to the console command, mid-run; and the SIGTERM of a batch
    scheduler (or kill), which killed the run at once, without a checkpoint."""
    run = tmp_path / "run"
    proc = start_long_training(run)
    proc.send_signal(sig)
    _, err = finish(proc)
    assert proc.returncode == code, err
    msg = next(line for line in err.splitlines() if "interrupted at step" in line)
    step = int(msg.split("interrupted at step ")[1].split(";")[0])
    assert step >= 3 and f"resume with: metasparsity train --resume {run}" in msg
    ck = _last(run)
    st = ck.meta["stream"]  # 32 samples / batch 8: 4 batches per epoch
    assert ck.meta["step"] == step and st["epoch"] * 4 + st["pos"] == step
    assert not (run / "results.json").exists()


def test_sweep_resume_reuses_finished_and_continues_unfinished(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep"
    # dense MTL takes calls 1-4; the first λ run is interrupted during its step 2
    interrupt_on_call(monkeypatch, "metasparsity.recipes.train", 6)
    assert cli("sweep-lambda", "--out", out, "--grid", "0.01,30", *MICRO) == 130
    err = capsys.readouterr().err
    assert f"interrupted at step 1 of {out / 'lam_0.01'}; resume with: " \
        f"metasparsity sweep-lambda --resume {out}" in err
    dense_mtime = (out / "dense_mtl" / "results.json").stat().st_mtime_ns
    monkeypatch.undo()
    assert cli("sweep-lambda", "--resume", out) == 0  # the grid comes from config.yaml
    assert (out / "dense_mtl" / "results.json").stat().st_mtime_ns == dense_mtime  # reused
    recs = read_jsonl(out / "lam_0.01" / "metrics.jsonl")
    assert [r["from_step"] for r in recs if r["kind"] == "resume"] == [1]
    assert [r["step"] for r in recs if r["kind"] == "train"] == [1, 2, 3, 4]
    summary = read_json(out / "sweep.json")
    assert [r["lam"] for r in summary["rows"]] == [0.01, 30.0]


def test_compare_resume_reuses_finished_runs_and_continues_the_interrupted_one(
        tmp_path, monkeypatch, capsys):
    from metasparsity.recipes import train as mtl

    out = tmp_path / "cmp"
    target = out / "seed_0" / "meta_sparsity" / "finetune_unseen"
    real_train = mtl.Trainer.train

    def train(self, stop_after=None):
        if self.run_dir == target:  # Ctrl-C during step 2 of the last fine-tuning
            interrupt_on_call(monkeypatch, "metasparsity.recipes.train", 2)
        return real_train(self, stop_after)

    monkeypatch.setattr(mtl.Trainer, "train", train)
    micro = [*MICRO, "data.train_size=16", "data.val_size=8", "data.test_size=8",
             "train.max_steps=6", "finetune.steps=2", "finetune.val_every=1",  # 2 meta-steps
             "data.tasks=[segment,has_sphere,depth]", "data.seen_tasks=[segment,has_sphere]",
             "data.unseen_tasks=[depth]", "compare.methods=[mtl,meta_sparsity]"]
    assert cli("compare", "--out", out, *micro) == 130
    assert (f"interrupted at step 1 of {target}; resume with: metasparsity compare --resume {out}"
            in capsys.readouterr().err)
    # one finished sub-run as if an older commit had made it: reused, and named in the results
    old = min(out.rglob("results.json"))
    old_res = read_json(old)
    write_json(old, {**old_res, "code": {**old_res["code"], "commit": "b" * 40, "dirty": False,
                                         "package": "sha256:" + "0" * 16}})
    finished = {p: p.stat().st_mtime_ns for p in out.rglob("results.json")}
    assert len(finished) == 7  # 3 STL; MTL + its unseen fine-tuning; meta-training + seen FT
    monkeypatch.undo()
    capsys.readouterr()
    assert cli("compare", "--resume", out, "name=renamed") == 0  # an override on continuing
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())  # reused as they were
    assert "config.yaml updated: name 'run' -> 'renamed'" in capsys.readouterr().out
    assert yaml.safe_load((out / "config.yaml").read_text())["name"] == "renamed"
    recs = read_jsonl(target / "metrics.jsonl")
    assert [r["from_step"] for r in recs if r["kind"] == "resume"] == [1]
    assert [r["step"] for r in recs if r["kind"] == "train"] == [1, 2]
    res = read_json(out / "results.json")
    assert set(res["summary"]) == {"stl", "mtl", "meta_sparsity"}
    assert "depth" in res["per_seed"]["0"]["meta_sparsity"]["unseen"]["test"]
    assert res["config"]["name"] == "renamed"  # config.yaml and results.json agree
    here = code_identity()
    assert res["code"] == here
    name = str(old.parent.relative_to(out))
    # this code vouches for the runs it made itself (the package digest)
    assert res["runs_from_other_code"] == {"bbbbbbb": [name]}
    assert f"bbbbbbb: {name}" in (out / "report.md").read_text()


def test_finetune_interrupted_then_resumed_with_its_recorded_tasks(straight, tmp_path,
                                                                   monkeypatch, capsys):
    src, out = straight["root"] / "meta", tmp_path / "ft"
    interrupt_on_call(monkeypatch, "metasparsity.recipes.train", 3)  # during step 3
    assert cli("finetune", src, "--tasks", "normal", "--out", out) == 130
    assert (f"interrupted at step 2; resume with: metasparsity finetune {src} --resume {out}"
            in capsys.readouterr().err)
    monkeypatch.undo()
    assert cli("finetune", src, "--resume", out) == 0  # no --tasks: taken from out/config.yaml
    res = read_json(out / "results.json")
    assert res["tasks"] == ["normal"] and res["steps"] == 4
    assert [r["from_step"] for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "resume"] == [2]


def _signal_on_call(monkeypatch, owner, name: str, k: int, sig=signal.SIGINT, times: int = 1):
    """Make the k-th call of ``owner.name`` send a real ``sig`` to this process (``times``
    times, each a minute after the last by the interrupt guard's clock), then run."""
    import os

    from metasparsity.training import interrupt

    real = getattr(owner, name)
    calls = {"n": 0}
    clock = [0.0]
    monkeypatch.setattr(interrupt, "_now", lambda: clock[-1])

    def sending(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == k:
            for _ in range(times):
                clock.append(clock[-1] + 60.0)
                os.kill(os.getpid(), sig)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, sending)


@pytest.fixture
def ctrl_c():
    """Python's own Ctrl-C handler (a suite started in the background inherits SIGINT ignored)."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, inherited)


def _val_steps(run):
    return [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "val"]


@pytest.mark.parametrize("where, step", [
    ("losses", 3),      # after the forward pass: BatchNorm's statistics are already updated
    ("validation", 4),  # the step-4 validation (val_every = 4)
    ("save", 4),        # the checkpoint save after it
])
def test_a_real_ctrl_c_lets_the_step_finish_and_resume_matches(straight, tmp_path, monkeypatch,
                                                             capsys, ctrl_c, where, step):
    """A Ctrl-C used to cut the step where it landed: after the forward pass the checkpoint held
    the next step's BatchNorm statistics; in a validation the resumed run skipped it (another
    best checkpoint); in a save nothing was saved, yet the message named that step."""
    import metasparsity.recipes.train as train_mod
    import metasparsity.training.session as session_mod

    owner, name = {"losses": (train_mod, "task_losses"), "validation": (Trainer, "_validate"),
                   "save": (session_mod, "save_checkpoint")}[where]
    _signal_on_call(monkeypatch, owner, name, {"losses": 3}.get(where, 1))
    run = tmp_path / "run"
    assert cli("train", "--out", run, *RESUME) == 130
    err = capsys.readouterr().err
    assert f"interrupted at step {step}; resume with" in err and "Traceback" not in err, err
    assert "the current step finishes" in err
    assert _last(run).meta["step"] == step
    monkeypatch.undo()
    assert cli("train", "--resume", run) == 0
    assert same_tensors(straight["train"].model, _last(run).model) == []
    want = read_json(straight["root"] / "train" / "results.json")
    got = read_json(run / "results.json")
    assert got["best_step"] == want["best_step"] and got["test"] == want["test"]
    assert _val_steps(run) == _val_steps(straight["root"] / "train") == [4, 6]


@pytest.mark.parametrize("where, k, last", [
    ("losses", 3, None),     # in step 3's forward pass, before any checkpoint
    ("validation", 2, 4),    # in step 6's validation: step 4's checkpoint stays the last
    ("save", 1, "saved"),    # in step 4's save: it waits for the files and pointers
])
def test_a_second_ctrl_c_stops_mid_step_saving_nothing_and_resume_matches(
        straight, tmp_path, monkeypatch, capsys, ctrl_c, where, k, last):
    """A second Ctrl-C during the step it waits for stops at once (a long validation could
    not be stopped but by kill -9); the half-done step is not saved, and the resume still
    ends as the uninterrupted run.  A save is not cut: between its files and its last/best
    pointers a resume would keep a stale best."""
    import metasparsity.recipes.train as train_mod
    import metasparsity.training.session as session_mod

    owner, name = {"losses": (train_mod, "task_losses"), "validation": (Trainer, "_validate"),
                   "save": (session_mod, "save_checkpoint")}[where]
    _signal_on_call(monkeypatch, owner, name, k, times=2)
    run = tmp_path / "run"
    assert cli("train", "--out", run, *RESUME) == 130
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[0].startswith("interrupt received: the current step finishes"), err
    if last == "saved":
        assert lines[1:] == [f"metasparsity train: interrupted at step 4; resume with: "
                             f"metasparsity train --resume {run}"], err
        assert _last(run).meta["step"] == 4
        assert load_run_checkpoint(run, "best").meta["step"] == 4
    elif last is None:
        assert lines[1:] == ["metasparsity train: interrupted mid-step, at once, before the "
                             "first checkpoint; nothing to resume: run the command again with "
                             "--overwrite"], err
        assert not list(run.glob("checkpoints/step_*"))
    else:
        assert lines[1:] == [f"metasparsity train: interrupted mid-step, at once; resume with: "
                             f"metasparsity train --resume {run} (from step {last}, the last "
                             f"checkpoint)"], err
        assert [p.name for p in run.glob("checkpoints/step_*")] == [f"step_{last:07d}"]
    monkeypatch.undo()
    again = ["--out", run, "--overwrite", *RESUME] if last is None else ["--resume", run]
    assert cli("train", *again) == 0
    assert same_tensors(straight["train"].model, _last(run).model) == []
    want = read_json(straight["root"] / "train" / "results.json")
    got = read_json(run / "results.json")
    assert got["best_step"] == want["best_step"] and got["test"] == want["test"]
    assert _val_steps(run) == _val_steps(straight["root"] / "train") == [4, 6]


def test_a_real_ctrl_c_in_a_meta_train_validation_is_not_skipped_on_resume(straight, tmp_path,
                                                                           monkeypatch, ctrl_c):
    _signal_on_call(monkeypatch, MetaTrainer, "_validate", 1)
    run = tmp_path / "meta"
    assert cli("meta-train", "--out", run, *RESUME) == 130
    monkeypatch.undo()
    assert cli("meta-train", "--resume", run) == 0
    assert _val_steps(run) == _val_steps(straight["root"] / "meta") == [4, 6]
    b = _last(run)
    assert same_tensors(straight["meta"].model, b.model) == []
    assert load_run_checkpoint(run, "best").meta["step"] == \
        load_run_checkpoint(straight["root"] / "meta", "best").meta["step"]


def test_a_meta_train_resume_points_best_at_the_validated_checkpoint_it_resumes(straight,
                                                                                tmp_path):
    """Killed between a validation checkpoint's ``last`` and ``best`` pointers, a meta-train
    run kept ``best`` at an older checkpoint for good (finetune, evaluate and prune read it)."""
    import shutil

    run = tmp_path / "meta"
    shutil.copytree(straight["root"] / "meta", run)
    (run / "results.json").unlink()  # as if killed in its last save
    ckpts = run / "checkpoints"
    shutil.copytree(ckpts / "step_0000006", ckpts / "step_0000004")
    state = read_json(ckpts / "step_0000004" / "state.json")
    write_json(ckpts / "step_0000004" / "state.json", {**state, "step": 4})
    (ckpts / "best").write_text("step_0000004\n")
    assert cli("meta-train", "--resume", run) == 0
    assert (ckpts / "best").read_text().strip() == "step_0000006"
    assert load_run_checkpoint(run, "best").meta["step"] == 6


@pytest.mark.parametrize("how", [["--resume", "{run}"], ["--out", "{run}", "--overwrite"]])
def test_a_run_another_process_writes_is_not_resumed_or_replaced(tmp_path, capsys, how):
    """A second process used to truncate the first one's log and delete its checkpoint in
    progress (--resume), or delete the run under it (--overwrite)."""
    from metasparsity.utils.rundir import RunLock

    run = tmp_path / "run"
    assert cli("train", "--out", run, *MICRO) == 0
    before = sorted(p.name for p in run.rglob("*"))
    log = (run / "metrics.jsonl").read_text()
    held = RunLock()  # as a training process holds it (flock: per open file, so also in-process)
    held.acquire(run)
    try:
        args = [a.format(run=run) for a in how]
        assert cli("train", *args, *MICRO, "train.max_steps=6") == 2
        err = capsys.readouterr().err
        assert f"{run} is in use: another metasparsity process is writing this run" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    finally:
        held.release()
    assert sorted(p.name for p in run.rglob("*")) == before
    assert (run / "metrics.jsonl").read_text() == log
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 4
    assert cli("train", "--resume", run, "train.max_steps=6") == 0  # released: it goes on
    out = capsys.readouterr().out
    assert f"resuming {run} at step 4 with changed settings: train.max_steps 4 → 6" in out


def test_a_resume_whose_log_cannot_be_opened_leaves_the_config_as_it_was(tmp_path, monkeypatch,
                                                                         capsys):
    import errno

    import metasparsity.training.session as session_mod

    run = tmp_path / "run"
    assert cli("train", "--out", run, *MICRO) == 0
    config = (run / "config.yaml").read_text()

    def denied(run_dir, enabled=True):
        raise PermissionError(errno.EACCES, "Permission denied", str(run_dir / "metrics.jsonl"))

    monkeypatch.setattr(session_mod, "RunLogger", denied)
    assert cli("train", "--resume", run, "train.max_steps=8") == 2
    assert "Permission denied" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == config  # it said 8 steps, results.json 4


def test_a_resume_removes_what_a_killed_writer_left_and_reading_an_unfinished_run_says_so(
        tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("train", "--out", run, *MICRO) == 0
    assert "has not finished" not in capsys.readouterr().err
    assert cli("evaluate", run) == 0
    assert "has not finished" not in capsys.readouterr().err
    (run / "results.json").unlink()  # as if it had been killed after its last checkpoint
    left = [run / ".results.json.k2j.tmp", run / "checkpoints" / ".last.x7.tmp",
            run / "checkpoints" / ".step_0000005.tmp"]
    left[0].write_text("{")
    left[1].write_text("step_")
    left[2].mkdir()
    (left[2] / "model.safetensors").write_bytes(b"\0")
    for command in (["evaluate", run], ["prune", run, "--no-latency"]):
        assert cli(*command) == 0
        assert (f"note: {run} has not finished (no results.json); this read its checkpoint "
                "step_0000004") in capsys.readouterr().err
    assert all(p.exists() for p in left)  # readers leave the run's files alone
    assert cli("train", "--resume", run) == 0
    assert not any(p.exists() for p in left) and (run / "results.json").is_file()


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_the_process_group_with_loader_workers_saves_and_exits_once(tmp_path, sig,
                                                                                code):
    """A batch scheduler (SIGTERM) and a terminal's Ctrl-C (SIGINT) signal the whole process
    group: the loader workers died of SIGTERM, and the main process stopped with a traceback
    about them, saving nothing; with SIGINT each worker printed the notice too."""
    import os

    run = tmp_path / "run"
    proc = start_long_training(run, "data.num_workers=2", group=True)
    os.killpg(proc.pid, sig)
    _, err = finish(proc)
    assert proc.returncode == code, err
    assert "Traceback" not in err and err.count("interrupt received") <= 1, err
    msg = next(line for line in err.splitlines() if "interrupted at step" in line)
    step = int(msg.split("interrupted at step ")[1].split(";")[0])
    assert _last(run).meta["step"] == step >= 3
