"""Budget mode without meta-learning: ``metasparsity train`` with ``sparsity.target``, against the
fixed-λ grid at the same backbone MACs (README: "The method", "The comparison (the demo)").

A control for meta-training's budget mode (``benchmarks/lambda_inits.py --objectives ""``):
the same target and measure, the same cubic ramp of the target, the same dual ascent on the
multiplier, but plain multi-task training of ``--config`` (default
``configs/synthscenes.yaml``, the grid's config: same data, steps, batch and learning rate as
every grid point).  It says whether a model held at the target by this mechanism reaches the
grid's front there, with no meta-learning in the way.

Per seed: one ``train`` run with ``sparsity.target`` = ``--target`` of ``--measure``,
``sparsity.lam`` = ``--lam0`` (where the multiplier starts), ``sparsity.target_ramp`` =
``--ramp``.  Δm (README, "Metrics": primary metrics of the seen tasks, test split) against the
dense MTL model of the same seed from ``benchmarks/fixed_lambda_grid.py`` (``--grid-runs``, reused or
trained); the front's Δm at the run's backbone MACs, from the mean over seeds of the grid
(dense as its uncut end) and from each seed's own grid.  Finished runs are reused,
interrupted ones resumed.

    python benchmarks/budget_train.py [--seeds 0 1 2] [--target 0.5] [--ramp 0.5]
        [--grid-runs runs/bench_fixed_lambda_grid] [--jobs 2] [key=value ...]

Writes ``benchmarks/results/<--name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _budget_job(config: str, overrides: list[str], run_dir: str, image_size: int,
                unseen_overrides: list[str] | None) -> dict[str, Any]:
    """One budget-mode training (reused / resumed), its pruned backbone's cost and, with
    ``unseen_overrides``, its fine-tuning on the unseen tasks under them; in a worker."""
    import torch

    torch.set_num_threads(1)
    from lambda_inits import _grid_cost
    from metasparsity.config import load_config
    from metasparsity.recipes.finetune import run_finetune
    from metasparsity.recipes.train import run_train
    from metasparsity.training.session import sub_run
    from metasparsity.utils.rundir import CONFIG_FILE

    d = Path(run_dir)
    res, resume = sub_run(d, note=False)  # check_reuse reported them all
    if res is None:
        t0 = time.time()
        res = run_train(load_config(config, overrides), d, resume=resume, overwrite=not resume)
        res.setdefault("wall_time_s", round(time.time() - t0, 2))
    out = {"res": res, "cost": _grid_cost(run_dir, image_size), "unseen": None}
    if unseen_overrides is not None:
        ft = d / "finetune_unseen"
        out["unseen"], resume = sub_run(ft, note=False)
        if out["unseen"] is None:
            cfg = load_config(d / CONFIG_FILE, unseen_overrides)
            out["unseen"] = run_finetune(d, list(cfg.data.unseen_tasks), ft, cfg=cfg,
                                         resume=resume, overwrite=not resume)
    return out


def _unseen_overrides(ref: Path, seed: int) -> list[str]:
    """Fine-tuning on the unseen tasks as the dense reference ``ref`` was fine-tuned (its
    ``finetune`` steps, rate, batch and validation period), at the budget run's multiplier with
    its budget kept (``finetune.lam=source``), with the seed's own data order."""
    from metasparsity.config import load_config
    from metasparsity.utils.rundir import CONFIG_FILE

    f = load_config(ref / CONFIG_FILE).finetune
    return [f"finetune.steps={f.steps}", f"finetune.lr={f.lr}", f"finetune.batch_size={f.batch_size}",
            f"finetune.val_every={f.val_every}", "finetune.lam=source", "finetune.lam_unseen=null",
            "finetune.keep_zeros=all", f"train.seed={seed}", "train.num_threads=1",
            "train.progress=false"]


def main() -> None:
    import fixed_lambda_grid as flg

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "synthscenes.yaml"))
    p.add_argument("--seeds", type=flg.INT, nargs="+", default=[0, 1, 2])
    p.add_argument("--target", type=float, default=0.5)
    p.add_argument("--measure", default="macs", choices=["macs", "params", "groups"])
    p.add_argument("--ramp", type=float, default=0.5, help="sparsity.target_ramp")
    p.add_argument("--lam0", type=float, default=1e-3, help="sparsity.lam: the multiplier's start")
    p.add_argument("--grid", type=flg.FLOAT, nargs="+", default=[3e-4, 1e-3, 3e-3, 1e-2, 3e-2])
    p.add_argument("--jobs", type=int, default=2, help=flg.JOBS_HELP)
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_budget_train")
    p.add_argument("--grid-runs", type=Path, default=ROOT / "runs" / "bench_fixed_lambda_grid")
    p.add_argument("--unseen-ref", type=Path, default=None, metavar="RUNS",
                   help="runs of benchmarks/lambda_inits.py whose seed_S/dense_mtl_unseen (the "
                        "dense MTL model fine-tuned on the unseen tasks) is the reference: each "
                        "budget model is fine-tuned on the unseen tasks as it was, at its "
                        "multiplier with its budget kept, and scored against it")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--name", default="budget_train", help="stem of the result files")
    flg.add_reuse_options(p)
    args = flg.parse_args(p)
    if not 0 < args.target <= 1:
        p.error(f"--target must be in (0, 1], got {args.target}")
    if not 0 <= args.ramp <= 1:
        p.error(f"--ramp must be in [0, 1], got {args.ramp}")
    if args.lam0 <= 0:
        p.error(f"--lam0 must be > 0, got {args.lam0}")
    flg.check_grid(p, "--grid", args.grid)
    os.environ.setdefault("METASPARSITY_NUM_THREADS", "1")
    flg.check_args(p, args)  # the config and overrides: checked below, with the budget's

    from lambda_inits import _grid_cost
    from metasparsity.config import load_config
    from metasparsity.data import resolve_tasks
    from metasparsity.eval.delta import (
        default_spec,
        delta_m,
        front_value,
        pareto_points,
        usable_spec,
    )
    from metasparsity.recipes.compare_summary import mean_std_cell
    from metasparsity.recipes.train import final_multiplier
    from metasparsity.training.reuse import check_reuse
    from metasparsity.utils.errors import UserError
    from metasparsity.utils.io import atomic_write_text, write_json
    from metasparsity.utils.provenance import (
        code_identity,
        code_label,
        command_line,
        machine_text,
    )

    budget_ov = [f"sparsity.target={args.target}", f"sparsity.target_measure={args.measure}",
                 f"sparsity.target_ramp={args.ramp}", f"sparsity.lam={args.lam0}"]
    try:
        cfg = load_config(args.config, [*args.overrides, *budget_ov])
    except UserError as e:
        p.error(str(e))
    seen = list(cfg.data.seen_tasks)
    types = {t: task.type for t, task in resolve_tasks(cfg, seen).items()}
    lams = [0.0, *args.grid]
    tag = f"budget_{args.measure}_{args.target:g}"
    dirs = {s: args.runs / f"seed_{s}" / tag for s in args.seeds}
    grid_dirs = {(s, lam): flg._run_dir(args.grid_runs, s, "adam", lam)
                 for s in args.seeds for lam in lams}
    refs = {}
    if args.unseen_ref is not None:
        from metasparsity.utils.io import read_json
        from metasparsity.utils.rundir import CONFIG_FILE

        for s in args.seeds:
            ref = args.unseen_ref / f"seed_{s}" / "dense_mtl_unseen"
            if not (ref / "results.json").is_file() or not (ref / CONFIG_FILE).is_file():
                p.error(f"--unseen-ref: {ref} holds no finished run (results.json, {CONFIG_FILE})")
            refs[s] = {"dir": ref, "test": read_json(ref / "results.json")["test"]}
    from metasparsity.recipes.reused import check_reused_settings

    ovs = {s: [*args.overrides, *budget_ov, f"train.seed={s}", "train.num_threads=1",
               "train.progress=false"] for s in args.seeds}
    check_reused_settings({dirs[s]: load_config(args.config, ovs[s]) for s in args.seeds},
                          p.error)
    check_reused_settings(flg.expected_configs(args.config, args.overrides, args.grid_runs,
                                               [(s, "adam", lam) for s, lam in grid_dirs]),
                          p.error, "--grid-runs")
    other, code_note = check_reuse([*dirs.values(), *grid_dirs.values(),
                                    *(d / "finetune_unseen" for d in dirs.values() if refs),
                                    *(r["dir"] for r in refs.values())],
                                   refuse=args.current_code_only, error=p.error, root=ROOT)
    t0 = time.time()
    with flg.Pool(args.jobs) as pool:
        futs = {}
        for s in args.seeds:
            futs[pool.submit(_budget_job, args.config, ovs[s], str(dirs[s]), cfg.data.image_size,
                             _unseen_overrides(refs[s]["dir"], s) if refs else None)
                 ] = ("budget", s, None)
        for (s, lam), d in grid_dirs.items():
            futs[pool.submit(flg._train, args.config, args.overrides, str(d), s, "adam",
                             lam)] = ("grid", s, lam)
        done: dict[tuple, Any] = {}
        for n, fut in enumerate(cf.as_completed(futs), 1):
            done[futs[fut]] = fut.result()
            print(f"[{n}/{len(futs)}] {' '.join(str(k) for k in futs[fut] if k is not None)} "
                  f"({time.time() - t0:.0f} s)", flush=True)
        gcost = {k: pool.submit(_grid_cost, str(d), cfg.data.image_size)
                 for k, d in grid_dirs.items()}
        gcost = {k: f.result()["macs"] for k, f in gcost.items()}

    def dm(test: dict, s: int) -> float:
        ref = done[("grid", s, 0.0)]["test"]
        spec, _ = usable_spec(default_spec(types), ref)
        return delta_m({t: test[t] for t in seen}, {t: ref[t] for t in seen}, spec)

    unseen = list(cfg.data.unseen_tasks)
    types_u = {t: task.type for t, task in resolve_tasks(cfg, unseen).items()} if refs else {}

    def dm_unseen(res: dict | None, s: int) -> float | None:
        if res is None:
            return None
        ref = refs[s]["test"]
        spec, _ = usable_spec(default_spec(types_u), ref)
        return delta_m({t: res["test"][t] for t in unseen}, {t: ref[t] for t in unseen}, spec)

    grid_pts = []
    for lam in lams:
        rs = [done[("grid", s, lam)] for s in args.seeds]
        grid_pts.append({
            "lam": lam,
            "param_sparsity": mean_std_cell([100 * r["sparsity"]["param_sparsity"] for r in rs]),
            "backbone_macs": mean_std_cell([100 * gcost[(s, lam)] for s in args.seeds]),
            "delta_m": mean_std_cell([dm(r["test"], s) for s, r in zip(args.seeds, rs)])})
    # the front in −MACs (fewer MACs is better): the best Δm at this cost or less
    macs_front = pareto_points([(-g["backbone_macs"]["mean"], g["delta_m"]["mean"]) for g in grid_pts])
    ps_front = pareto_points([(g["param_sparsity"]["mean"], g["delta_m"]["mean"]) for g in grid_pts])
    rows = []
    for s in args.seeds:
        b = done[("budget", s, None)]
        res, macs = b["res"], 100 * b["cost"]["macs"]
        d = dm(res["test"], s)
        own = pareto_points([(-100 * gcost[(s, lam)], dm(done[("grid", s, lam)]["test"], s))
                             for lam in lams])
        ps = 100 * res["sparsity"]["param_sparsity"]
        rows.append({
            "seed": s, "delta_m": d, "backbone_macs": macs, "param_sparsity": ps,
            "group_sparsity": 100 * res["sparsity"]["group_sparsity"],
            "lambda_final": final_multiplier(res["budget"]),
            # None where no grid model is as cheap (or as sparse) as this one
            "front_delta_m_at_macs": front_value(macs_front, -macs),
            "gap_to_seed_front_at_macs": _gap(d, front_value(own, -macs)),
            "gap_to_front_at_param_sparsity": _gap(d, front_value(ps_front, ps)),
            "delta_m_unseen": dm_unseen(b["unseen"], s),
            "unseen_backbone_macs": (100 * b["unseen"]["budget"]["cost"]["macs"]
                                     if b["unseen"] and b["unseen"].get("budget") else None),
            "wall_time_s": res.get("wall_time_s")})
    summary = {k: _mean_std_or_none(mean_std_cell, [r[k] for r in rows]) for k in (
        "delta_m", "backbone_macs", "param_sparsity", "group_sparsity", "lambda_final",
        "front_delta_m_at_macs", "gap_to_seed_front_at_macs", "gap_to_front_at_param_sparsity")}
    if refs:
        summary["delta_m_unseen"] = _mean_std_or_none(mean_std_cell,
                                                      [r["delta_m_unseen"] for r in rows])

    machine = f"{machine_text()}, {args.jobs} trainings at once, 1 thread each"
    command = command_line("benchmarks/budget_train.py", sys.argv[1:], ROOT)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{args.name}.json", {
        "command": command, "machine": machine, "config": os.path.relpath(args.config, ROOT),
        "overrides": args.overrides, "target": args.target, "measure": args.measure,
        "ramp": args.ramp, "lam0": args.lam0,
        "unseen_ref": None if args.unseen_ref is None else os.path.relpath(args.unseen_ref, ROOT),
        "grid": grid_pts, "rows": rows,
        "summary": summary, "wall_time_s": round(time.time() - t0, 1),
        "code": {"this": code_identity(), "runs_from_other_code": other}})
    atomic_write_text(args.out / f"{args.name}.md", _markdown(
        rows, summary, grid_pts, args, command, machine,
        code_note or f"Every run was made by this code ({code_label(code_identity())})."))
    print((args.out / f"{args.name}.md").read_text())


def _gap(d: float, front: float | None) -> float | None:
    return None if front is None else d - front


def _mean_std_or_none(mean_std_cell, xs: list) -> dict | None:
    """Mean ± std over the seeds, or None when a seed has no value (no grid model that cheap)."""
    return None if any(x is None for x in xs) else mean_std_cell(xs)


def _num(x: float | None, nd: int = 2) -> str:
    return "n/a" if x is None else f"{x:+.{nd}f}"


def _cell(c: dict | None, nd: int = 2, sign: bool = False) -> str:
    if c is None:
        return "n/a"
    f = f"{{:{'+' if sign else ''}.{nd}f}}"
    return f"{f.format(c['mean'])} ± {c['std']:.{nd}f}"


def _markdown(rows, summary, grid_pts, args, command, machine, code_line) -> str:
    steps_note = f"`sparsity.target={args.target:g}` ({args.measure}), ramp {args.ramp:g}, λ0 {args.lam0:g}"
    lines = [f"# Budget mode in plain training ({steps_note})", "",
             f"`{command}`; {machine}; seeds {args.seeds}. Δm vs the dense MTL model of the same "
             "seed (test split, seen tasks). The front (the grid's means over seeds, or one seed's "
             "own grid) is read at the model's backbone MACs, fewer being better, or at its "
             "parameter sparsity: straight between the front's points, and flat where a cheaper "
             "(sparser) grid model scores at least as well.",
             "", code_line, "",
             "| seed | Δm % | backbone MACs % | param sparsity % | group sparsity % | final λ | "
             "front at its MACs | gap to the mean front | gap to its seed's front | "
             "gap at its param sparsity | Δm unseen % |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['delta_m']:+.2f} | {r['backbone_macs']:.1f} | "
            f"{r['param_sparsity']:.1f} | {r['group_sparsity']:.1f} | {r['lambda_final']:.3g} | "
            f"{_num(r['front_delta_m_at_macs'])} | {_num(_gap(r['delta_m'], r['front_delta_m_at_macs']))} | "
            f"{_num(r['gap_to_seed_front_at_macs'])} | {_num(r['gap_to_front_at_param_sparsity'])} | "
            f"{'' if r['delta_m_unseen'] is None else _num(r['delta_m_unseen'])} |")
    s = summary
    lines += [
        f"| mean ± std | {_cell(s['delta_m'], sign=True)} | {_cell(s['backbone_macs'], 1)} | "
        f"{_cell(s['param_sparsity'], 1)} | {_cell(s['group_sparsity'], 1)} | | "
        f"{_cell(s['front_delta_m_at_macs'], sign=True)} | "
        f"{_num(None if s['front_delta_m_at_macs'] is None else s['delta_m']['mean'] - s['front_delta_m_at_macs']['mean'])} | "
        f"{_cell(s['gap_to_seed_front_at_macs'], sign=True)} | "
        f"{_cell(s['gap_to_front_at_param_sparsity'], sign=True)} | "
        f"{_cell(s['delta_m_unseen'], sign=True) if 'delta_m_unseen' in s else ''} |", ""]
    if any(r[k] is None for r in rows for k in (
            "front_delta_m_at_macs", "gap_to_seed_front_at_macs", "gap_to_front_at_param_sparsity")):
        lines += ["n/a: no grid model is as cheap (or as sparse) as this one, so the front says "
                  "nothing there.", ""]
    if args.unseen_ref is not None:
        lines += ["Unseen tasks: each budget model fine-tuned on the unseen tasks as the dense MTL model of `" + str(args.unseen_ref) + "/seed_S/dense_mtl_unseen` "
                  "was (its finetune steps, rate, batch), at the budget run's multiplier with "
                  "its budget kept (`finetune.lam=source`); Δm against that dense model.", ""]
    lines += [
        "The fixed-λ grid (same runs, mean ± std over seeds):", "",
        "| λ | param sparsity % | backbone MACs % | Δm % |", "|---|---|---|---|"]
    for g in grid_pts:
        lines.append(f"| {g['lam']:g} | {_cell(g['param_sparsity'], 1)} | "
                     f"{_cell(g['backbone_macs'], 1)} | {_cell(g['delta_m'], sign=True)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import fixed_lambda_grid as flg

    flg.run_main(main)
