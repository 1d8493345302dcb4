"""Atomic file writes and small JSON helpers.

Every file the project writes goes through a temporary file in the same directory followed by
``os.replace``, so a process killed mid-write leaves the previous version intact.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then atomically rename ``tmp_path`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # e.g. /proc: name the file asked for, not the temporary one
        if e.errno is None:
            raise
        raise _named(e, path) from e
    os.close(fd)
    try:
        _chmod_as_umask(tmp)
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno is not None and e.filename in (None, tmp):
            raise _named(e, path) from e  # e.g. a full disk: name the file (one-line message)
        raise
    return path


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (os.umask can only
    set it, which another thread's file could catch at 0)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _chmod_as_umask(path: str | os.PathLike) -> None:
    """Give ``path`` the mode a plain ``open`` would (0666 less the umask): mkstemp and
    safetensors make files 0600, which hides results from others on a shared machine."""
    try:
        os.chmod(path, 0o666 & ~_umask())
    except OSError:  # a file system without modes (e.g. vfat)
        pass


def save_safetensors(tensors: dict, path: str | os.PathLike) -> None:
    """``safetensors.torch.save_file``, whose write errors (a full disk, a file size limit)
    come as ``SafetensorError``: raised here as the :class:`OSError` they are, naming ``path``,
    so that they read as one line like any other failed write."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    try:
        save_file(tensors, os.fspath(path))
    except SafetensorError as e:
        # "... I/O error: File too large (os error 27)" or "IoError(Os { code: 28, ... })"
        found = re.search(r"(?:os error|code:) (\d+)", str(e))
        if found is None:
            raise
        code = int(found.group(1))
        raise OSError(code, os.strerror(code), os.fspath(path)) from e
    _chmod_as_umask(path)


def _named(e: OSError, path: str | os.PathLike) -> OSError:
    """``e`` (an error of a write, which names no file) naming ``path``; same errno and class."""
    return OSError(e.errno, e.strerror or os.strerror(e.errno), os.fspath(path))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if hasattr(obj, "tolist"):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else (1e308 if obj > 0 else -1e308)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def to_jsonable(obj: Any) -> Any:
    """Convert tensors / numpy scalars / paths into plain JSON types (NaN -> null)."""
    return _jsonable(obj)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class JsonlWriter:
    """Append-only ``metrics.jsonl`` logger: one JSON object per line, flushed every write."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._f = open(self.path, "a", encoding="utf-8") if enabled else None

    def write(self, record: dict) -> None:
        if self._f is not None:
            try:
                self._f.write(json.dumps(_jsonable(record)) + "\n")
                self._f.flush()
            except OSError as e:
                if e.filename is None and e.errno is not None:
                    raise _named(e, self.path) from e
                raise

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a JSON-lines file; a last line cut short by a killed process is skipped."""
    out = []
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    lines = [line for line in lines if line]
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise
    return out


def truncate_jsonl(path: str | os.PathLike, max_step: int) -> int:
    """Drop the records with ``step > max_step`` (atomically); return how many were dropped.

    A resumed run calls this so that what was logged after its checkpoint is not logged twice;
    a damaged record (other than a last line cut short) is a one-line UserError naming the file.
    """
    from metasparsity.utils.errors import UserError

    p = Path(path)
    if not p.is_file():
        return 0
    records = load_jsonl(p, what="run log")
    for r in records:
        step = r.get("step", 0)
        if isinstance(step, bool) or not isinstance(step, int):
            raise UserError(f"run log {p}: a record's step is {json.dumps(step)[:40]}, not a "
                            "whole number")
    keep = [r for r in records if r.get("step", 0) <= max_step]
    if len(keep) != len(records) or p.read_bytes()[-1:] not in (b"", b"\n"):
        atomic_write_text(p, "".join(json.dumps(r) + "\n" for r in keep))
    return len(records) - len(keep)


# ----------------------------------------------------------------------------- checked reading

def _json_type_name(schema: Any) -> str:
    if isinstance(schema, dict):
        return "an object"
    if isinstance(schema, list):
        return f"a list of {_json_type_name(schema[0])}" if schema else "a list"
    if isinstance(schema, tuple):
        return " or ".join(_json_type_name(t) for t in schema)
    names = {dict: "an object", list: "a list", str: "a string", int: "an integer",
             float: "a number", bool: "true/false", type(None): "null", object: "any value"}
    return names.get(schema, getattr(schema, "__name__", str(schema)))


def _json_found(obj: Any) -> str:
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "true/false"
    if isinstance(obj, dict):
        return "an object"
    if isinstance(obj, list):
        return "a list"
    if isinstance(obj, str):
        return f"the string {obj[:40]!r}"
    return f"{type(obj).__name__} {obj!r}"[:60]


def check_json_shape(obj: Any, schema: Any, where: str = "top level") -> str | None:
    """The first place where ``obj`` (parsed JSON) does not have the shape ``schema``, or None.

    A schema is a type (``int`` never matches true/false; ``float`` also takes integers;
    ``object`` takes anything), a list ``[item_schema]`` (every element checked), a dict
    ``{key: schema}`` whose keys are required unless they end with ``?`` (other keys of the
    object are allowed), or a tuple of schemas, any of which may match.  The answer reads e.g.
    ``"meta.json"["classes"]: expected an integer``.
    """
    if isinstance(schema, tuple) and any(isinstance(s, (list, dict)) for s in schema):
        problems = [check_json_shape(obj, s, where) for s in schema]
        if all(problems):  # the one of a schema of the same kind as obj says most
            same = [pr for s, pr in zip(schema, problems)
                    if isinstance(s, list) == isinstance(obj, list)
                    and isinstance(s, dict) == isinstance(obj, dict)]
            return same[0] if len(same) == 1 else (
                f"{where}: expected {_json_type_name(schema)}, got {_json_found(obj)}")
        return None
    if isinstance(schema, dict):
        if not isinstance(obj, dict):
            return f"{where}: expected an object, got {_json_found(obj)}"
        for key, sub in schema.items():
            optional = key.endswith("?")
            name = key[:-1] if optional else key
            if name not in obj:
                if optional:
                    continue
                return f"{where}: the key {name!r} is missing"
            problem = check_json_shape(obj[name], sub, f"{where}[{name!r}]")
            if problem:
                return problem
        return None
    if isinstance(schema, list):
        if not isinstance(obj, list):
            return f"{where}: expected {_json_type_name(schema)}, got {_json_found(obj)}"
        if schema:
            for i, item in enumerate(obj):
                problem = check_json_shape(item, schema[0], f"{where}[{i}]")
                if problem:
                    return problem
        return None
    types = schema if isinstance(schema, tuple) else (schema,)
    if object in types:
        return None
    ok = False
    for t in types:
        if t is float:
            ok = isinstance(obj, (int, float)) and not isinstance(obj, bool)
        elif t is int:
            ok = isinstance(obj, int) and not isinstance(obj, bool)
        elif t is type(None):
            ok = obj is None
        else:
            ok = isinstance(obj, t)
        if ok:
            break
    if not ok:
        return f"{where}: expected {_json_type_name(schema)}, got {_json_found(obj)}"
    return None


def read_text_file(path: str | os.PathLike, what: str, error: type[Exception] | None = None) -> str:
    """The UTF-8 text of ``path``; a missing, unreadable or binary file is a one-line ``error``
    (default :class:`~metasparsity.utils.errors.UserError`) naming ``what`` and the path."""
    from metasparsity.utils.errors import UserError

    error = error or UserError
    p = Path(path)
    if p.is_dir():
        raise error(f"{what} {p} is a directory, not a file")
    if not p.is_file():
        raise error(f"missing {what}: {p}")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{what} {p} is not a UTF-8 text file") from None
    except OSError as e:
        raise error(f"cannot read {what} {p}: {e.strerror or e}") from None


def load_json(path: str | os.PathLike, schema: Any = object, *, what: str = "JSON file") -> Any:
    """Read a JSON file and check its shape (:func:`check_json_shape`); a missing, unreadable,
    invalid or wrongly shaped file is a one-line :class:`~metasparsity.utils.errors.UserError`
    naming ``what`` and the path, e.g. ``results file runs/x/results.json is malformed: …``."""
    from metasparsity.utils.errors import UserError

    p = Path(path)
    text = read_text_file(p, what)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{what} {p} is not valid JSON (line {e.lineno}, column {e.colno}: "
                        f"{e.msg})") from None
    except (ValueError, RecursionError) as e:
        raise UserError(f"{what} {p} is not valid JSON ({type(e).__name__})") from None
    problem = check_json_shape(obj, schema, p.name)
    if problem:
        raise UserError(f"{what} {p} is malformed: {problem}")
    return obj


def load_jsonl(path: str | os.PathLike, *, what: str = "JSON-lines file") -> list[dict]:
    """:func:`read_jsonl` with one-line UserErrors: a damaged line other than a last one cut short
    by a killed process, or a line that is not a JSON object, names the file and the line."""
    from metasparsity.utils.errors import UserError

    p = Path(path)
    text = read_text_file(p, what)
    numbered = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    out = []
    for k, (n, line) in enumerate(numbered):
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            if k == len(numbered) - 1:
                break
            raise UserError(f"{what} {p}, line {n}: not valid JSON") from None
        if not isinstance(rec, dict):
            raise UserError(f"{what} {p}, line {n}: expected a JSON object, got {_json_found(rec)}")
        out.append(rec)
    return out
