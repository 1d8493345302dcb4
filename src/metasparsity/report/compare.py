"""``report.md`` and plots of a comparison, generated from ``results.json`` alone (plus the
saved ``samples.npz`` and the runs' ``metrics.jsonl`` for the pictures), so that
``metasparsity report RUN_DIR`` reproduces them without retraining."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from metasparsity.eval.delta import delta_m, usable_spec
from metasparsity.report.tables import fmt, markdown_table
from metasparsity.utils.errors import UserError
from metasparsity.utils.io import atomic_write_text, check_json_shape, load_jsonl
from metasparsity.utils.provenance import code_label

METHOD_NAMES = {
    "stl": "STL (one model per task)",
    "mtl": "dense MTL",
    "fixed_lambda": "fixed-λ sparse MTL (grid, chosen on val)",
    "optuna": "λ tuned by Optuna (TPE)",
    "meta_dense": "meta-learning, λ = 0",
    "meta_sparsity": "meta-sparsity (learned λ)",
    "meta_budget": "meta-sparsity, budget mode (grid's costs, chosen on val)",
    "train_budget": "plain MTL, budget mode",
}


def method_label(results: dict[str, Any], name: str) -> str:
    """The row label of ``name``; meta-sparsity in budget mode (``meta.target``) says so."""
    meta = results.get("config", {}).get("meta", {})
    if name in ("meta_sparsity", "train_budget") and meta.get("target") is not None:
        who = "meta-sparsity" if name == "meta_sparsity" else "plain MTL"
        return (f"{who}, budget mode ({100 * meta['target']:g} % "
                f"{meta.get('target_measure', 'macs')})")
    return METHOD_NAMES.get(name, name)


def mean_std(cell: dict[str, float] | None, n_seeds: int, scale: float = 1.0) -> str:
    """``mean ± std`` (std only with several seeds), numbers formatted with :func:`fmt`.  A cell
    that records how many seeds it averages (``n``: a gap to the front exists only for seeds
    within the grid's range) shows no spread when that is one, and the count when it is fewer
    than ``n_seeds``."""
    if cell is None or cell.get("mean") is None or cell["mean"] != cell["mean"]:
        return "–"
    m = cell["mean"] * scale
    n = cell.get("n", n_seeds)
    if n < n_seeds:
        return (f"{fmt(m)} ± {fmt(cell['std'] * scale)}" if n > 1 else fmt(m)) + f" ({n} of {n_seeds} seeds)"
    if n_seeds > 1:
        return f"{fmt(m)} ± {fmt(cell['std'] * scale)}"
    return fmt(m)


def count_cell(cell: dict[str, float] | None, n_seeds: int) -> str:
    """A count (passes): whole numbers without decimals, else as :func:`mean_std`."""
    if cell and cell.get("mean") == cell.get("mean") and cell.get("mean") is not None \
            and float(cell["mean"]).is_integer() and not cell.get("std"):
        return str(int(cell["mean"]))
    return mean_std(cell, n_seeds)


def _lam_cell(agg: dict, n: int, budget: bool = False) -> str:
    if "lambda_final" in agg:
        return ("multiplier " if budget else "learned ") + mean_std(agg["lambda_final"], n)
    if "selected_lambda" in agg:
        return "chosen " + mean_std(agg["selected_lambda"], n)
    return "–"


def summary_table(results: dict[str, Any]) -> str:
    n = len(results["seeds"])
    header = ["method", "Δm seen %", "Δm unseen %", "Δm all %", "group sp. %", "param sp. %",
              "gap to λ front", "params (pruned, M)", "MACs (pruned, M)", "passes", "passes incl. tuning",
              "wall time s", "λ"]
    rows = []
    for name in results["methods"]:
        a = results["summary"][name]
        rows.append([
            method_label(results, name), mean_std(a["delta_m_seen"], n),
            mean_std(a["delta_m_unseen"], n), mean_std(a["delta_m_all"], n),
            mean_std(a["group_sparsity"], n), mean_std(a["param_sparsity"], n),
            mean_std(a.get("gap_to_front"), n), mean_std(a["params"], n, 1e-6), mean_std(a["macs"], n, 1e-6),
            count_cell(a.get("passes"), n), count_cell(a.get("passes_total"), n),
            mean_std(a["wall_time_s"], n),
            _lam_cell(a, n, budget=name == "meta_budget" or "budget mode" in method_label(results, name)),
        ])
    return markdown_table(header, rows)


def cut_runs(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(method, seed, where)`` for every deployed seen-task model whose backbone is cut
    (``backbone_cut`` of its ``results.json``; runs from before that key count as connected)."""
    return [(name, seed, rows[name]["seen"]["backbone_cut"])
            for seed, rows in results["per_seed"].items() for name in results["methods"]
            if name in rows and rows[name]["seen"].get("backbone_cut")]


def task_table(results: dict[str, Any]) -> str:
    n = len(results["seeds"])
    spec = {**results["spec"]["seen"], **results["spec"]["unseen"]}
    cols = [(t, m, hib) for t, ms in spec.items() for m, hib in ms.items()]
    header = ["method"] + [f"{t} {m} {'↑' if hib else '↓'}" for t, m, hib in cols]
    rows = []
    for name in results["methods"]:
        a = results["summary"][name]["metrics"]
        rows.append([method_label(results, name)]
                    + [mean_std(a.get(t, {}).get(m), n) for t, m, _ in cols])
    return markdown_table(header, rows)


def grid_points(results: dict[str, Any], seed: str | None = None) -> list[dict[str, Any]]:
    """The fixed-λ grid of one seed with Δm (seen tasks, test) against that seed's STL."""
    seed = seed or str(results["seeds"][0])
    rows = results["per_seed"][seed]
    if "fixed_lambda" not in rows:
        return []
    stl = rows["stl"]["seen"]["test"]
    spec, _ = usable_spec(results["spec"]["seen"], stl)
    return [{"label": f"λ={p['lam']:g}", "group_sparsity": p["group_sparsity"],
             "param_sparsity": p["param_sparsity"], "delta_m": delta_m(p["test"], stl, spec)}
            for p in rows["fixed_lambda"]["grid"]]


def front_points(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The fixed-λ grid averaged over seeds (``results["fixed_lambda_front"]``), for the plot."""
    return [{"label": f"λ={p['lam']:g}", "param_sparsity": p["param_sparsity"]["mean"] / 100,
             "delta_m": p["delta_m"]["mean"], "xerr": p["param_sparsity"]["std"],
             "yerr": p["delta_m"]["std"]} for p in results["fixed_lambda_front"]]


def summary_points(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every method but STL at its mean (parameter sparsity, Δm seen) with the std over seeds
    (None where no seed has one: ``results.json`` holds NaN as null; the plot leaves it out)."""
    pts = []
    for name in results["methods"]:
        a = results["summary"][name]
        if name == "stl":
            continue
        sparsity = a["param_sparsity"]["mean"]
        pts.append({"label": method_label(results, name),
                    "param_sparsity": None if sparsity is None else sparsity / 100,
                    "delta_m": a["delta_m_seen"]["mean"],
                    "xerr": a["param_sparsity"]["std"], "yerr": a["delta_m_seen"]["std"]})
    return pts


def report_plots(out: Path, results: dict[str, Any]) -> list[tuple[str, str, Callable[[], Any]]]:
    """The report's plots as ``(name, file name, draw)``: every input is read here (a
    malformed ``results.json`` or run folder fails before any file is written); ``draw()``
    writes the PNG into ``out``."""
    from metasparsity.report import plots

    made: list[tuple[str, str, Callable[[], Any]]] = []
    seed = str(results["seeds"][0])
    rows = results["per_seed"][seed]
    n = len(results["seeds"])
    points = front_points(results) if "fixed_lambda_front" in results else grid_points(results, seed)
    extra = summary_points(results)
    made.append(("delta_vs_sparsity", "delta_vs_sparsity.png", lambda: plots.plot_delta_vs_sparsity(
        points, out / "delta_vs_sparsity.png", key="param_sparsity",
        title=f"Δm (seen tasks, test) against sparsity{f', mean ± std of {n} seeds' if n > 1 else ''}",
        extra=extra)))
    per_layer = {method_label(results, m): rows[m]["sparsity"]["per_layer"]
                 for m in ("fixed_lambda", "optuna", "meta_sparsity", "meta_budget", "train_budget")
                 if m in rows}
    if per_layer:
        made.append(("per_layer_sparsity", "per_layer_sparsity.png",
                     lambda: plots.plot_per_layer_sparsity(per_layer, out / "per_layer_sparsity.png")))
    runs = []
    for s in results["seeds"]:
        # the comparison's own layout (its recorded meta_run_dir is relative to where it ran)
        log = out / f"seed_{s}" / "meta_sparsity" / "metrics.jsonl"
        if "meta_sparsity" in results["per_seed"][str(s)] and log.is_file():
            records = meta_records(log)
            if records:  # none yet: nothing to draw
                runs.append({"label": f"seed {s}", "records": records})
    if runs:
        made.append(("lambda", "lambda.png", lambda: plots.plot_meta_training(
            runs if len(runs) > 1 else runs[0]["records"], out / "lambda.png",
            title="meta-sparsity: λ and sparsity over meta-training")))
    if (out / "samples.npz").is_file():
        samples = plots.read_samples(out / "samples.npz")
        made.append(("samples", "samples.png",
                     lambda: plots.plot_samples(samples, out / "samples.png")))
    return made


#: What the λ plot reads of each ``meta`` record of a meta-training's ``metrics.jsonl``.
META_RECORD_SHAPE = {"step": int, "lambda": (float, [float]), "group_sparsity": float,
                     "grad_lambda_implicit": (float, [float]),
                     "grad_lambda_explicit": (float, [float])}


def meta_records(log: Path) -> list[dict[str, Any]]:
    """The ``meta`` records of a meta-training log, checked: a damaged line or a record without
    what the λ plot reads is a one-line :class:`UserError` naming the log."""
    from metasparsity.utils.errors import UserError
    from metasparsity.utils.io import check_json_shape

    records = [r for r in load_jsonl(log, what="meta-training log") if r.get("kind") == "meta"]
    for r in records:
        problem = check_json_shape(r, META_RECORD_SHAPE, f"step {r.get('step')!r}")
        if problem:
            raise UserError(f"meta-training log {log} is malformed: {problem}")
    return records


def _budget_line(results: dict[str, Any]) -> str:
    c = results["config"]
    grid = ", ".join(f"{g:g}" for g in c["compare"]["lambda_grid"])
    comp = results.get("compute")
    if comp is None:  # results of an older version, before compute was counted
        return (f"Budgets: train {c['train']['max_steps']} steps (batch {c['train']['batch_size']}); "
                f"meta-train {c['meta']['steps']} steps + fine-tune {c['finetune']['steps']} steps; "
                f"λ grid {grid}. Total wall time {fmt(results['total_wall_time_s'])} s.")
    return (f"Equal compute: every method gets {comp['budget_passes']} batch forward-backward passes "
            f"for the model it deploys (\"passes\"): {c['train']['max_steps']} training steps at batch "
            f"{c['train']['batch_size']}, or {comp['meta_steps']} meta-steps × "
            f"{comp['passes_per_meta_step']} passes (meta-batch {c['meta']['meta_batch']}, "
            f"K = {c['meta']['inner_steps']}, {c['meta']['meta_grad']}, batch "
            f"{c['meta']['batch_size']}) + {comp['finetune_steps']} fine-tuning steps at batch "
            f"{c['finetune']['batch_size']} (passes weighed by batch size, in training batches); "
            "tuning is "
            f"counted on top (\"passes incl. tuning\": the λ grid {grid} costs one budget per "
            f"point; STL one per seen task). Unseen tasks: {c['finetune']['steps']} fine-tuning "
            f"steps from every method's backbone. Total wall time "
            f"{fmt(results['total_wall_time_s'])} s.")


def _code_lines(results: dict[str, Any]) -> list[str]:
    """Which code made the comparison, and the sub-runs it reused from other code (none for
    results of an older version, which recorded neither)."""
    code = results.get("code")
    if code is None:
        return []
    other = results.get("runs_from_other_code") or {}
    n = sum(len(v) for v in other.values())
    line = f"Code: {code_label(code)}."
    if n:
        line += (f" {n} sub-runs were reused or continued from other code ("
                 + "; ".join(f"{label}: {', '.join(v)}" for label, v in sorted(other.items()))
                 + "); delete them and continue with --resume to measure this code alone.")
    return [line, ""]


def report_markdown(results: dict[str, Any], images: dict[str, str]) -> str:
    c = results["config"]
    spec = results["spec"]
    spec_txt = "; ".join(f"{t}: {', '.join(ms)}" for part in ("seen", "unseen") for t, ms in spec[part].items())
    lines = [
        f"# Comparison: {c['name']}",
        "",
        f"Data: {c['data']['name']} at {c['data']['image_size']}×{c['data']['image_size']}, "
        f"seen tasks {', '.join(results['seen_tasks'])}; unseen tasks "
        f"{', '.join(results['unseen_tasks']) or '–'}. Model: ResNet-{c['model']['depth']} "
        f"width {c['model']['width']}, output stride {c['model']['output_stride']}. "
        f"Seeds: {', '.join(map(str, results['seeds']))}"
        + (" (mean ± std)." if len(results["seeds"]) > 1 else "."),
        "",
        _budget_line(results),
        "",
        *_code_lines(results),
        "Δm (%, higher is better) is against the single-task models on the test split, over: "
        f"{spec_txt}. Sparsity is of the shared backbone's input-channel groups; parameters and "
        "MACs are of the deployed seen-task model after removing zero channels (STL: all its "
        "single-task models together). Wall time includes every run a method needs (a λ grid "
        "of n points costs n trainings).",
        "",
    ]
    left_out = sorted({m for rows in results["per_seed"].values() for r in rows.values()
                       for m in r.get("delta_m", {}).get("left_out", [])})
    if left_out:
        lines += [f"Left out of Δm because the STL baseline is 0 or undefined: {', '.join(left_out)}.", ""]
    lines += [summary_table(results), ""]
    cut = cut_runs(results)
    if cut:
        lines += ["**Cut backbones** (zero groups cut every path from the input, so each task "
                  "predicts the same for every image; README, \"Limits\"): "
                  + "; ".join(f"{method_label(results, name)}, seed {seed}, from {at} on"
                              for name, seed, at in cut) + ".", ""]
    lines += [
        "## Per-task test metrics",
        "",
        task_table(results),
        "",
    ]
    captions = {
        "delta_vs_sparsity": "Δm against sparsity, with the λ grid's Pareto front",
        "per_layer_sparsity": "Per-layer group sparsity",
        "lambda": "λ over meta-training",
        "samples": "Sample predictions (meta-sparsity) beside the ground truth",
    }
    for key, fname in images.items():
        lines += [f"## {captions[key]}", "", f"![{captions[key]}]({fname})", ""]
    return "\n".join(lines)


# The parts of results.json that the report reads first (other keys are allowed; checked before
# anything is written, so that a file of another kind is a one-line error, not a traceback).
RESULTS_SHAPE = {
    "config": {"name": str, "data": dict, "model": dict, "train": dict, "meta": dict,
               "finetune": dict, "compare": {"lambda_grid": [float]}},
    "methods": [str], "seeds": [(int, str)], "seen_tasks": [str], "unseen_tasks": [str],
    "spec": {"seen": dict, "unseen": dict},
    "summary": dict, "per_seed": dict, "total_wall_time_s": float,
}


def prepare_report(out: str | Path, results: dict[str, Any]) -> Callable[[], Path]:
    """Read everything the report shows (``results``, the comparison's ``results.json``, and the
    runs' logs) and render its text; returns the step that writes the plots and ``report.md``
    into ``out``.  A malformed input fails here, before any file is written: a one-line
    :class:`UserError` naming ``out/results.json`` (``results`` of another kind, e.g. a training
    run's results or a sweep.json, no seed or method, a key a table reads missing)."""
    out = Path(out)
    path = out / "results.json"
    problem = check_json_shape(results, RESULTS_SHAPE, path.name)
    if problem:
        raise UserError(f"compare results file {path} is malformed: {problem}")
    try:
        for key in ("seeds", "methods"):
            if not results[key]:
                raise ValueError(f"no {key}")
        plot_list = report_plots(out, results)
        text = report_markdown(results, {name: file for name, file, _ in plot_list})
    except (KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise UserError(f"compare results file {path} is malformed ({type(e).__name__}: {e})") from None

    def write() -> Path:
        for _, _, draw in plot_list:
            draw()
        return atomic_write_text(out / "report.md", text)

    return write


def write_report(out: str | Path, results: dict[str, Any]) -> Path:
    """``report.md`` and its plots in ``out`` (:func:`prepare_report`, then its writing)."""
    return prepare_report(out, results)()
