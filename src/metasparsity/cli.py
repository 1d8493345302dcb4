"""The ``metasparsity`` command.

Each sub-command lives in ``metasparsity/commands/<name>.py`` and defines
``register(subparsers)``; only modules listed in :data:`COMMAND_MODULES` appear in ``--help``,
so ``--help`` lists only commands that exist.  Any :class:`UserError` (bad config, missing
file, existing run directory…) is printed as one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from metasparsity import __version__
from metasparsity.utils.errors import UserError

COMMAND_MODULES = [
    "demo",
    "train",
    "evaluate",
    "sweep",
    "metatrain",
    "finetune",
    "compare",
    "prune",
    "predict",
    "data",
    "config",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metasparsity",
        description="Meta-sparsity: multi-task networks whose shared backbone becomes channel-sparse, "
        "with the sparsity strength λ learned by meta-learning.",
    )
    parser.add_argument("--version", action="version", version=f"metasparsity {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"metasparsity.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # ``finetune RUN --tasks t key=value``: argparse cannot match positionals split by an
    # option, so key=value words left over are taken as the command's overrides.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides or []) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        result = args.func(args)
    except UserError as e:
        print(f"metasparsity {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        from metasparsity.commands.common import interrupt_message

        print(f"metasparsity {args.command}: {interrupt_message(args, e)}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
