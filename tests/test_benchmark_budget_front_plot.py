"""``benchmarks/budget_front_plot.py``: budget recipes against the fixed-λ grid's front."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# the grid: (λ, MACs %, Δm %); its front is the 25 % model down to 25 % and the line to the 10 %
GRID = [(0.0, 100.0, 0.0), (3e-4, 50.0, 1.0), (1e-3, 25.0, 2.0), (3e-3, 10.0, -1.0)]


def _plot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "budget_front_plot.py"),
                           *args], capture_output=True, text=True, timeout=300, cwd=ROOT)


def _result(path: Path, points: list[tuple[float, float]], grid: bool = True,
            target: float | None = 0.5) -> Path:
    cell = {"std": 0.0, "n": 3}
    data = {"target": target,
            "grid": [{"lam": lam, "backbone_macs": {"mean": m, **cell},
                      "delta_m": {"mean": d, **cell}} for lam, m, d in GRID] if grid else [],
            "rows": [{"seed": s, "backbone_macs": m, "delta_m": d,
                      "gap_to_seed_front_at_macs": d - 2.0 + 0.1 * s}
                     for s, (m, d) in enumerate(points)]
            + [{"seed": "mean ± std", "backbone_macs": 0.0, "delta_m": 99.0}]}
    path.write_text(json.dumps(data))
    return path


def test_each_recipe_is_read_at_its_mean_cost_on_the_flat_left_front(tmp_path):
    a = [(49.8, 1.3), (50.0, 1.2), (49.9, 1.6)]  # 50 % of the MACs: the 25 % model's +2.0
    b = [(20.0, 0.5), (19.0, 0.9), (21.0, 0.4)]  # 20 %: between the 25 % and 10 % models
    ra, rb = _result(tmp_path / "a.json", a), _result(tmp_path / "b.json", b)
    out = tmp_path / "fig.png"
    p = _plot("--grid", str(ra), "--results", str(ra), str(rb), "--labels", "A", "B",
              "--out", str(out))
    assert p.returncode == 0, p.stderr
    assert out.stat().st_size > 10_000
    lines = p.stdout.strip().splitlines()
    for line, pts in zip(lines, (a, b)):
        macs, dm = np.array(pts).T
        f = 2.0 if macs.mean() >= 25 else 2.0 + (25 - macs.mean()) / 15 * -3.0
        assert f"Δm {dm.mean():+.2f} ± {dm.std(ddof=1):.2f}" in line, line
        assert f"at {macs.mean():.1f} % of the MACs (n=3)" in line, line
        assert f"front there {f:+.2f}, gap {dm.mean() - f:+.2f}" in line, line
        own = dm - 2.0 + 0.1 * np.arange(3)  # the paired gaps, with a t-interval over 3 seeds
        half = 4.302652729911275 * own.std(ddof=1) / np.sqrt(3)  # t(0.975, 2)
        assert f"gap to each seed's own front {own.mean():+.2f} ± {half:.2f} (95 % t)" in line


def test_a_recipe_cheaper_than_every_grid_model_has_no_gap(tmp_path):
    r = _result(tmp_path / "a.json", [(5.0, -3.0), (6.0, -2.0)])
    p = _plot("--grid", str(r), "--results", str(r), "--out", str(tmp_path / "f.png"))
    assert p.returncode == 0, p.stderr
    assert "front there -, no grid model as cheap" in p.stdout


@pytest.mark.parametrize("case", ["labels", "twice", "suffix", "no_grid", "no_rows", "unreadable"])
def test_bad_arguments_are_refused_with_exit_2_and_no_picture(tmp_path, case):
    good = _result(tmp_path / "good.json", [(50.0, 1.0)])
    args = {"grid": good, "results": [good], "labels": [], "out": tmp_path / "f.png"}
    if case == "labels":
        args["labels"] = ["one", "two"]
    elif case == "twice":  # two files, one label (or the same file stem twice)
        args["results"], args["labels"] = [good, good], ["same", "same"]
    elif case == "suffix":
        args["out"] = tmp_path / "f.pdf"
    elif case == "no_grid":
        args["grid"] = _result(tmp_path / "nogrid.json", [(50.0, 1.0)], grid=False)
    elif case == "no_rows":
        args["results"] = [_result(tmp_path / "norows.json", [], target=None)]
    else:
        bad = tmp_path / "bad.json"
        bad.write_text("{not json")
        args["results"] = [bad]
    cmd = ["--grid", str(args["grid"]), "--results", *map(str, args["results"]),
           "--out", str(args["out"])] + (["--labels", *args["labels"]] if args["labels"] else [])
    p = _plot(*cmd)
    assert p.returncode == 2, (case, p.stderr)
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert not args["out"].exists()
