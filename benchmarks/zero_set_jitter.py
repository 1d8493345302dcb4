"""How much does the learned λ's zero set jitter from one outer step to the next, and what damps
it?  One seed, a few λ0, and variants of ``--config`` (default the SynthScenes meta preset):

* ``last_step``: the preset with ``meta.final_zero_window=0`` (the last step's own prox);
* ``clip``: also ``meta.clip_grad=1.5`` (θ's meta-gradient clipped at 1.5× the median norm of
  the last 20 steps);
* ``clip_beta``: also ``meta.outer_beta1=0.97`` (Adam's first moment, and with it the prox's
  zero test ``‖m̂_g‖ ≤ λ·w_g``, averaged over ~33 steps instead of ~10).

Meta-training only (no fine-tuning, no test metrics).  Per run, from ``metrics.jsonl``: the
final λ, the last step's group sparsity, the mean ± std of group sparsity over the last
``--tail`` steps, the steps whose group sparsity fell by ≥ 10 points in one step (mass
revivals) and how many of them came on a gradient spike (norm ≥ 1.5× the median of the 20
steps before), the median meta-gradient norm and the share of clipped steps.  Per variant: the
spread of the last step's group sparsity and the ratio of final λ over the λ0 (does the damped
zero set still let λ converge?).  Writes ``benchmarks/results/zero_set_jitter.{json,md}``;
finished runs are reused.

    python benchmarks/zero_set_jitter.py [--seed 1] [--inits auto,0.01] [--jobs 2] [key=value ...]
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
VARIANTS = {
    "last_step": ["meta.final_zero_window=0"],
    "clip": ["meta.final_zero_window=0", "meta.clip_grad=1.5"],
    "clip_beta": ["meta.final_zero_window=0", "meta.clip_grad=1.5", "meta.outer_beta1=0.97"],
}


def _meta_train(config: str, overrides: list[str], run_dir: str) -> dict[str, Any]:
    """Meta-train (reused when finished, resumed when interrupted); in a worker."""
    import torch

    torch.set_num_threads(1)
    from metasparsity.config import load_config
    from metasparsity.recipes import run_recipe
    from metasparsity.recipes.meta_train import MetaTrainer
    from metasparsity.training.session import sub_run

    d = Path(run_dir)
    res, resume = sub_run(d)
    if res is None:
        res = run_recipe(MetaTrainer(load_config(config, overrides), d, resume=resume,
                                     overwrite=not resume))
    return res


def _lam(v) -> float:
    return float(statistics.fmean(v)) if isinstance(v, list) else float(v)


def _stats(records: list[dict[str, Any]], tail: int) -> dict[str, Any]:
    gs = [100 * r["group_sparsity"] for r in records]
    end = gs[-tail:]
    falls = [k + 1 for k in range(1, len(gs)) if gs[k - 1] - gs[k] >= 10]
    norms = [r["grad_norm"] for r in records]
    # a spike: the meta-gradient norm (before any clipping) ≥ 1.5× the median of the 20 before
    spikes = {k + 1 for k in range(5, len(norms))
              if norms[k] >= 1.5 * statistics.median(norms[max(0, k - 20):k])}
    return {"lambda_final": _lam(records[-1]["lambda"]), "group_sparsity_last": gs[-1],
            "tail_mean": statistics.fmean(end), "tail_std": statistics.stdev(end),
            "tail_min": min(end), "tail_max": max(end),
            "falls_10": len(falls), "falls_10_in_tail": sum(k > len(gs) - tail for k in falls),
            "largest_fall": max([gs[k - 1] - gs[k] for k in range(1, len(gs))], default=0.0),
            "median_grad_norm": statistics.median(norms),
            "clipped_share": sum(r["clip_scale"] < 1 for r in records) / len(records),
            "spike_share": len(spikes) / len(records),
            "falls_on_spikes": sum(k in spikes for k in falls),
            "group_sparsity": gs}


def main() -> None:
    import fixed_lambda_grid as flg
    from metasparsity.utils.provenance import command_line

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "synthscenes_meta.yaml"))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--inits", default="auto,0.01")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--tail", type=int, default=80, help="steps at the end the jitter is read over")
    p.add_argument("--jobs", type=int, default=2, help=flg.JOBS_HELP)
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench_zero_set_jitter")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--name", default="zero_set_jitter")
    p.add_argument("overrides", nargs="*", help="config overrides (key=value), before the variant's")
    args = flg.parse_args(p)
    inits = [v.strip() for v in args.inits.split(",") if v.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        p.error(f"unknown variant(s) {bad}; choose from {list(VARIANTS)}")
    inits, variants = list(dict.fromkeys(inits)), list(dict.fromkeys(variants))
    if not inits or not variants:
        p.error("--inits and --variants need at least one value each")
    if args.tail < 2:
        p.error(f"--tail must be >= 2 (a standard deviation over its steps), got {args.tail}")
    flg.check_args(p, args, [(args.config, [*args.overrides, *VARIANTS[v],
                                            f"meta.lambda_init={i}"])
                             for v in variants for i in inits])
    from metasparsity.config import load_config
    from metasparsity.recipes.reused import check_reused_settings

    jobs = [(v, i) for v in variants for i in inits]
    ovs = {(v, i): [*args.overrides, *VARIANTS[v], f"meta.lambda_init={i}", f"train.seed={args.seed}",
                    "train.num_threads=1", "train.progress=false"] for v, i in jobs}
    dirs = {k: args.runs / f"seed_{args.seed}" / f"{k[0]}_{k[1]}" for k in jobs}
    cfgs = {k: load_config(args.config, ovs[k]) for k in jobs}
    logged = min(-(-c.meta.steps // c.meta.log_every) for c in cfgs.values())
    if args.tail > logged:
        p.error(f"--tail {args.tail} is more than the {logged} logged meta-steps of a run "
                "(meta.steps / meta.log_every); it would read the whole run")
    check_reused_settings({dirs[k]: cfgs[k] for k in jobs}, p.error)

    from metasparsity.report.tables import markdown_table
    from metasparsity.utils.io import atomic_write_text, read_jsonl, write_json

    t0 = time.time()
    with flg.Pool(args.jobs) as pool:
        futs = {pool.submit(_meta_train, args.config, ovs[k], str(dirs[k])): k for k in jobs}
        for n, fut in enumerate(cf.as_completed(futs), 1):
            fut.result()
            print(f"[{n}/{len(futs)}] {' '.join(futs[fut])} ({time.time() - t0:.0f} s)",
                  flush=True)

    rows = []
    for v, i in jobs:
        recs = [r for r in read_jsonl(args.runs / f"seed_{args.seed}" / f"{v}_{i}" /
                                      "metrics.jsonl") if r.get("kind") == "meta"]
        rows.append({"variant": v, "init": i, "seed": args.seed, **_stats(recs, args.tail)})
    per_variant = []
    for v in variants:
        rs = [r for r in rows if r["variant"] == v]
        lams = [r["lambda_final"] for r in rs]
        last = [r["group_sparsity_last"] for r in rs]
        per_variant.append({"variant": v, "lambda_ratio": max(lams) / min(lams),
                            "last_step_spread": max(last) - min(last),
                            "tail_std_mean": statistics.fmean(r["tail_std"] for r in rs),
                            "falls_10_in_tail": sum(r["falls_10_in_tail"] for r in rs)})


    from metasparsity.utils.provenance import machine_identity

    machine = {**machine_identity(), "threads_per_run": 1, "jobs": args.jobs}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{args.name}.json", {
        "machine": machine, "config": os.path.relpath(args.config, ROOT), "seed": args.seed,
        "overrides": args.overrides, "tail": args.tail, "variants": {v: VARIANTS[v] for v in variants}, "rows": rows,
        "per_variant": per_variant, "wall_time_s": round(time.time() - t0, 1)})
    f1 = "{:.1f}".format
    lines = [f"# Zero-set jitter over meta-training (seed {args.seed})", "",
             "`" + command_line("benchmarks/zero_set_jitter.py", sys.argv[1:], ROOT) + "` on "
             f"{os.path.relpath(args.config, ROOT)}; machine: {machine}.", "",
             "Variants: " + "; ".join(f"`{v}`: {' '.join(VARIANTS[v])}" for v in variants)
             + f". Tail: the last {args.tail} outer steps. A fall: group sparsity down by ≥ 10 "
             "points in one step (a mass revival). A spike: a step whose meta-gradient norm "
             "(before clipping) is ≥ 1.5× the median of the 20 steps before it.", "",
             "## Runs", ""]
    lines.append(markdown_table(
        ["variant", "λ0", "final λ", "group sp. % (last step)", "tail mean ± std %",
         "tail min–max %", "falls (all / tail)", "falls on a spike", "spike steps %",
         "largest fall", "median ‖g‖", "clipped %"],
        [[r["variant"], r["init"], f"{r['lambda_final']:.3g}", f1(r["group_sparsity_last"]),
          f"{f1(r['tail_mean'])} ± {f1(r['tail_std'])}", f"{f1(r['tail_min'])}–{f1(r['tail_max'])}",
          f"{r['falls_10']} / {r['falls_10_in_tail']}", r["falls_on_spikes"],
          f"{100 * r['spike_share']:.0f}", f1(r["largest_fall"]),
          f"{r['median_grad_norm']:.3g}", f"{100 * r['clipped_share']:.0f}"] for r in rows]))
    lines += ["", "## Per variant (over the λ0)", ""]
    lines.append(markdown_table(
        ["variant", "max/min final λ", "spread of the last step's group sp. (points)",
         "mean tail std (points)", "falls in the tails"],
        [[c["variant"], f"{c['lambda_ratio']:.2f}", f1(c["last_step_spread"]),
          f1(c["tail_std_mean"]), c["falls_10_in_tail"]] for c in per_variant]))
    atomic_write_text(args.out / f"{args.name}.md", "\n".join(lines) + "\n")
    print((args.out / f"{args.name}.md").read_text())


if __name__ == "__main__":
    import fixed_lambda_grid as flg

    flg.run_main(main)
