"""``metasparsity config``: print the fully resolved config, or every key with its type and range."""

from __future__ import annotations

import argparse
import sys

from metasparsity.commands.common import add_config_args, config_from_args
from metasparsity.utils.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="print the resolved config (or --keys: every key, type and range)")
    add_config_args(p)
    p.add_argument("--keys", action="store_true", help="list every key with type, default, range")
    p.add_argument("--markdown", action="store_true",
                   help="with --keys: as markdown tables, one per section (docs/configs.md)")
    p.set_defaults(func=run, resume=None)


def run(args: argparse.Namespace) -> int:
    if args.markdown and not args.keys:
        raise UserError("--markdown formats the list of --keys; give both")
    if args.keys and (args.config or args.overrides):
        given = " ".join(([f"--config {args.config}"] if args.config else []) + list(args.overrides))
        raise UserError(f"--keys lists the schema's keys and defaults, whatever the config: "
                        f"leave out {given}, or drop --keys to print the resolved config")
    if args.keys:
        from metasparsity.config import describe, describe_markdown

        if args.markdown:
            sys.stdout.write(describe_markdown())
        else:
            print(describe())
        return 0
    print(config_from_args(args).to_yaml(), end="")
    return 0
