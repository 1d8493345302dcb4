"""Issue 13, Deliver 6: nasty values for every config key, drawn by hypothesis.

The keys are enumerated from the config dataclasses, so a key added to ``config.py`` is covered
without touching this file.  Values: wrong types, NaN, ±inf, negatives, zero, huge numbers, empty
lists and strings, lists of such, and raw override text that is not valid YAML.

* ``load_config`` either succeeds or raises :class:`ConfigError` with a one-line message, whether
  the value comes as a ``key=value`` override or from a YAML file;
* every command that takes overrides (``train``, ``meta-train``, ``sweep-lambda``, ``compare``,
  ``evaluate``) refuses a value that config validation rejects with exit code 2 and one line on
  stderr, no traceback, and writes nothing: the ``--out`` folder does not exist afterwards, the
  current folder stays empty and the evaluated run is untouched.  Values that validation accepts
  are only checked to load (``tests/test_reliability_inputs.py`` runs unusual accepted values
  end to end).

Hypothesis runs derandomized (a fixed seed per test) and without its example database, so every
machine draws the same examples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.recipes.micro import MICRO, cli

from metasparsity.config import Config, load_config
from metasparsity.utils.errors import ConfigError


def _keys() -> list[str]:
    """Every key of the config: sections, their fields, and the top-level fields."""
    out = []
    cfg = Config()
    for f in dataclasses.fields(cfg):
        out.append(f.name)
        obj = getattr(cfg, f.name)
        if dataclasses.is_dataclass(obj):
            out += [f"{f.name}.{g.name}" for g in dataclasses.fields(obj)]
    return out


KEYS = _keys()
assert len(KEYS) > 60 and "compare.seeds" in KEYS and "train.device" in KEYS

NASTY = [math.nan, math.inf, -math.inf, 0, 0.0, -0.0, -1, -1.5, 1, 2, 10**30, -10**30, 10**400,
         -10**400, 1e300, -1e300, 5e-324, 2**31, 2**63, True, False, None, "", " ", "abc", "nan",
         "inf", "-inf", "1e999", "cuda:-1", "x\ny", "a\x00b", "../..", "/", "segment", "depth", "stl",
         {}, {"a": 1}]
SCALARS = st.one_of(
    st.sampled_from(NASTY),
    st.integers(min_value=-10**40, max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
)
VALUES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=4),
    st.just([]),
    st.just([[]]),
    st.lists(st.lists(SCALARS, max_size=2), min_size=1, max_size=2),
    st.dictionaries(st.sampled_from(["a", "lr", "depth"]), SCALARS, max_size=2),
)
RAW_TEXTS = ["", "[", "]", "{", "[1,", "{a: [}", "nan", ".nan", "-.inf", "1e400", "[.nan]", "[-1]",
             "[]", "[[]]", "null", "~", "0x10", "1_000", "'", '"', "!!python/object:os.system",
             "&a [*a]", "- x", "a: b", "=", "*", "[[[[[[[[[[1]]]]]]]]]]"]
RAW = st.sampled_from(RAW_TEXTS)


def _text(value) -> str:
    """``value`` as override text (flow-style YAML, one line)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True)
    return text.removesuffix("..." + chr(10)).strip()


OVERRIDES = st.tuples(st.sampled_from(KEYS), st.one_of(VALUES.map(_text), RAW)).map(
    lambda kv: f"{kv[0]}={kv[1]}")


def _nest(key: str, value) -> dict:
    out = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def _loads(overrides: list[str], path: str | None = None) -> bool:
    """True if the config loads; False on a one-line ConfigError; anything else fails the test."""
    try:
        load_config(path, overrides)
    except ConfigError as e:
        msg = str(e)
        assert msg and "\n" not in msg and "Traceback" not in msg, (overrides, msg)
        return False
    return True


def test_every_key_with_every_nasty_value():
    """The exhaustive grid: each key × each nasty value, alone, in a list, twice in a list, and
    each raw text (0.3 ms per load, so a few seconds in all)."""
    texts = [_text(v) for v in NASTY] + [_text([v]) for v in NASTY] + [_text([v, v]) for v in NASTY]
    texts += RAW_TEXTS
    outcomes = {_loads([f"{key}={text}"]) for key in KEYS for text in texts}
    assert outcomes == {True, False}  # the grid exercises both the accepted and the refused path


def _fields():
    """``(key, metadata, default)`` of every field of every config section."""
    cfg = Config()
    for key in KEYS:
        if "." in key:
            sec, name = key.split(".")
            obj = getattr(cfg, sec)
            field = next(f for f in dataclasses.fields(obj) if f.name == name)
            yield key, field.metadata, getattr(obj, name)


def test_known_bad_values_are_refused_for_every_key_that_can_tell():
    """Not only the form of a refusal: a value each key's own checks rule out is refused.
    Numbers with a range refuse NaN, ±inf and what lies below the range; choices refuse a
    non-choice; booleans refuse text."""
    assert _loads([])
    checked = 0
    for key, meta, default in _fields():
        bad = []
        low, high = meta.get("min"), meta.get("max")
        if low is not None:
            bad += [".nan", ".inf", "-.inf", "1e400"]
            # just outside the range: the bound itself when open, else one below (ints) or a
            # little below (floats)
            below = low if meta.get("min_open") else (
                low - 1 if isinstance(default, int) and not isinstance(default, bool) else low - 1e-9)
            bad.append(repr(below))
        if high is not None:
            bad.append(repr(high + 1 if isinstance(high, int) else high * (1 + 1e-9) + 1e-12))
        if meta.get("choices"):
            bad.append("not_a_choice")
        if isinstance(default, bool):
            bad.append("maybe")
        for text in bad:
            assert not _loads([f"{key}={text}"]), f"{key}={text} was accepted"
        checked += bool(bad)
    assert checked > 40


@settings(max_examples=600, deadline=None, derandomize=True, database=None)
@given(st.lists(OVERRIDES, min_size=1, max_size=3))
def test_overrides_load_or_raise_one_line_config_errors(overrides):
    _loads(overrides)
    _loads([*MICRO, *overrides])


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.sampled_from(KEYS), VALUES)
def test_yaml_files_load_or_raise_one_line_config_errors(key, value):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "config.yaml"
        p.write_text(yaml.safe_dump(_nest(key, value), allow_unicode=True), encoding="utf-8")
        _loads([], str(p))


# ----------------------------------------------------------------------------- the commands

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished one-step ``train`` run to ``evaluate``."""
    run = tmp_path_factory.mktemp("prop") / "run"
    assert cli("train", "--out", run, *MICRO, "train.max_steps=1", "train.val_every=1") == 0
    return run


def _listing(root: Path) -> list[tuple[str, int, int]]:
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*"))


@contextlib.contextmanager
def _in_empty_folder():
    old = os.getcwd()
    with tempfile.TemporaryDirectory() as d:
        os.chdir(d)
        try:
            yield Path(d)
        finally:
            os.chdir(old)


COMMANDS = ["train", "meta-train", "sweep-lambda", "compare", "evaluate"]


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
@given(st.sampled_from(COMMANDS), OVERRIDES)
def test_commands_refuse_rejected_values_in_one_line_and_write_nothing(run_dir, command, override):
    if command == "evaluate":
        accepted = _loads([override], str(run_dir / "config.yaml"))
    else:
        accepted = _loads([*MICRO, override])
    if accepted:
        return  # a value validation accepts: loading it is all this test asks
    before = _listing(run_dir)
    with _in_empty_folder() as cwd:
        out = cwd / "out"
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if command == "evaluate":
                code = cli("evaluate", run_dir, override)
            else:
                code = cli(command, "--out", out, *MICRO, override)
        text = err.getvalue()
        assert code == 2, (command, override, code, text)
        lines = [ln for ln in text.splitlines() if ln.strip()]
        assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in text, (override, text)
        assert not out.exists() and list(cwd.iterdir()) == [], (command, override)
    assert _listing(run_dir) == before


# Keys whose accepted values only make a run long or wide (sizes, budgets, workers, threads):
# pinned by the test below rather than drawn, so that every drawn run stays a one-step run.
SIZE_KEYS = {"data.image_size", "data.train_size", "data.val_size", "data.test_size",
             "data.num_workers", "model.depth", "model.width", "model.head_channels",
             "model.aspp_rates", "train.max_steps", "train.batch_size", "train.eval_batch_size",
             "train.num_threads", "train.val_every", "meta.steps", "finetune.steps",
             "compare.budget"}
RUN_KEYS = [k for k in KEYS if "." in k and k not in SIZE_KEYS]
PINNED = ["train.max_steps=1", "train.val_every=1", "train.progress=false"]


@settings(max_examples=20, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.filter_too_much])
@given(st.tuples(st.sampled_from(RUN_KEYS), VALUES.map(_text)).map(lambda kv: f"{kv[0]}={kv[1]}")
       .filter(lambda o: _loads([*MICRO, o, *PINNED])))
def test_accepted_values_run_or_exit_2_in_one_line(override):
    """A value the config accepts, however odd, reaches ``train`` end to end: it trains (one
    step) or stops with exit code 2 and one line (e.g. ``data.name=nyuv2`` without its data),
    never a traceback."""
    with _in_empty_folder() as cwd:
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli("train", "--out", cwd / "out", *MICRO, override, *PINNED)
        text = err.getvalue()
        assert code in (0, 2), (override, code, text)
        if code == 2:
            lines = [ln for ln in text.splitlines() if ln.strip()]
            assert len(lines) == 1 and "error" in lines[0], (override, text)
        assert "Traceback" not in text, (override, text)
