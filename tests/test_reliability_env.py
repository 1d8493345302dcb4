"""Bad environment variables and prepare options: exit code 2, one line naming the variable (or
option) and its value, nothing written; never a traceback, a crash or a half-written run.

``$METASPARSITY_SYNTH_MEMO_MB``, ``$METASPARSITY_NUM_THREADS`` and torchrun's ``$WORLD_SIZE``,
``$RANK``… are checked at the recipe boundary (``utils.env.check_environment``), before any
command writes anything, whether or not the command would read them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.recipes.micro import MICRO, cli

from metasparsity.builders import build_model
from metasparsity.config import load_config
from metasparsity.data.celebamaskhq_prepare import prepare_celebamaskhq
from metasparsity.data.synthscenes import SynthScenes
from metasparsity.training.checkpoint import save_checkpoint
from metasparsity.utils.device import set_threads
from metasparsity.utils.env import (
    check_environment,
    check_torchrun_env,
    env_num_threads,
    memo_limit,
)
from metasparsity.utils.errors import UserError
from metasparsity.utils.limits import MAX_THREADS

SEEN = ["segment", "depth", "edge", "has_sphere", "many_objects"]
MEMO, THREADS = "METASPARSITY_SYNTH_MEMO_MB", "METASPARSITY_NUM_THREADS"
TORCHRUN = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# the comparison of demo / compare at a budget that leaves room for its methods
SHORT_COMPARE = ["compare.methods=[mtl]", "compare.budget=60"]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No variable of the outer environment leaks into a case (each sets what it tests)."""
    for name in (MEMO, *TORCHRUN):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(THREADS, "1")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory with an (untrained) best checkpoint."""
    src = tmp_path_factory.mktemp("runs") / "src"
    src.mkdir()
    cfg = load_config(None, MICRO)
    (src / "config.yaml").write_text(cfg.to_yaml())
    save_checkpoint(src, 4, build_model(cfg, SEEN).state_dict(), {}, {"tasks": SEEN}, best=True)
    return src


def _listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def _refused(capsys, names: list[str], *args) -> None:
    assert cli(*args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for name in names:
        assert name in err, (name, err)


# ----------------------------------------------------------------------------- every command

COMMANDS = {  # command words, with {run} for the run directory; MICRO is added
    "train": ["train", "--out", "r"],
    "meta-train": ["meta-train", "--out", "r"],
    "sweep-lambda": ["sweep-lambda", "--out", "r"],
    "compare": ["compare", "--out", "r", *SHORT_COMPARE],
    "demo": ["demo", "--out", "r", *SHORT_COMPARE],
    "finetune": ["finetune", "{run}", "--tasks", "normal", "--out", "r"],
    "evaluate": ["evaluate", "{run}"],
    "prune": ["prune", "{run}", "--out", "r", "--no-latency"],
    "predict": ["predict", "{run}", "image.png", "--out", "r"],
}

BAD_ENV = [
    # the in-process memory of SynthScenes samples: a ValueError / OverflowError mid-run
    ({MEMO: "abc"}, [f"${MEMO}='abc'", "not a number"]),
    ({MEMO: "nan"}, [f"${MEMO}='nan'", "not a finite number"]),
    ({MEMO: "inf"}, [f"${MEMO}='inf'", "not a finite number"]),
    ({MEMO: "-1"}, [f"${MEMO}='-1'", "negative"]),
    # torch threads: a ValueError, a crash (99999), a crawl (2000) or silently ignored (0, -1)
    ({THREADS: "abc"}, [f"${THREADS}='abc'", "not an integer"]),
    ({THREADS: "1.5"}, [f"${THREADS}='1.5'", "not an integer"]),
    ({THREADS: "99999"}, [f"${THREADS}='99999'", f"between 1 and {MAX_THREADS}"]),
    ({THREADS: str(MAX_THREADS + 1)}, [f"${THREADS}='{MAX_THREADS + 1}'", str(MAX_THREADS)]),
    ({THREADS: "0"}, [f"${THREADS}='0'", "between 1 and"]),
    ({THREADS: "-1"}, [f"${THREADS}='-1'", "between 1 and"]),
    # torchrun's variables, half set: torch's ValueError
    ({"WORLD_SIZE": "2"}, ["$WORLD_SIZE=2", "$RANK is not set"]),
    ({"WORLD_SIZE": "0"}, ["$WORLD_SIZE=0", ">= 1"]),
]


@pytest.mark.parametrize(("env", "names"), BAD_ENV,
                         ids=[",".join(f"{k}={v}" for k, v in env.items()) for env, _ in BAD_ENV])
def test_bad_variable_in_train_exits_2_naming_it_and_writes_nothing(tmp_path, monkeypatch,
                                                                    capsys, env, names):
    monkeypatch.chdir(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    _refused(capsys, names, "train", "--out", "r", *MICRO)
    assert list(tmp_path.iterdir()) == []  # no run directory, not even config.yaml


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize(("env", "names"), [
    ({MEMO: "abc"}, [f"${MEMO}='abc'"]),
    ({THREADS: "0"}, [f"${THREADS}='0'"]),
    ({"WORLD_SIZE": "2"}, ["$RANK is not set"]),
], ids=[MEMO, THREADS, "WORLD_SIZE"])
def test_every_command_refuses_a_bad_variable_before_writing(tmp_path, monkeypatch, capsys,
                                                             run_dir, command, env, names):
    """demo wrote its run directory and data preview, and compare its config.yaml, before the
    first recipe read the variable; train.num_threads=1 (in MICRO) does not hide a bad
    $METASPARSITY_NUM_THREADS either."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "image.png").write_bytes(b"")
    before = _listing(run_dir)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    words = [w.format(run=run_dir) for w in COMMANDS[command]]
    overrides = [*MICRO] if command not in ("evaluate", "prune", "predict") else []
    _refused(capsys, names, *words, *overrides)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.png"]
    assert _listing(run_dir) == before


def test_the_program_exits_2_without_a_traceback(tmp_path):
    """The reviewer's case as a user meets it: ``python -m metasparsity train`` with
    ``METASPARSITY_SYNTH_MEMO_MB=abc`` left config.yaml and metrics.jsonl behind."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", MEMO: "abc"}
    p = subprocess.run([sys.executable, "-m", "metasparsity", "train", "--out", str(tmp_path / "r"),
                        *MICRO], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip() == (f"metasparsity train: error: ${MEMO}='abc' is not a number; set it "
                                "to the megabytes of rendered samples a process keeps in memory, "
                                "a number >= 0 (0 turns the memory off; default 2048)")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the parsers


@pytest.mark.parametrize(("value", "limit"), [
    (None, 2048 * 2**20), ("", 2048 * 2**20), ("0", 0), ("1.5", 3 * 2**19), (" 16 ", 16 * 2**20),
    ("1e300", int(1e300) * 2**20),  # no OverflowError: as good as no bound
])
def test_memo_limit_takes_megabytes_at_least_0(monkeypatch, value, limit):
    if value is not None:
        monkeypatch.setenv(MEMO, value)
    assert memo_limit() == limit


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "-inf", "-1", "-0.5", "1e400"])
def test_memo_limit_refuses_the_rest_also_when_a_split_is_built(monkeypatch, value):
    monkeypatch.setenv(MEMO, value)
    for call in (memo_limit, check_environment,
                 lambda: SynthScenes(size=16, length=2, split="train")):
        with pytest.raises(UserError, match=rf"^\${MEMO}='{value}' "):
            call()


@pytest.mark.parametrize(("value", "n"), [(None, None), ("", None), ("1", 1), (" 3 ", 3),
                                          (str(MAX_THREADS), MAX_THREADS)])
def test_env_num_threads_takes_1_to_max_threads(monkeypatch, value, n):
    if value is None:
        monkeypatch.delenv(THREADS)
    else:
        monkeypatch.setenv(THREADS, value)
    assert env_num_threads() == n


@pytest.mark.parametrize("value", ["abc", "1.5", "0", "-1", str(MAX_THREADS + 1), "99999"])
def test_set_threads_refuses_a_bad_variable_and_sets_nothing(monkeypatch, value):
    monkeypatch.setenv(THREADS, value)
    before = torch.get_num_threads()
    for num_threads in (None, 1):  # the setting given or not: the variable is checked
        with pytest.raises(UserError, match=rf"^\${THREADS}='{value}' "):
            set_threads(num_threads)
    assert torch.get_num_threads() == before


def test_set_threads_uses_the_variable_when_the_setting_is_unset(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv(THREADS, "2")
        set_threads(None)
        assert torch.get_num_threads() == 2
        set_threads(1)  # the setting wins
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


TORCHRUN_OK = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "localhost",
               "MASTER_PORT": "29500"}


@pytest.mark.parametrize(("env", "world"), [({}, 1), ({"WORLD_SIZE": "1"}, 1),
                                            ({"WORLD_SIZE": ""}, 1), ({"WORLD_SIZE": " "}, 1),
                                            (TORCHRUN_OK, 2),
                                            ({**TORCHRUN_OK, "LOCAL_RANK": " "}, 2)])
def test_torchrun_variables_accepted(monkeypatch, env, world):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert check_torchrun_env() == world


@pytest.mark.parametrize(("change", "message"), [
    ({"WORLD_SIZE": "abc"}, "$WORLD_SIZE='abc' is not an integer"),
    ({"WORLD_SIZE": "-1"}, "$WORLD_SIZE=-1 is out of range; it must be >= 1"),
    ({"RANK": None}, "$WORLD_SIZE=2 but $RANK is not set"),
    ({"RANK": ""}, "$WORLD_SIZE=2 but $RANK is not set"),
    ({"MASTER_ADDR": None}, "$WORLD_SIZE=2 but $MASTER_ADDR is not set"),
    ({"MASTER_PORT": None}, "$WORLD_SIZE=2 but $MASTER_PORT is not set"),
    ({"RANK": "x"}, "$RANK='x' is not an integer"),
    ({"RANK": "2"}, "$RANK=2 is out of range for $WORLD_SIZE=2; it must be between 0 and 1"),
    ({"RANK": "-1"}, "$RANK=-1 is out of range"),
    ({"MASTER_PORT": "99999"}, "$MASTER_PORT=99999 is out of range"),
    ({"MASTER_PORT": "http"}, "$MASTER_PORT='http' is not an integer"),
    ({"LOCAL_RANK": "z"}, "$LOCAL_RANK='z' is not an integer"),
])
def test_torchrun_variables_refused_naming_the_variable(monkeypatch, change, message):
    for k, v in {**TORCHRUN_OK, **change}.items():
        if v is not None:
            monkeypatch.setenv(k, v)
    with pytest.raises(UserError) as e:
        check_torchrun_env()
    assert str(e.value).startswith(message), str(e.value)


# ----------------------------------------------------------------------------- data prepare


@pytest.mark.parametrize(("option", "value", "names"), [
    ("--size", "60000", ["--size", "between 16 and 4096", "60000"]),
    ("--size", "4097", ["--size", "4096"]),
    ("--size", "8", ["--size", "between 16 and 4096"]),
    ("--workers", "0", ["--workers", ">= 1", "0"]),
    ("--workers", "-3", ["--workers", ">= 1", "-3"]),
    ("--workers", str(MAX_THREADS + 1), ["--workers", f"<= {MAX_THREADS}"]),
    ("--workers", "two", ["--workers", "'two'"]),
])
def test_prepare_options_out_of_range_exit_2_naming_the_option(tmp_path, capsys, option, value,
                                                               names):
    """``--size 60000`` was a MemoryError traceback; ``--workers 0`` / ``-3`` were taken as 1."""
    src = tmp_path / "raw"
    (src / "CelebA-HQ-img").mkdir(parents=True)
    assert cli("data", "prepare", "celebamaskhq", "--src", src, "--out", tmp_path / "out",
               "--no-progress", option, value) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        "metasparsity data prepare: error: argument " + option), err
    for name in names:
        assert name in err, (name, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"size": 60000}, "size=60000 is out of range; it must be between 16 and 4096"),
    ({"size": 15}, "size=15 is out of range"),
    ({"workers": 0}, f"workers=0 is out of range; it must be between 1 and {MAX_THREADS}"),
    ({"workers": -3}, "workers=-3 is out of range"),
    ({"workers": MAX_THREADS + 1}, f"workers={MAX_THREADS + 1} is out of range"),
])
def test_prepare_function_refuses_size_and_workers_out_of_range(tmp_path, kwargs, message):
    src = tmp_path / "raw"
    (src / "CelebA-HQ-img").mkdir(parents=True)
    with pytest.raises(UserError) as e:
        prepare_celebamaskhq(src, tmp_path / "out", progress=False, **kwargs)
    assert str(e.value).startswith(message), str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
