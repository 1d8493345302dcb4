"""Arguments shared by every command that trains, and their handling."""

from __future__ import annotations

import argparse
from pathlib import Path

from metasparsity.config import Config, load_config
from metasparsity.utils.errors import UserError, require_path
from metasparsity.utils.limits import MAX_THREADS
from metasparsity.utils.rundir import CONFIG_FILE, Labelled, check_run_dir, config_inputs


def add_config_args(p: argparse.ArgumentParser, *, default_config: str | None = None) -> None:
    p.add_argument("--config", metavar="FILE", default=default_config,
                   help="YAML config (see configs/); defaults apply where it is silent")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides, e.g. train.max_steps=2 model.depth=18")


def add_run_args(p: argparse.ArgumentParser, *, default_config: str | None = None,
                 suffix: str = "") -> None:
    """``--config FILE --out RUN_DIR --resume RUN_DIR --overwrite key=value...``; the default
    run directory is ``runs/<name><suffix>``."""
    add_config_args(p, default_config=default_config)
    p.add_argument("--out", metavar="RUN_DIR", help=f"run directory (default runs/<name>{suffix})")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def threads(text: str) -> int:
    """``--threads N`` of ``prune`` and ``predict`` (and ``data prepare --workers N``): an integer
    in [1, :data:`MAX_THREADS`]."""
    v = positive_int(text)
    if v > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be <= {MAX_THREADS}, got {v}")
    return v


def check_run_options(args: argparse.Namespace) -> None:
    """``--out`` / ``--resume`` not empty, and not ``--resume`` with ``--overwrite``."""
    for opt in ("out", "resume"):
        require_path(getattr(args, opt, None), f"--{opt}")
    if getattr(args, "resume", None) and getattr(args, "overwrite", False):
        raise UserError("--overwrite and --resume both given: --resume continues the run, "
                        "--overwrite would start it again; give one")


def config_from_args(args: argparse.Namespace) -> Config:
    """Load the config, overrides applied.

    With ``--resume RUN_DIR`` it is the run's own ``config.yaml`` (the resolved config of its
    last invocation) with the new overrides on top, e.g. ``--resume DIR train.max_steps=2000``
    to train longer; the recipe then rewrites ``config.yaml`` with the result.
    """
    check_run_options(args)
    if getattr(args, "resume", None):
        if getattr(args, "config", None):
            raise UserError("--config and --resume both given: a resumed run uses its own "
                            f"{CONFIG_FILE}; change it with key=value overrides")
        check_run_dir(args.resume, resume=True, layout=command_layout(args))
        return load_config(Path(args.resume) / CONFIG_FILE, args.overrides)
    return load_config(args.config, args.overrides)


def run_dir_from_args(args: argparse.Namespace, cfg: Config) -> Path:
    """Validate and return the run directory (nothing is created here).

    ``args.out`` is set to it, so that an interrupted command can say where to resume.
    """
    if getattr(args, "resume", None):
        if args.out and Path(args.out) != Path(args.resume):
            raise UserError("--out and --resume name different directories; give only --resume")
        out = check_run_dir(args.resume, resume=True, inputs=command_inputs(args, cfg),
                            layout=command_layout(args))
    else:
        out = check_run_dir(Path(args.out) if args.out else Path("runs") / cfg.name,
                            overwrite=args.overwrite, inputs=command_inputs(args, cfg))
    args.out = str(out)
    return out


COMMAND_LAYOUTS = {"train": "training", "meta-train": "training", "finetune": "training",
                   "sweep-lambda": "sweep", "compare": "compare", "demo": "compare"}
"""The run directories each command continues (:data:`~metasparsity.utils.rundir.LAYOUTS`)."""


def command_layout(args: argparse.Namespace) -> str | None:
    """The layout of run directory the command of ``args`` writes and continues."""
    return COMMAND_LAYOUTS.get(getattr(args, "command", None) or "")


def command_inputs(args: argparse.Namespace, cfg: Config) -> list[Labelled]:
    """What a command reads: ``--config FILE`` and the paths of the config (``data.root``,
    ``data.cache_dir``, ``model.pretrained``); its outputs may not overlap them."""
    return [("--config", getattr(args, "config", None)), *config_inputs(cfg)]


def interrupt_message(args: argparse.Namespace, exc: BaseException) -> str:
    """``interrupted at step N; resume with: metasparsity CMD --resume DIR`` for Ctrl-C."""
    from metasparsity.utils.rundir import RunInterrupted, is_run_dir

    top = getattr(args, "resume", None) or getattr(args, "out", None)
    after = ""
    if isinstance(exc, RunInterrupted):
        top = top or str(exc.run_dir)
        of = f" of {exc.run_dir}" if Path(exc.run_dir) != Path(top) else ""
        if not exc.cut_short:
            where = f"at step {exc.step}{of}"
        else:  # a second Ctrl-C: the step under way is not saved
            where = f"mid-step{of}, at once"
            if exc.step is None and not of:  # a resume would refuse its logged steps
                return (f"interrupted {where}, before the first checkpoint; nothing to resume: "
                        f"run the command again with --overwrite")
            after = (f" (from step {exc.step}, the last checkpoint)" if exc.step is not None
                     else "")
    else:
        where = ""
    if not top or not is_run_dir(top):
        return "interrupted" + (f" {where}" if where else "")
    if not hasattr(args, "resume"):  # demo: the same command continues its folder
        return (f"interrupted{' ' + where if where else ''}; continue with the same command "
                f"(metasparsity {args.command} --out {top}): finished runs are reused")
    source = f" {args.source}" if getattr(args, "source", None) else ""
    return (f"interrupted{' ' + where if where else ''}; resume with: "
            f"metasparsity {args.command}{source} --resume {top}{after}")


def budget_line(b: dict) -> str:
    """One line on a budget-mode run's ``results.json`` entry ``budget``: its cost and target."""
    return (f"budget: {b['measure']} {100 * b['cost'][b['measure']]:.1f} % of dense "
            f"(target {100 * b['target']:g} %)")
