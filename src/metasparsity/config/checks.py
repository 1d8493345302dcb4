"""Checking config values: each value coerced to its field's type and checked against its field's
rules as it is set (:func:`_apply`), then the checks that involve several keys (:func:`_validate`);
errors are one-line :class:`ConfigError` naming the key and what is allowed."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from typing import Any, Union

from metasparsity.config.schema import INT_MAX, Config
from metasparsity.utils.errors import ConfigError


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` on one line, shortened to about ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " …" + text[-3:]


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(key, value, a)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_show(value)}")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, str) and typing.get_origin(inner) is None and inner is str:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_show(value)}")
        return [_coerce(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {_show(value)}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {_show(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{key}: expected a number, got {_show(value)}")
        try:
            return float(value)
        except OverflowError:  # an integer beyond the float range
            raise ConfigError(f"{key}: {_show(value)} is out of range; it must be a finite number") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {_show(value)}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover


def _check_scalar(key: str, v: Any, meta: dict) -> None:
    """The checks of one value (a scalar field, or one element of a list field)."""
    if isinstance(v, list):  # an element of a list of lists (meta.subsets)
        if not v:
            raise ConfigError(f"{key}: must not be empty")
        for i, x in enumerate(v):
            _check_scalar(f"{key}[{i}]", x, meta)
        dup = _duplicates(v)
        if dup:
            raise ConfigError(f"{key}: {_show(dup[0])} appears more than once")
        return
    choices = meta.get("choices")
    if choices is not None and v not in choices:
        raise ConfigError(f"{key}: {_show(v)} is not allowed; choose one of {', '.join(map(str, choices))}")
    if isinstance(v, str):
        if not v.strip():
            raise ConfigError(f"{key}: must not be an empty string" + (
                " (use null to leave it unset)" if meta.get("nullable") else ""))
        if any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ConfigError(f"{key}: {_show(v)} holds a control character (newline, tab, NUL …)")
        pattern = meta.get("pattern")
        if pattern is not None and not re.fullmatch(pattern, v):
            raise ConfigError(f"{key}: {_show(v)} is not allowed; expected "
                              f"{meta.get('pattern_help') or 'a match of ' + pattern}")
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return
    if isinstance(v, float) and math.isnan(v):
        raise ConfigError(f"{key}: nan is not allowed; it must be a finite number")
    if isinstance(v, float) and math.isinf(v) and not meta.get("allow_inf"):
        raise ConfigError(f"{key}: {v!r} is not allowed; it must be a finite number")
    lo, hi = meta.get("min"), meta.get("max")
    if hi is None and isinstance(v, int):
        hi = INT_MAX
    if lo is not None and (v < lo or (meta.get("min_open") and v <= lo)):
        op = ">" if meta.get("min_open") else ">="
        raise ConfigError(f"{key}: {_show(v)} is out of range; it must be {op} {lo}")
    if hi is not None and v > hi:
        raise ConfigError(f"{key}: {_show(v)} is out of range; it must be <= {hi}")


def _duplicates(values: list) -> list:
    seen: list = []
    dup: list = []
    for v in values:
        k = tuple(sorted(v)) if isinstance(v, list) else v
        if k in seen and v not in dup:
            dup.append(v)
        seen.append(k)
    return dup


def _check_field(key: str, value: Any, meta: dict) -> None:
    """Check a coerced value against its field's metadata (see :func:`_f`); one-line errors."""
    if value is None:
        return
    if not isinstance(value, list):
        _check_scalar(key, value, meta)
        return
    if meta.get("nonempty") and not value:
        raise ConfigError(f"{key}: must not be an empty list")
    for i, v in enumerate(value):
        _check_scalar(f"{key}[{i}]", v, meta)
    if meta.get("unique"):
        dup = _duplicates(value)
        if dup:
            raise ConfigError(f"{key}: {_show(dup[0])} appears more than once; give each value once")


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _apply(obj: Any, data: dict, prefix: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = _hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in fields:
            close = difflib.get_close_matches(str(k), list(fields), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(
                f"unknown key {key!r}{hint}; allowed keys{' in ' + prefix.rstrip('.') if prefix else ''}: "
                f"{', '.join(fields)}")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            _apply(getattr(obj, k), v, f"{key}.")
            continue
        value = _coerce(key, v, tp)
        _check_field(key, value, {**fields[k].metadata, "nullable": type(None) in typing.get_args(tp)})
        setattr(obj, k, value)


def _validate(cfg: Config) -> None:
    """Cross-field checks (the per-field ones run as values are set)."""
    d = cfg.data
    for name in ("seen_tasks", "unseen_tasks"):
        extra = [t for t in getattr(d, name) if t not in d.tasks]
        if extra:
            raise ConfigError(f"data.{name}: {extra} not in data.tasks; allowed: {', '.join(d.tasks)}")
    both = set(d.seen_tasks) & set(d.unseen_tasks)
    if both:
        raise ConfigError(f"data.seen_tasks and data.unseen_tasks overlap: {sorted(both)}")
    if len(set(d.tasks)) != len(d.tasks):
        raise ConfigError(f"data.tasks has duplicates: {d.tasks}")
    if cfg.train.tasks is not None:
        if not cfg.train.tasks:
            raise ConfigError("train.tasks: must name at least one task (or be null for data.seen_tasks)")
        extra = [t for t in cfg.train.tasks if t not in d.tasks]
        if extra:
            raise ConfigError(f"train.tasks: {extra} not in data.tasks; allowed: {', '.join(d.tasks)}")
    if not d.seen_tasks:
        raise ConfigError("data.seen_tasks: must name at least one task")
    m = cfg.meta
    if m.lambda_min >= m.lambda_max:
        raise ConfigError(f"meta.lambda_min ({m.lambda_min}) must be < meta.lambda_max ({m.lambda_max})")
    numeric_init = not isinstance(m.lambda_init, str)
    if numeric_init and m.lambda_init > 0 and not (m.lambda_min <= m.lambda_init <= m.lambda_max):
        raise ConfigError(
            f"meta.lambda_init: {m.lambda_init} outside [meta.lambda_min, meta.lambda_max] = "
            f"[{m.lambda_min}, {m.lambda_max}]")
    if m.meta_grad == "first_order" and m.learn_lambda and (not numeric_init or m.lambda_init > 0):
        raise ConfigError(
            "meta.meta_grad: 'first_order' gives λ no gradient at all, so it cannot be learned; "
            "use second_order or lambda_path, or set meta.learn_lambda=false")
    if m.lambda_through_prox:
        why = None
        if m.lambda_objective != "heldout":
            why = "its L_val is the λ-validation loss; set meta.lambda_objective=heldout"
        elif not m.learn_lambda or (numeric_init and m.lambda_init == 0):
            why = "λ is not learned (meta.learn_lambda=false or meta.lambda_init=0)"
        elif m.target is not None and m.lambda_scope == "global":
            why = ("in budget mode a global λ is the multiplier alone, moved by dual ascent; use "
                   "meta.lambda_scope=layer")
        if why:
            raise ConfigError(f"meta.lambda_through_prox: {why}")
    if m.lambda_hold > 0 and (not m.learn_lambda or (numeric_init and m.lambda_init == 0)
                              or (m.target is not None and m.lambda_scope == "global")):
        raise ConfigError("meta.lambda_hold: λ is not learned by its meta-gradient here "
                          "(meta.learn_lambda=false, meta.lambda_init=0, or budget mode with a "
                          "global λ, which dual ascent moves); set meta.lambda_hold=0")
    if m.target is not None and numeric_init and m.lambda_init == 0:
        raise ConfigError("meta.target: budget mode needs sparsity, but meta.lambda_init=0 turns "
                          "it off; give meta.lambda_init auto or a number > 0")
    if m.min_subset_size > len(d.seen_tasks):
        raise ConfigError(
            f"meta.min_subset_size: {m.min_subset_size} exceeds the {len(d.seen_tasks)} seen tasks")
    if m.subsets is not None:
        for i, s in enumerate(m.subsets):
            bad = [t for t in s if t not in d.seen_tasks]
            if not s or bad:
                raise ConfigError(
                    f"meta.subsets[{i}]: {s} must be a non-empty list of seen tasks "
                    f"({', '.join(d.seen_tasks)})")
    if cfg.model.width * 64 < 1:
        raise ConfigError(f"model.width: {cfg.model.width} leaves no channels (need width*64 >= 1)")
    mo = cfg.model
    if mo.dense_head == "aspp" and len(mo.aspp_rates) != 3:
        raise ConfigError(f"model.aspp_rates: the aspp head takes exactly three atrous rates, got "
                          f"{mo.aspp_rates}")
    if d.image_size <= mo.output_stride:
        raise ConfigError(
            f"data.image_size: {d.image_size} px at model.output_stride={mo.output_stride} leaves a "
            f"1x1 feature map (BatchNorm needs more than one value per channel); use "
            f"data.image_size > {mo.output_stride} or a smaller model.output_stride")
    c = cfg.compare
    if "fixed_lambda" in c.methods and not c.lambda_grid:
        raise ConfigError("compare.lambda_grid: the λ grid is empty but compare.methods has "
                          "fixed_lambda; give at least one λ > 0")
