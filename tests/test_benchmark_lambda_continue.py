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
    """A finished 2-step held-out run with λ held at λ0, and the same run over 4 steps."""
    root = tmp_path_factory.mktemp("cont")
    src = root / "runs" / "seed_0" / "heldout_0.004"
    run_meta_train(load_config(None, [*BASE, "meta.steps=2", "meta.lambda_lr=0"]), src)
    whole = root / "whole"
    run_meta_train(load_config(None, [*BASE, "meta.steps=4", "meta.lambda_lr=0"]), whole)
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

    def fail(*a, **k):
        raise AssertionError("a finished continuation was trained again")

    monkeypatch.setattr(MetaTrainer, "train", fail)
    assert lc.continue_at(str(src), str(tmp_path / "up"), 0.05, 2)["steps"] == 4


@pytest.mark.parametrize("args, message", [
    (["--lams", "own,abc"], "'abc' is not a number"),
    (["--lams", "0"], "must be > 0"),
    (["--steps", "0"], "--steps and --jobs must be ≥ 1"),
    (["--seeds", "3"], "no finished held-out meta-training"),
    (["--init", "auto"], "no finished held-out meta-training")])
def test_bad_input_is_refused_before_any_run(source, tmp_path, args, message):
    root, _, _ = source
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lambda_continue.py"),
                        "--source", str(root / "runs"), "--init", "0.004", "--seeds", "0",
                        "--runs", str(tmp_path / "out"), *args],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 2 and message in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()
