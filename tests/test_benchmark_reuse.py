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


def _args(script: str, tmp_path: Path) -> list[str]:
    """One seed, one λ (two for the grid), into ``tmp_path``."""
    if script == "fixed_lambda_grid.py":
        return ["--runs", str(tmp_path / "runs"), "--seeds", "0", "--grid-adam", "0.001",
                "--grid-euclidean", "0.1", "--out", str(tmp_path / "out")]
    return ["--runs", str(tmp_path / "runs"), "--grid-runs", str(tmp_path / "grid"), "--seeds",
            "0", "--objectives", "", "--no-dense", "--grid", "0.001", "--out", str(tmp_path / "out")]


@pytest.mark.parametrize("script, dense", [("fixed_lambda_grid.py", "runs/seed_0/dense"),
                                           ("lambda_inits.py", "grid/seed_0/dense")])
def test_current_code_only_refuses_a_run_of_other_code(tmp_path, script, dense):
    old = tmp_path / dense
    old.mkdir(parents=True)
    write_json(old / "results.json", {"kind": "mtl", "code": {
        "version": "0.0.1", "commit": "b" * 40, "dirty": False}})
    args = _args(script, tmp_path)
    p = _bench(script, *args, "--current-code-only")
    assert p.returncode == 2, p.stderr
    assert "--current-code-only: 1 of the" in p.stderr and "bbbbbbb: 1" in p.stderr
    # nothing ran, nothing was written
    assert not (tmp_path / "out").exists()
    assert sorted(q.name for q in tmp_path.rglob("*") if q.is_file()) == ["results.json"]


def _made_with(run: Path, config: str, *overrides: str) -> None:
    from metasparsity.config import load_config

    run.mkdir(parents=True)
    (run / "config.yaml").write_text(load_config(config, list(overrides)).to_yaml())
    write_json(run / "results.json", {"kind": "mtl"})


@pytest.mark.parametrize("script, dense, config, made", [
    ("fixed_lambda_grid.py", "runs/seed_0/dense", "configs/synthscenes.yaml",
     ["sparsity.prox_metric=adam", "train.seed=0", "sparsity.lam=0"]),
    ("lambda_inits.py", "grid/seed_0/dense", "configs/synthscenes.yaml",
     ["sparsity.prox_metric=adam", "train.seed=0", "sparsity.lam=0"]),
])
def test_a_run_made_with_other_settings_is_refused_not_reused(tmp_path, script, dense, config,
                                                              made):
    """A finished run was taken whatever settings it was made with: another train.max_steps or
    train.lr put the old numbers under the new settings in the table and the JSON."""
    _made_with(tmp_path / dense, str(ROOT / config), *made, "train.max_steps=120")
    args = _args(script, tmp_path)
    p = _bench(script, *args, "train.max_steps=40")
    assert p.returncode == 2, p.stderr
    err = p.stderr.strip().splitlines()[-1]
    assert f"{tmp_path / dense} was made with other settings" in err, err
    assert "train.max_steps: 120 there" in err and "Traceback" not in p.stderr
    assert not (tmp_path / "out").exists()


def test_settings_that_do_not_change_a_run_and_settings_added_since_are_not_differences(
        tmp_path):
    import yaml

    from metasparsity.config import load_config
    from metasparsity.recipes.reused import changed_settings

    run = tmp_path / "run"
    run.mkdir()
    doc = yaml.safe_load(load_config(None, []).to_yaml())
    doc["train"]["num_threads"], doc["data"]["num_workers"] = 7, 3
    del doc["meta"]["lambda_objective"]  # a setting the run's version did not have yet
    (run / "config.yaml").write_text(yaml.safe_dump(doc))
    assert changed_settings(run, load_config(None, [])) == {}
    assert changed_settings(run, load_config(None, ["meta.lambda_objective=query"])) == {
        "meta.lambda_objective": [None, "query"]}
    assert changed_settings(run, load_config(None, ["train.lr=0.5"]))["train.lr"][1] == 0.5
    assert changed_settings(tmp_path / "none", load_config(None, [])) == {}
