"""``benchmarks/zero_groups.py``: zero groups per stage and conv kind, read off finished runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.recipes.micro import MICRO, cli

from metasparsity.utils.io import read_json

ROOT = Path(__file__).resolve().parents[1]


def _zero_groups(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "zero_groups.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_counts_match_the_runs_own_results_and_bad_patterns_are_refused(tmp_path):
    runs = [tmp_path / f"seed_{s}" / "run" for s in (0, 1)]
    for s, run in enumerate(runs):
        assert cli("train", "--out", run, *MICRO, "sparsity.lam=0.05", "train.max_steps=6",
                   f"train.seed={s}") == 0
    out = tmp_path / "table.md"
    p = _zero_groups("--runs", str(tmp_path / "seed_*" / "run"), "--labels", "micro",
                     "--out", str(out))
    assert p.returncode == 0, p.stderr
    head, _, row = p.stdout.strip().splitlines()
    cols = [c.strip() for c in head.strip("|").split("|")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:2] == ["micro", "2"]
    # the same counts from each run's results.json: conv2 of a block is "own", the rest "shared"
    expect: dict[str, float] = {}
    for run in runs:
        for r in read_json(run / "results.json")["sparsity"]["per_layer"]:
            m = re.match(r"backbone\.(layer\d)\.\d\.(\w+)", r["name"])
            key = f"{m.group(1)} {'own' if m.group(2) == 'conv2' else 'shared'}" if m else "stem shared"
            expect[key] = expect.get(key, 0) + r["zero_groups"] / len(runs)
    assert sum(expect.values()) > 0
    got = {c.split(" (of")[0]: float(v) for c, v in zip(cols[2:-1], cells[2:-1])}
    assert got == {k: round(v) for k, v in expect.items()}
    assert 0 < float(cells[-1]) <= 100
    assert out.read_text().count(row) == 1
    # a pattern that matches no finished run, or a label count that does not fit: exit 2
    for bad in (["--runs", str(tmp_path / "nothing_*")],
                ["--runs", str(tmp_path / "seed_*" / "run"), "--labels", "a", "b"]):
        p = _zero_groups(*bad)
        assert p.returncode == 2 and "--" in p.stderr.strip().splitlines()[-1], p.stderr
