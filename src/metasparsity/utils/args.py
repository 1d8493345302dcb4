"""Comma-separated values given on the command line (``--tasks``, ``--grid``, ``--batch-sizes``),
split one way: an empty list, an empty entry (a typo, not a value to drop) and an entry given
twice are errors naming the option."""

from __future__ import annotations

from metasparsity.utils.errors import UserError


def split_list(text: str, key: str, what: str, example: str,
               error: type[Exception] = UserError) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``, or ``error`` naming ``key``: nothing given, an empty entry
    (and where), or an entry twice.  ``what`` names one entry (``"task name"``), ``example`` a
    valid value (``"normal,depth"``)."""
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise error(f"{key} is empty: give at least one {what}, e.g. {example}")
    if not all(parts):
        where = ("at the end" if not parts[-1] else "at the start" if not parts[0]
                 else f"after {next(p for p, q in zip(parts, parts[1:]) if p and not q)!r}")
        raise error(f"{key} {text!r} has an empty entry {where}; give comma-separated "
                    f"{what}s, e.g. {example}")
    twice = next((p for i, p in enumerate(parts) if p in parts[:i]), None)
    if twice is not None:
        raise error(f"{key}: {twice!r} appears more than once; give each {what} once")
    return parts
