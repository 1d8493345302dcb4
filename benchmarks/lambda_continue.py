"""Is the held-out gradient's trap in the objective or in its horizon?  Continue finished
held-out meta-trainings at several *fixed* λ on the same batches, and compare their held-out
loss over a horizon of many meta-steps.

``benchmarks/heldout_trap.py`` found that the runs whose λ collapsed from λ0 = 1e-4 end with a
higher λ-validation loss than the runs from ``auto``, while the implicit hypergradient at their
end states still says "lower λ" at every horizon up to 40 terms.  That is a local optimum of
what a gradient sees; whether it is one of the objective over a longer horizon is a different
question, and this answers it directly: each end state (θ, both Adam states, sampler and data
positions) is copied and meta-training goes on for ``--steps`` more meta-steps with λ held
(``meta.lambda_lr=0``) at each value of ``--lams`` (``own``: the run's final λ), so every
continuation of a seed draws the same task subsets and λ-validation batches.  The meta-steps
log λ's gradient at the held λ as they always do, so the local signal and the lasting effect
are measured on the same steps.  Only runs whose outer rate does not depend on ``meta.steps``
(``meta.lr_schedule: constant``) and that are not in budget mode (whose target ramp does) are
taken; with ``meta.final_zero_window`` the continuation's last step lands again, as the
source's did (it changes the final zero set, not the logged losses).

Writes ``<runs>/seed_<s>/heldout_<λ>/`` (an ordinary run folder; a finished one is reused);
``benchmarks/heldout_trap.py --runs <runs> --inits own,<λ>… --reference own --tail <steps>``
then pairs them.

    python benchmarks/lambda_continue.py --source runs/bench_lambda_window_avx512 --init 0.0001 \\
        --seeds 0 4 --lams own,0.0003,0.001,0.003 --steps 160 \\
        --runs runs/bench_lambda_continue_avx512 [--jobs 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import fixed_lambda_grid as flg  # noqa: E402


def continuation_config(source: Path, total: int):
    """The config a continuation of the run ``source`` to ``total`` meta-steps is made with."""
    from metasparsity.config.load import load_config

    return load_config(source / "config.yaml", [f"meta.steps={total}", "meta.lambda_lr=0",
                                                 "train.progress=false"])


def continue_at(source: str, dst: str, lam: float | None, extra: int) -> dict[str, Any]:
    """Continue the finished meta-training ``source`` for ``extra`` meta-steps at a fixed λ
    (None: its final λ) in ``dst``; returns ``dst``'s results.  Reused when ``dst`` is finished
    at the same total; the folder appears whole or not at all."""
    from lambda_window import with_lam
    from metasparsity.recipes.meta_train import MetaTrainer
    from metasparsity.utils.io import read_json

    src, out = Path(source), Path(dst)
    total = read_json(src / "results.json")["steps"] + extra
    if (out / "results.json").is_file() and read_json(out / "results.json")["steps"] == total:
        return read_json(out / "results.json")
    tmp = out.parent / f"{out.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("finetune_*", "*.png"))
    cfg = continuation_config(src, total)
    tr = MetaTrainer(cfg, tmp, resume=True)
    try:
        tr.setup()
        if lam is not None:
            with_lam(tr, lam)
        tr.train()
    finally:
        tr.cleanup()
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return read_json(out / "results.json")


def _unfit(run: Path, lams: list[float] = ()) -> str | None:
    """Why the run at ``run`` cannot be continued at the λ ``lams`` as this script does (None:
    it can)."""
    from metasparsity.config.load import load_config
    from metasparsity.utils.errors import UserError

    try:
        m = load_config(run / "config.yaml").meta
    except UserError as e:
        return f"config.yaml: {e}"
    if m.lr_schedule != "constant":
        return (f"meta.lr_schedule is {m.lr_schedule}: more meta-steps would change the outer "
                "rate of the source's steps")
    if m.target is not None:
        return "a budget-mode run (meta.target): more meta-steps would change its target ramp"
    if m.lambda_objective != "heldout":
        return f"meta.lambda_objective is {m.lambda_objective}, not heldout"
    out = [x for x in lams if not m.lambda_min <= x <= m.lambda_max]
    if out:
        return (f"--lams {', '.join(f'{x:g}' for x in out)} outside the run's "
                f"[meta.lambda_min, meta.lambda_max] = [{m.lambda_min:g}, {m.lambda_max:g}]")
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", type=Path, required=True,
                   help="a lambda_inits.py runs folder (seed_<s>/heldout_<λ0>/)")
    p.add_argument("--init", default="0.0001", help="the λ0 whose end states are continued")
    p.add_argument("--seeds", type=flg.INT, nargs="+", default=[0, 4])
    p.add_argument("--lams", default="own,0.0003,0.001,0.003",
                   help="the fixed λ of the continuations; own: each run's final λ")
    p.add_argument("--steps", type=int, default=160, help="meta-steps added")
    p.add_argument("--runs", type=Path, required=True)
    p.add_argument("--jobs", type=int, default=2, help=flg.JOBS_HELP)
    args = p.parse_args()
    lams: list[tuple[str, float | None]] = []
    for v in dict.fromkeys(v.strip() for v in args.lams.split(",") if v.strip()):
        if v == "own":
            lams.append((v, None))
            continue
        try:
            x = float(v)
        except ValueError:
            p.error(f"--lams: {v!r} is not a number or 'own'")
        if not 0 < x < float("inf"):
            p.error(f"--lams: {v} must be a finite number > 0")
        label = f"{x:g}"  # the folder's name: 1e-3 and 0.001 are one λ, one run
        if any(label == known for known, _ in lams):
            p.error(f"--lams: {label} is given twice ({args.lams})")
        lams.append((label, x))
    if not lams:
        p.error("--lams is empty")
    if args.steps < 1 or args.jobs < 1:
        p.error("--steps and --jobs must be ≥ 1")
    flg.check_jobs(p, args.jobs)
    runs, source = args.runs.resolve(), args.source.resolve()
    if runs == source or source in runs.parents or runs in source.parents:
        p.error("--runs must lie outside --source and not hold it (a continuation would write "
                "into its source, or replace it)")
    flg.check_folder(p, "--runs", args.runs)
    sources = {}
    for s in dict.fromkeys(args.seeds):
        d = args.source / f"seed_{s}" / f"heldout_{args.init}"
        if not (d / "results.json").is_file() or not (d / "checkpoints").is_dir():
            p.error(f"no finished held-out meta-training with checkpoints at {d}")
        why = _unfit(d, [x for _, x in lams if x is not None])
        if why:
            p.error(f"{d}: {why}")
        sources[s] = d
    jobs = {(s, label): (str(src), str(args.runs / f"seed_{s}" / f"heldout_{label}"), lam,
                         args.steps)
            for s, src in sources.items() for label, lam in lams}
    from metasparsity.recipes.reused import check_reused_settings
    from metasparsity.utils.io import read_json

    # a continuation is reused when it is finished at the same total (else it is made again):
    # then it must hold its source's settings, with the continuation's
    totals = {s: read_json(src / "results.json")["steps"] + args.steps
              for s, src in sources.items()}
    check_reused_settings({Path(dst): continuation_config(Path(src), totals[s])
                           for (s, _), (src, dst, _, _) in jobs.items()
                           if (Path(dst) / "results.json").is_file()
                           and read_json(Path(dst) / "results.json")["steps"] == totals[s]},
                          p.error)
    with flg.Pool(args.jobs) as pool:
        futs = {pool.submit(continue_at, *a): k for k, a in jobs.items()}
        for fut in cf.as_completed(futs):
            s, label = futs[fut]
            r = fut.result()
            lam = r.get("lambda_final")
            print(f"seed {s}, λ {label}: done ({r['steps']} meta-steps, final λ {lam})",
                  flush=True)


if __name__ == "__main__":
    flg.run_main(main)
