"""Typed configuration: dataclasses, YAML files and dotted ``key=value`` overrides.

>>> cfg = load_config("configs/synthscenes.yaml", ["model.depth=18", "train.max_steps=2"])

Sections: ``data``, ``model``, ``train``, ``sparsity``, ``meta``, ``finetune``, ``compare``.
Every value is checked against its field's type, its allowed choices and its range; an unknown
key, a wrong type or an impossible value raises :class:`ConfigError` naming the key and what is
allowed, in one line (the CLI turns it into exit code 2 before anything is written).

The rules every field obeys (declared once, in each field's :func:`_f` metadata):

* numbers are finite (NaN and ±inf are refused unless a field says ``allow_inf``) and integers are
  at most :data:`INT_MAX` unless a field sets its own ``max``;
* ``min`` / ``max`` / ``choices`` / ``pattern`` apply to a scalar, and to **every element** of a
  list;
* ``nonempty`` lists must hold at least one element and ``unique`` lists no duplicate;
* strings (and string elements) are never empty and hold no control character (use null to leave
  an optional path unset).

Checks that involve several keys run in :func:`_validate` after all overrides are applied.
Components never see this object: small builder functions turn it into plain arguments at the
boundary.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from metasparsity.utils.errors import ConfigError
from metasparsity.utils.io import read_text_file

ALL_SYNTH_TASKS = ["segment", "depth", "normal", "edge", "has_sphere", "many_objects", "light_left"]

INT_MAX = 2**31 - 1
"""Upper bound of every integer field that sets no ``max`` of its own (counts, steps, seeds):
beyond it values overflow the 32-bit indices and seeds of NumPy / PyTorch and mean nothing here."""

DEVICE_PATTERN = r"auto|cpu|mps|cuda(:[0-9]+)?"


def _f(default: Any = dataclasses.MISSING, *, choices=None, min=None, max=None, min_open=False,
       help: str = "", factory=None, nonempty: bool = False, unique: bool = False,
       allow_inf: bool = False, pattern: str | None = None, pattern_help: str = ""):
    """A config field and its checks (see the module docstring): ``choices``, ``min`` (``min_open``:
    strictly greater), ``max``, ``pattern`` (a full-match regex for strings, described by
    ``pattern_help``) apply to a scalar or to each element of a list; ``nonempty`` and ``unique``
    to a list itself; ``allow_inf`` lets a float be ±inf."""
    meta = {"choices": choices, "min": min, "max": max, "min_open": min_open, "help": help,
            "nonempty": nonempty, "unique": unique, "allow_inf": allow_inf, "pattern": pattern,
            "pattern_help": pattern_help}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    name: str = _f("synthscenes", help="data set: synthscenes, nyuv2, celebamaskhq, or a registered one")
    root: str | None = _f(None, help="data folder for real data sets")
    image_size: int = _f(64, min=16, max=4096, help="square input size (pixels)")
    tasks: list[str] = _f(factory=lambda: list(ALL_SYNTH_TASKS), nonempty=True, unique=True,
                          help="tasks the data set serves")
    seen_tasks: list[str] = _f(
        factory=lambda: ["segment", "depth", "edge", "has_sphere", "many_objects"],
        nonempty=True, unique=True, help="tasks used in (meta-)training")
    unseen_tasks: list[str] = _f(factory=lambda: ["normal", "light_left"], unique=True,
                                 help="tasks held out of meta-training")
    train_size: int | None = _f(2000, min=1, help="training samples (real data: null = all)")
    val_size: int | None = _f(200, min=1, help="validation samples")
    test_size: int | None = _f(500, min=1, help="test samples (real data: null = all)")
    seed: int = _f(0, min=0, help="data seed (SynthScenes sample i depends only on (seed, i))")
    cache_dir: str | None = _f(None, help="optional on-disk cache of generated samples")
    num_workers: int = _f(0, min=0, max=256, help="DataLoader workers")
    layout: str = _f("auto", choices=["auto", "nyud_mt", "mtan"], help="NYU-v2 layout")
    num_classes: int | None = _f(None, min=2, max=65536,
                                 help="segmentation classes where the data set allows a choice")
    attributes: list[str] = _f(factory=list, unique=True, help="CelebAMask-HQ attributes served as tasks")
    augment: bool = _f(False, help="training augmentation (flip, scale-crop)")


@dataclass
class ModelConfig:
    depth: int = _f(18, choices=[18, 34, 50, 101], help="ResNet depth")
    width: float = _f(1.0, min=0.0, max=8.0, min_open=True,
                      help="ResNet width multiplier (base 64 channels)")
    output_stride: int = _f(8, choices=[8, 16, 32], help="backbone output stride (dilation after)")
    dense_head: str = _f("aspp", help="head for dense tasks")
    image_head: str = _f("mlp", help="head for image-level tasks")
    head_channels: int = _f(256, min=1, max=4096, help="channels inside each head")
    aspp_rates: list[int] = _f(factory=lambda: [12, 24, 36], min=1, max=256, nonempty=True,
                               help="ASPP atrous rates (three for the aspp head)")
    pretrained: str | None = _f(None, help="torchvision ResNet checkpoint file (.pth/.safetensors)")


@dataclass
class TrainConfig:
    max_steps: int = _f(1000, min=1, help="optimizer steps")
    batch_size: int = _f(32, min=1)
    eval_batch_size: int = _f(64, min=1)
    lr: float = _f(1e-3, min=0.0, min_open=True)
    weight_decay: float = _f(0.0, min=0.0)
    lr_schedule: str = _f("cosine", choices=["constant", "cosine", "poly", "step"])
    warmup_steps: int = _f(0, min=0)
    val_every: int = _f(200, min=1, help="validate (and keep the best checkpoint) every N steps")
    log_every: int = _f(10, min=1)
    ckpt_every: int = _f(0, min=0, help="also save a resumable checkpoint every N steps (0 = at validation)")
    loss_weighting: str = _f("equal", choices=["equal", "uncertainty"])
    tasks: list[str] | None = _f(None, nonempty=True, unique=True,
                                 help="tasks to train (null = data.seen_tasks)")
    seed: int = _f(0, min=0)
    device: str = _f("auto", pattern=DEVICE_PATTERN, pattern_help="auto, cpu, cuda, cuda:N or mps",
                     help="auto, cpu, cuda, cuda:N or mps")
    num_threads: int | None = _f(None, min=1, max=1024,
                                 help="torch CPU threads (null = all cores, at most 8)")
    amp: bool = _f(False, help="bf16 autocast on GPU (ignored on CPU)")
    progress: bool = _f(True, help="tqdm progress bars")


@dataclass
class SparsityConfig:
    lam: float = _f(0.0, min=0.0, help="fixed group-lasso strength λ, in gradient units (0 = dense)")
    prox_metric: str = _f("adam", choices=["adam", "euclidean"],
                          help="metric of the group prox after each Adam step: adam (DESIGN "
                               "§2.2.1) or euclidean (the first version, for ablation)")


@dataclass
class MetaConfig:
    steps: int = _f(300, min=1, help="outer (meta) steps")
    inner_steps: int = _f(1, min=1, help="K, SGD steps of the inner loop")
    inner_lr: float = _f(0.01, min=0.0, min_open=True, help="α, inner-loop learning rate")
    outer_lr: float = _f(1e-3, min=0.0, min_open=True, help="Adam rate on θ (and prox step size η)")
    meta_batch: int = _f(4, min=1, help="M, task subsets per outer step")
    batch_size: int = _f(16, min=1, help="support (and query) batch size")
    meta_grad: str = _f("lambda_path", choices=["second_order", "lambda_path", "first_order"])
    learn_lambda: bool = _f(True, help="learn λ (false: keep it at lambda_init)")
    lambda_init: float | str = _f("auto", min=0.0, pattern="auto",
                                  pattern_help="a number >= 0, or auto",
                                  help="λ0: auto (the median over groups of ‖∇_g L‖/w_g at the "
                                       "start, DESIGN §2.3), a number, or 0 (meta-learning "
                                       "without sparsity)")
    lambda_lr: float = _f(0.05, min=0.0, help="Adam rate on ρ = log λ")
    lambda_scope: str = _f("global", choices=["global", "layer"])
    lambda_min: float = _f(1e-6, min=0.0, min_open=True)
    lambda_max: float = _f(10.0, min=0.0, min_open=True)
    min_subset_size: int = _f(1, min=1)
    subsets: list[list[str]] | None = _f(None, nonempty=True, unique=True,
                                         help="explicit list of task subsets")
    outer_penalty: bool = _f(False, help="add λ·Ω(φ_K) to the query objective")
    lambda_objective: str = _f("heldout", choices=["heldout", "query"],
                               help="λ's meta-gradient from a held-out λ-validation stream "
                                    "(DESIGN §2.4) or from the query batches (the paper)")
    lambda_val_fraction: float = _f(0.15, min=0.0, max=0.5, min_open=True,
                                    help="share of the training ids in the λ-validation stream "
                                         "(lambda_objective=heldout; never updates θ)")
    target: float | None = _f(None, min=0.0, max=1.0, min_open=True,
                              help="budget mode: keep at most this fraction of the dense "
                                   "backbone's cost (meta.target_measure); λ becomes a Lagrange "
                                   "multiplier updated by dual ascent (null = off)")
    target_measure: str = _f("macs", choices=["macs", "params", "groups"],
                             help="cost that meta.target bounds: backbone MACs or conv "
                                  "parameters after pruning, or non-zero groups")
    val_every: int = _f(100, min=1)
    log_every: int = _f(1, min=1)


@dataclass
class FinetuneConfig:
    steps: int = _f(300, min=1)
    epochs: float | None = _f(None, min=0.0, min_open=True, help="overrides steps when set")
    lr: float = _f(1e-3, min=0.0, min_open=True)
    batch_size: int = _f(32, min=1)
    fraction: float = _f(1.0, min=0.0, max=1.0, min_open=True, help="share of training data (few-shot)")
    freeze_backbone: bool = _f(False)
    val_every: int = _f(100, min=1)


@dataclass
class CompareConfig:
    methods: list[str] = _f(
        factory=lambda: ["stl", "mtl", "fixed_lambda", "meta_dense", "meta_sparsity"],
        nonempty=True, unique=True, help="methods to run")
    lambda_grid: list[float] = _f(factory=lambda: [1e-4, 3e-4, 1e-3, 3e-3, 1e-2], min=0.0,
                                  min_open=True, unique=True, help="fixed λ values of the sweep")
    seeds: list[int] = _f(factory=lambda: [0], min=0, nonempty=True, unique=True,
                          help="seeds; every method runs once per seed")
    optuna_trials: int = _f(0, min=0, help="λ tuned by Optuna TPE (0 = off)")
    budget: int | None = _f(None, min=1, help="batch forward-backward passes per method "
                            "(null = train.max_steps); meta.steps is derived from it")


@dataclass
class Config:
    name: str = _f("run", pattern=r"(?!\.\.?$)[^/\\]+", pattern_help="a folder name (no / or \\, not . or ..)",
                   help="run name; the run directory defaults to runs/<name>")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def copy(self) -> Config:
        return copy.deepcopy(self)

    @property
    def train_tasks(self) -> list[str]:
        return list(self.train.tasks) if self.train.tasks else list(self.data.seen_tasks)


# ----------------------------------------------------------------------------- checking values

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


# ----------------------------------------------------------------------------- loading

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


def config_from_dict(data: dict | None, overrides: typing.Sequence[str] = ()) -> Config:
    cfg = Config()
    _apply(cfg, data or {}, "")
    for text in overrides:
        parts, value = parse_override(text)
        _apply(cfg, _nest(parts, value), "")
    _validate(cfg)
    return cfg


def yaml_error_line(e: yaml.YAMLError) -> str:
    """A YAML error in one line: ``YAML syntax error at line L, column C: problem``."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or getattr(e, "context", None) or str(e)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"YAML syntax error{where}: {' '.join(str(problem).split())}"


def load_config(path: str | os.PathLike | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    data: dict = {}
    if path is not None:
        p = Path(path)
        text = read_text_file(p, "config file", ConfigError)
        try:
            data = yaml.safe_load(text) or {}
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
    parts = [v.strip() for v in str(text).split(",") if v.strip()]
    if not parts:
        raise ConfigError(f"{key}: the λ grid is empty; give comma-separated positive numbers, "
                          f"e.g. 1e-4,1e-3")
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


def describe() -> str:
    """Every key with its type, default and allowed values (for ``metasparsity config --help``)."""
    lines = []
    cfg = Config()
    for sec in dataclasses.fields(cfg):
        obj = getattr(cfg, sec.name)
        if not dataclasses.is_dataclass(obj):
            lines.append(f"{sec.name}: {obj!r}  {sec.metadata.get('help', '')}")
            continue
        hints = _hints(type(obj))
        for f in dataclasses.fields(obj):
            meta = f.metadata
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
            lines.append(
                f"{sec.name}.{f.name} ({_type_name(hints[f.name])}) = {getattr(obj, f.name)!r}"
                + (f"  [{'; '.join(extra)}]" if extra else "")
                + (f"  {meta['help']}" if meta.get("help") else ""))
    return "\n".join(lines)
