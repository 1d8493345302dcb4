"""``benchmarks/budget_train.py``: budget-mode `train` runs scored against the fixed-λ grid at
the same backbone MACs, on micro runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.recipes.micro import MICRO, cli

from metasparsity.config import load_config
from metasparsity.data import resolve_tasks
from metasparsity.eval.delta import default_spec, delta_m, usable_spec
from metasparsity.utils.io import read_json, write_json

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["train.max_steps=12", "train.val_every=6", "train.lr=5e-3"]


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "budget_train.py"), *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_rows_follow_the_runs_and_the_grid_and_bad_input_is_refused(tmp_path):
    grid_runs, runs, ref = tmp_path / "grid", tmp_path / "budget", tmp_path / "ref"
    # the unseen reference: the dense grid model fine-tuned on the unseen tasks (2 steps)
    # (with the benchmark's config: a run of other settings would be refused, not reused)
    assert cli("train", "--config", ROOT / "configs" / "synthscenes.yaml", "--out",
               grid_runs / "seed_0" / "dense", *MICRO, *STEPS, "train.seed=0",
               "train.num_threads=1", "train.progress=false", "sparsity.prox_metric=adam") == 0
    assert cli("finetune", grid_runs / "seed_0" / "dense", "--tasks", "normal,light_left",
               "--out", ref / "seed_0" / "dense_mtl_unseen", "finetune.steps=2",
               "finetune.val_every=2") == 0
    common = ["--seeds", "0", "--grid", "0.05", "1", "--jobs", "1", "--target", "0.6",
              "--measure", "groups", "--lam0", "0.004", "--ramp", "0.5",
              "--grid-runs", str(grid_runs), "--runs", str(runs), "--out", str(tmp_path / "out"),
              "--name", "bt", *MICRO, *STEPS]
    p = _bench(*common, "--unseen-ref", str(ref))
    assert p.returncode == 0, p.stderr[-2000:]
    doc = read_json(tmp_path / "out" / "bt.json")
    (row,) = doc["rows"]
    run = runs / "seed_0" / "budget_groups_0.6"
    res = read_json(run / "results.json")
    assert res["kind"] == "train_budget" and res["budget"]["target"] == 0.6
    # Δm from the runs' own test metrics, independently of the benchmark
    dense = read_json(grid_runs / "seed_0" / "dense" / "results.json")["test"]
    seen = list(res["tasks"])
    types = {t: task.type for t, task in resolve_tasks(load_config(None, MICRO), seen).items()}
    spec, _ = usable_spec(default_spec(types), dense)
    assert row["delta_m"] == delta_m({t: res["test"][t] for t in seen},
                                     {t: dense[t] for t in seen}, spec)
    assert row["param_sparsity"] == 100 * res["sparsity"]["param_sparsity"]
    # the front at the run's MACs, fewer MACs being better: dense (100 %, 0) and the λ = 1 model
    # (few MACs) are on it, the λ = 0.05 model (as many MACs as dense, worse) is not; between
    # its points the front is a straight line
    pts = {g["lam"]: (g["backbone_macs"]["mean"], g["delta_m"]["mean"]) for g in doc["grid"]}
    (m0, d0), (m1, d1) = pts[1.0], pts[0.0]
    assert m0 < row["backbone_macs"] < m1 and pts[0.05][1] < d0 and pts[0.05][0] >= m0
    want = d0 + (row["backbone_macs"] - m0) / (m1 - m0) * (d1 - d0)
    assert abs(row["front_delta_m_at_macs"] - want) < 1e-9
    assert abs(row["gap_to_seed_front_at_macs"] - (row["delta_m"] - want)) < 1e-9  # one seed
    # the unseen fine-tuning kept the budget and is scored against the reference
    ft = read_json(run / "finetune_unseen" / "results.json")
    assert ft["budget"]["target"] == 0.6 and row["delta_m_unseen"] is not None
    assert "Δm unseen" in (tmp_path / "out" / "bt.md").read_text()
    # bad input: one line naming the option, exit 2
    for bad, name in ((["--target", "0"], "--target"), (["--ramp", "2"], "--ramp"),
                      (["--unseen-ref", str(tmp_path / "nowhere")], "--unseen-ref")):
        p = _bench(*common, *bad)
        assert p.returncode == 2 and name in p.stderr.strip().splitlines()[-1], p.stderr
    # the unseen reference is a reused run too: made by other code, it is counted and refused
    ref_res = ref / "seed_0" / "dense_mtl_unseen" / "results.json"
    write_json(ref_res, {**read_json(ref_res), "code": {
        "version": "0", "commit": "b" * 40, "dirty": False, "package": "sha256:" + "0" * 16}})
    p = _bench(*common, "--unseen-ref", str(ref), "--current-code-only")
    assert p.returncode == 2 and "bbbbbbb: 1" in p.stderr.strip().splitlines()[-1], p.stderr

