"""Resume trusts nothing: a ``last`` / ``best`` pointer to a missing or incomplete checkpoint
falls back to the newest complete one (with a note), or the resume stops with exit 2 and
changes nothing; a resume never restarts from step 0 over a run that trained, never deletes the
complete checkpoint it falls back to and never truncates ``metrics.jsonl`` before it."""

from __future__ import annotations

import io
import random
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from tests.recipes.micro import MICRO, cli, same_tensors

from metasparsity.config import load_config
from metasparsity.recipes.meta_train import MetaTrainer
from metasparsity.recipes.train import Trainer, settings_from_config
from metasparsity.training.checkpoint import load_checkpoint, save_checkpoint
from metasparsity.training.run_checkpoints import has_checkpoints, load_run_checkpoint
from metasparsity.utils.errors import UserError
from metasparsity.utils.io import read_json, read_jsonl

# Everything that carries state across steps (as in test_resume.py), validated every 2 steps.
RESUME = MICRO + ["train.max_steps=6", "train.val_every=2", "train.warmup_steps=2",
                  "sparsity.lam=0.05", "train.loss_weighting=uncertainty",
                  "data.train_size=24", "meta.steps=6", "meta.val_every=2"]


def _ck(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step:07d}"


def _listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def _garble_pickle(path: Path, seed: int = 0) -> None:
    """Flip bytes inside the pickle of a ``torch.save`` archive (its CRC no longer matches)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        info = next(i for i in z.infolist() if i.filename.endswith("data.pkl"))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    rnd = random.Random(seed)
    for _ in range(8):
        data[start + rnd.randrange(info.file_size)] ^= 0xFF
    path.write_bytes(bytes(data))


def _train_steps(run: Path) -> list[int]:
    return [r["step"] for r in read_jsonl(run / "metrics.jsonl") if r["kind"] == "train"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    root = tmp_path_factory.mktemp("straight")
    assert cli("train", "--out", root / "train", *RESUME) == 0
    assert cli("meta-train", "--out", root / "meta", *RESUME) == 0
    return {"train": load_run_checkpoint(root / "train", "last"),
            "meta": load_run_checkpoint(root / "meta", "last")}


# ----------------------------------------------------------------------------- the case


def test_last_naming_a_missing_step_resumes_from_the_complete_one(tmp_path, capsys):
    """`last` names a step that does not exist while step_0000002 does: continue from step 2
    (not from step 0), keep its logs, and reach what an unbroken resume reaches."""
    run, ref = tmp_path / "run", tmp_path / "ref"
    for r in (run, ref):
        assert cli("train", "--out", r, *MICRO, "train.max_steps=2") == 0
    (run / "checkpoints" / "last").write_text("step_0000009\n")
    logged = read_jsonl(run / "metrics.jsonl")
    capsys.readouterr()

    assert cli("train", "--resume", run, "train.max_steps=4") == 0
    err = capsys.readouterr().err
    notes = [ln for ln in err.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and "step_0000009" in notes[0] and "step_0000002" in notes[0]
    recs = read_jsonl(run / "metrics.jsonl")
    assert recs[: len(logged)] == logged  # nothing before the resumed step was dropped
    assert [r["from_step"] for r in recs if r["kind"] == "resume"] == [2]
    assert _train_steps(run) == [1, 2, 3, 4]
    assert read_json(run / "results.json")["steps"] == 4
    assert (run / "checkpoints" / "last").read_text().strip() == "step_0000004"

    assert cli("train", "--resume", ref, "train.max_steps=4") == 0
    a, b = load_run_checkpoint(ref, "last"), load_run_checkpoint(run, "last")
    assert same_tensors(a.model, b.model) == []


def test_corrupt_newest_checkpoint_falls_back_to_an_older_complete_one(straight, tmp_path,
                                                                      capsys):
    cfg = load_config(None, RESUME)
    run = tmp_path / "run"
    tr = Trainer(cfg, run, settings_from_config(cfg))
    tr.setup()
    assert tr.train(stop_after=2) is None
    shutil.copytree(_ck(run, 2), tmp_path / "keep2")
    tr = Trainer(cfg, run, settings_from_config(cfg), resume=True)
    tr.setup()
    assert tr.train(stop_after=4) is None
    if not _ck(run, 2).exists():  # rotated away unless it was the best: put the copy back
        shutil.copytree(tmp_path / "keep2", _ck(run, 2))
    state = _ck(run, 4) / "state.pt"
    _garble_pickle(state)
    logged = [r for r in read_jsonl(run / "metrics.jsonl") if r["step"] <= 2]
    capsys.readouterr()

    assert cli("train", "--resume", run) == 0
    err = capsys.readouterr().err
    note = next(ln for ln in err.splitlines() if ln.startswith("note:"))
    assert f"corrupt/unreadable checkpoint file {state}" in note and "step 2" in note
    assert "could run code" not in err and "weights_only" not in err
    recs = read_jsonl(run / "metrics.jsonl")
    assert recs[: len(logged)] == logged
    assert [r["from_step"] for r in recs if r["kind"] == "resume"] == [2, 2]
    assert _train_steps(run) == [1, 2, 3, 4, 5, 6]
    b = load_run_checkpoint(run, "last")
    assert b.meta["step"] == 6
    a = straight["train"]
    assert same_tensors(a.model, b.model) == []  # as if never interrupted
    assert a.meta["best_step"] == b.meta["best_step"]
    assert load_run_checkpoint(run, "best").meta["step"] == b.meta["best_step"]


def test_meta_train_falls_back_past_a_missing_checkpoint_directory(straight, tmp_path, capsys):
    cfg = load_config(None, RESUME)
    run = tmp_path / "meta"
    mt = MetaTrainer(cfg, run)
    mt.setup()
    assert mt.train(stop_after=2) is None
    shutil.copytree(_ck(run, 2), tmp_path / "keep2")
    mt = MetaTrainer(cfg, run, resume=True)
    mt.setup()
    assert mt.train(stop_after=4) is None
    shutil.rmtree(_ck(run, 4))  # `last` and `best` now name a directory that is gone
    if not _ck(run, 2).exists():
        shutil.copytree(tmp_path / "keep2", _ck(run, 2))
    capsys.readouterr()

    assert cli("meta-train", "--resume", run) == 0
    assert "using the newest complete checkpoint checkpoints/step_0000002" in capsys.readouterr().err
    recs = read_jsonl(run / "metrics.jsonl")
    assert [r["from_step"] for r in recs if r["kind"] == "resume"] == [2, 2]
    assert [r["step"] for r in recs if r["kind"] == "meta"] == [1, 2, 3, 4, 5, 6]
    b = load_run_checkpoint(run, "last")
    assert same_tensors(straight["meta"].model, b.model) == []
    assert torch.equal(straight["meta"].state["lam"]["rho"], b.state["lam"]["rho"])


def test_finetune_resume_falls_back(tmp_path, capsys):
    src, out = tmp_path / "src", tmp_path / "ft"
    assert cli("train", "--out", src, *MICRO, "train.max_steps=2") == 0
    assert cli("finetune", src, "--tasks", "normal", "--out", out, "finetune.steps=2") == 0
    (out / "checkpoints" / "last").write_text("step_0000077\n")
    capsys.readouterr()
    assert cli("finetune", src, "--resume", out, "finetune.steps=4") == 0
    assert "step_0000077" in capsys.readouterr().err
    assert [r["from_step"] for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "resume"] == [2]
    assert _train_steps(out) == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("damage", ["garble state.pt", "empty state.pt", "truncate model",
                                    "no state.json", "bad state.json", "pointer to nowhere"])
def test_no_complete_checkpoint_stops_with_exit_2_and_changes_nothing(tmp_path, capsys, damage):
    run = tmp_path / "run"
    assert cli("train", "--out", run, *MICRO, "train.max_steps=2") == 0
    ck = _ck(run, 2)
    if damage == "garble state.pt":
        _garble_pickle(ck / "state.pt")
    elif damage == "empty state.pt":
        (ck / "state.pt").write_bytes(b"")
    elif damage == "truncate model":
        data = (ck / "model.safetensors").read_bytes()
        (ck / "model.safetensors").write_bytes(data[: len(data) // 3])
    elif damage == "no state.json":
        (ck / "state.json").unlink()
    elif damage == "bad state.json":
        (ck / "state.json").write_text("[1, 2")
    else:
        shutil.rmtree(ck)
    before = _listing(run)
    capsys.readouterr()
    assert cli("train", "--resume", run, "train.max_steps=4") == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "no complete checkpoint" in lines[0] and "nothing was changed" in lines[0]
    if damage.endswith("state.pt") or damage == "truncate model":
        assert "corrupt/unreadable checkpoint file" in lines[0]
        assert "could run code" not in lines[0] and "weights_only" not in lines[0]
    assert _listing(run) == before


def test_logged_steps_without_any_checkpoint_are_not_restarted_over(tmp_path, capsys):
    """A run killed before its first checkpoint: its logs are not silently truncated."""
    run = tmp_path / "run"
    assert cli("train", "--out", run, *MICRO, "train.max_steps=2") == 0
    shutil.rmtree(run / "checkpoints")
    (run / "results.json").unlink()
    before = _listing(run)
    assert cli("train", "--resume", run) == 2
    err = capsys.readouterr().err
    assert "no complete checkpoint" in err and "--overwrite" in err
    assert _listing(run) == before


def test_evaluate_falls_back_when_best_names_an_incomplete_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("train", "--out", run, *MICRO, "train.max_steps=2") == 0
    (run / "checkpoints" / "best").write_text("step_0000001\n")
    capsys.readouterr()
    assert cli("evaluate", run) == 0
    err = capsys.readouterr().err
    assert "checkpoints/best names 'step_0000001'" in err and "checkpoints/last" in err


# ----------------------------------------------------------------------------- files


def _save(run, step, value, **kw):
    return save_checkpoint(run, step, {"w": torch.full((3,), float(value))},
                           {"opt": {"t": torch.tensor([value])}}, {"tasks": ["a"]}, **kw)


@pytest.mark.parametrize("seed", range(4))
def test_a_garbled_state_pt_is_corrupt_not_a_threat(tmp_path, seed):
    ck = _save(tmp_path / "run", 1, 1.0)
    _garble_pickle(ck / "state.pt", seed)
    with pytest.raises(UserError) as e:
        load_checkpoint(ck)
    msg = str(e.value)
    assert msg.startswith(f"corrupt/unreadable checkpoint file {ck / 'state.pt'}")
    assert "\n" not in msg and "run code" not in msg and "weights_only" not in msg


@pytest.mark.parametrize("content", [b"", b"hello\n", b"\0" * 64, bytes(range(256)) * 4])
def test_unreadable_state_pt_contents(tmp_path, content):
    ck = _save(tmp_path / "run", 1, 1.0)
    (ck / "state.pt").write_bytes(content)
    with pytest.raises(UserError, match="corrupt/unreadable checkpoint file") as e:
        load_checkpoint(ck)
    assert "\n" not in str(e.value) and "weights_only" not in str(e.value)


def test_fallback_reads_the_newest_complete_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    _save(run, 1, 1.0, best=True, keep=3)
    _save(run, 2, 2.0, keep=3)
    _save(run, 3, 3.0, keep=3)
    (_ck(run, 3) / "state.json").unlink()
    ck = load_run_checkpoint(run, "last")
    assert ck.meta["step"] == 2
    assert "incomplete checkpoint" in capsys.readouterr().err
    assert load_run_checkpoint(run, "best").meta["step"] == 1  # best itself is fine


def test_a_save_never_deletes_a_newer_checkpoint(tmp_path):
    """A run resumed from an older checkpoint leaves the newer ones until it passes them."""
    run = tmp_path / "run"
    _save(run, 4, 4.0)
    (run / "checkpoints" / "last").write_text("step_0000002\n")
    _save(run, 3, 3.0)
    assert _ck(run, 4).is_dir()
    _save(run, 5, 5.0)
    assert not _ck(run, 4).exists() and not _ck(run, 3).exists()


def test_sub_runs_resume_only_from_checkpoints(tmp_path, capsys):
    """A sweep resumes a sub-run that has checkpoints (falling back past a broken pointer) and
    starts afresh one that never saved any (it has nothing to lose)."""
    out = tmp_path / "sweep"
    assert cli("sweep-lambda", "--out", out, "--grid", "0.01", *MICRO, "train.max_steps=2") == 0
    lam, dense = out / "lam_0.01", out / "dense_mtl"
    assert has_checkpoints(lam) and not has_checkpoints(tmp_path)
    (lam / "results.json").unlink()
    (lam / "checkpoints" / "last").write_text("step_0000005\n")
    (dense / "results.json").unlink()
    shutil.rmtree(dense / "checkpoints")  # as if killed before its first save
    capsys.readouterr()
    assert cli("sweep-lambda", "--resume", out) == 0
    assert "step_0000005" in capsys.readouterr().err
    assert [r["from_step"] for r in read_jsonl(lam / "metrics.jsonl") if r["kind"] == "resume"] == [2]
    assert [r["kind"] for r in read_jsonl(dense / "metrics.jsonl")].count("resume") == 0
    assert _train_steps(dense) == [1, 2]
    assert read_json(out / "sweep.json")["selected"] == 0.01
