"""``benchmarks/lambda_continue.py``: finished held-out meta-trainings continued at a fixed λ,
on micro runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.recipes.micro import MICRO

from metasparsity.config import load_config
from metasparsity.recipes.meta_train import MetaTrainer, run_meta_train
from metasparsity.utils.io import read_json, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import lambda_continue as lc  # noqa: E402

BASE = [*MICRO, "data.seen_tasks=[segment,depth,has_sphere]", "meta.lambda_init=0.004",
        "meta.lambda_objective=heldout", "meta.final_zero_window=0"]


def _meta(recs):
    return [r for r in recs if r["kind"] == "meta"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A finished 2-step held-out run with λ held at λ0, the same run over 4 steps, and a
    2-step run whose λ learns (seed 1)."""
    root = tmp_path_factory.mktemp("cont")
    src = root / "runs" / "seed_0" / "heldout_0.004"
    run_meta_train(load_config(None, [*BASE, "meta.steps=2", "meta.lambda_lr=0"]), src)
    whole = root / "whole"
    run_meta_train(load_config(None, [*BASE, "meta.steps=4", "meta.lambda_lr=0"]), whole)
    run_meta_train(load_config(None, [*BASE, "meta.steps=2", "meta.lambda_lr=0.5",
                                      "train.seed=1"]), root / "runs" / "seed_1" / "heldout_0.004")
    return root, src, whole


def test_a_continuation_at_the_runs_own_lambda_is_the_longer_run(source, tmp_path):
    _, src, whole = source
    res = lc.continue_at(str(src), str(tmp_path / "own"), None, 2)
    assert res["steps"] == 4
    got, want = _meta(read_jsonl(tmp_path / "own" / "metrics.jsonl")), _meta(
        read_jsonl(whole / "metrics.jsonl"))
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for a, b in zip(got, want):  # nothing but the steps changed: bit for bit the 4-step run
        for k in ("lambda", "lambda_val_loss", "grad_lambda_implicit", "subsets", "query_loss"):
            assert a[k] == b[k], (a["step"], k)
    assert not (tmp_path / "own.partial").exists()


def test_a_fixed_lambda_is_held_on_the_same_batches_and_a_finished_one_reused(
        source, tmp_path, monkeypatch):
    _, src, whole = source
    (tmp_path / "up.partial").mkdir()  # left by an interrupted continuation: redone
    (tmp_path / "up.partial" / "stale").write_text("x")
    lc.continue_at(str(src), str(tmp_path / "up"), 0.05, 2)
    up = _meta(read_jsonl(tmp_path / "up" / "metrics.jsonl"))
    ref = _meta(read_jsonl(whole / "metrics.jsonl"))
    assert [r["lambda"] for r in up[2:]] == [pytest.approx(0.05)] * 2
    assert [r["subsets"] for r in up] == [r["subsets"] for r in ref]
    assert up[:2] == _meta(read_jsonl(src / "metrics.jsonl"))  # the source's own steps, as logged
    assert up[2]["lambda_val_loss"] != ref[2]["lambda_val_loss"]  # θ moved under another λ
    assert not (tmp_path / "up.partial").exists() and not (tmp_path / "up" / "stale").exists()
    assert read_json(src / "results.json")["steps"] == 2  # the source is not touched
    # a source whose λ learned: held at its own final λ from there on
    learned = source[0] / "runs" / "seed_1" / "heldout_0.004"
    lams = [r["lambda"] for r in _meta(read_jsonl(learned / "metrics.jsonl"))]
    assert lams[0] != lams[1]
    lc.continue_at(str(learned), str(tmp_path / "own1"), None, 2)
    held = [r["lambda"] for r in _meta(read_jsonl(tmp_path / "own1" / "metrics.jsonl"))]
    assert held == [*lams, lams[1], lams[1]]

    def fail(*a, **k):
        raise AssertionError("a finished continuation was trained again")

    monkeypatch.setattr(MetaTrainer, "train", fail)
    assert lc.continue_at(str(src), str(tmp_path / "up"), 0.05, 2)["steps"] == 4


@pytest.mark.parametrize("args, message", [
    (["--lams", "own,abc"], "'abc' is not a number"),
    (["--lams", "0"], "must be a finite number > 0"),
    (["--lams", "inf"], "must be a finite number > 0"),
    (["--lams", "own,20"], "--lams 20 outside the run's [meta.lambda_min, meta.lambda_max]"),
    (["--lams", "0.001,1e-3"], "--lams: 0.001 is given twice"),  # two folders for one λ
    (["--runs", "SOURCE"], "--runs must lie outside --source"),
    (["--runs", "SOURCE/seed_0/heldout_0.004"], "--runs must lie outside --source"),
    (["--runs", "SOURCE/.."], "--runs must lie outside --source"),
    (["--steps", "0"], "--steps and --jobs must be ≥ 1"),
    (["--seeds", "3"], "no finished held-out meta-training"),
    (["--init", "auto"], "no finished held-out meta-training")])
def test_bad_input_is_refused_before_any_run(source, tmp_path, args, message):
    root, _, _ = source
    before = sorted(root.rglob("*"))
    args = [a.replace("SOURCE", str(root / "runs")) for a in args]
    p = _bench("--source", str(root / "runs"), "--init", "0.004", "--seeds", "0",
               "--runs", str(tmp_path / "out"), *args)
    assert p.returncode == 2 and message in p.stderr, p.stderr
    assert not (tmp_path / "out").exists() and sorted(root.rglob("*")) == before


@pytest.mark.parametrize("edit, message", [
    (("lr_schedule: constant", "lr_schedule: cosine"), "meta.lr_schedule is cosine"),
    (("target: null", "target: 0.5"), "a budget-mode run"),
    (("lambda_objective: heldout", "lambda_objective: query"), "not heldout")])
def test_a_run_that_cannot_be_continued_as_it_was_is_refused(source, tmp_path, edit, message):
    import shutil

    src = tmp_path / "runs" / "seed_0" / "heldout_0.004"
    shutil.copytree(source[1], src)
    cfg = (src / "config.yaml").read_text()
    meta = cfg.index("\nmeta:")  # the edit goes to the meta section (train has its own)
    assert edit[0] in cfg[meta:]
    (src / "config.yaml").write_text(cfg[:meta] + cfg[meta:].replace(edit[0], edit[1], 1))
    p = _bench("--source", str(tmp_path / "runs"), "--init", "0.004", "--seeds", "0",
               "--runs", str(tmp_path / "out"))
    assert p.returncode == 2 and message in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lambda_continue.py"),
                           *args], capture_output=True, text=True, timeout=300, cwd=ROOT)
