"""Cost of the group prox in Adam's metric against a plain training step (README, "The method").

Model: the SynthScenes CPU preset (``configs/synthscenes.yaml``: ResNet-18 width 0.25, output
stride 8, ASPP heads, 32 channels) with its 5 seen tasks, in float32, batch ``--batch-size``.
Variants, each on its own copy of the same initial model, the same batch every step:

* ``adam``: forward, equal-weight loss, backward, ``torch.optim.Adam.step`` (the dense step);
* ``prox euclidean``: the same with ``ProxAdam(prox_metric="euclidean")`` at ``--lam-euclidean``
  (block soft-threshold after Adam, the first version);
* ``prox adam``: the same with ``ProxAdam(prox_metric="adam")`` at ``--lam`` (the metric prox:
  Newton on the scalar equation of every kept group).

Each variant first takes ``--warmup`` steps (so that Adam's moments and the zero groups are those
of a running optimiser, not of step 1), then the variants run in turn, one step each,
``--repeats`` times, the order rotating every round so that load from other processes falls on
all alike.  The table gives the median wall-clock time and the median process CPU time per step
(CPU time does not count waiting for a core), and their ratio to ``adam``.  Those ratios
compare three models whose states drifted apart during warm-up and carry the machine's noise
between steps; "prox alone" is steadier: on one state (one backward), the optimiser step with λ
and, restored, without it, ``--repeats`` times; the median difference is the prox's own time,
given also as a share of the median plain (``adam``) training step.

    python benchmarks/prox_cost.py [--batch-size 32] [--repeats 21] [--threads 1 2]

Writes ``benchmarks/results/prox_cost.json`` and ``.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import default_collate

from metasparsity.builders import build_model
from metasparsity.config import load_config
from metasparsity.data import build_dataset, resolve_tasks
from metasparsity.sparsity import ProxAdam, channel_groups, prox_param_groups, sparsity_stats
from metasparsity.training.weighting import task_losses
from metasparsity.utils.io import atomic_write_text, write_json

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "synthscenes.yaml"
OUT = Path(__file__).resolve().parent / "results"


def _variants(model, lam: float, lam_euclid: float, lr: float):
    out = {}
    for name, metric, lam_v in (("adam", None, None), ("prox euclidean", "euclidean", lam_euclid),
                                ("prox adam", "adam", lam)):
        m = copy.deepcopy(model)
        if metric is None:
            opt = torch.optim.Adam(m.parameters(), lr=lr)
        else:
            opt = ProxAdam(prox_param_groups(m, channel_groups(m)), lr=lr, prox_metric=metric)
        out[name] = (m, opt, lam_v)
    return out


def _step(model, opt, lam, tasks, x, y) -> None:
    out = model(x, tasks=list(tasks))
    loss = sum(task_losses(tasks, out, y).values())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if lam is None:
        opt.step()
    else:
        opt.step(lam=lam)


def run(threads: int, args) -> dict:
    torch.set_num_threads(threads)
    cfg = load_config(CONFIG, [f"data.train_size={args.batch_size}"])
    names = cfg.data.seen_tasks
    tasks = resolve_tasks(cfg, names)
    torch.manual_seed(0)
    model = build_model(cfg, names)
    ds = build_dataset(cfg, "train")
    x, y = default_collate([ds[i] for i in range(args.batch_size)])
    variants = _variants(model, args.lam, args.lam_euclidean, args.lr)
    for m, opt, lam in variants.values():
        for _ in range(args.warmup):
            _step(m, opt, lam, tasks, x, y)
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    order = list(variants)
    for r in range(args.repeats):
        for k in order[r % len(order):] + order[:r % len(order)]:
            m, opt, lam = variants[k]
            t0, c0 = time.perf_counter(), time.process_time()
            _step(m, opt, lam, tasks, x, y)
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    base_w, base_c = statistics.median(wall["adam"]), statistics.median(cpu["adam"])
    sparsity = {k: sparsity_stats(m).group_sparsity for k, (m, _, _) in variants.items()}
    prox_only = _prox_only(variants, tasks, x, y, args.repeats)
    rows = []
    for k, (_, _, lam) in variants.items():
        w, c = statistics.median(wall[k]), statistics.median(cpu[k])
        rows.append({"variant": k, "threads": threads, "lam": lam, "wall_s": w, "cpu_s": c,
                     "wall_ratio": w / base_w, "cpu_ratio": c / base_c,
                     "group_sparsity": sparsity[k]})
    for row in rows:
        if row["variant"] in prox_only:
            ms = prox_only[row["variant"]]
            row["prox_ms"] = ms
            row["prox_share"] = ms / 1e3 / base_w  # of a plain training step
    return {"threads": threads, "rows": rows}


def _prox_only(variants, tasks, x, y, repeats: int) -> dict[str, float]:
    """Median time of the prox alone (ms), on identical states: one backward, then the same
    optimiser state stepped with λ and, restored, without it; the difference is the prox."""
    out = {}
    for k, (m, opt, lam) in variants.items():
        if lam is None:
            continue
        out_ = m(x, tasks=list(tasks))
        opt.zero_grad(set_to_none=True)
        sum(task_losses(tasks, out_, y).values()).backward()
        params0 = copy.deepcopy(m.state_dict())
        state0 = copy.deepcopy(opt.state_dict())
        diffs = []
        for _ in range(repeats):
            times = []
            for lam_k in (lam, None):
                m.load_state_dict(params0)
                opt.load_state_dict(state0)
                t0 = time.perf_counter()
                opt.step(lam=lam_k)
                times.append(time.perf_counter() - t0)
            diffs.append(times[0] - times[1])
        out[k] = 1e3 * statistics.median(diffs)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--lam", type=float, default=1e-3)
    p.add_argument("--lam-euclidean", type=float, default=0.3)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    from fixed_lambda_grid import check_args

    check_args(p, args)  # --out a folder, --name a file stem, --jobs, --seeds
    from metasparsity.utils.limits import MAX_THREADS

    for t in args.threads:
        if not 1 <= t <= MAX_THREADS:
            p.error(f"--threads must be between 1 and {MAX_THREADS}, got {t}")
    for opt, v, lo in (("--batch-size", args.batch_size, 1), ("--repeats", args.repeats, 1),
                       ("--warmup", args.warmup, 0)):
        if v < lo:
            p.error(f"{opt} must be >= {lo}, got {v}")
    for opt, v in (("--lr", args.lr), ("--lam", args.lam), ("--lam-euclidean", args.lam_euclidean)):
        if not 0 < v < math.inf:
            p.error(f"{opt} must be a finite number > 0, got {v}")
    for f in (args.out / "prox_cost.json", args.out / "prox_cost.md"):
        if f.exists() and not f.is_file():
            p.error(f"--out: {f} exists and is not a file")
    runs = [run(t, args) for t in args.threads]
    from metasparsity.utils.provenance import machine_text

    machine = machine_text()
    lines = [f"Prox cost per training step (`python benchmarks/prox_cost.py`), {machine}, "
             f"batch {args.batch_size}, median of {args.repeats}.", "",
             "| variant | threads | λ | wall ms | CPU ms | wall / adam | CPU / adam | group sparsity | prox alone ms | prox / adam step |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        for row in r["rows"]:
            lam = "—" if row["lam"] is None else f"{row['lam']:g}"
            lines.append(f"| {row['variant']} | {row['threads']} | {lam} | {1e3 * row['wall_s']:.1f} | "
                         f"{1e3 * row['cpu_s']:.1f} | {row['wall_ratio']:.3f} | {row['cpu_ratio']:.3f} | "
                         f"{100 * row['group_sparsity']:.1f} % | "
                         + (f"{row['prox_ms']:.2f} | {100 * row['prox_share']:.1f} % |"
                            if "prox_ms" in row else "— | — |"))
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "prox_cost.json", {"machine": machine, "args": {
        k: v for k, v in vars(args).items() if k != "out"}, "runs": runs})
    atomic_write_text(args.out / "prox_cost.md", table)
    print(table)


if __name__ == "__main__":
    main()
