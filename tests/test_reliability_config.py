"""Property tests of the config parser: any valid ``key=value`` override is applied and survives
``Config.to_yaml()`` -> ``load_config``; any invalid one raises ConfigError naming the key.

(The metrics have their own property tests in ``tests/eval/test_metrics.py``.)
"""

from __future__ import annotations

import dataclasses
import math
import re
import string
import tempfile
import types
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from metasparsity.config import INT_MAX, Config, load_config
from metasparsity.utils.errors import ConfigError

# Keys whose valid values depend on other keys (checked together after all overrides).
CROSS_CHECKED = {"data.tasks", "data.seen_tasks", "data.unseen_tasks", "train.tasks", "meta.subsets",
                 "meta.min_subset_size", "meta.lambda_init", "meta.lambda_min", "meta.lambda_max",
                 "model.width", "meta.meta_grad", "model.aspp_rates", "model.dense_head",
                 "model.output_stride", "compare.lambda_grid", "meta.learn_lambda",
                 "sparsity.target", "meta.lambda_hold"}


@dataclasses.dataclass(frozen=True)
class Field:
    key: str
    tp: typing.Any
    choices: tuple | None
    lo: float | None
    hi: float | None
    open_lo: bool
    nonempty: bool = False
    unique: bool = False
    pattern: str | None = None

    @property
    def base(self):
        """The type without ``| None``."""
        args = [a for a in typing.get_args(self.tp) if a is not type(None)]
        return args[0] if typing.get_origin(self.tp) in (typing.Union, types.UnionType) else self.tp

    @property
    def nullable(self) -> bool:
        return type(None) in typing.get_args(self.tp)


def _fields() -> list[Field]:
    out = []
    cfg = Config()
    for sec in dataclasses.fields(cfg):
        obj = getattr(cfg, sec.name)
        if not dataclasses.is_dataclass(obj):
            continue
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            m = f.metadata
            out.append(Field(f"{sec.name}.{f.name}", hints[f.name],
                             tuple(m["choices"]) if m.get("choices") else None,
                             m.get("min"), m.get("max"), bool(m.get("min_open")),
                             bool(m.get("nonempty")), bool(m.get("unique")), m.get("pattern")))
    # the top-level ``name``
    top = next(f for f in dataclasses.fields(cfg) if f.name == "name")
    out.append(Field("name", str, None, None, None, False, pattern=top.metadata.get("pattern")))
    return out


FIELDS = _fields()
FREE = [f for f in FIELDS if f.key not in CROSS_CHECKED]
SAFE_TEXT = st.text(alphabet=string.ascii_letters + string.digits + "_-./", min_size=1, max_size=12)
WORDS = st.text(alphabet=string.ascii_letters, min_size=1, max_size=10).filter(
    lambda s: isinstance(yaml.safe_load(s), str) and s.lower() not in ("nan", "inf", "infinity"))


def _number(f: Field, integer: bool):
    lo = f.lo if f.lo is not None else -1e9
    hi = f.hi if f.hi is not None else (INT_MAX if integer else 1e9)
    if integer:
        return st.integers(min_value=int(math.ceil(lo)) + (1 if f.open_lo and lo == int(lo) else 0),
                           max_value=int(hi))
    return st.floats(min_value=lo, max_value=hi, exclude_min=f.open_lo, allow_nan=False,
                     allow_infinity=False)


def valid(f: Field):
    base = f.base
    if f.choices:
        s = st.sampled_from(f.choices)
    elif base is bool:
        s = st.booleans()
    elif base is int:
        s = _number(f, integer=True)
    elif base is float:
        s = _number(f, integer=False)
    elif base is str:
        s = SAFE_TEXT if f.pattern is None else SAFE_TEXT.filter(lambda t: re.fullmatch(f.pattern, t))
    else:
        (inner,) = typing.get_args(base)
        elem = {int: _number(f, integer=True), str: SAFE_TEXT,
                float: _number(f, integer=False)}[inner]
        s = st.lists(elem, min_size=1 if f.nonempty else 0, max_size=4, unique=f.unique)
    return st.one_of(st.none(), s) if f.nullable else s


def invalid(f: Field):
    base = f.base
    bad = [st.lists(st.integers(), min_size=1, max_size=2)] if typing.get_origin(base) is not list else []
    if f.choices:
        bad.append(WORDS.filter(lambda w: w not in f.choices))
        bad.append(st.integers(200, 10**4) if isinstance(f.choices[0], int) else WORDS.map(lambda w: w + "_"))
    elif base is bool:
        bad += [st.integers(), WORDS]
    elif base in (int, float):
        bad += [WORDS, st.booleans(), st.sampled_from([math.nan, math.inf, -math.inf])]
        if base is int:
            bad.append(st.floats(0.1, 1e6).filter(lambda v: not v.is_integer()))
        if f.lo is not None:
            below = st.floats(max_value=f.lo, allow_nan=False, allow_infinity=False,
                              exclude_max=not f.open_lo)
            bad.append(below.map(lambda v: int(math.floor(v)) - (0 if f.open_lo else 1)) if base is int
                       else below)
        if f.hi is not None:
            bad.append(st.floats(min_value=f.hi, exclude_min=True, allow_nan=False,
                                 allow_infinity=False))
        if base is int and f.hi is None:  # every integer has a ceiling
            bad.append(st.integers(INT_MAX + 1, 10**30))
    elif base is str:
        bad += [st.integers(), st.booleans(), st.sampled_from(["", "   ", "a\tb", "x\ny", "nul\x00"])]
        if f.pattern is not None:
            bad.append(WORDS.map(lambda w: w + "/" + w) if f.key == "name" else WORDS.map(lambda w: w + "!"))
    else:
        (inner,) = typing.get_args(base)
        bad.append(st.lists(WORDS if inner in (int, float) else st.integers(), min_size=1, max_size=3))
        if inner in (int, float):
            bad.append(st.lists(st.sampled_from([math.nan, math.inf, -math.inf]), min_size=1, max_size=3)
                       if inner is float else st.lists(st.integers(INT_MAX + 1, 10**30), min_size=1,
                                                       max_size=2))
            if f.lo is not None:
                bad.append(st.just([f.lo - 1 if inner is int else (f.lo if f.open_lo else f.lo - 0.5)]))
        if inner is str:
            bad.append(st.just(["ok", ""]))
        if f.nonempty:
            bad.append(st.just([]))
        if f.unique:
            elem = {int: st.just(f.lo + 1 if f.lo is not None else 3), float: st.just(0.5),
                    str: st.just("segment")}.get(inner)
            if elem is not None:
                bad.append(elem.map(lambda v: [v, v]))
    return st.one_of(*bad)


def _override(key: str, value) -> str:
    """``key=<value as YAML>``, e.g. ``train.lr=0.001``, ``model.aspp_rates=[1, 2]``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    return f"{key}={text.removesuffix('...' + chr(10)).strip()}"


def _get(cfg: Config, key: str):
    if "." not in key:
        return getattr(cfg, key)
    sec, name = key.split(".")
    return getattr(getattr(cfg, sec), name)


def _round_trip(cfg: Config) -> Config:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "config.yaml"
        p.write_text(cfg.to_yaml())
        return load_config(p)


def _same(a, b) -> bool:
    """Equal and of the same type (an int field gives an int, a float field a float)."""
    return a == b and type(a) is type(b)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(FREE).flatmap(lambda f: st.tuples(st.just(f), valid(f))))
def test_valid_override_is_applied_and_round_trips(case):
    f, value = case
    cfg = load_config(None, [_override(f.key, value)])
    got = _get(cfg, f.key)
    expected = float(value) if f.base is float and value is not None else value
    assert _same(got, expected), (f.key, value, got)
    again = _round_trip(cfg)
    assert again.to_dict() == cfg.to_dict()


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FIELDS).flatmap(lambda f: st.tuples(st.just(f), invalid(f))))
def test_invalid_override_names_the_key(case):
    f, value = case
    with pytest.raises(ConfigError) as e:
        load_config(None, [_override(f.key, value)])
    assert f.key in str(e.value), (f.key, value, str(e.value))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(FREE), min_size=2, max_size=8, unique=True).flatmap(
    lambda fs: st.tuples(st.just(fs), st.tuples(*[valid(f) for f in fs]))))
def test_many_overrides_at_once_round_trip_through_yaml(case):
    fields, values = case
    cfg = load_config(None, [_override(f.key, v) for f, v in zip(fields, values)])
    for f, v in zip(fields, values):
        assert _same(_get(cfg, f.key), float(v) if f.base is float and v is not None else v)
    assert _round_trip(cfg).to_dict() == cfg.to_dict()


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(["data", "model", "train", "meta", "finetune", "compare"]),
       st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=12))
def test_unknown_keys_are_named(section, name):
    known = {f.key for f in FIELDS}
    key = f"{section}.{name}"
    if key in known:
        return
    with pytest.raises(ConfigError, match="unknown key") as e:
        load_config(None, [f"{key}=1"])
    assert key in str(e.value)


@pytest.mark.parametrize(("overrides", "words"), [
    ("data.image_size=32", ["got str", "wrap it in a list"]),   # was read letter by letter
    (5, ["got int 5"]),
    (["data.image_size=32", 3], ["got 3 (int)"]),
])
def test_overrides_that_are_not_a_list_of_strings_are_named(overrides, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_overrides_may_be_none_or_any_iterable_of_strings():
    assert load_config(None, None) == load_config(None)
    assert load_config(None, iter(["data.image_size=32"])).data.image_size == 32


def test_task_names_given_as_one_string_are_refused_and_none_means_data_tasks():
    """``resolve_tasks(cfg, "segment")`` listed s, e, g… as unknown tasks; ``build_model(cfg,
    None)`` was a TypeError."""
    from metasparsity.builders import build_model
    from metasparsity.data import resolve_tasks
    from metasparsity.utils.errors import UserError

    cfg = load_config(None, ["data.image_size=32", "model.width=0.25"])
    with pytest.raises(UserError, match=r"give a list of task names, got str 'segment' \(e\.g\."):
        resolve_tasks(cfg, "segment")
    with pytest.raises(UserError, match="got int 3"):
        build_model(cfg, 3)
    assert list(resolve_tasks(cfg, {"depth": 0}.keys())) == ["depth"]
    assert sorted(build_model(cfg, None).heads) == sorted(cfg.data.tasks)
