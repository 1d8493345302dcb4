"""Checkpoints: atomic under SIGKILL, never unpickle code, complete training state."""

from __future__ import annotations

import os
import pathlib
import random
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from tests.recipes.micro import cli

from metasparsity.config import Config
from metasparsity.training.batches import BatchStream, eval_loader
from metasparsity.training.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from metasparsity.training.interrupt import DeferInterrupt
from metasparsity.training.rng import preserved_rng, rng_state, set_rng_state
from metasparsity.training.run_checkpoints import load_run_checkpoint
from metasparsity.utils.errors import UserError
from metasparsity.utils.io import read_jsonl, truncate_jsonl


def _save(run, step, value, **kw):
    return save_checkpoint(run, step, {"w": torch.full((3,), float(value))},
                           {"opt": {"t": torch.tensor([value])}}, {"tasks": ["a"]}, **kw)


# ----------------------------------------------------------------------------- killed saves

KILLED_SAVE = textwrap.dedent("""
    import sys, time, torch
    from metasparsity.training import checkpoint as ck
    run = sys.argv[1]
    ck.save_checkpoint(run, 1, {"w": torch.ones(3)}, {"opt": {}}, {"tasks": ["a"]}, best=True)
    real_save = torch.save
    def slow_save(*args, **kwargs):  # the weights are on disk, the rest is still to come
        real_save(*args, **kwargs)
        print("saving", flush=True)
        time.sleep(120)
    torch.save = slow_save
    ck.save_checkpoint(run, 2, {"w": torch.full((512, 512), 2.0)}, {"opt": {}}, {"tasks": ["a"]},
                       best=True)
""")


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, str(run)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "saving"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (run / "checkpoints" / ".step_0000002.tmp" / "model.safetensors").is_file()  # half-done
    for which in ("last", "best"):
        ck = load_run_checkpoint(run, which)
        assert ck.meta["step"] == 1 and torch.equal(ck.model["w"], torch.ones(3))
    _save(run, 3, 3.0)  # the next save clears the debris
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best", "last", "step_0000001", "step_0000003"]


def test_kill_between_the_renames_of_a_resaved_step(tmp_path, monkeypatch):
    """Saving a step that exists moves the old copy aside first; a kill right then still loads."""
    run = tmp_path / "run"
    _save(run, 2, 1.0, best=True)
    real_rename = pathlib.Path.rename
    calls = []

    class Killed(BaseException):
        pass

    def rename(self, target):
        calls.append(self.name)
        if len(calls) == 2:  # old copy moved aside, new copy not yet in place
            raise Killed
        return real_rename(self, target)

    monkeypatch.setattr(pathlib.Path, "rename", rename)
    with pytest.raises(Killed):
        _save(run, 2, 5.0, best=True)
    monkeypatch.undo()
    assert not (run / "checkpoints" / "step_0000002").exists()
    assert checkpoint_path(run, "last").name == ".step_0000002.old"
    assert float(load_run_checkpoint(run, "best").model["w"][0]) == 1.0
    _save(run, 3, 3.0)  # "best" still names step 2, whose only copy is the one set aside
    assert float(load_run_checkpoint(run, "best").model["w"][0]) == 1.0
    assert not (run / "checkpoints" / ".step_0000002.tmp").exists()


def test_only_the_newest_and_the_best_are_kept(tmp_path):
    run = tmp_path / "run"
    _save(run, 1, 1.0, best=True)
    _save(run, 2, 2.0)
    _save(run, 3, 3.0)
    names = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert names == ["step_0000001", "step_0000003"]
    assert load_run_checkpoint(run, "best").meta["step"] == 1
    assert load_run_checkpoint(run, "last").meta["step"] == 3


# ----------------------------------------------------------------------------- safe loading


class _Payload:
    """Pickles into 'call open(marker, "w")' — code that runs on an unsafe load."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    (run).mkdir()
    (run / "config.yaml").write_text(Config().to_yaml())
    ck = _save(run, 1, 1.0, best=True)
    marker = tmp_path / "pwned"
    torch.save({"opt": _Payload(marker)}, ck / "state.pt")

    with pytest.raises(UserError, match="refusing to load .*state.pt.*run code"):
        load_checkpoint(ck)
    assert cli("evaluate", run) == 2  # and through the command line: exit 2, a message
    err = capsys.readouterr().err
    assert "refusing to load" in err and "Traceback" not in err
    assert not marker.exists()  # the payload never ran
    torch.load(ck / "state.pt", weights_only=False)  # (it is live: an unsafe load runs it)
    assert marker.exists()


@pytest.mark.parametrize("name", ["model.safetensors", "state.pt", "state.json"])
def test_corrupt_checkpoint_files_give_a_clear_error(tmp_path, name):
    ck = _save(tmp_path / "run", 1, 1.0)
    data = (ck / name).read_bytes()
    (ck / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=name.replace(".", r"\.")):
        load_checkpoint(ck)


# ----------------------------------------------------------------------------- training state


def _draws():
    return (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)], random.gauss(0, 1))


def test_rng_state_round_trip():
    random.gauss(0, 1)  # leaves a cached second Gaussian in Python's generator state
    state = rng_state()
    a = _draws()
    set_rng_state(state)
    b = _draws()
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2:] == b[2:]


def test_preserved_rng_hides_what_a_block_draws():
    state = rng_state()
    expected = _draws()
    set_rng_state(state)
    with preserved_rng():
        _draws()
    got = _draws()
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1])


class _Range(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.tensor(i), {"t": torch.tensor(i)}


def test_batch_stream_resumes_mid_epoch_and_leaves_the_global_rng_alone():
    s = BatchStream(_Range(), 3, seed=5)
    before = torch.get_rng_state()
    seen = [next(s)[0].tolist() for _ in range(4)]  # crosses the end of epoch 0 (3 batches)
    assert torch.equal(torch.get_rng_state(), before)
    state = s.state_dict()
    assert state == {"epoch": 1, "pos": 1}
    rest = [next(s)[0].tolist() for _ in range(3)]
    r = BatchStream(_Range(), 3, seed=5)
    r.load_state_dict(state)
    assert [next(r)[0].tolist() for _ in range(3)] == rest
    assert sorted(sum(seen[:3], [])) == sorted(set(sum(seen[:3], [])))  # no repeats in an epoch
    list(eval_loader(_Range(), 4))
    assert torch.equal(torch.get_rng_state(), before)


def test_defer_interrupt_holds_sigint_until_the_block_is_done():
    # Python's own handler, whatever the test process inherited: a suite started in the
    # background (`make test &`) inherits SIGINT ignored (tests/recipes/micro.py), and
    # DeferInterrupt rightly leaves an ignored SIGINT alone
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        done = []
        with pytest.raises(KeyboardInterrupt):
            with DeferInterrupt():
                os.kill(os.getpid(), signal.SIGINT)
                done.append("update finished")
        assert done == ["update finished"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_truncate_jsonl_drops_records_after_the_checkpoint_and_a_torn_line(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')  # killed mid-write
    assert [r["step"] for r in read_jsonl(p)] == [1, 2, 3]
    assert truncate_jsonl(p, 2) == 1
    assert [r["step"] for r in read_jsonl(p)] == [1, 2]
    assert p.read_text().endswith("}\n")


def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_older_checkpoint(tmp_path, monkeypatch):
    """A full disk during ``torch.save`` (PyTorch raises a RuntimeError, not an OSError): a
    one-line UserError naming the checkpoint; no partial folder; ``last`` still names step 1."""
    import torch

    from metasparsity.training import checkpoint as ck
    from metasparsity.utils.errors import UserError

    sd = {"w": torch.ones(3)}
    ck.save_checkpoint(tmp_path, 1, sd, {"opt": torch.zeros(1)}, {"tasks": []})

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(ck.torch, "save", full)
    monkeypatch.setattr(ck.shutil, "disk_usage", lambda p: type("U", (), {"free": 0})())
    with pytest.raises(UserError) as e:
        ck.save_checkpoint(tmp_path, 2, sd, {"opt": torch.zeros(1)}, {"tasks": []})
    msg = str(e.value)
    assert "step_0000002" in msg and "no space left on device" in msg and "\n" not in msg
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["last", "step_0000001"]
    assert (tmp_path / "checkpoints" / "last").read_text().strip() == "step_0000001"


FILE_SIZE_LIMIT = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv.pop(1)), resource.RLIM_INFINITY))
    from metasparsity.cli import main
    sys.exit(main())
""")


@pytest.mark.parametrize("limit, words", [
    (300_000, ["File too large"]),                  # hit by the safetensors write
    (1_000_000, ["not written whole", "file size limit"]),  # hit by torch.save's
])
def test_a_write_cut_by_a_file_size_limit_is_one_line_and_keeps_nothing_partial(tmp_path, limit,
                                                                                 words):
    """safetensors reports a full disk or a size limit as its own SafetensorError, which was a
    traceback; torch.save's was the cryptic "unexpected pos" alone."""
    from tests.recipes.micro import MICRO

    import metasparsity

    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1",  # the package this suite imports
           "PYTHONPATH": os.pathsep.join([str(pathlib.Path(metasparsity.__file__).parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMIT, str(limit), "train", "--out",
                           str(run), *MICRO, "train.max_steps=2", "train.val_every=2"],
                          capture_output=True, text=True, env=env, timeout=600)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("metasparsity train: error: cannot write checkpoint "), err
    for w in words:
        assert w in err, err
    assert [p.name for p in (run / "checkpoints").iterdir()] == []  # no partial checkpoint


def test_a_compact_model_write_cut_short_is_an_os_error_naming_the_file(tmp_path, monkeypatch):
    import resource

    from metasparsity.utils.io import save_safetensors

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
    try:
        with pytest.raises(OSError) as e:
            save_safetensors({"w": torch.zeros(100_000)}, tmp_path / "model.safetensors")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert e.value.errno == 27 and e.value.filename == str(tmp_path / "model.safetensors")
    old = os.umask(0o022)
    try:
        save_safetensors({"w": torch.zeros(3)}, tmp_path / "small.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "small.safetensors").stat().st_mode & 0o777 == 0o644


def test_written_files_follow_the_umask_not_mkstemp_s_0600(tmp_path):
    from metasparsity.utils.io import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "results.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o644
