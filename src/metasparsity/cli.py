"""The ``metasparsity`` command.

Each sub-command lives in ``metasparsity/commands/<name>.py`` and defines
``register(subparsers)``; only modules listed in :data:`COMMAND_MODULES` appear in ``--help``,
so ``--help`` lists only commands that exist.  Any :class:`UserError` (bad config, missing
file, existing run directory…) is printed as one line and exits with code 2, and so is an error
of the operating system (no permission, a read-only or full disk, a path under a file), naming
the path: ``metasparsity CMD: error: No space left on device: runs/x/metrics.jsonl``.  Ctrl-C
exits with code 130 and one line (training first finishes its step; a second Ctrl-C during
that step stops it at once, unsaved); a Ctrl-C while the first one's cleanup runs (saving the
checkpoint, leaving the interpreter) still ends in 130 and one line, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from collections.abc import Sequence

from metasparsity import __version__
from metasparsity.utils.errors import UserError, os_error_message, user_message

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


_received: list[int] = []  # the signal that interrupted the program (SIGINT or SIGTERM)


def _ignore_further_interrupts() -> dict[int, object]:
    """Ignore Ctrl-C (and SIGTERM, where the program handles it) from now on; return the
    handlers to restore (empty: nothing changed).

    After the first interrupt has been handled, what is left is cleanup: printing the message,
    ``atexit`` callbacks and the interpreter's shutdown (which resets Python-level handlers to
    the default action, so a handler could not catch a Ctrl-C there; an ignored signal stays
    ignored).  A second Ctrl-C must not turn that into a traceback or a death by signal.
    """
    old: dict[int, object] = {}
    if threading.current_thread() is not threading.main_thread():
        return old
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            handler = signal.getsignal(sig)
            if callable(handler):  # not SIG_IGN, nor SIGTERM's default (the program's own)
                signal.signal(sig, signal.SIG_IGN)
                old[sig] = handler
        except (ValueError, OSError):
            pass
    return old


def _interrupt_once(signum, frame) -> None:
    """SIGINT and SIGTERM handler of the program: the first one raises
    :class:`KeyboardInterrupt` as Python's own SIGINT handler does; every later one is ignored,
    so that the checkpoint the first one asked for is saved whole and the exit is 130 (143
    for SIGTERM) with one line."""
    _ignore_further_interrupts()
    _received.append(signum)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Called without ``argv`` (the ``metasparsity`` program, ``python -m metasparsity``), the first
    Ctrl-C or SIGTERM interrupts the command (exit code 130, or 143 for SIGTERM; training
    finishes its current step, then saves a checkpoint, unless a second one comes during the
    step, which stops it at once) and every later one is ignored until the process has
    exited, so that one during the cleanup neither cuts the checkpoint short nor ends in a
    traceback.  Called with ``argv``
    (from Python), SIGINT handling is left as it is, except while the message is printed.
    """
    program = argv is None
    if program and threading.current_thread() is threading.main_thread():
        # SIGTERM (``kill``, a batch scheduler's notice before it kills a job) as Ctrl-C
        for sig, default in ((signal.SIGINT, signal.default_int_handler),
                             (signal.SIGTERM, signal.SIG_DFL)):
            try:
                if signal.getsignal(sig) is default:
                    signal.signal(sig, _interrupt_once)
            except (ValueError, OSError):
                pass
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
        message = user_message(e)
        if hasattr(e, "message_for"):  # a diverged (sub-)run: point at this command's resume
            message = e.message_for(args.command, getattr(args, "resume", None)
                                    or getattr(args, "out", None))
        print(f"metasparsity {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        old = _ignore_further_interrupts()  # first: a second Ctrl-C must not cut this short
        try:
            from metasparsity.commands.common import interrupt_message

            print(f"metasparsity {args.command}: {interrupt_message(args, e)}", file=sys.stderr)
        finally:
            if not program:
                for sig, handler in old.items():
                    signal.signal(sig, handler)
        return 128 + (_received[0] if program and _received else signal.SIGINT)
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # permission, read-only or full disk, a path under a file, ...
        print(f"metasparsity {args.command}: error: {os_error_message(e)}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
