"""Does the learned λ converge?  Meta-sparsity from λ0 spread over 100× (plus ``auto``), for
both λ objectives, 3 seeds; and budget mode, both against the fixed-λ grid (README: "The
method", "The comparison (the demo)").

For every seed, objective (``heldout``, ``query``; or ``window``: λ by paired windows of
validation Δm, ``benchmarks/lambda_window.py``, ``--window`` steps, ``--window-factor``;
``window_loss``: the same, decided by the validation loss; ``window_heldout``: decided by the
adapted model's λ-validation loss over the window, what ``heldout`` descends) and λ0
of ``--inits``: one ``meta-train`` of
``--config`` (default ``configs/synthscenes_meta.yaml``, the over-fitting 800-scene preset) for
``--steps`` meta-steps, then fine-tuning on the seen tasks (the meta-preset's ``finetune``), test
metrics.  Per seed also budget mode (``meta.target`` = ``--target`` of ``meta.target_measure``
``--measure``, λ0 = auto).  The ``heldout`` / ``auto`` run and the budget run are also
fine-tuned on the unseen tasks.  Per seed also ``meta_dense`` (λ = 0: the same recipe without
sparsity, what the recipe itself costs against MTL; ``--no-dense`` skips it).

Δm (README, "Metrics": primary metrics of the seen tasks, test split) is taken against the
dense MTL model of the same seed from ``benchmarks/fixed_lambda_grid.py`` (same data, 1000 steps), whose
runs (``--grid-runs``) are reused or trained; the fixed-λ grid (adam metric) gives the Pareto
front (mean over seeds, dense MTL as its λ = 0 end) and the front's Δm at the budget run's
backbone MACs.  Compute: passes weighed by batch size (README, "The comparison (the demo)"),
against the grid's total.

Rows carry ``objective``, ``seed``, ``lambda_init``, ``lambda_final``, ``group_sparsity``,
``param_sparsity``, ``delta_m``.  Writes ``benchmarks/results/lambda_inits.{json,md,png}``
(λ trajectories and the sign of λ's gradient over training for both objectives; Δm against
parameter sparsity with the front).  Finished runs are reused, interrupted ones resumed.

    python benchmarks/lambda_inits.py [--seeds 0 1 2] [--inits auto,0.0001,0.01] [--steps N]
        [--jobs 2] [key=value ...]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"
# objectives that are paired-window searches (lambda_window.py), with the score that decides
WINDOW_SCORES = {"window": "delta_m", "window_loss": "loss", "window_heldout": "heldout"}
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _meta_overrides(seed: int, objective: str, init: str, steps: int, target: float | None,
                    measure: str) -> list[str]:
    out = [f"meta.steps={steps}", f"train.seed={seed}", "train.num_threads=1",
           "train.progress=false", f"meta.lambda_init={init}"]
    if objective == "budget":
        return out + [f"meta.target={target}", f"meta.target_measure={measure}"]
    if objective == "dense":  # meta_dense: the recipe without sparsity (init "0")
        return out
    if objective in WINDOW_SCORES:  # λ by paired windows (lambda_window.py)
        from lambda_window import window_overrides

        return out + window_overrides()
    return out + [f"meta.lambda_objective={objective}"]


def _job(config: str, overrides: list[str], run_dir: str, unseen: bool,
         window: tuple[int, float, str] | None = None) -> dict[str, Any]:
    """Meta-train (reused / resumed; with ``window`` = (steps, factor, score) by paired windows
    of validation Δm or loss), fine-tune on the seen (and unseen) tasks; in a worker."""
    import torch

    torch.set_num_threads(1)
    from metasparsity.config import load_config
    from metasparsity.recipes import run_recipe
    from metasparsity.recipes.finetune import run_finetune
    from metasparsity.recipes.meta_train import MetaTrainer
    from metasparsity.training.session import sub_run

    cfg = load_config(config, overrides)
    d = Path(run_dir)
    meta, resume = sub_run(d, note=False)  # check_reuse reported them all
    if meta is None and window is not None:
        from lambda_window import window_meta_train

        meta = window_meta_train(cfg, d, window=window[0], factor=window[1], score=window[2])
    elif meta is None:
        meta = run_recipe(MetaTrainer(cfg, d, resume=resume, overwrite=not resume))
    out = {"meta": meta}
    parts = [("seen", list(cfg.data.seen_tasks))]
    if unseen and cfg.data.unseen_tasks:
        parts.append(("unseen", list(cfg.data.unseen_tasks)))
    for name, tasks in parts:
        ft = d / f"finetune_{name}"
        res, resume = sub_run(ft, note=False)
        if res is None:
            res = run_finetune(d, tasks, ft, cfg=cfg, resume=resume, overwrite=not resume)
        out[name] = res
    from metasparsity.recipes.load_run import load_run_model
    from metasparsity.sparsity import BackboneCost, backbone_cut, channel_groups

    _, model, _ = load_run_model(d / "finetune_seen")
    x = torch.zeros(1, 3, cfg.data.image_size, cfg.data.image_size)
    out["cost"] = BackboneCost(model, x, channel_groups(model)).summary(model)
    out["backbone_cut"] = backbone_cut(model, x)  # also for runs from before results had it
    return out


def _dense_unseen(config: str, overrides: list[str], source: str, out: str) -> dict[str, Any]:
    """The unseen-task reference: the dense MTL model fine-tuned on the unseen tasks exactly as
    the meta-trained ones are (same steps, batch, learning rate), without a penalty: a dense
    source has no λ, so ``finetune.lam`` (and ``lam_unseen``) is 0 here whatever the
    overrides say."""
    import torch

    torch.set_num_threads(1)
    from metasparsity.config import load_config
    from metasparsity.recipes.finetune import run_finetune
    from metasparsity.training.session import sub_run

    d = Path(out)
    res, resume = sub_run(d, note=False)
    if res is None:
        cfg = load_config(config, [*overrides, "finetune.lam=0", "finetune.lam_unseen=0"])
        res = run_finetune(Path(source), list(cfg.data.unseen_tasks), d, cfg=cfg, resume=resume,
                           overwrite=not resume)
    return res


def _grid_cost(run_dir: str, image_size: int) -> dict[str, float]:
    import torch

    torch.set_num_threads(1)
    from metasparsity.recipes.load_run import load_run_model
    from metasparsity.sparsity import BackboneCost, channel_groups

    _, model, _ = load_run_model(run_dir)
    x = torch.zeros(1, 3, image_size, image_size)
    return BackboneCost(model, x, channel_groups(model)).summary(model)


def _lam(v) -> float:
    return float(statistics.fmean(v)) if isinstance(v, list) else float(v)


def convergence(rows: list[dict[str, Any]], objectives: list[str],
                seeds: list[int]) -> list[dict[str, Any]]:
    """The issue's convergence test per objective and seed, over the runs' λ0: final λ within
    3×, group sparsity within 10 points, at least 20 %, no λ at its clamp.  A seed with a
    single λ0 has nothing to converge and gets no entry."""
    conv = []
    for o in objectives:
        for s in seeds:
            rs = [r for r in rows if r["objective"] == o and r["seed"] == s]
            if len(rs) < 2:
                continue
            lams = [r["lambda_final"] for r in rs]
            gs = [r["group_sparsity"] for r in rs]
            dep = [r["group_sparsity_deployed"] for r in rs]
            last = [r.get("group_sparsity_last_step") for r in rs]
            conv.append({"objective": o, "seed": s, "lambda_ratio": max(lams) / min(lams),
                         "sparsity_spread": max(gs) - min(gs), "min_group_sparsity": min(gs),
                         # meta.final_zero_window: the spread the last step's own prox left
                         "last_step_spread": (max(last) - min(last)
                                              if None not in last else None),
                         "deployed_spread": max(dep) - min(dep),
                         "min_deployed_group_sparsity": min(dep),
                         "any_at_clamp": any(r["at_clamp"] for r in rs),
                         "converged": (max(lams) / min(lams) <= 3 and max(gs) - min(gs) <= 10
                                       and min(gs) >= 20 and not any(r["at_clamp"] for r in rs))})
    return conv


def main() -> None:
    import fixed_lambda_grid as flg

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "synthscenes_meta.yaml"))
    p.add_argument("--grid-config", default=str(ROOT / "configs" / "synthscenes.yaml"))
    p.add_argument("--seeds", type=flg.INT, nargs="+", default=[0, 1, 2])
    p.add_argument("--inits", default="auto,0.0001,0.01")
    p.add_argument("--objectives", default="heldout,query",
                   help="comma-separated: heldout, query, window, window_loss, window_heldout "
                        "(\"\": budget only)")
    p.add_argument("--steps", type=int, default=None,
                   help="meta-steps per run (default: the config's meta.steps)")
    p.add_argument("--target", type=float, default=0.5, help="budget mode's target (0: no run)")
    p.add_argument("--measure", default="macs")
    p.add_argument("--no-dense", dest="dense", action="store_false",
                   help="skip the meta-trained dense model (λ = 0) of each seed")
    p.add_argument("--grid", type=flg.FLOAT, nargs="+", default=[3e-4, 1e-3, 3e-3, 1e-2, 3e-2])
    p.add_argument("--window", type=int, default=20,
                   help="objective window: meta-steps per window (benchmarks/lambda_window.py)")
    p.add_argument("--window-factor", type=float, default=2.0,
                   help="objective window: the two branches run at λ·factor and λ/factor")
    p.add_argument("--jobs", type=int, default=2, help=flg.JOBS_HELP)
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_lambda_inits")
    p.add_argument("--grid-runs", type=Path, default=ROOT / "runs" / "bench_fixed_lambda_grid")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--name", default="lambda_inits", help="stem of the result files")
    flg.add_reuse_options(p)
    args = flg.parse_args(p)
    os.environ.setdefault("METASPARSITY_NUM_THREADS", "1")
    flg.check_args(p, args, [(args.config, args.overrides), (args.grid_config, [])])
    flg.check_grid(p, "--grid", args.grid)
    if not 0 <= args.target <= 1:
        p.error(f"--target must be in [0, 1] (0: no budget run), got {args.target}")
    if args.measure not in ("macs", "params", "groups"):
        p.error(f"--measure: choose macs, params or groups, got {args.measure!r}")
    for v in (v.strip() for v in args.inits.split(",")):
        try:
            if v != "auto" and not float(v) > 0:
                raise ValueError
        except ValueError:
            p.error(f"--inits: give 'auto' or numbers > 0, comma-separated; got {v!r}")

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
    from metasparsity.training.evaluation import BN_STATS_BATCHES
    from metasparsity.training.reuse import check_reuse
    from metasparsity.utils.io import atomic_write_text, read_json, read_jsonl, write_json
    from metasparsity.utils.provenance import code_identity, code_label, machine_identity

    cfg = load_config(args.config, args.overrides)
    if args.steps is None:
        args.steps = cfg.meta.steps
    if args.steps < 1:
        p.error(f"--steps must be ≥ 1, got {args.steps}")
    seen = list(cfg.data.seen_tasks)
    types = {t: task.type for t, task in resolve_tasks(cfg, seen).items()}
    inits = list(dict.fromkeys(v.strip() for v in args.inits.split(",")))
    # "": budget only; each objective once (two workers must not share a run folder)
    objectives = list(dict.fromkeys(v.strip() for v in args.objectives.split(",") if v.strip()))
    known = ["heldout", "query", *WINDOW_SCORES]
    if set(objectives) - set(known):
        p.error(f"unknown objective(s) {sorted(set(objectives) - set(known))}; choose from {known}")
    if set(objectives) & set(WINDOW_SCORES) and (args.window < 1 or not args.window_factor > 1):
        p.error(f"--window must be ≥ 1 and --window-factor > 1, got {args.window} and "
                f"{args.window_factor}")

    meta_jobs = []  # (seed, objective, init)
    for s in args.seeds:
        meta_jobs += [(s, o, i) for o in objectives for i in inits]
        if args.target > 0:
            meta_jobs.append((s, "budget", "auto"))
        if args.dense:
            meta_jobs.append((s, "dense", "0"))

    def run_dir(s: int, o: str, i: str) -> Path:
        tag = f"{args.measure}_{args.target:g}" if o == "budget" else i
        return args.runs / f"seed_{s}" / f"{o}_{tag}"

    grid_jobs = [(s, lam) for s in args.seeds for lam in [0.0, *args.grid]]
    all_dirs = [*(run_dir(*k) / sub for k in meta_jobs for sub in ("", "finetune_seen")),
                *(run_dir(s, o, i) / "finetune_unseen" for s, o, i in meta_jobs
                  if (o, i) in (("heldout", "auto"), ("budget", "auto"))),
                *(flg._run_dir(args.grid_runs, s, "adam", lam) for s, lam in grid_jobs),
                *(args.runs / f"seed_{s}" / "dense_mtl_unseen" for s in args.seeds)]
    from metasparsity.config import load_config
    from metasparsity.recipes.reused import check_reused_settings

    ovs = {k: [*args.overrides, *_meta_overrides(k[0], k[1], k[2], args.steps, args.target,
                                                 args.measure)] for k in meta_jobs}
    expected = {run_dir(*k): load_config(args.config, ovs[k]) for k in meta_jobs}
    for k in meta_jobs:  # an unfinished window search goes on from its branches, made with
        d = run_dir(*k)  # the run's config (λ is set in the trainer); its settings: below
        if k[1] in WINDOW_SCORES:
            expected.update({b: expected[d] for b in sorted(
                (d.parent / f"{d.name}.branches").glob("w[0-9][0-9]_*")) if b.is_dir()})
    check_reused_settings(expected, p.error)
    check_reused_settings(flg.expected_configs(args.grid_config, [], args.grid_runs,
                                               [(s, "adam", lam) for s, lam in grid_jobs]),
                          p.error, "--grid-runs")
    other, code_note = check_reuse(all_dirs, refuse=args.current_code_only, error=p.error,
                                   root=ROOT)
    for s, o, i in meta_jobs:  # a window search is reused only with the settings asked for
        d = run_dir(s, o, i)
        log = (d / "window_search.json" if (d / "results.json").is_file()
               else d.parent / f"{d.name}.branches" / "window_search.json")
        if o in WINDOW_SCORES and log.is_file():
            search = read_json(log)
            made = (search["window"], search["factor"], search.get("score", "delta_m"))
            if made != (args.window, args.window_factor, WINDOW_SCORES[o]):
                p.error(f"{d} was searched with window {made[0]}, factor {made[1]:g} and score "
                        f"{made[2]}, not the asked {args.window}, {args.window_factor:g} and "
                        f"{WINDOW_SCORES[o]}; use other --runs")
    t0 = time.time()
    meta_res: dict[tuple, dict] = {}
    grid_res: dict[tuple, dict] = {}
    with flg.Pool(args.jobs) as pool:
        futs = {}
        for s, o, i in meta_jobs:
            ov = ovs[(s, o, i)]
            unseen = (o, i) in (("heldout", "auto"), ("budget", "auto"))
            win = ((args.window, args.window_factor, WINDOW_SCORES[o]) if o in WINDOW_SCORES
                   else None)
            futs[pool.submit(_job, args.config, ov, str(run_dir(s, o, i)), unseen, win)] = (
                "meta", s, o, i)
        for s, lam in grid_jobs:
            d = flg._run_dir(args.grid_runs, s, "adam", lam)
            futs[pool.submit(flg._train, args.grid_config, [], str(d), s, "adam", lam)] = ("grid", s, lam)
        for n, fut in enumerate(cf.as_completed(futs), 1):
            key = futs[fut]
            (meta_res if key[0] == "meta" else grid_res)[key[1:]] = fut.result()
            print(f"[{n}/{len(futs)}] {' '.join(map(str, key))} ({time.time() - t0:.0f} s)",
                  flush=True)
        unseen_ref = {s: pool.submit(
            _dense_unseen, args.config, [*args.overrides, f"train.seed={s}", "train.num_threads=1",
                                         "train.progress=false"],
            str(flg._run_dir(args.grid_runs, s, "adam", 0.0)),
            str(args.runs / f"seed_{s}" / "dense_mtl_unseen")) for s in args.seeds}
        unseen_ref = {s: f.result() for s, f in unseen_ref.items()}
        costs = {k: pool.submit(_grid_cost, str(flg._run_dir(args.grid_runs, k[0], "adam", k[1])),
                                cfg.data.image_size) for k in grid_jobs}
        grid_cost = {k: f.result() for k, f in costs.items()}

    def dm(test: dict, s: int) -> float:
        ref = grid_res[(s, 0.0)]["test"]
        spec, _ = usable_spec(default_spec(types), ref)
        return delta_m({t: test[t] for t in seen}, {t: ref[t] for t in seen}, spec)

    unseen = list(cfg.data.unseen_tasks)
    types_u = {t: task.type for t, task in resolve_tasks(cfg, unseen).items()}

    def dm_unseen(test: dict | None, s: int) -> float | None:
        if not test:
            return None
        ref = unseen_ref[s]["test"]
        spec, _ = usable_spec(default_spec(types_u), ref)
        return delta_m({t: test[t] for t in unseen}, {t: ref[t] for t in unseen}, spec)

    # ---- the fixed-λ grid: front over seeds (dense = λ 0 at 0 %)
    grid_pts = []
    for lam in [0.0, *args.grid]:
        xs = [100 * grid_res[(s, lam)]["sparsity"]["param_sparsity"] for s in args.seeds]
        ys = [dm(grid_res[(s, lam)]["test"], s) for s in args.seeds]
        ms = [100 * grid_cost[(s, lam)]["macs"] for s in args.seeds]
        grid_pts.append({"lam": lam, "param_sparsity": mean_std_cell(xs), "delta_m": mean_std_cell(ys),
                         "backbone_macs": mean_std_cell(ms)})
    front = pareto_points([(g["param_sparsity"]["mean"], g["delta_m"]["mean"]) for g in grid_pts])
    macs_curve = sorted((g["backbone_macs"]["mean"], g["delta_m"]["mean"]) for g in grid_pts)
    macs_front = [(-x, y) for x, y in pareto_points([(-x, y) for x, y in macs_curve])]  # (MACs, Δm)
    # each seed's own front in −MACs (lower is better), for a per-seed reading of budget mode
    seed_macs_front = {s: pareto_points([(-100 * grid_cost[(s, lam)]["macs"],
                                          dm(grid_res[(s, lam)]["test"], s))
                                         for lam in [0.0, *args.grid]]) for s in args.seeds}
    grid_passes = len(args.grid) * load_config(args.grid_config).train.max_steps

    # ---- rows
    rows, trajectories = [], []
    plan_cfg = cfg.meta
    for (s, o, i), r in sorted(meta_res.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        meta = r["meta"]
        rec = [x for x in read_jsonl(run_dir(s, o, i) / "metrics.jsonl") if x.get("kind") == "meta"]
        grads = [(x["grad_lambda_implicit"] + x["grad_lambda_explicit"] if not isinstance(
            x["grad_lambda_implicit"], list) else sum(x["grad_lambda_implicit"]))
            + (x.get("grad_lambda_prox") or 0.0) for x in rec]
        lam_f = _lam(meta["lambda_final"])
        # λ-validation passes ran (twice per subset with meta.lambda_through_prox)
        heldout_pass = (meta.get("lambda_objective") == "heldout") * (
            1 + bool(meta.get("lambda_through_prox")))
        passes = (args.steps * plan_cfg.meta_batch * (plan_cfg.inner_steps + 1 + heldout_pass)
                  * plan_cfg.batch_size + cfg.finetune.steps * cfg.finetune.batch_size
                  ) / cfg.train.batch_size
        if o in WINDOW_SCORES:  # two branches; each window scores both on the λ-validation ids,
            # after re-estimating their BN statistics on BN_STATS_BATCHES training batches
            n_win = math.ceil(args.steps / args.window)
            held = round(plan_cfg.lambda_val_fraction * cfg.data.train_size)
            passes += (args.steps * plan_cfg.meta_batch * (plan_cfg.inner_steps + 2)
                       * plan_cfg.batch_size + 2 * n_win * held) / cfg.train.batch_size
            passes += 2 * n_win * BN_STATS_BATCHES
        ps = 100 * r["seen"]["sparsity"]["param_sparsity"]
        d = dm(r["seen"]["test"], s)
        front_at = front_value(front, ps)
        row = {
            "objective": o, "seed": s, "lambda_init": meta["lambda_init"], "init": i,
            "lambda_final": lam_f,
            "at_clamp": o != "dense" and (lam_f <= plan_cfg.lambda_min * 1.01
                                          or lam_f >= plan_cfg.lambda_max / 1.01),
            "group_sparsity": 100 * meta["sparsity"]["group_sparsity"],
            # after fine-tuning: the same unless finetune.lam keeps the prox on
            "group_sparsity_deployed": 100 * r["seen"]["sparsity"]["group_sparsity"],
            "param_sparsity": ps, "delta_m": d,
            "gap_to_front": None if front_at is None else d - front_at,
            "backbone_macs": 100 * r["cost"]["macs"],
            "backbone_cut": r.get("backbone_cut"),
            # the window rule does not follow λ's gradient (logged, not used)
            "share_steps_pushing_up": (None if o in WINDOW_SCORES
                                       else sum(g < 0 for g in grads) / max(len(grads), 1)),
            "passes": passes, "unseen_test": r.get("unseen", {}).get("test"),
            "delta_m_unseen": dm_unseen(r.get("unseen", {}).get("test"), s),
        }
        win = meta.get("final_zero_window") or {}
        if win.get("landing"):  # what the last step's own prox at λ would have kept zero
            sp = meta["sparsity"]
            row["group_sparsity_last_step"] = 100 * (
                sp["num_zero_groups"] - win["landing"]["groups_vs_lambda"]
                - win["projected_groups"]) / sp["num_groups"]
        if o in WINDOW_SCORES:  # the paired windows' decisions (lambda_window.py)
            wins = read_json(run_dir(s, o, i) / "window_search.json")["windows"]
            key = f"{WINDOW_SCORES[o]}_up_vs_down"
            # None: one branch diverged and lost (lambda_window.py)
            scores = [abs(w[key]) for w in wins if w[key] is not None]
            row["window_decisions"] = {
                "score": WINDOW_SCORES[o],
                "up_share": sum(w["winner"] == "up" for w in wins) / len(wins),
                "median_abs": statistics.median(scores) if scores else None,
                "max_abs": max(scores, default=None),
                "lambda_after": [w["lambda"] for w in wins]}
        # MACs: lower is better, so the front is read in −MACs; every row is also compared at
        # its backbone MACs, with its own seed's front (meta-training's zeros save fewer MACs
        # per zero weight than the grid's: the two coordinates need not agree)
        own = front_value(seed_macs_front[s], -row["backbone_macs"])
        row["gap_to_seed_front_at_macs"] = None if own is None else d - own
        if o == "budget":
            row["target"] = 100 * args.target
            row["front_delta_m_at_macs"] = front_value([(-x, y) for x, y in macs_front],
                                                   -row["backbone_macs"])
        rows.append(row)
        if o == "dense":
            continue
        trajectories.append({"objective": o, "seed": s, "init": i,
                             "lambda": [_lam(x["lambda"]) for x in rec],
                             "grad_sign": [(-1 if g > 0 else 1 if g < 0 else 0) for g in grads],
                             "group_sparsity": [x["group_sparsity"] for x in rec]})

    conv = convergence(rows, objectives, args.seeds)

    def agg(sel) -> dict[str, Any]:
        rs = [r for r in rows if sel(r)]
        return {k: mean_std_cell([r[k] for r in rs]) for k in
                ("lambda_final", "group_sparsity", "group_sparsity_deployed", "param_sparsity",
                 "delta_m", "gap_to_front", "gap_to_seed_front_at_macs",
                 "backbone_macs", "passes", "delta_m_unseen")} | {"n": len(rs)}

    summary = {f"{o}/{i}": agg(lambda r, o=o, i=i: r["objective"] == o and r["init"] == i)
               for o in objectives for i in inits}
    budget_rows = [r for r in rows if r["objective"] == "budget"]
    if budget_rows:
        summary["budget"] = agg(lambda r: r["objective"] == "budget")
        summary["budget"]["front_delta_m_at_macs"] = mean_std_cell(
            [r["front_delta_m_at_macs"] for r in budget_rows])
    if any(r["objective"] == "dense" for r in rows):
        summary["meta_dense"] = agg(lambda r: r["objective"] == "dense")

    machine = {**machine_identity(), "threads_per_run": 1, "jobs": args.jobs}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{args.name}.json", {
        "machine": machine, "config": os.path.relpath(args.config, ROOT),
        "overrides": args.overrides, "steps": args.steps, "target": args.target,
        "measure": args.measure, "grid": grid_pts, "front": front, "grid_passes": grid_passes,
        "rows": rows, "convergence": conv, "summary": summary, "trajectories": trajectories,
        "wall_time_s": round(time.time() - t0, 1),
        "code": {"this": code_identity(), "runs_from_other_code": other}})
    code_line = code_note or f"Every run was made by this code ({code_label(code_identity())})."
    atomic_write_text(args.out / f"{args.name}.md", _markdown(rows, conv, summary, grid_pts,
                                                              grid_passes, args, machine,
                                                              code_line))
    _plot(trajectories, grid_pts, front, summary, args.out / f"{args.name}.png", objectives)
    print((args.out / f"{args.name}.md").read_text())


def _f(v, nd=2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{nd}f}"


def _ms(c: dict, nd=2, of: int | None = None) -> str:
    """``mean ± std``; with ``of`` (the runs in the row), the count when fewer had a value (a gap
    to the front exists only within the grid's range, Δm unseen only where unseen tasks ran)."""
    n = c.get("n", of)
    if _f(c["mean"]) == "–":
        return "–"
    text = f"{_f(c['mean'], nd)} ± {_f(c['std'], nd)}" if n != 1 else _f(c["mean"], nd)
    return text + (f" ({n} of {of})" if of is not None and n is not None and 0 < n < of else "")


def _markdown(rows, conv, summary, grid_pts, grid_passes, args, machine, code_line="") -> str:
    from metasparsity.report.tables import markdown_table
    from metasparsity.utils.provenance import command_line

    objectives = [v.strip() for v in args.objectives.split(",") if v.strip()]
    ran = ([f"objective{'s' * (len(objectives) > 1)} {', '.join(objectives)}"] if objectives
           else []) + ([f"budget mode ({100 * args.target:g} % of the {args.measure})"]
                       if args.target > 0 else [])
    lines = [f"# λ from different λ0: {' and '.join(ran)} ({len(args.seeds)} seeds)",
             "", "`" + command_line("benchmarks/lambda_inits.py", sys.argv[1:], ROOT) + "` on "
             f"{os.path.relpath(args.config, ROOT)}, {args.steps} meta-steps; machine: {machine}.",
             "", *([code_line, ""] if code_line else []),
             "Δm: seen tasks, test split, against the dense MTL model of the same seed "
             "(benchmarks/fixed_lambda_grid.py). Gap: Δm minus the fixed-λ front's Δm at the same "
             "parameter sparsity (the Pareto front, flat to the left of its densest point). Gap at "
             "MACs: Δm minus the run's own seed's fixed-λ front at the same backbone MACs (fewer "
             "MACs better; – beyond the grid's sparsest model). Δm "
             "unseen: the unseen tasks after fine-tuning, against the dense MTL model fine-tuned "
             f"on them the same way. The grid costs {grid_passes} passes in all.", "",
             "## Runs", ""]
    lines.append(markdown_table(
        ["objective", "seed", "λ0", "final λ", "at clamp", "group sp. %",
         "group sp. % of the last step's prox", "group sp. % deployed", "param sp. %",
         "backbone MACs %", "Δm %", "gap to front", "gap at MACs", "steps pushing λ up %",
         "passes", "backbone cut"],
        [[r["objective"], r["seed"], f"{r['lambda_init']:.3g}" + (" (auto)" if r["init"] == "auto"
                                                                   else ""),
          f"{r['lambda_final']:.3g}", "yes" if r["at_clamp"] else "no", _f(r["group_sparsity"], 1),
          _f(r.get("group_sparsity_last_step"), 1), _f(r["group_sparsity_deployed"], 1),
          _f(r["param_sparsity"], 1), _f(r["backbone_macs"], 1), _f(r["delta_m"]),
          _f(r["gap_to_front"]), _f(r["gap_to_seed_front_at_macs"]),
          _f(None if r["share_steps_pushing_up"] is None else 100 * r["share_steps_pushing_up"], 0),
          _f(r["passes"], 0), r.get("backbone_cut") or "no"]
         for r in rows]))
    lines += ["", "## Does λ converge? (per seed, over the λ0 of the run)", ""]
    lines.append("One λ0 per seed: there is nothing to converge." if not conv else markdown_table(
        ["objective", "seed", "max/min final λ", "group sparsity spread (points)",
         "spread of the last step's own prox", "lowest group sparsity %",
         "spread deployed (after fine-tuning)", "a λ at its clamp",
         "converged (≤3×, ≤10 points, ≥20 %)"],
        [[c["objective"], c["seed"], _f(c["lambda_ratio"]), _f(c["sparsity_spread"], 1),
          _f(c.get("last_step_spread"), 1), _f(c["min_group_sparsity"], 1),
          _f(c["deployed_spread"], 1), "yes" if c["any_at_clamp"] else "no",
          "yes" if c["converged"] else "no"] for c in conv]))
    lines += window_decisions_text(rows, objectives, args.window, args.window_factor)
    lines += ["", "## Means over seeds", ""]
    lines.append(markdown_table(
        ["run", "final λ", "group sp. %", "group sp. % deployed", "param sp. %",
         "backbone MACs %", "Δm seen %",
         "gap to front", "gap at MACs", "Δm unseen %", "passes"],
        [[k, _ms(v["lambda_final"], 5), _ms(v["group_sparsity"], 1),
          _ms(v["group_sparsity_deployed"], 1), _ms(v["param_sparsity"], 1),
          _ms(v["backbone_macs"], 1), _ms(v["delta_m"]), _ms(v["gap_to_front"], of=v["n"]),
          _ms(v["gap_to_seed_front_at_macs"], of=v["n"]),
          _ms(v["delta_m_unseen"], of=v["n"]), _f(v["passes"]["mean"], 0)]
         for k, v in summary.items()]))
    b = summary.get("budget")
    lines += ["", f"Budget mode (target {100 * args.target:g} % of the backbone's {args.measure}): "
              f"ends at {_ms(b['backbone_macs'], 1)} %; the fixed-λ curve's Δm at that MACs share "
              f"is {_ms(b['front_delta_m_at_macs'])} % against budget mode's {_ms(b['delta_m'])} %. "
              "Against each seed's own fixed-λ front at its run's MACs, budget mode's gap is "
              + ", ".join(f"{r['gap_to_seed_front_at_macs']:+.2f} (seed {r['seed']})"
                          for r in rows if r["objective"] == "budget"
                          and r["gap_to_seed_front_at_macs"] is not None) + "."
              if b else "", "", "## The fixed-λ grid (means over seeds)", ""]
    lines.append(markdown_table(
        ["λ", "param sp. %", "backbone MACs %", "Δm %"],
        [[f"{g['lam']:g}", _ms(g["param_sparsity"], 1), _ms(g["backbone_macs"], 1),
          _ms(g["delta_m"])] for g in grid_pts]))
    return "\n".join(lines) + "\n"


# per score: the column name, and what it compares (lambda_window.py's SCORES)
SCORE_TEXT = {
    "delta_m": ("Δm(up vs down)", "the validation Δm of the branch at the larger λ against the "
                "one at the smaller, of the meta-parameters on the λ-validation ids after the "
                "window"),
    "loss": ("loss(up vs down) %", "the mean over the seen tasks of the validation loss of the "
             "branch at the smaller λ minus the one at the larger, relative to the pair's mean "
             "loss, of the meta-parameters on the λ-validation ids after the window"),
    "heldout": ("held-out(up vs down) %", "the adapted model's λ-validation loss "
                "(`lambda_val_loss`, what `heldout` descends) of the branch at the smaller λ "
                "minus the one at the larger, summed over the window's meta-steps on the same "
                "batches, relative to the pair's mean")}


def window_decisions_text(rows, objectives, window: int, factor: float) -> list[str]:
    """The markdown section of each paired-window objective's decisions."""
    from metasparsity.report.tables import markdown_table

    lines: list[str] = []
    for o in [o for o in objectives if o in WINDOW_SCORES]:
        win = [r for r in rows if r["objective"] == o]
        name, what = SCORE_TEXT[WINDOW_SCORES[o]]
        lines += ["", f"## The {o} rule's decisions ({window} meta-steps per window, "
                  f"branches at λ·{factor:g} and λ/{factor:g})", "",
                  f"{name}: {what}; the larger λ wins where it is > 0.", ""]
        lines.append(markdown_table(
            ["seed", "λ0", "windows won by the larger λ %", f"median |{name}|",
             f"largest |{name}|", "λ after each window"],
            [[r["seed"], r["init"], _f(100 * r["window_decisions"]["up_share"], 0),
              _f(r["window_decisions"]["median_abs"]), _f(r["window_decisions"]["max_abs"]),
              " ".join(f"{v:.2g}" for v in r["window_decisions"]["lambda_after"])]
             for r in win]))
    return lines


def init_colors(inits: list[str]) -> dict[str, str]:
    """A colour per λ0: the usual three keep theirs across reports, any other a colour of its
    own (none shared)."""
    fixed = {"auto": "tab:blue", "0.0001": "tab:orange", "1e-4": "tab:orange",
             "0.01": "tab:green", "1e-2": "tab:green"}
    spare = [c for c in ("tab:purple", "tab:red", "tab:brown", "tab:pink", "tab:olive",
                         "tab:cyan", "tab:gray") if c not in fixed.values()]
    out = {}
    for i in dict.fromkeys(inits):
        out[i] = fixed.get(i) or (spare.pop(0) if spare else "0.4")
    return out


def _plot(trajectories, grid_pts, front, summary, path, objectives) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # λ per objective, the sign of λ's gradient (when an objective ran), Δm against sparsity
    panels = len(objectives) + (2 if objectives else 1)
    fig, axes = plt.subplots(1, panels, figsize=(max(7.0, 5 * panels), 4.4), squeeze=False)
    axes = axes[0]
    colors = init_colors([t["init"] for t in trajectories])
    for ax, o in zip(axes, objectives):
        for t in trajectories:
            if t["objective"] != o:
                continue
            ax.semilogy(range(1, len(t["lambda"]) + 1), t["lambda"],
                        color=colors[t["init"]], alpha=0.8,
                        label=f"λ0 = {t['init']}" if t["seed"] == 0 else None)
        ax.set_title(f"λ over meta-training, objective {o}")
        ax.set_xlabel("meta-step")
        ax.set_ylabel("λ")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if objectives:
        ax = axes[len(objectives)]
        w = 10
        # the window rule does not follow λ's gradient (it is logged, not used)
        for o, style in zip([o for o in objectives if o not in WINDOW_SCORES], ("-", "--")):
            signs = [t["grad_sign"] for t in trajectories if t["objective"] == o]
            n = min(len(s) for s in signs)
            mean = [statistics.fmean(s[k] for s in signs) for k in range(n)]
            smooth = [statistics.fmean(mean[max(0, k - w + 1):k + 1]) for k in range(n)]
            ax.plot(range(1, n + 1), smooth, style, label=f"{o}")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_ylim(-1.05, 1.05)
        ax.set_title(f"sign of −dL/dλ (+1: pushes λ up), mean of runs, {w}-step window")
        ax.set_xlabel("meta-step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax = axes[-1]
    xs = [g["param_sparsity"]["mean"] for g in grid_pts]
    ys = [g["delta_m"]["mean"] for g in grid_pts]
    ax.errorbar(xs, ys, xerr=[g["param_sparsity"]["std"] for g in grid_pts],
                yerr=[g["delta_m"]["std"] for g in grid_pts], fmt="o-", color="0.6", capsize=3,
                label="fixed λ grid (1000 steps each)")
    ax.plot([p[0] for p in front], [p[1] for p in front], "s--", color="tab:red", mfc="none",
            ms=10, label="Pareto front")
    for k, (name, v) in enumerate(summary.items()):
        ax.errorbar(v["param_sparsity"]["mean"], v["delta_m"]["mean"],
                    xerr=v["param_sparsity"]["std"], yerr=v["delta_m"]["std"],
                    fmt="D^v<>P*X"[k % 8], ms=8, capsize=3, label=name,
                    color=colors.get(name.split("/", 1)[-1]))  # λ0's colour, as on the left
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("parameter sparsity of the backbone (%)")
    ax.set_ylabel("Δm vs dense MTL (%)")
    ax.set_title("Δm against sparsity (mean ± std over seeds)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    import fixed_lambda_grid as flg

    flg.run_main(main)
