"""The training benchmarks refuse, before anything runs or is written (one line, exit 2), what
they used to find out late or not at all: runs made with other settings, λ grids whose run
folders collide or that are not finite, unbounded ``--jobs``, output folders that cannot be
written, ``--tail`` / ``--batch`` beyond the run; overrides may come between the options; and a
Ctrl-C ends them with one line and exit code 130.  ``BENCH_DIR`` points the scripts elsewhere
(to check that these tests fail on other versions of them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metasparsity.utils.io import write_json
from recipes.micro import MICRO

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(os.environ.get("BENCH_DIR", ROOT / "benchmarks"))
ENV = {"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
INTERRUPTED = "interrupted; run the same command again to continue: finished runs are reused"


def _bench(script: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=ENV)


def _cheap(script: str, tmp: Path) -> list:
    """MICRO (first: the old scripts took overrides only there) and the options of the
    smallest run of ``script``, were a bad option let through."""
    from metasparsity.config import load_config

    grid_config = tmp / "grid.yaml"
    grid_config.write_text(load_config(str(ROOT / "configs" / "synthscenes.yaml"),
                                       MICRO).to_yaml())
    return [*MICRO, *{
        "fixed_lambda_grid.py": ["--grid-euclidean", "--seeds", "0", "--grid-adam", "0.05"],
        "zero_set_jitter.py": ["--inits", "0.01", "--variants", "last_step", "--tail", "2"],
        "hypergrad_horizon.py": ["--seeds", "0", "--steps", "2", "--terms", "0", "--reps", "1",
                                 "--batch", "2"],
        "budget_train.py": ["--seeds", "0", "--grid", "0.05", "--grid-runs", tmp / "grid"],
        "lambda_inits.py": ["--seeds", "0", "--objectives", "", "--no-dense", "--target", "0",
                            "--grid", "0.05", "--grid-runs", tmp / "grid", "--grid-config",
                            grid_config],
    }[script], "--jobs", "1", "--runs", tmp / "runs", "--out", tmp / "out"]


def _refused(p: subprocess.CompletedProcess, *words: str) -> str:
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    last = p.stderr.strip().splitlines()[-1]
    assert "Traceback" not in p.stderr and "error:" in last, p.stderr[-2000:]
    for w in words:
        assert w in last, (w, last)
    return last


def _written(tmp: Path) -> list[str]:
    return sorted(str(q.relative_to(tmp)) for q in tmp.rglob("*")
                  if q.is_file() and q.name != "grid.yaml")


@pytest.mark.parametrize(("script", "args", "words"), [
    ("fixed_lambda_grid.py", ["--grid-adam", "0.05", "0.050000001"], ["--grid-adam", "distinct"]),
    ("fixed_lambda_grid.py", ["--grid-adam", "inf"], ["--grid-adam", "finite"]),
    ("budget_train.py", ["--grid", "inf"], ["--grid", "finite"]),
    ("lambda_inits.py", ["--grid", "0.1", "0.1000001"], ["--grid", "distinct"]),
    ("fixed_lambda_grid.py", ["--jobs", "65"], ["--jobs", "65"]),
    ("zero_set_jitter.py", ["--jobs", "100000"], ["--jobs", "100000"]),
    ("hypergrad_horizon.py", ["--jobs", "65"], ["--jobs", "65"]),
    ("zero_set_jitter.py", ["--out", "{tmp}/afile/sub"], ["--out", "afile is not a folder"]),
    ("hypergrad_horizon.py", ["--runs", "{tmp}/afile/sub"], ["--runs", "afile is not a folder"]),
    ("lambda_inits.py", ["--grid-runs", "{tmp}/afile"], ["--grid-runs", "is not a folder"]),
    ("budget_train.py", ["--runs", "{tmp}/afile"], ["--runs", "is not a folder"]),
    ("fixed_lambda_grid.py", ["--out", "/proc"], ["--out /proc", "cannot write"]),
    ("zero_set_jitter.py", ["--tail", "5"], ["--tail 5", "4 logged meta-steps"]),
    ("hypergrad_horizon.py", ["--batch", "6"], ["--batch 6", "5 held-out ids"]),
])
def test_bad_options_are_refused_before_anything_runs(tmp_path, script, args, words):
    (tmp_path / "afile").write_text("mine")
    p = _bench(script, *_cheap(script, tmp_path), *[a.format(tmp=tmp_path) for a in args])
    _refused(p, *words)
    assert _written(tmp_path) == ["afile"] and (tmp_path / "afile").read_text() == "mine"


def test_lambda_continue_bounds_jobs_and_checks_runs(tmp_path):
    (tmp_path / "afile").write_text("mine")
    src = ["--source", tmp_path / "src", "--lams", "own"]
    _refused(_bench("lambda_continue.py", *src, "--runs", tmp_path / "r", "--jobs", "65"),
             "--jobs", "65")
    _refused(_bench("lambda_continue.py", *src, "--runs", tmp_path / "afile" / "sub"),
             "--runs", "afile is not a folder")


def test_overrides_may_come_between_the_options(tmp_path):
    """Overrides between the options are read as overrides (they were "unrecognized
    arguments"); one right after an option's values says where it goes."""
    base = ["--runs", tmp_path / "runs", "--out", tmp_path / "out"]
    _refused(_bench("fixed_lambda_grid.py", *base, "train.lr=0.5", "--jobs", "1", "foo.bar=1"),
             "unknown key 'foo'")
    _refused(_bench("fixed_lambda_grid.py", *base, "--seeds", "0", "1", "foo.bar=1"),
             "--seeds", "'foo.bar=1'", "give it before that option")
    assert list(tmp_path.iterdir()) == []


def _made_with(run: Path, config: str, overrides: list[str], **results) -> None:
    from metasparsity.config import load_config

    run.mkdir(parents=True)
    (run / "config.yaml").write_text(load_config(config, overrides).to_yaml())
    write_json(run / "results.json", {"kind": "meta", **results})


META = str(ROOT / "configs" / "synthscenes_meta.yaml")


@pytest.mark.parametrize("script", ["zero_set_jitter.py", "hypergrad_horizon.py"])
def test_a_meta_run_made_with_other_settings_is_refused(tmp_path, script):
    if script == "zero_set_jitter.py":
        run = tmp_path / "runs" / "seed_1" / "last_step_0.01"
        made = ["meta.final_zero_window=0", "meta.lambda_init=0.01", "train.seed=1"]
    else:
        run = tmp_path / "runs" / "seed_0" / "0.0001_2"
        made = ["meta.steps=2", "meta.final_zero_window=0", "meta.lambda_init=0.0001",
                "train.seed=0"]
    _made_with(run, META, [*MICRO, *made, "train.lr=0.5"])
    p = _bench(script, *_cheap(script, tmp_path))
    _refused(p, f"{run} was made with other settings", "train.lr: 0.5 there")
    assert not (tmp_path / "out").exists()


def test_a_continuation_of_a_source_made_again_with_other_settings_is_refused(tmp_path):
    src = tmp_path / "src" / "seed_0" / "heldout_0.0001"
    _made_with(src, META, [*MICRO, "meta.lambda_objective=heldout", "meta.lr_schedule=constant"],
               steps=4)
    (src / "checkpoints").mkdir()
    dst = tmp_path / "runs" / "seed_0" / "heldout_own"  # continued from a source of other lr
    _made_with(dst, META, [*MICRO, "meta.lambda_objective=heldout", "meta.lr_schedule=constant",
                           "meta.steps=6", "meta.lambda_lr=0", "train.lr=0.5"], steps=6)
    p = _bench("lambda_continue.py", "--source", tmp_path / "src", "--seeds", "0", "--lams",
               "own", "--steps", "2", "--runs", tmp_path / "runs", "--jobs", "1")
    _refused(p, f"{dst} was made with other settings", "train.lr: 0.5 there")


def test_a_window_search_made_with_other_settings_is_refused(tmp_path):
    """An unfinished window search goes on from its last branch: that branch was made with
    other settings."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from lambda_inits import _meta_overrides

    run = tmp_path / "runs" / "seed_0" / "window_0.004"
    branch = run.parent / "window_0.004.branches" / "w00_up"
    _made_with(branch, META, [*MICRO, *_meta_overrides(0, "window", "0.004", 4, 0.0, "macs"),
                              "train.lr=0.5"])
    (branch / "results.json").unlink()
    write_json(branch.parent / "window_search.json", {
        "window": 2, "factor": 2.0, "score": "delta_m", "lambda0": 0.004,
        "windows": [{"step": 2, "winner": "up", "lambda": 0.008}]})
    args = _cheap("lambda_inits.py", tmp_path)
    p = _bench("lambda_inits.py", *args, "--objectives", "window", "--inits", "0.004",
               "--window", "2", "--steps", "4")
    _refused(p, f"{branch} was made with other settings", "train.lr: 0.5 there")
    assert not (tmp_path / "out").exists() and not (tmp_path / "grid").exists()


@pytest.mark.parametrize("group", [True, False], ids=["ctrl-c", "sigint-to-main"])
def test_ctrl_c_ends_with_one_line_and_130(tmp_path, group):
    """The running training saves its step and stops, the queued one never starts, and the
    program says what to do in one line (a KeyboardInterrupt traceback of as_completed
    before)."""
    p = subprocess.Popen(
        [sys.executable, str(BENCH / "fixed_lambda_grid.py"), *MICRO, "train.max_steps=100000",
         "train.val_every=100000", "--grid-euclidean", "--seeds", "0", "--grid-adam", "0.05",
         "--jobs", "1", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        cwd=ROOT, env=ENV)
    log = tmp_path / "runs" / "seed_0" / "dense" / "metrics.jsonl"
    try:
        deadline = time.time() + 120
        while not (log.is_file() and len(log.read_text().splitlines()) >= 3):
            assert p.poll() is None and time.time() < deadline, p.communicate()
            time.sleep(0.2)
        (os.killpg if group else os.kill)(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, (p.returncode, err[-2000:])
    assert err.strip().splitlines()[-1] == INTERRUPTED and "Traceback" not in err, err[-2000:]
    assert [q.name for q in (tmp_path / "runs" / "seed_0").iterdir()] == ["dense"]
    assert any((tmp_path / "runs" / "seed_0" / "dense" / "checkpoints").glob("step_*"))


def test_ctrl_c_outside_the_pool_ends_with_one_line_and_130(tmp_path):
    """A Ctrl-C after the trainings (here: while the results are read) was a KeyboardInterrupt
    traceback; every training benchmark's entry point now says what to do in one line."""
    code = (f"import sys; sys.path.insert(0, {str(BENCH)!r}); import fixed_lambda_grid as flg\n"
            "def main():\n    raise KeyboardInterrupt\n"
            "flg.run_main(main)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=ENV, timeout=120)
    assert p.returncode == 130 and p.stderr.strip() == INTERRUPTED, p.stderr
    for name in ("fixed_lambda_grid", "lambda_inits", "budget_train", "zero_set_jitter",
                 "hypergrad_horizon", "lambda_continue"):
        assert "run_main(main)" in (BENCH / f"{name}.py").read_text().split('__name__ == "__main__"')[-1]
