"""Would a longer-horizon hypergradient change the direction of λ?  The implicit-function
hypergradient ``dL_val(θ*(λ))/dλ`` (metasparsity.meta.hypergrad: Neumann series with J terms;
J = 0 is the one-step signal meta-training uses) on the states where λ's fate is decided.

For every seed: meta-train ``--config`` (default the SynthScenes meta preset, held-out λ) from
``--init`` (default λ0 = 1e-4, where seed 0's λ collapses) for ``--steps`` outer steps (finished
runs are reused), then, at that state and its λ, estimate the hypergradient of the λ-validation
loss (all seen tasks; a batch of held-out ids, never trained on) through the penalised training
loss's Hessian (all seen tasks; a batch of support/query ids), ``--reps`` independent batch
pairs, for every J in ``--terms``.  BatchNorm uses batch statistics, as in meta-training.  A
positive value says "lower λ" (the held-out loss rises with λ).  Also from the run's log: λ's
direction over its steps and the share of steps whose meta-gradient pushed λ up.

Writes ``benchmarks/results/<name>.{json,md}``.

    python benchmarks/hypergrad_horizon.py [--seeds 0,1,2] [--init 0.0001] [--steps 40] [key=value ...]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixed_lambda_grid as flg  # noqa: E402
from zero_set_jitter import _meta_train  # noqa: E402  (meta-train a run, reused when finished)


def _measure(run_dir: Path, terms: list[int], alpha: float | None, reps: int, batch: int,
             threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    from metasparsity.data import build_dataset, resolve_tasks
    from metasparsity.meta import batch_stat_buffers
    from metasparsity.meta.hypergrad import implicit_lambda_grad
    from metasparsity.meta.inner import _forward
    from metasparsity.meta.sampler import meta_stream_split
    from metasparsity.recipes.load_run import load_run_model
    from metasparsity.sparsity import channel_groups, sparsity_stats
    from metasparsity.utils.io import read_json

    cfg, model, _ = load_run_model(run_dir, "last")
    model.train()
    tasks = resolve_tasks(cfg, cfg.data.seen_tasks)
    ds = build_dataset(cfg, "train")
    sup, qry, held = meta_stream_split(len(ds), cfg.train.seed, cfg.meta.lambda_val_fraction)
    train_ids = sup + qry
    if batch > min(len(held), len(train_ids)):
        print(f"note: {run_dir}: batches of {min(batch, len(held))} held-out and "
              f"{min(batch, len(train_ids))} training ids (--batch {batch})", file=sys.stderr)
    layers = channel_groups(model)
    buffers = batch_stat_buffers(model)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    lam = read_json(run_dir / "results.json")["lambda_final"]
    lam = statistics.fmean(lam) if isinstance(lam, list) else float(lam)
    alpha = cfg.meta.inner_lr if alpha is None else alpha

    def loader(ids):
        xs, ys = zip(*[ds[i] for i in ids])
        x, y = torch.stack(xs), {t: torch.stack([v[t] for v in ys]) for t in tasks}
        return lambda p: sum(tasks[t].loss(out, y[t]) for t, out in
                             _forward(model, p, buffers, x, list(tasks)).items())

    gen = torch.Generator().manual_seed(1_000 + cfg.train.seed)
    per_rep = []
    for _ in range(reps):
        tr = [train_ids[i] for i in torch.randperm(len(train_ids), generator=gen)[:batch]]
        va = [held[i] for i in torch.randperm(len(held), generator=gen)[:batch]]
        est = implicit_lambda_grad(params, layers, lam, loader(tr), loader(va), alpha=alpha,
                                   terms=terms)
        per_rep.append({"estimate": {j: float(v.sum()) for j, v in est.estimates.items()},
                        "growth": est.growth})
    st = sparsity_stats(model)
    return {"lambda": lam, "group_sparsity": 100 * st.group_sparsity, "alpha": alpha,
            "per_rep": per_rep}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "synthscenes_meta.yaml"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--init", default="0.0001", help="λ0 of the runs")
    p.add_argument("--steps", type=int, default=40, help="outer steps before the measurement")
    p.add_argument("--terms", default="0,1,2,5,10,20,40", help="Neumann terms J to report")
    p.add_argument("--alpha", type=float, default=None,
                   help="Neumann step (default meta.inner_lr: J terms ~ J more inner steps)")
    p.add_argument("--reps", type=int, default=6, help="independent (train, held-out) batch pairs")
    p.add_argument("--batch", type=int, default=64,
                   help="samples per batch (at most the held-out ids of the training split)")
    p.add_argument("--jobs", type=int, default=2,
                   help=f"meta-training runs at once, one CPU thread each (1 to {flg.MAX_JOBS})")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_hypergrad_horizon")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--name", default="hypergrad_horizon")
    p.add_argument("overrides", nargs="*", help="config overrides (key=value)")
    args = flg.parse_args(p)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        terms = sorted({int(s) for s in args.terms.split(",") if s.strip()})
    except ValueError as e:
        p.error(f"--seeds and --terms are comma-separated integers ({e})")
    if not seeds or not terms or min(terms) < 0:
        p.error("--seeds and --terms need at least one value; terms are ≥ 0")
    if args.steps < 1 or args.reps < 1 or args.batch < 2 or (args.alpha is not None
                                                              and not args.alpha > 0):
        p.error("--steps and --reps must be ≥ 1, --batch ≥ 2, --alpha > 0")
    if len(set(seeds)) != len(seeds):
        p.error(f"--seeds: each seed once, got {args.seeds}")
    flg.check_args(p, args, [(args.config, [*args.overrides, f"meta.lambda_init={args.init}"])])
    from metasparsity.config import load_config
    from metasparsity.meta.sampler import meta_stream_split
    from metasparsity.recipes.reused import check_reused_settings
    from metasparsity.utils.errors import UserError

    runs = {s: args.runs / f"seed_{s}" / f"{args.init}_{args.steps}" for s in seeds}
    ovs = {s: [*args.overrides, f"meta.steps={args.steps}", "meta.final_zero_window=0",
               f"meta.lambda_init={args.init}", f"train.seed={s}", "train.num_threads=1",
               "train.progress=false"] for s in seeds}
    cfgs = {s: load_config(args.config, ovs[s]) for s in seeds}
    check_reused_settings({runs[s]: cfgs[s] for s in seeds}, p.error)
    for c in cfgs.values():  # the ids _measure draws a batch from (real data: at most these)
        if c.data.train_size is None:
            continue
        try:
            sup, qry, held = meta_stream_split(c.data.train_size, c.train.seed,
                                               c.meta.lambda_val_fraction)
        except UserError as e:
            p.error(str(e))
        if args.batch > min(len(held), len(sup) + len(qry)):
            p.error(f"--batch {args.batch} is more than the {len(held)} held-out ids of the "
                    f"training split (data.train_size {c.data.train_size}, "
                    f"meta.lambda_val_fraction {c.meta.lambda_val_fraction})")

    from metasparsity.report.tables import markdown_table
    from metasparsity.utils.io import atomic_write_text, read_json, read_jsonl, write_json
    from metasparsity.utils.provenance import command_line, machine_identity

    t0 = time.time()
    with flg.Pool(args.jobs) as pool:
        futs = {pool.submit(_meta_train, args.config, ovs[s], str(d)): s
                for s, d in runs.items()}
        for fut in cf.as_completed(futs):
            fut.result()
            print(f"meta-trained seed {futs[fut]} ({time.time() - t0:.0f} s)", flush=True)

    rows = []
    for s, d in runs.items():
        # the measurement is reused when its settings are the same (the keys of the cache file)
        key = {"terms": terms, "alpha": args.alpha, "reps": args.reps, "batch": args.batch}
        cache = d / f"hypergrad_{args.alpha}_{args.reps}_{args.batch}.json"
        m = read_json(cache) if cache.is_file() else None
        if m is None or m.get("key") != key:
            m = _measure(d, terms, args.alpha, args.reps, args.batch,
                         threads=min(2, os.cpu_count()))
            write_json(cache, {**m, "key": key})
            m = read_json(cache)  # JSON's string keys, as when reused
        m.pop("key", None)
        recs = [r for r in read_jsonl(d / "metrics.jsonl") if r.get("kind") == "meta"]
        grads = [r["grad_lambda_implicit"] for r in recs]
        grads = [statistics.fmean(g) if isinstance(g, list) else g for g in grads]
        rows.append({"seed": s, **m, "lambda_init": args.init, "steps": args.steps,
                     "run_up_share": sum(g < 0 for g in grads) / len(grads),
                     "run_lambda_ratio": m["lambda"] / float(args.init)
                     if args.init != "auto" else None})
        print(f"measured seed {s} ({time.time() - t0:.0f} s)", flush=True)

    machine = {**machine_identity(), "threads": min(2, os.cpu_count())}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{args.name}.json", {
        "machine": machine, "config": os.path.relpath(args.config, ROOT),
        "overrides": args.overrides, "init": args.init, "steps": args.steps, "terms": terms,
        "reps": args.reps, "batch": args.batch, "rows": rows,
        "wall_time_s": round(time.time() - t0, 1)})

    def cell(r: dict[str, Any], j: int) -> str:
        vals = [rep["estimate"][str(j)] for rep in r["per_rep"]]
        growths = [rep["growth"][str(j)] for rep in r["per_rep"]]
        if None in vals or None in growths:  # overflowed (JSON null): the series diverged
            return f"diverged ({sum(v is None for v in vals)}/{len(vals)} pairs overflow)"
        growth = statistics.median(growths)
        down = sum(v > 0 for v in vals)
        return (f"{statistics.median(vals):+.3g} ({down}/{len(vals)} down; "
                f"growth {growth:.2g})")

    lines = [f"# The horizon of λ's hypergradient (λ0 = {args.init}, state after {args.steps} "
             "outer steps)", "",
             "`" + command_line("benchmarks/hypergrad_horizon.py", sys.argv[1:], ROOT) + "` on "
             f"{os.path.relpath(args.config, ROOT)}; machine: {machine}.", "",
             "dL_val/dλ by the implicit function theorem with a Neumann series of J terms "
             f"(step α = {rows[0]['alpha']:g}; J = 0 is the one-step signal of meta-training), "
             f"median over {args.reps} pairs of {args.batch}-sample batches (penalised "
             "training loss for the Hessian, held-out λ-validation ids for the loss); "
             "'down': pairs whose estimate says lower λ (> 0); 'growth': median "
             "‖(I − αH)^J ∇L_val‖ / ‖∇L_val‖ (above 1 the series diverges: negative curvature). "
             "'Run': λ at this state over λ0, and the share of the run's steps whose "
             "meta-gradient pushed λ up.", ""]
    lines.append(markdown_table(
        ["seed", "λ", "group sp. %", "run: λ/λ0", "run: steps pushing λ up %",
         *[f"J = {j}" for j in terms]],
        [[r["seed"], f"{r['lambda']:.3g}", f"{r['group_sparsity']:.1f}",
          "–" if r["run_lambda_ratio"] is None else f"{r['run_lambda_ratio']:.2f}",
          f"{100 * r['run_up_share']:.0f}",
          *[cell(r, j) for j in terms]] for r in rows]))
    atomic_write_text(args.out / f"{args.name}.md", "\n".join(lines) + "\n")
    print((args.out / f"{args.name}.md").read_text())


if __name__ == "__main__":
    flg.run_main(main)
