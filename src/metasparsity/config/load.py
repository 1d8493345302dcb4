"""Reading a config: YAML files, dotted ``key=value`` overrides, ``--grid`` lists; and the table of
every key (``metasparsity config --help``)."""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any

import yaml

from metasparsity.config.checks import _apply, _check_field, _hints, _show, _type_name, _validate
from metasparsity.config.schema import CompareConfig, Config
from metasparsity.utils.args import split_list
from metasparsity.utils.errors import ConfigError, require_path
from metasparsity.utils.io import read_text_file


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (YAML
    itself keeps the last one silently: a config with ``target`` twice would run the second)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict = {}  # key -> how the file wrote it
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *anchor``: keys it brings may be overridden
            continue
        key = loader.construct_object(key_node, deep=True)
        written = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: the safe loader reports it
            break
        if first is not None:
            # ``1`` and ``true`` are one key once read (1 == True): the mapping would keep one
            what = (f"the key {key!r} is given twice" if first == written else
                    f"the keys {first!r} and {written!r} are the same key once read")
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, what, key_node.start_mark)
        seen[key] = written
    return loader.construct_mapping(node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=[1, 2]"`` -> (["a", "b"], [1, 2]); values are parsed as YAML scalars/lists."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except (yaml.YAMLError, RecursionError):
        value = raw
    return key.split("."), value


def _nest(parts: list[str], value: Any) -> dict:
    out: Any = value
    for p in reversed(parts):
        out = {p: out}
    return out


def config_from_dict(data: dict | None, overrides: typing.Sequence[str] | None = ()) -> Config:
    overrides = check_overrides(overrides)
    cfg = Config()
    _apply(cfg, data or {}, "")
    for text in overrides:
        parts, value = parse_override(text)
        _apply(cfg, _nest(parts, value), "")
    _validate(cfg)
    return cfg


def check_overrides(overrides: typing.Sequence[str] | None) -> list[str]:
    """``overrides`` as a list of strings (None: none); a single string, which would be read
    letter by letter, or anything else is a ConfigError saying what is expected."""
    if overrides is None:
        return []
    if isinstance(overrides, str) or not isinstance(overrides, typing.Iterable):
        hint = f": wrap it in a list, [{overrides!r}]" if isinstance(overrides, str) else ""
        raise ConfigError(f"overrides must be a list of 'section.key=value' strings, got "
                          f"{type(overrides).__name__} {_show(overrides)}{hint}")
    overrides = list(overrides)
    bad = [o for o in overrides if not isinstance(o, str)]
    if bad:
        raise ConfigError(f"overrides must be 'section.key=value' strings, got {_show(bad[0])} "
                          f"({type(bad[0]).__name__})")
    return overrides


def yaml_error_line(e: yaml.YAMLError) -> str:
    """A YAML error in one line: ``YAML syntax error at line L, column C: problem``."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or getattr(e, "context", None) or str(e)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"YAML syntax error{where}: {' '.join(str(problem).split())}"


def load_config(path: str | os.PathLike | None = None,
                overrides: typing.Sequence[str] | None = ()) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides
    (a list of strings)."""
    overrides = check_overrides(overrides)
    data: dict = {}
    if path is not None:
        p = Path(path)
        require_path(path, "--config", ConfigError)
        text = read_text_file(p, "config file", ConfigError)
        try:
            data = yaml.load(text, Loader=_UniqueKeyLoader) or {}  # noqa: S506 (a safe loader)
        except yaml.YAMLError as e:
            raise ConfigError(f"config {p}: {yaml_error_line(e)}") from None
        except RecursionError:
            raise ConfigError(f"config {p}: nested too deeply to be a config") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config {p}: expected a mapping at the top level")
    return config_from_dict(data, overrides)


def parse_lambda_grid(text: str, key: str = "--grid") -> list[float]:
    """``"1e-4,1e-3"`` -> ``[1e-4, 1e-3]``, checked as ``compare.lambda_grid`` is (each λ finite and
    > 0, no duplicate, at least one); errors are one-line ConfigErrors naming ``key``."""
    parts = split_list(text, key, "positive number", "1e-4,1e-3", error=ConfigError)
    vals = []
    for v in parts:
        try:
            vals.append(float(v))
        except ValueError:
            raise ConfigError(f"{key}: {_show(v)} is not a number; give comma-separated positive "
                              f"numbers, e.g. 1e-4,1e-3") from None
    meta = next(f.metadata for f in dataclasses.fields(CompareConfig) if f.name == "lambda_grid")
    try:
        _check_field(key, vals, meta)
    except ConfigError as e:
        raise ConfigError(f"{e} (λ values must be finite and positive)") from None
    return vals


def _allowed(meta) -> str:
    """What a field's checks allow, in words (``""``: any value of its type)."""
    extra = []
    if meta.get("choices"):
        extra.append("one of " + "/".join(map(str, meta["choices"])))
    if meta.get("min") is not None:
        extra.append((">" if meta.get("min_open") else ">=") + f" {meta['min']}")
    if meta.get("max") is not None:
        extra.append(f"<= {meta['max']}")
    if meta.get("pattern_help"):
        extra.append(meta["pattern_help"])
    if meta.get("nonempty"):
        extra.append("non-empty")
    if meta.get("unique"):
        extra.append("no duplicates")
    return "; ".join(extra)


def key_rows() -> list[tuple[str, str, Any, str, str]]:
    """Every config key as ``(key, type, default value, allowed, help)``, in the schema's order;
    a top-level key (``name``) has no dot."""
    rows = []
    cfg = Config()
    top = _hints(Config)
    for sec in dataclasses.fields(cfg):
        obj = getattr(cfg, sec.name)
        if not dataclasses.is_dataclass(obj):
            rows.append((sec.name, _type_name(top[sec.name]), obj, _allowed(sec.metadata),
                         sec.metadata.get("help", "")))
            continue
        hints = _hints(type(obj))
        for f in dataclasses.fields(obj):
            rows.append((f"{sec.name}.{f.name}", _type_name(hints[f.name]), getattr(obj, f.name),
                         _allowed(f.metadata), f.metadata.get("help", "")))
    return rows


def describe() -> str:
    """Every key with its type, default and allowed values (``metasparsity config --keys``)."""
    lines = []
    for key, typ, default, allowed, text in key_rows():
        if "." not in key:  # a top-level key: its value and what it is
            lines.append(f"{key}: {default!r}  {text}")
            continue
        lines.append(f"{key} ({typ}) = {default!r}" + (f"  [{allowed}]" if allowed else "")
                     + (f"  {text}" if text else ""))
    return "\n".join(lines)


def describe_markdown() -> str:
    """``docs/configs.md``: every key as a table row, one table per section
    (``metasparsity config --keys --markdown``)."""

    def cell(text: str) -> str:  # a table cell of prose: no column break, no HTML tag
        return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")

    def code(value: Any) -> str:  # a default as YAML in a code span, shown literally
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
        return "`" + text.strip().removesuffix("\n...").strip().replace("|", "\\|") + "`"

    lines = ["# Config keys", "",
             "Every key of a metasparsity config, its type, default and allowed values, in the "
             "order of the schema. Written by `metasparsity config --keys --markdown > "
             "docs/configs.md` (`make docs`); a test checks that this file matches the code. "
             "What the keys do together: [Configs](../README.md#configs)."]
    section = None
    for key, typ, default, allowed, text in key_rows():
        head = key.split(".")[0] if "." in key else "top level"
        if head != section:
            section = head
            lines += ["", f"## {section}", "", "| key | type | default | allowed | what it is |",
                      "|---|---|---|---|---|"]
        lines.append(f"| `{key}` | {cell(typ)} | {code(default)} | {cell(allowed)} | {cell(text)} |")
    return "\n".join(lines) + "\n"
