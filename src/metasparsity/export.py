"""Compact (pruned) models on disk: save, load without the training config, and their cost.

A *model directory* holds::

    model.safetensors   every parameter and buffer (no code runs on load)
    model.json          the architecture (module tree with per-layer shapes), the tasks, the
                        input size and normalisation, and where the model came from
    cost.json, cost.md  (written by ``metasparsity prune``) dense vs pruned parameters, MACs and
                        latency
    .metasparsity.json  the marker ``{"kind": "compact_model", "version": 1}``: only a folder
                        holding it is ever replaced (``--overwrite``)

``model.json``'s ``architecture`` is a tree of module specs.  A *leaf* (``Conv2d``,
``BatchNorm2d``, ``Linear``, ``GroupNorm``, ``ReLU``, ``MaxPool2d``, ``AdaptiveAvgPool2d``,
``Dropout``, ``Identity``) is ``{"class", "args"}`` with its constructor arguments, so a pruned conv
is rebuilt with its own channel counts.  A *container* (``MultiTaskNet``, ``ResNet``,
``BasicBlock``, ``Bottleneck``, the registered heads, ``Sequential``, ``ModuleList``,
``ModuleDict``) is ``{"class", "attrs", "children"}``: its plain attributes (``stride``,
``rates``, ``downsample: null``, …) and its sub-modules in order.  Containers are rebuilt without
calling their constructors (their ``forward`` only needs the attributes and children), which is
what lets a pruned ResNet, whose blocks no longer have the widths the constructor would give,
come back exactly.  Only the classes named above are ever instantiated.

``meta`` (the rest of ``model.json``): ``tasks`` (``name``, ``kind``, ``type``, ``channels``,
``num_classes``, ``description``), ``image_size``, ``normalization`` (``mean``, ``std``: the input
is RGB in [0, 1], normalised per channel as ``(x − mean) / std``), plus whatever the writer adds
(``source``, ``sparsity``, ``pruning``).
"""

from __future__ import annotations

import inspect
import json
import re
import reprlib
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metasparsity.utils.errors import UserError, require_path
from metasparsity.utils.io import save_safetensors, to_jsonable
from metasparsity.utils.limits import (
    MAX_IMAGE_SIZE,
    MAX_LATENCY_BATCH,
    MAX_LATENCY_PASSES,
    MIN_IMAGE_SIZE,
)

FORMAT = "metasparsity-compact-model"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
SPEC_FILE = "model.json"
COST_JSON = "cost.json"
COST_MD = "cost.md"
_MAX_DEPTH = 32  # modules nested in modules (a ResNet with its heads has 6 levels)
_MAX_NESTING = 8  # lists nested in an attribute or argument value

_LEAVES: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "Conv2d": (nn.Conv2d, ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                           "dilation", "groups", "bias", "padding_mode")),
    "BatchNorm2d": (nn.BatchNorm2d, ("num_features", "eps", "momentum", "affine",
                                     "track_running_stats")),
    "Linear": (nn.Linear, ("in_features", "out_features", "bias")),
    "GroupNorm": (nn.GroupNorm, ("num_groups", "num_channels", "eps", "affine")),
    "ReLU": (nn.ReLU, ("inplace",)),
    "MaxPool2d": (nn.MaxPool2d, ("kernel_size", "stride", "padding", "dilation",
                                 "return_indices", "ceil_mode")),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, ("output_size",)),
    "Dropout": (nn.Dropout, ("p", "inplace")),
    "Identity": (nn.Identity, ()),
}


def _containers() -> dict[str, type[nn.Module]]:
    from metasparsity.models import HEADS, MultiTaskNet, ResNet
    from metasparsity.models.heads import ASPPPooling
    from metasparsity.models.resnet import BasicBlock, Bottleneck

    table: dict[str, type[nn.Module]] = {
        c.__name__: c
        for c in (MultiTaskNet, ResNet, BasicBlock, Bottleneck, ASPPPooling, nn.Sequential,
                  nn.ModuleList, nn.ModuleDict)
    }
    for _, cls in HEADS.items():
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            table.setdefault(cls.__name__, cls)
    return table


# ----------------------------------------------------------------------------- spec <-> module

def _plain(value: Any, depth: int = _MAX_NESTING) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)) and depth > 0:
        return all(_plain(v, depth - 1) for v in value)
    return False


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def module_spec(module: nn.Module, path: str = "") -> dict[str, Any]:
    """The JSON spec of ``module`` (see the module docstring)."""
    name = type(module).__name__
    if type(module) in {cls for cls, _ in _LEAVES.values()}:
        _, fields = _LEAVES[name]
        args = {f: (getattr(module, f) is not None) if f == "bias" else getattr(module, f)
                for f in fields}
        return {"class": name, "args": to_jsonable(args)}
    if _containers().get(name) is not type(module):
        raise UserError(
            f"cannot export module {path or '<root>'} of class {name}: compact models support "
            f"{', '.join(sorted(set(_LEAVES) | set(_containers())))}")
    if module._parameters or module._buffers:
        raise UserError(f"cannot export {path or '<root>'} ({name}): a container with its own "
                        "parameters or buffers")
    attrs: dict[str, Any] = {}
    for key, value in vars(module).items():
        if key.startswith("_") or key == "training":
            continue
        if not _plain(value):
            raise UserError(f"cannot export attribute {path}.{key} of {name}: "
                            f"{type(value).__name__} is not a plain JSON value")
        attrs[key] = value
    children: dict[str, Any] = {}
    for child_name, child in module._modules.items():
        sub = f"{path}.{child_name}" if path else child_name
        children[child_name] = None if child is None else module_spec(child, sub)
    return {"class": name, "attrs": to_jsonable(attrs), "children": children}


def build_from_spec(spec: Mapping[str, Any], path: str = "") -> nn.Module:
    """Rebuild a module (with freshly initialised tensors) from :func:`module_spec`'s output."""
    if not isinstance(spec, Mapping) or "class" not in spec:
        raise UserError(f"invalid architecture entry at {path or '<root>'}: {spec!r:.80}")
    name = spec["class"]
    if name in _LEAVES:
        cls, fields = _LEAVES[name]
        args = {k: _tuples(v) for k, v in dict(spec.get("args", {})).items()}
        unknown = set(args) - set(fields)
        if unknown:
            raise UserError(f"invalid arguments {sorted(unknown)} for {name} at {path}")
        try:
            return cls(**args)
        except (TypeError, ValueError) as e:
            raise UserError(f"invalid arguments for {name} at {path or '<root>'}: {e}") from None
    cls = _containers().get(name)
    if cls is None:
        raise UserError(f"unknown module class {name!r} at {path or '<root>'} in the architecture")
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    for key, value in dict(spec.get("attrs", {})).items():
        setattr(module, key, _tuples(value))
    for child_name, child in dict(spec.get("children", {})).items():
        sub = f"{path}.{child_name}" if path else child_name
        module.add_module(child_name, None if child is None else build_from_spec(child, sub))
    return module


# ----------------------------------------------------------------------------- model.json checks

class _Invalid(Exception):
    """A field of ``model.json`` that the loader cannot use (the message names it)."""


_MISSING = object()
_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxlist, _SHOW.maxdict, _SHOW.maxstring, _SHOW.maxother = 1, 4, 4, 40, 40
_PLAIN = f"null, a boolean, number or string, or a list of them (nested at most {_MAX_NESTING} deep)"
# a module or task name: torch refuses "."; "/" or "\\" would put files outside --out
_NAME = re.compile(r"[^./\\\x00-\x1f\x7f]+")
_NAMED = "a non-empty name without '.', '/', '\\' or control characters"
# leaf arguments that size tensors: anything else is left to the constructors (see build_from_spec)
_COUNTS = frozenset({"in_channels", "out_channels", "num_features", "in_features", "out_features",
                     "groups", "num_groups", "num_channels"})


def _int(value: Any, low: int, high: float = float("inf")) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _rgb(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < float("inf")
        for v in value)


def _show(value: Any) -> str:
    """``value`` for a message: JSON's words for null / true / false, long values cut short."""
    return json.dumps(value) if value is None or isinstance(value, bool) else _SHOW.repr(value)


def _expect(ok: Any, field: str, expected: str, value: Any) -> None:
    if not ok:
        raise _Invalid(f"{field} is missing (expected {expected})" if value is _MISSING
                       else f"{field} must be {expected}, got {_show(value)}")


# the top-level fields: (check, what it must be); "architecture" is then checked in depth
_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "version": (lambda v: _int(v, 1), "a positive integer"),
    "architecture": (lambda v: isinstance(v, dict), "a module object"),
    "image_size": (lambda v: _int(v, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
                   f"an integer from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}"),
    "tasks": (lambda v: isinstance(v, list), "a list of task objects"),
    "normalization": (lambda v: isinstance(v, dict), "an object with mean and std"),
}
# the fields of a task object (only "name" is required)
_TASK_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "name": (lambda v: isinstance(v, str) and _NAME.fullmatch(v), _NAMED),
    "kind": (lambda v: v in ("dense", "image"), '"dense" or "image"'),
    "type": (lambda v: isinstance(v, str), "a string"),
    "channels": (lambda v: v is None or _int(v, 1), "a positive integer or null"),
    "num_classes": (lambda v: v is None or _int(v, 1), "a positive integer or null"),
    "description": (lambda v: v is None or isinstance(v, str), "a string or null"),
}


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _check_document(doc: Mapping[str, Any], require: Sequence[str] = ()) -> None:
    """Raise :class:`_Invalid` at the first field of a parsed ``model.json`` that the loader cannot
    use: ``version`` and ``architecture`` must be there, the meta fields in ``require`` too, and
    every field present must have the type and range of :data:`_FIELDS`."""
    for key, (ok, expected) in _FIELDS.items():
        value = doc.get(key, _MISSING)
        absent = value is None or value is _MISSING
        if absent and key not in ("version", "architecture", *require):
            continue
        _expect(not absent and ok(value), key, expected, value)
    names: set[str] = set()
    for i, task in enumerate(doc.get("tasks") or ()):
        _expect(isinstance(task, dict), f"tasks[{i}]", "a task object", task)
        for key, (ok, expected) in _TASK_FIELDS.items():
            if key in task or key == "name":
                _expect(ok(task.get(key, _MISSING)), f"tasks[{i}].{key}", expected,
                        task.get(key, _MISSING))
        _expect(task["name"] not in names, f"tasks[{i}].name", "unique", task["name"])
        names.add(task["name"])
    norm = doc.get("normalization")
    if norm is not None:
        for key in ("mean", "std"):
            _expect(_rgb(norm.get(key, _MISSING)), f"normalization.{key}",
                    "a list of 3 finite numbers (R, G, B)", norm.get(key, _MISSING))
        _expect(all(v > 0 for v in norm["std"]), "normalization.std", "positive", norm["std"])
    _check_module(doc["architecture"], "architecture", 0)


def _check_module(spec: Any, field: str, depth: int) -> None:
    """Raise :class:`_Invalid` at the first part of the module spec ``spec`` (found at ``field``)
    that :func:`build_from_spec` cannot use."""
    if depth > _MAX_DEPTH:  # (the field's path would be too long to show)
        raise _Invalid(f"architecture: modules are nested more than {_MAX_DEPTH} deep")
    _expect(isinstance(spec, dict), field, 'a module object ({"class", ...})', spec)
    name, containers = spec.get("class", _MISSING), _containers()
    _expect(isinstance(name, str) and (name in _LEAVES or name in containers), f"{field}.class",
            f"a supported module class ({', '.join(sorted(set(_LEAVES) | set(containers)))})",
            name)
    if name in _LEAVES:
        args, fields = spec.get("args", {}), _LEAVES[name][1]
        _expect(isinstance(args, dict), f"{field}.args", f"an object of {name} arguments", args)
        for key, value in args.items():
            _expect(key in fields, f"{field}.args", f"{name} arguments ({', '.join(fields)})",
                    {key: value})
            _expect(_int(value, 0) if key in _COUNTS else _plain(value), f"{field}.args.{key}",
                    "a non-negative integer" if key in _COUNTS else _PLAIN, value)
        return
    cls = containers[name]
    attrs, children = spec.get("attrs", {}), spec.get("children", {})
    for part, value in (("attrs", attrs), ("children", children)):
        _expect(isinstance(value, dict), f"{field}.{part}", "an object", value)
        for key in value:  # may not hide a method, property or private field, nor each other
            own = inspect.getattr_static(cls, key, None)  # a plain class constant may be set
            if key.startswith("_") or key == "training" or not _plain(own) or (
                    part == "children" and key in attrs):
                raise _Invalid(f"{field}.{part}.{key}: a {name} cannot take {key!r} (a private "
                               "name, a method or property of its class, or both an attribute "
                               "and a child)")
    for key, value in attrs.items():
        _expect(_plain(value), f"{field}.attrs.{key}", _PLAIN, value)
    for key, child in children.items():
        _expect(_NAME.fullmatch(key), f"{field}.children", f"keyed by {_NAMED}", key)
        if child is not None:
            _check_module(child, f"{field}.children.{key}", depth + 1)


# ----------------------------------------------------------------------------- directories

@contextmanager
def staged_directory(final: str | Path, *, overwrite: bool = False,
                     kind: str = "compact_model") -> Iterator[Path]:
    """Yield an empty temporary directory next to ``final``; on success it replaces ``final``.

    Nothing is left behind if the body raises.  An existing non-empty ``final`` is an error unless
    ``overwrite``, and even then only a folder that this tool made as a ``kind`` folder (its
    marker, :data:`metasparsity.utils.rundir.MARKER_FILE`) is replaced, after the new content is
    complete.  The new folder gets the marker of ``kind``.
    """
    from metasparsity.utils.rundir import check_output_dir, write_marker

    final = Path(final)
    check_output_dir(final, kind, overwrite=overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        write_marker(tmp, kind)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    try:
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent))
            old.rmdir()
            final.rename(old)
        tmp.rename(final)
    except OSError as e:  # e.g. final became something else meanwhile: the old content stays
        if old is not None and old.exists() and not final.exists():
            old.rename(final)
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"cannot write {final}: {e.strerror or e}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _unheaded(model: nn.Module, tasks: Any) -> list[str]:
    """The names in ``tasks`` (``model.json``'s task objects) that ``model`` has no head for
    (none when it has no ``heads`` dict: not a multi-task model)."""
    heads = getattr(model, "heads", None)
    if not isinstance(heads, nn.ModuleDict):
        return []
    return [t.get("name") for t in tasks or () if isinstance(t, Mapping)
            and t.get("name") not in heads]


def write_compact_model(model: nn.Module, directory: str | Path,
                        meta: Mapping[str, Any] | None) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``directory`` (created if needed).

    Refused (:class:`UserError`, nothing written) where the folder could not be loaded: a
    ``meta`` that sets ``format``, ``version`` (other than the writer's) or ``architecture``,
    a meta field :func:`load_compact_model` would refuse, a task the model has no head for, or a
    tensor holding NaN or an infinity.  ``meta`` None: no meta fields.
    """
    from metasparsity import __version__

    meta = to_jsonable(dict(meta or {}))
    for key, own in (("format", FORMAT), ("version", FORMAT_VERSION), ("architecture", None)):
        if key in meta and meta[key] != own:
            raise UserError(f"cannot write {SPEC_FILE}: meta may not set {key!r} (got "
                            f"{_show(meta[key])}); the writer sets it"
                            f"{f' to {own!r}' if own is not None else ''}")
    spec = module_spec(model)
    doc = {"format": FORMAT, "version": FORMAT_VERSION, "metasparsity_version": __version__,
           **meta, "architecture": spec}
    try:
        _check_document(doc)
    except _Invalid as e:
        raise UserError(f"cannot write {SPEC_FILE}: meta {e}") from None
    unheaded = _unheaded(model, doc.get("tasks"))
    if unheaded:
        raise UserError(f"cannot write {SPEC_FILE}: meta lists tasks the model has no head for: "
                        f"{', '.join(map(repr, unheaded))} (its heads: {', '.join(model.heads)})")
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    for key, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UserError(f"cannot write {MODEL_FILE}: tensor {key} holds NaN or infinite "
                            "values (a compact model with them would not load)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_safetensors(state, directory / MODEL_FILE)
    (directory / SPEC_FILE).write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return directory


def save_compact_model(model: nn.Module, model_dir: str | Path, meta: Mapping[str, Any] | None, *,
                       overwrite: bool = False) -> Path:
    """:func:`write_compact_model` into ``model_dir`` atomically (see :func:`staged_directory`)."""
    with staged_directory(model_dir, overwrite=overwrite) as tmp:
        write_compact_model(model, tmp, meta)
    return Path(model_dir)


def load_compact_model(model_dir: str | Path, *,
                       require: Sequence[str] = ()) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, meta)`` of a model directory; the model is in eval mode on the CPU.

    ``model.json`` is checked field by field before anything is built: ``version`` and
    ``architecture`` must be there, and the meta fields in ``require`` (``tasks``, ``image_size``,
    ``normalization``) when the caller needs them (with ``tasks``, every task listed must be one
    of the model's heads).  The modules are built in float32 (whatever torch's default dtype) on
    the ``meta`` device and take the tensors of ``model.safetensors`` (cast to the modules'
    dtypes), so no size in ``model.json`` allocates memory by itself.

    Raises:
        UserError: missing directory or files, an unknown format, a missing or malformed field of
            ``model.json`` (named), or weights that do not fit or are not finite.
    """
    from safetensors.torch import load_file

    d = Path(model_dir)
    require_path(model_dir, "model directory")
    if d.exists() and not d.is_dir():
        raise UserError(f"model directory {d} is not a directory")
    if not d.is_dir():
        raise UserError(f"model directory {d} does not exist")
    for f in (SPEC_FILE, MODEL_FILE):
        if not (d / f).is_file():
            raise UserError(f"{d} is not a compact model directory: {f} is missing")
    spec_file = d / SPEC_FILE
    try:  # NaN / Infinity are not JSON (the writer never puts them there)
        doc = json.loads(spec_file.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (OSError, ValueError, RecursionError) as e:  # ValueError: JSON or UTF-8
        raise UserError(f"cannot read {spec_file}: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UserError(f"{spec_file} is not a {FORMAT} file")
    version = doc.get("version")
    if _int(version, FORMAT_VERSION + 1):  # a newer format: say so before any field check
        raise UserError(f"{spec_file} has format version {version}; this "
                        f"metasparsity reads up to {FORMAT_VERSION}")
    try:
        _check_document(doc, require)
    except _Invalid as e:
        raise UserError(f"{spec_file}: {e}") from None
    try:
        with torch.device("meta"):  # float32, the stored dtype, whatever the default dtype
            model = build_from_spec(doc["architecture"]).float()
    except UserError as e:
        raise UserError(f"{spec_file}: {e}") from None
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as e:  # last resort
        raise UserError(f"{spec_file}: cannot rebuild the architecture: {e}") from None
    try:
        state = load_file(str(d / MODEL_FILE))
    except Exception as e:  # safetensors raises its own error types
        raise UserError(f"cannot read {d / MODEL_FILE}: {e}") from None
    own = model.state_dict()
    for key, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UserError(f"{d / MODEL_FILE}: tensor {key} holds NaN or infinite values")
        if key in own and t.dtype != own[key].dtype:
            state[key] = t.to(own[key].dtype)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise UserError(f"{d / MODEL_FILE} does not fit the architecture in {spec_file}: "
                        f"{str(e).splitlines()[0]}") from None
    left = [k for k, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # a buffer outside the state dict
        raise UserError(f"{d / MODEL_FILE} does not fit the architecture in {spec_file}: "
                        f"no tensor for {left[0]}")
    unheaded = _unheaded(model, doc.get("tasks")) if "tasks" in require else []
    if unheaded:
        raise UserError(f"{spec_file}: tasks lists tasks the model has no head for: "
                        f"{', '.join(map(repr, unheaded))} (its heads: {', '.join(model.heads)}); "
                        "it was edited or damaged")
    model.eval()
    meta = {k: v for k, v in doc.items() if k != "architecture"}
    return model, meta


# ----------------------------------------------------------------------------- meta

def task_meta(task: Any) -> dict[str, Any]:
    """The JSON description of a ``metasparsity.data.Task``."""
    return {"name": task.name, "kind": task.kind, "type": task.type, "channels": task.channels,
            "num_classes": task.num_classes, "description": task.description}


def input_normalization(cfg: Any) -> dict[str, list[float]]:
    """Mean / std that the configured data set normalises images with.

    Every built-in data set (SynthScenes, NYU-v2, CelebAMask-HQ) uses ImageNet's statistics; a
    registered data set may declare its own as ``mean`` / ``std`` on its ``DatasetSpec``.
    """
    from metasparsity.data import DATASETS
    from metasparsity.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    spec = DATASETS.get(cfg.data.name)
    mean = getattr(spec, "mean", None) or IMAGENET_MEAN
    std = getattr(spec, "std", None) or IMAGENET_STD
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


# ----------------------------------------------------------------------------- cost

class _Features(nn.Module):
    """``model.forward_features`` as a module, so that its MACs can be counted alone."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def model_cost(model: nn.Module, example_input: torch.Tensor) -> dict[str, dict[str, int]]:
    """Parameters and MACs of a multi-task model's ``backbone``, ``heads`` and ``total``.

    MACs are :func:`metasparsity.eval.count_macs` (FLOPs / 2 of ``torch.utils.flop_counter``) of
    ``model(x)`` and of ``model.forward_features(x)``; the heads' share is the difference.
    """
    from metasparsity.eval.cost import count_macs, count_parameters

    total = count_macs(model, example_input)
    backbone = count_macs(_Features(model), example_input)
    p_total, p_backbone = count_parameters(model), count_parameters(model.backbone)
    return {"backbone": {"params": p_backbone, "macs": backbone},
            "heads": {"params": count_parameters(model.heads), "macs": total - backbone},
            "total": {"params": p_total, "macs": total}}


def check_batch_sizes(batch_sizes: Any) -> None:
    """Refuse latency batch sizes that are not distinct integers in ``[1, MAX_LATENCY_BATCH]``
    (a :class:`UserError` naming ``--batch-sizes``)."""
    if isinstance(batch_sizes, (str, bytes)) or not isinstance(batch_sizes, Sequence):
        raise UserError(f"--batch-sizes must be a list of integers, got {batch_sizes!r}")
    shown = ",".join(map(str, batch_sizes))
    if any(not _int(b, 1, MAX_LATENCY_BATCH) for b in batch_sizes):
        raise UserError(f"--batch-sizes must be between 1 and {MAX_LATENCY_BATCH}, got {shown}")
    if len(set(batch_sizes)) != len(batch_sizes):
        raise UserError(f"--batch-sizes: each batch size may appear only once, got {shown}")


def check_latency_options(batch_sizes: Any, repeats: Any, warmup: Any) -> None:
    """Refuse a latency option of :func:`cost_comparison` (``metasparsity prune``'s
    ``--batch-sizes``, ``--repeats``, ``--warmup``) outside its range, naming it."""
    if not _int(repeats, 1, MAX_LATENCY_PASSES):
        raise UserError(f"--repeats must be an integer between 1 and {MAX_LATENCY_PASSES}, "
                        f"got {repeats!r}")
    if not _int(warmup, 0, MAX_LATENCY_PASSES):
        raise UserError(f"--warmup must be an integer between 0 and {MAX_LATENCY_PASSES}, "
                        f"got {warmup!r}")
    check_batch_sizes(batch_sizes)


def cost_comparison(dense: nn.Module, pruned: nn.Module, image_size: int,
                    batch_sizes: Sequence[int] = (1, 16), repeats: int = 10, warmup: int = 2,
                    latency: bool = True, seed: int = 0) -> dict[str, Any]:
    """Parameters, MACs (per image) and latency of ``dense`` and ``pruned``.

    MACs: :func:`model_cost` on one ``[1, 3, S, S]`` input, and per backbone stage
    (``backbone_stages``: :func:`metasparsity.eval.stage_costs`, dense and pruned).  Latency:
    :func:`metasparsity.eval.measure_latency` (median of ``repeats`` timed passes after
    ``warmup``, eval mode, ``torch.inference_mode``, the current ``torch.get_num_threads()``) at
    every batch size, dense and pruned measured back to back so that background load affects both
    alike.  Ratios are ``dense / pruned`` (> 1: the pruned model is smaller / faster).
    """
    from metasparsity.eval.cost import measure_latency, stage_costs

    for what, m in (("dense", dense), ("pruned", pruned)):
        if not isinstance(m, nn.Module) or not isinstance(getattr(m, "backbone", None), nn.Module):
            raise TypeError(f"cost_comparison: {what} must be a multi-task model with a "
                            f"backbone (e.g. load_compact_model(DIR)[0]), got {type(m).__name__}")
    if not _int(image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE):
        raise UserError(f"cost_comparison: image_size must be an integer between "
                        f"{MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE}, got {image_size!r}")
    if latency:
        check_latency_options(batch_sizes, repeats, warmup)
    g = torch.Generator().manual_seed(seed)
    device = next(dense.parameters()).device
    x1 = torch.randn(1, 3, image_size, image_size, generator=g).to(device)
    out: dict[str, Any] = {"image_size": image_size, "threads": torch.get_num_threads(),
                           "device": str(device), "torch": torch.__version__,
                           "dense": model_cost(dense, x1), "pruned": model_cost(pruned, x1)}
    out["ratio"] = {
        part: {q: _ratio(out["dense"][part][q], out["pruned"][part][q]) for q in ("params", "macs")}
        for part in ("backbone", "heads", "total")}
    after = {row["name"]: row for row in stage_costs(pruned.backbone, x1)}
    out["backbone_stages"] = [
        {"name": row["name"], "dense": {q: row[q] for q in ("params", "macs")},
         "pruned": {q: after.get(row["name"], {}).get(q, 0) for q in ("params", "macs")}}
        for row in stage_costs(dense.backbone, x1)]
    if latency:
        lat: dict[str, Any] = {}
        for b in batch_sizes:
            x = torch.randn(b, 3, image_size, image_size, generator=g).to(device)
            d = measure_latency(dense, x, warmup=warmup, repeats=repeats)
            p = measure_latency(pruned, x, warmup=warmup, repeats=repeats)
            lat[str(b)] = {"dense_ms": d["median_ms"], "pruned_ms": p["median_ms"],
                           "speedup": _ratio(d["median_ms"], p["median_ms"]),
                           "dense": d, "pruned": p}
        out["latency"] = lat
        out["repeats"], out["warmup"] = repeats, warmup
    return out


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("inf")


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def cost_markdown(cost: Mapping[str, Any]) -> str:
    """A markdown table of :func:`cost_comparison`'s result."""
    s = cost["image_size"]
    lines = [f"Input {s}×{s}; MACs per image (FLOPs / 2, torch.utils.flop_counter); "
             f"latency = median ms on {cost['device']} with {cost['threads']} threads.", "",
             "| | dense | pruned | dense / pruned |", "|---|---:|---:|---:|"]
    for part in ("backbone", "heads", "total"):
        for q, label in (("params", "parameters"), ("macs", "MACs")):
            d, p = cost["dense"][part][q], cost["pruned"][part][q]
            lines.append(f"| {part} {label} | {_human(d)} | {_human(p)} | "
                         f"{cost['ratio'][part][q]:.2f}× |")
    for b, row in cost.get("latency", {}).items():
        lines.append(f"| latency, batch {b} (ms) | {row['dense_ms']:.2f} | {row['pruned_ms']:.2f} "
                     f"| {row['speedup']:.2f}× |")
    stages = cost.get("backbone_stages")
    if stages:
        dense = cost["dense"]["backbone"]
        lines += ["", "Backbone by stage (in brackets: the share of the dense backbone's cost):", "",
                  "| stage | parameters, dense | pruned | MACs, dense | pruned |",
                  "|---|---:|---:|---:|---:|"]
        for row in stages:
            cells = [f"{_human(row[v][q])} ({_share(row[v][q], dense[q])})"
                     for q in ("params", "macs") for v in ("dense", "pruned")]
            lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _share(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "–"
