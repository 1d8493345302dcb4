"""Budget recipes against the fixed-λ grid in one picture: Δm over backbone MACs.

Reads result files of ``benchmarks/budget_train.py`` and ``benchmarks/lambda_inits.py`` (budget
runs: rows with a target).  ``--grid``: the file whose fixed-λ grid (mean ± std over seeds) is
drawn, with its front read as every budget table reads it (fewer MACs better: straight between
the front's points, flat where a cheaper grid model scores at least as well).  Each of
``--results`` is one recipe: its seeds as small markers, their mean ± std as a large one.
Prints, per recipe, the mean Δm, the mean MACs and the gap to the front there, and where the
files have them, the mean gap to each seed's own front with its 95 % Student-t interval.

    python benchmarks/budget_front_plot.py --grid benchmarks/results/budget_train_avx2.json \
        --results benchmarks/results/budget_train_avx2.json … --labels "…" … \
        --out docs/images/budget_front.png
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


_STAT = {"mean": float, "std": float}
#: What is read of a ``--results`` file (its budget runs' rows: :func:`_row_problem`) and of
#: the ``--grid`` file.
RESULT_SHAPE = {"rows?": [dict], "target?": (float, type(None))}
GRID_SHAPE = {"target?": (float, type(None)),
              "grid?": [{"lam": float, "backbone_macs": _STAT, "delta_m": _STAT}]}
ROW_SHAPE = {"backbone_macs": float, "delta_m": float,
             "gap_to_seed_front_at_macs?": (float, type(None))}


def _row_problem(result: dict[str, Any], name: str) -> str | None:
    """Where a budget run's row of a result file lacks what is read, or None."""
    from metasparsity.utils.io import check_json_shape

    for i, r in enumerate(result.get("rows", [])):
        problem = _is_budget(result, r) and check_json_shape(r, ROW_SHAPE, f"{name}['rows'][{i}]")
        if problem:
            return problem
    return None


def _is_budget(result: dict[str, Any], r: dict[str, Any]) -> bool:
    return (isinstance(r.get("seed"), int) and r.get("target", result.get("target")) is not None
            and r.get("backbone_macs") is not None and r.get("delta_m") is not None)


def _budget_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in result.get("rows", []) if _is_budget(result, r)]


def recipe_points(result: dict[str, Any]) -> list[tuple[float, float]]:
    """``(backbone MACs %, Δm %)`` of every seed's budget model in a result file."""
    return [(float(r["backbone_macs"]), float(r["delta_m"])) for r in _budget_rows(result)]


def own_front_gaps(result: dict[str, Any]) -> list[float]:
    """Each seed's gap to its own seed's grid front at its MACs, where the file has it."""
    return [float(r["gap_to_seed_front_at_macs"]) for r in _budget_rows(result)
            if r.get("gap_to_seed_front_at_macs") is not None]


def t_interval(v: list[float]) -> tuple[float, float] | None:
    """Mean and half-width of the two-sided 95 % Student-t interval of the mean (n ≥ 2)."""
    if len(v) < 2:
        return None
    from scipy import stats

    m, sd = _mean_std(v)
    return m, float(stats.t.ppf(0.975, len(v) - 1)) * sd / math.sqrt(len(v))


def grid_points(result: dict[str, Any]) -> list[dict[str, float]]:
    """The fixed-λ grid of a result file: per λ, mean and std over seeds of MACs % and Δm %."""
    return [{"lam": g["lam"], "macs": g["backbone_macs"]["mean"],
             "macs_std": g["backbone_macs"]["std"], "dm": g["delta_m"]["mean"],
             "dm_std": g["delta_m"]["std"]} for g in result["grid"]]


def _mean_std(v: list[float]) -> tuple[float, float]:
    m = sum(v) / len(v)
    return m, (math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0)


def summarise(grid: list[dict[str, float]], recipes: dict[str, list[tuple[float, float]]]
              ) -> list[dict[str, Any]]:
    """Per recipe: mean ± std (sample std) over seeds of MACs and Δm, the grid's front at the
    mean MACs, and the gap (mean Δm − front; None where no grid model is as cheap)."""
    from metasparsity.eval.delta import front_value

    front = [(-g["macs"], g["dm"]) for g in grid]
    out = []
    for label, pts in recipes.items():
        macs, dm = _mean_std([p[0] for p in pts]), _mean_std([p[1] for p in pts])
        f = front_value(front, -macs[0])
        out.append({"label": label, "n": len(pts), "macs": macs[0], "macs_std": macs[1],
                    "delta_m": dm[0], "delta_m_std": dm[1], "front": f,
                    "gap": None if f is None else dm[0] - f})
    return out


def plot(grid: list[dict[str, float]], recipes: dict[str, list[tuple[float, float]]],
         summary: list[dict[str, Any]], target: float | None, out: Path) -> None:
    """Left: Δm over MACs, the grid (mean ± std), its front and each recipe's mean ± std.
    Right: one row per recipe, its seeds and mean ± std Δm beside the front at its MACs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metasparsity.eval.delta import front_value

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, max(4.0, 0.4 * len(summary) + 1.6)),
                                 gridspec_kw={"width_ratios": [1, 0.8]})
    g = sorted(grid, key=lambda p: p["macs"])
    ax.errorbar([p["macs"] for p in g], [p["dm"] for p in g], xerr=[p["macs_std"] for p in g],
                yerr=[p["dm_std"] for p in g], color="0.3", marker="s", ms=5, capsize=2,
                lw=1, label="fixed-λ grid, mean ± std over seeds")
    for p in g:
        ax.annotate(f"λ={p['lam']:g}", (p["macs"], p["dm"]), textcoords="offset points",
                    xytext=(4, 5), fontsize=7, color="0.3")
    front = [(-p["macs"], p["dm"]) for p in g]
    xs = [x / 10 for x in range(0, 1001)]
    ys = [front_value(front, -x) for x in xs]
    ax.plot([x for x, y in zip(xs, ys) if y is not None], [y for y in ys if y is not None],
            "k--", lw=1, label="its front (flat where a cheaper model is as good)")
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, s in enumerate(summary):
        c = colours[i % len(colours)]
        ax.errorbar([s["macs"]], [s["delta_m"]], xerr=[s["macs_std"]], yerr=[s["delta_m_std"]],
                    color=c, marker="o", ms=5, capsize=2, lw=1)
        y = len(summary) - 1 - i
        pts = recipes[s["label"]]
        bx.scatter([p[1] for p in pts], [y] * len(pts), s=14, color=c, alpha=0.5, zorder=3)
        bx.errorbar([s["delta_m"]], [y], xerr=[s["delta_m_std"]], color=c, marker="o", ms=7,
                    capsize=3, lw=1.5, zorder=4)
        if s["front"] is not None:
            bx.plot([s["front"]] * 2, [y - 0.35, y + 0.35], color="k", lw=2, zorder=5)
    if target is not None:
        ax.axvline(100 * target, color="0.6", lw=0.8, ls=":")
    ax.set_xlabel("backbone MACs, % of dense (fewer is cheaper)")
    ax.set_ylabel("Δm vs dense MTL, % (test, seen tasks)")
    ax.set_xlim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    bx.set_yticks(range(len(summary)))
    bx.set_yticklabels([f"{s['label']} ({s['macs']:.0f} % MACs)" for s in reversed(summary)],
                       fontsize=7)
    bx.set_xlabel("Δm %: seeds, mean ± std; black: the front at its MACs")
    bx.set_ylim(-0.6, len(summary) - 0.4)
    bx.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    from metasparsity.utils.io import atomic_write

    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=130))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", type=Path, required=True,
                   help="a budget_train.py or lambda_inits.py result file (.json) with the grid")
    p.add_argument("--results", type=Path, nargs="+", required=True, help="result files (.json)")
    p.add_argument("--labels", nargs="+", default=None, help="one per --results file")
    p.add_argument("--out", type=Path, required=True, help="the picture (.png)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))

    from metasparsity.utils.errors import UserError
    from metasparsity.utils.io import load_json
    from metasparsity.utils.rundir import check_output_file

    def load(opt: str, path: Path, shape: dict[str, Any]) -> dict[str, Any]:
        try:
            return load_json(path, shape, what="result file")
        except UserError as e:
            raise SystemExit(_refuse(f"{opt}: {e}")) from None

    labels = args.labels or [f.stem for f in args.results]
    if len(labels) != len(args.results):
        return _refuse(f"--labels: {len(labels)} labels for {len(args.results)} result files")
    if len(set(labels)) != len(labels):
        return _refuse(f"--labels: {', '.join(sorted({x for x in labels if labels.count(x) > 1}))} "
                       "named twice (each result file needs its own label)")
    try:
        check_output_file(args.out, (".png",))
    except UserError as e:
        return _refuse(str(e))
    grid_result = load("--grid", args.grid, GRID_SHAPE)
    if not grid_result.get("grid"):
        return _refuse(f"--grid {args.grid}: no fixed-λ grid in it")
    recipes, paired = {}, {}
    for label, path in zip(labels, args.results):
        result = load("--results", path, RESULT_SHAPE)
        problem = _row_problem(result, path.name)
        if problem:
            return _refuse(f"--results: result file {path} is malformed: {problem}")
        pts = recipe_points(result)
        if not pts:
            return _refuse(f"--results {path}: no budget run with a Δm in it")
        recipes[label], paired[label] = pts, t_interval(own_front_gaps(result))
    grid = grid_points(grid_result)
    summary = summarise(grid, recipes)
    try:
        plot(grid, recipes, summary, grid_result.get("target"), args.out)
    except OSError as e:
        return _refuse(f"--out {args.out}: cannot write it ({e.strerror or e})")
    for s in summary:
        gap = "no grid model as cheap" if s["gap"] is None else f"gap {s['gap']:+.2f}"
        own = paired[s["label"]]
        own = "" if own is None else f"; gap to each seed's own front {own[0]:+.2f} ± {own[1]:.2f} (95 % t)"
        print(f"{s['label']}: Δm {s['delta_m']:+.2f} ± {s['delta_m_std']:.2f} at "
              f"{s['macs']:.1f} % of the MACs (n={s['n']}); front there "
              f"{'-' if s['front'] is None else format(s['front'], '+.2f')}, {gap}{own}")
    print(f"wrote {args.out}")
    return 0


def _refuse(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
