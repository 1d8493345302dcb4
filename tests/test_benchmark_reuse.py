"""The benchmarks that reuse finished runs refuse, with ``--current-code-only``, runs that
other code made (exit 2, before anything runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from metasparsity.utils.io import write_json

ROOT = Path(__file__).resolve().parents[1]


def _bench(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.parametrize("script, dense", [("fixed_lambda_grid.py", "runs/seed_0/dense"),
                                           ("lambda_inits.py", "grid/seed_0/dense")])
def test_current_code_only_refuses_a_run_of_other_code(tmp_path, script, dense):
    old = tmp_path / dense
    old.mkdir(parents=True)
    write_json(old / "results.json", {"kind": "mtl", "code": {
        "version": "0.0.1", "commit": "b" * 40, "dirty": False}})
    args = (["--runs", str(tmp_path / "runs"), "--seeds", "0", "--grid-adam", "0.001",
             "--grid-euclidean", "0.1", "--out", str(tmp_path / "out")]
            if script == "fixed_lambda_grid.py" else
            ["--runs", str(tmp_path / "runs"), "--grid-runs", str(tmp_path / "grid"),
             "--seeds", "0", "--objectives", "", "--no-dense", "--grid", "0.001",
             "--out", str(tmp_path / "out")])
    p = _bench(script, *args, "--current-code-only")
    assert p.returncode == 2, p.stderr
    assert "--current-code-only: 1 of the" in p.stderr and "bbbbbbb: 1" in p.stderr
    # nothing ran, nothing was written
    assert not (tmp_path / "out").exists()
    assert sorted(q.name for q in tmp_path.rglob("*") if q.is_file()) == ["results.json"]
