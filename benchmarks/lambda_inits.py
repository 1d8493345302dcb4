"""How λ behaves when meta-training starts from initial values three orders of magnitude apart.

Runs ``meta-train`` once per λ0 (same config, data, seed and budget) and writes, into ``--out``:
``lambda_inits.json`` (λ and group sparsity per step for every run), ``lambda_inits.md`` (a
table: λ0, final λ, λ's geometric mean over the last quarter of training, share of steps whose
λ-gradient pushed λ up, final group / parameter sparsity, wall time) and ``lambda_inits.png``
(the trajectories on one plot).

    python benchmarks/lambda_inits.py --config configs/synthscenes_meta.yaml \
        --inits 1e-3,1e-2,1e-1 --out runs/lambda_inits [key=value ...]

Finished runs in ``--out`` are reused, an interrupted one is resumed.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import torch

from metasparsity.config import load_config
from metasparsity.report.tables import markdown_table
from metasparsity.train.metatrain import MetaTrainer
from metasparsity.utils.io import read_json, read_jsonl, write_json


def run_one(cfg, out: Path) -> dict:
    if (out / "results.json").is_file():
        return read_json(out / "results.json")
    resume = (out / "checkpoints" / "last").is_file()
    t0 = time.time()
    tr = MetaTrainer(cfg, out, resume=resume, overwrite=not resume)
    tr.setup()
    res = tr.train()
    res["wall_time_s"] = round(time.time() - t0, 1)
    write_json(out / "results.json", res)
    return res


def _lam(v) -> float:
    return float(sum(v) / len(v)) if isinstance(v, list) else float(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/synthscenes_meta.yaml")
    ap.add_argument("--inits", default="1e-3,1e-2,1e-1")
    ap.add_argument("--out", default="runs/lambda_inits")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    inits = [float(v) for v in args.inits.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, runs = [], []
    for lam0 in inits:
        cfg = load_config(args.config, [*args.overrides, f"meta.lambda_init={lam0}",
                                        "meta.lambda_min=1e-6", "meta.lambda_max=1.0"])
        res = run_one(cfg, out / f"lambda0_{lam0:g}")
        rec = [r for r in read_jsonl(out / f"lambda0_{lam0:g}" / "metrics.jsonl") if r.get("kind") == "meta"]
        lams = [_lam(r["lambda"]) for r in rec]
        tail = lams[-max(1, len(lams) // 4):]
        grads = [r["grad_lambda_implicit"] + r["grad_lambda_explicit"] for r in rec]
        up = sum(1 for g in grads if (sum(g) if isinstance(g, list) else g) < 0) / max(len(grads), 1)
        rows.append({"lambda_init": lam0, "lambda_final": _lam(res["lambda_final"]),
                     "lambda_tail_geomean": math.exp(sum(math.log(v) for v in tail) / len(tail)),
                     "share_steps_pushing_up": up,
                     "group_sparsity": res["sparsity"]["group_sparsity"],
                     "param_sparsity": res["sparsity"]["param_sparsity"],
                     "wall_time_s": res.get("wall_time_s", res.get("train_time_s"))})
        runs.append({"label": f"λ0 = {lam0:g}", "records": rec})
    machine = {"python": sys.version.split()[0], "torch": torch.__version__,
               "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    write_json(out / "lambda_inits.json", {"machine": machine, "config": args.config,
                                           "overrides": args.overrides, "rows": rows,
                                           "trajectories": [{"label": r["label"],
                                                             "lambda": [_lam(x["lambda"]) for x in r["records"]],
                                                             "group_sparsity": [x["group_sparsity"] for x in r["records"]]}
                                                            for r in runs]})
    table = markdown_table(
        ["λ0", "final λ", "λ (geo. mean, last 25 %)", "steps pushing λ up %", "group sparsity %",
         "param sparsity %", "wall time s"],
        [[f"{r['lambda_init']:g}", r["lambda_final"], r["lambda_tail_geomean"],
          100 * r["share_steps_pushing_up"], 100 * r["group_sparsity"], 100 * r["param_sparsity"],
          r["wall_time_s"]] for r in rows])
    (out / "lambda_inits.md").write_text(table + "\n")
    from metasparsity.report.plots import plot_meta_training

    plot_meta_training(runs, out / "lambda_inits.png", title="meta-sparsity from three λ0")
    print(table)
    print(f"\nwritten {out / 'lambda_inits.md'}, {out / 'lambda_inits.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
