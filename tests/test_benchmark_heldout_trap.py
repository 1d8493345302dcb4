"""``benchmarks/heldout_trap.py``: the paired held-out loss of runs from different λ0."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from metasparsity.utils.io import read_json, write_json

ROOT = Path(__file__).resolve().parents[1]
STEPS = 30


def _run(root: Path, seed: int, init: str, val_loss, lam, subsets=None) -> None:
    d = root / f"seed_{seed}" / f"heldout_{init}"
    d.mkdir(parents=True)
    recs = ([
        {"step": k + 1, "kind": "meta", "lambda": lam[k], "lambda_val_loss": val_loss[k],
         "grad_lambda_explicit": 0.0, "grad_lambda_implicit": 1.0 if k % 3 else -1.0,
         "grad_lambda_prox": None, "group_sparsity": 0.25,
         "subsets": (subsets or [["a"]] * STEPS)[k]} for k in range(STEPS)]
            + [{"step": STEPS, "kind": "val", "val": {}}])
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    write_json(d / "results.json", {"machine": {"cpu": "test cpu", "cpu_capability": "X"}})


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "heldout_trap.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_the_paired_difference_and_its_block_interval(tmp_path):
    rng = np.random.default_rng(0)
    ref, run = rng.normal(2.5, 0.2, STEPS), rng.normal(2.7, 0.2, STEPS)
    _run(tmp_path / "runs", 0, "auto", list(ref), [1e-3] * STEPS)
    _run(tmp_path / "runs", 0, "0.0001", list(run), [1e-4] * (STEPS - 1) + [5e-6])
    p = _bench("--runs", str(tmp_path / "runs"), "--seeds", "0", "--inits", "0.0001,auto",
               "--tail", "20", "--block", "5", "--out", str(tmp_path / "out"), "--name", "t")
    assert p.returncode == 0, p.stderr
    res = read_json(tmp_path / "out" / "t.json")
    low, auto = res["rows"]
    assert auto["vs_reference"] is None and low["lambda_final"] == 5e-6
    d = (run - ref)[-20:]
    blocks = d.reshape(4, 5).mean(axis=1)
    half = stats.t.ppf(0.975, 3) * blocks.std(ddof=1) / 2
    assert low["vs_reference"]["mean"] == pytest.approx(d.mean())
    assert low["vs_reference"]["half_width"] == pytest.approx(half)
    assert low["vs_reference"]["per_step"] == pytest.approx(list(run - ref))
    assert low["tail_val_loss"] == pytest.approx(run[-20:].mean())
    # dL/dλ > 0 (pushing λ down) where k % 3 != 0: 14 of k = 10..29 (not 12, 15, ..., 27)
    assert low["tail_share_pushing_down"] == pytest.approx(14 / 20)
    assert res["runs_made_on"] == ["test cpu X"]
    assert (tmp_path / "out" / "t.png").is_file() and "+0." in (tmp_path / "out" / "t.md").read_text()
    # the figure shades the steps the table averages, so another --tail draws another figure
    p = _bench("--runs", str(tmp_path / "runs"), "--seeds", "0", "--inits", "0.0001,auto",
               "--tail", "10", "--block", "5", "--out", str(tmp_path / "out"), "--name", "t10")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "out" / "t10.png").read_bytes() != (tmp_path / "out" / "t.png").read_bytes()


def test_the_label_names_the_folders_suffix_in_the_report(tmp_path):
    _run(tmp_path / "runs", 0, "own", [3.0] * STEPS, [1e-6] * STEPS)
    _run(tmp_path / "runs", 0, "0.001", [2.5] * STEPS, [1e-3] * STEPS)
    p = _bench("--runs", str(tmp_path / "runs"), "--seeds", "0", "--inits", "own,0.001",
               "--reference", "own", "--label", "held λ", "--tail", "10", "--block", "5",
               "--out", str(tmp_path / "out"), "--name", "c")
    assert p.returncode == 0, p.stderr
    md = (tmp_path / "out" / "c.md").read_text()
    assert "runs at different held λ" in md and "| seed | held λ | final λ |" in md
    assert "minus held λ = own's (paired)" in md and "λ0" not in md
    res = read_json(tmp_path / "out" / "c.json")
    assert res["label"] == "held λ" and res["rows"][1]["vs_reference"]["mean"] == -0.5
    p = _bench("--runs", str(tmp_path / "runs"), "--seeds", "0", "--inits", "own",
               "--reference", "own", "--label", "held λ", "--out", str(tmp_path / "o2"))
    assert p.returncode == 2 and "and another held λ" in p.stderr


@pytest.mark.parametrize("case, message", [
    ("subsets", "not paired"), ("missing", "no meta-training run"),
    ("reference", "must hold --reference"), ("reference only", "and another λ0"),
    ("block", "multiple of --block"), ("short", "fewer than --tail"),
    ("no key", "meta-steps without ['group_sparsity']"), ("gap", "one by one"),
    ("not json", "heldout_0.01/metrics.jsonl: a line is not JSON")])
def test_bad_input_is_refused_before_anything_is_written(tmp_path, case, message):
    _run(tmp_path / "runs", 0, "auto", [2.0] * STEPS, [1e-3] * STEPS)
    if case != "missing":
        _run(tmp_path / "runs", 0, "0.01", [2.0] * STEPS, [1e-2] * STEPS,
             subsets=[["a"]] * (STEPS - 1) + [["b"]] if case == "subsets" else None)
    log = tmp_path / "runs" / "seed_0" / f"heldout_{'auto' if case == 'missing' else '0.01'}" / \
        "metrics.jsonl"
    lines = log.read_text().splitlines()
    if case == "no key":
        rec = json.loads(lines[3])
        del rec["group_sparsity"]
        lines[3] = json.dumps(rec)
    elif case == "gap":
        del lines[3]
    elif case == "not json":
        lines[3] = lines[3][:20]
    log.write_text("\n".join(lines) + "\n")
    inits = {"reference": "0.01", "reference only": "auto", "missing": "auto,0.0001"}.get(
        case, "auto,0.01")
    tail = {"block": ["--tail", "25"], "short": ["--tail", "40", "--block", "10"]}.get(
        case, ["--tail", "20"])
    p = _bench("--runs", str(tmp_path / "runs"), "--seeds", "0", "--inits", inits, *tail,
               "--out", str(tmp_path / "out"))
    assert p.returncode == 2 and message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "out").exists()
