"""``benchmarks/budget_paths.py``: budget runs' cost and multiplier paths, read from their logs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _paths(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "budget_paths.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def _write(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _plain_run(folder: Path, seed: int, cost: np.ndarray, lam: np.ndarray,
               target: np.ndarray) -> None:
    """A ``budget_train.py`` run: ``train`` records every 25 steps (and a ``val`` one)."""
    recs = [{"step": 25 * (i + 1), "kind": "train", "cost": float(c), "target": float(t),
             "lambda": float(v)} for i, (c, v, t) in enumerate(zip(cost, lam, target))]
    recs.insert(3, {"step": 75, "kind": "val", "delta_m": 1.0})
    _write(folder / f"seed_{seed}" / "budget_macs_0.5" / "metrics.jsonl", recs)


def _held(cost, lam, target, steps, end):
    """The second half of the dual ascent, computed independently with NumPy."""
    keep = (steps > end / 2) & (steps < end)
    c, v, t = cost[keep], lam[keep], target[keep]
    return v.max() / v.min(), 100 * np.abs(c - t).mean(), 100 * np.diff(c).max()


def test_plain_runs_second_half_matches_numpy(tmp_path):
    rng = np.random.default_rng(0)
    steps = 25 * np.arange(1, 41)  # 1000 steps, the landing's record at 1000
    target = np.where(steps < 500, 0.5 + 0.5 * (1 - steps / 500) ** 3, 0.5)
    want = []
    for seed in range(3):
        cost = target + rng.normal(0, 0.02, steps.size)
        lam = np.exp(rng.normal(np.log(4e-4), 0.1, steps.size))
        cost[-1] = 0.5  # the landing; not part of the phase
        lam[-1] = 1.0  # would dominate the ratio if it were
        _plain_run(tmp_path / "runs", seed, cost, lam, target)
        want.append(_held(cost, lam, target, steps, 1000))
    # a folder without a log is skipped, not an error
    (tmp_path / "runs" / "seed_9" / "budget_macs_0.5").mkdir(parents=True)
    out = tmp_path / "paths.png"
    p = _paths("--runs", str(tmp_path / "runs"), "--labels", "plain", "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert out.stat().st_size > 10_000
    ratio, dev, rise = np.mean(want, axis=0)
    line = p.stdout.splitlines()[0]
    assert line.startswith("plain: second half of the dual ascent (steps 525–975, 3 seeds)"), line
    assert f"moves ×{ratio:.2f} (max/min)" in line, line
    assert f"sits {dev:.1f} points from its target" in line, line
    assert f"at most {rise:.1f} points" in line, line


def test_meta_runs_stop_at_the_last_meta_step(tmp_path):
    """Meta-training's records every step; fine-tuning's (after it) are not in the phase."""
    n = 20
    steps = np.arange(1, n + 1)
    cost = np.linspace(1.0, 0.4, n)
    lam = np.linspace(1e-3, 3e-3, n)
    target = np.full(n, 0.5)
    run = tmp_path / "runs" / "seed_0" / "budget_macs_0.5"
    _write(run / "metrics.jsonl",
           [{"step": int(s), "kind": "meta", "cost": float(c), "target": 0.5,
             "lambda": [float(v), float(v)]} for s, c, v in zip(steps, cost, lam)])
    _write(run / "finetune_seen" / "metrics.jsonl",
           [{"step": 25, "kind": "train", "cost": 0.9, "target": 0.5, "lambda": 1.0}])
    p = _paths("--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "m.png"))
    assert p.returncode == 0, p.stderr
    ratio, dev, rise = _held(cost, lam, target, steps, n)
    assert "(steps 11–19, 1 seeds)" in p.stdout
    assert f"moves ×{ratio:.2f}" in p.stdout and f"sits {dev:.1f} points" in p.stdout
    assert f"at most {rise:.1f} points" in p.stdout  # the cost only falls: a negative rise


@pytest.mark.parametrize("case", ["missing", "empty", "labels", "suffix"])
def test_bad_arguments_are_refused_with_exit_2_and_no_picture(tmp_path, case):
    good = tmp_path / "good"
    _plain_run(good, 0, np.full(8, 0.5), np.full(8, 4e-4), np.full(8, 0.5))
    runs, extra, out = [good], [], tmp_path / "f.png"
    if case == "missing":
        runs = [tmp_path / "nowhere"]
    elif case == "empty":
        (tmp_path / "empty" / "seed_0" / "dense").mkdir(parents=True)
        runs = [tmp_path / "empty"]
    elif case == "labels":
        extra = ["--labels", "one", "two"]
    else:
        out = tmp_path / "f.xyz"
    p = _paths("--runs", *map(str, runs), *extra, "--out", str(out))
    assert p.returncode == 2, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    assert not out.exists()
