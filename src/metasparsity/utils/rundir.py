"""Run directories (``runs/<name>/`` with ``config.yaml``, checkpoints, logs and results), and the
one rule every command that writes follows.

**The rule.**  An output never equals, contains or lies inside one of the command's inputs
(resolved real paths are compared, so symbolic links, ``..`` and a second name of the same folder
do not hide an overlap): :func:`check_outputs_vs_inputs`.  An existing, non-empty output folder is
replaced only with ``--overwrite``, and only when the tool made it: the folder holds the marker
file :data:`MARKER_FILE` (``{"kind": "run", "version": 1, ...}``) of the expected kind.  A file
name alone (``config.yaml``) never makes a folder deletable.  Every refusal is a one-line
:class:`UserError` (exit code 2), raised before anything is touched.

A run directory is created only after the config and the inputs have been validated, so a bad
command leaves nothing behind.  Run directories made by versions without the marker can still
be resumed (resuming needs ``config.yaml`` and checkpoints); a resume writes the marker.

``config.yaml`` always holds the resolved config of the latest invocation: a resumed run with
overrides (``--resume DIR train.max_steps=2000``) rewrites it atomically, and the recipe logs
which keys changed in ``metrics.jsonl`` (a ``kind: "resume"`` record).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from metasparsity.utils.errors import UserError, require_path
from metasparsity.utils.io import atomic_write_text

CONFIG_FILE = "config.yaml"
CHECKPOINTS_DIR = "checkpoints"

MARKER_FILE = ".metasparsity.json"
"""The file that marks a folder as made by this tool: ``{"kind": ..., "version": 1}``."""
MARKER_VERSION = 1
RUN = "run"
COMPACT_MODEL = "compact_model"
PREPARED_DATA = "prepared_data"
PREDICTIONS = "predictions"
KIND_NAMES = {RUN: "run directory", COMPACT_MODEL: "compact model folder",
              PREPARED_DATA: "prepared data folder", PREDICTIONS: "predictions folder"}

PathLike = str | os.PathLike
Labelled = tuple[str, PathLike | None]
"""``(label, path)``: how a message names a path (``"--out"``, ``"data.root"``) and the path."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, after a resumable checkpoint of ``step`` was saved in ``run_dir``.

    A subclass of :class:`KeyboardInterrupt`, so code that does not know it still stops; the
    command line turns it into the message ``interrupted at step N; resume with: …`` and exit
    code 130.  ``cut_short``: a second Ctrl-C stopped the run in the middle of a step, which
    was not saved; ``step`` is then the last checkpoint's, None when there is none (a resume
    starts from the beginning).
    """

    def __init__(self, step: int | None, run_dir: str | Path, *, cut_short: bool = False) -> None:
        if not cut_short:
            text = f"interrupted at step {step}; checkpoint in {run_dir}"
        elif step is None:
            text = f"interrupted mid-step before the first checkpoint of {run_dir}"
        else:
            text = f"interrupted mid-step; the last checkpoint in {run_dir} is step {step}"
        super().__init__(text)
        self.step = None if step is None else int(step)
        self.run_dir = Path(run_dir)
        self.cut_short = cut_short


# ----------------------------------------------------------------------------- the marker

def write_marker(path: PathLike, kind: str, **extra: str) -> Path:
    """Mark the folder ``path`` (created if needed) as a ``kind`` folder made by this tool
    (``extra``: more fields, e.g. a run directory's ``layout``)."""
    from metasparsity import __version__

    doc = {"kind": kind, "version": MARKER_VERSION, "metasparsity_version": __version__, **extra}
    return atomic_write_text(Path(path) / MARKER_FILE, json.dumps(doc) + "\n")


def read_marker(path: PathLike) -> dict[str, Any] | None:
    """The marker of folder ``path`` (``kind`` and ``version``), or None: missing or malformed."""
    p = Path(path) / MARKER_FILE
    try:
        if not p.is_file() or p.stat().st_size > 65536:
            return None
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("kind"), str):
        return None
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        return None
    return doc


def made_by_us(path: PathLike, kind: str | None = None) -> bool:
    """Whether folder ``path`` holds a valid marker (of ``kind``, when given)."""
    doc = read_marker(path)
    return doc is not None and (kind is None or doc["kind"] == kind)


# ----------------------------------------------------------------------------- the rule

def _real(path: PathLike) -> Path:
    return Path(os.path.realpath(os.fspath(path)))


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (OSError, ValueError):
        return None


def _same(a: os.stat_result | None, b: os.stat_result | None) -> bool:
    return a is not None and b is not None and (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _inside(inner: Path, outer: Path, outer_stat: os.stat_result | None) -> bool:
    """``inner`` lies strictly inside ``outer`` (by name, or by identity of an existing parent)."""
    if outer in inner.parents:
        return True
    return outer_stat is not None and any(_same(_stat(p), outer_stat) for p in inner.parents)


def overlap(output: PathLike, input: PathLike) -> str | None:
    """How ``output`` overlaps ``input``: ``"is"``, ``"contains"``, ``"lies inside"``, or None.

    Real paths are compared (symbolic links and ``..`` resolved), and existing folders also by
    identity (device and inode), which catches a second name of the same folder (bind mounts,
    case-insensitive file systems).
    """
    o, i = _real(output), _real(input)
    so, si = _stat(o), _stat(i)
    if o == i or _same(so, si):
        return "is"
    if _inside(o, i, si):
        return "lies inside"
    if _inside(i, o, so):
        return "contains"
    return None


def check_outputs_vs_inputs(outputs: Iterable[Labelled], inputs: Iterable[Labelled]) -> None:
    """Refuse (one-line :class:`UserError`) an output that equals, contains or lies inside an
    input.  Entries whose path is None or empty are skipped."""
    inputs = [(label, p) for label, p in inputs if p not in (None, "")]
    for out_label, out in outputs:
        if out in (None, ""):
            continue
        for in_label, inp in inputs:
            how = overlap(out, inp)
            if how is None:
                continue
            relation = {"is": "is the same path as", "contains": "contains",
                        "lies inside": "lies inside"}[how]
            raise UserError(f"{out_label} {out} {relation} {in_label} {inp}: an output must never "
                            f"equal, contain or lie inside an input; choose another {out_label}")


def check_parents(path: PathLike, label: str = "--out") -> None:
    """Refuse a ``path`` that is a symbolic link to nothing (dangling, or a loop), one inside a
    run directory's ``checkpoints`` folder, or one below a regular file (it could never be
    created there)."""
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise UserError(f"{label} {p} is a symbolic link to nothing (its target is missing, or "
                        f"it loops); remove the link or choose another {label}")
    for parent in (p, *p.parents) if p.is_dir() or not p.exists() else ():  # (a file: named so)
        if parent.name == "checkpoints" and is_run_dir(parent.parent):
            raise UserError(f"{label} {p} lies inside the checkpoints of the run {parent.parent}, "
                            f"which its training rotates (and would delete); choose another "
                            f"{label}")
    for parent in p.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise UserError(f"{label} {p}: {parent} is not a folder")
            return


def check_output_file(path: PathLike, suffixes: Iterable[str], label: str = "--out") -> None:
    """Refuse a ``path`` that cannot be the file to write: a name ending in none of
    ``suffixes`` (e.g. ``(".png", ".svg")``), an existing folder, or what
    :func:`check_parents` refuses."""
    p, suffixes = Path(path), tuple(suffixes)
    if p.suffix not in suffixes:
        raise UserError(f"{label} {p}: give a {' or '.join(suffixes)} file")
    if p.is_dir():
        raise UserError(f"{label} {p} is a folder; give the {' or '.join(suffixes)} file to "
                        "write")
    check_parents(p, label)


def check_output_dir(path: PathLike, kind: str, *, overwrite: bool = False,
                     inputs: Iterable[Labelled] = (), label: str = "--out",
                     what: str | None = None) -> Path:
    """Validate (without touching the disk) an output folder of ``kind`` that a command creates
    or, with ``overwrite``, replaces.  Returns ``Path(path)``.

    Refused: an overlap with ``inputs``; a path that is, or lies under, a regular file; an
    existing non-empty folder without ``overwrite``; with ``overwrite``, a non-empty folder that
    does not hold this tool's marker of ``kind``.
    """
    p = Path(path)
    what = what or KIND_NAMES.get(kind, "output folder")
    check_outputs_vs_inputs([(label, p)], inputs)
    check_parents(p, label)
    if p.exists() and not p.is_dir():
        raise UserError(f"{label} {p} exists and is not a directory")
    if p.is_dir() and any(p.iterdir()):
        if not overwrite:
            raise UserError(f"{what} {p} already exists and is not empty; pass --overwrite to "
                            "replace it")
        check_replaceable(p, kind, label=label)
    return p


def check_replaceable(path: PathLike, kind: str, *, label: str = "--overwrite") -> None:
    """Refuse to delete folder ``path`` unless it holds this tool's marker of ``kind``."""
    p = Path(path)
    doc = read_marker(p)
    what = KIND_NAMES.get(kind, kind)
    if doc is None:
        raise UserError(f"--overwrite: {p} is not a {what} made by metasparsity (no valid "
                        f"{MARKER_FILE} marker); refusing to delete it: remove it yourself or "
                        f"choose another {label}")
    if doc["kind"] != kind:
        theirs = KIND_NAMES.get(doc["kind"], doc["kind"])
        raise UserError(f"--overwrite: {p} is a {theirs}, not a {what}; refusing to replace it: "
                        f"choose another {label}")


def config_inputs(cfg: Any) -> list[Labelled]:
    """The paths a config reads: ``data.root``, ``data.cache_dir``, ``model.pretrained``.

    ``data.cache_dir`` is also written to (rendered samples): a path that is, or lies under, a
    regular file is refused here, before anything is written.
    """
    data, model = getattr(cfg, "data", None), getattr(cfg, "model", None)
    cache = getattr(data, "cache_dir", None)
    if cache not in (None, ""):
        if Path(cache).exists() and not Path(cache).is_dir():
            raise UserError(f"data.cache_dir {cache} exists and is not a folder")
        check_parents(cache, "data.cache_dir")
    return [("data.root", getattr(data, "root", None)),
            ("data.cache_dir", cache),
            ("model.pretrained", getattr(model, "pretrained", None))]


def run_inputs(run_dir: PathLike, label: str = "the source run's") -> list[Labelled]:
    """What a command reads from the run ``run_dir``: its ``config.yaml`` and ``checkpoints/``.

    Outputs may go into new folders of a source run (``RUN/pruned``, ``RUN/finetune_depth``),
    never over these.
    """
    p = Path(run_dir)
    return [(f"{label} {CONFIG_FILE}", p / CONFIG_FILE),
            (f"{label} {CHECKPOINTS_DIR}", p / CHECKPOINTS_DIR)]


# ----------------------------------------------------------------------------- run directories

def is_run_dir(path: str | Path) -> bool:
    """A folder that can be resumed: it holds ``config.yaml`` (with or without the marker)."""
    return (Path(path) / CONFIG_FILE).is_file()


LAYOUTS = {"training": "a training run (train, meta-train or finetune)",
           "sweep": "a sweep-lambda run", "compare": "a compare (or demo) run"}
"""What a run directory holds, by the commands that continue it: one model's training, a λ
sweep of such runs, or a comparison of methods over seeds."""


def run_layout(path: PathLike) -> str | None:
    """The layout of run directory ``path`` (a key of :data:`LAYOUTS`): its marker's, or for a
    run written before markers had it, what it holds; None while that cannot tell yet."""
    p = Path(path)
    doc = read_marker(p)
    if doc is not None and doc.get("layout") in LAYOUTS:
        return doc["layout"]
    if (p / CHECKPOINTS_DIR).is_dir() or (p / "metrics.jsonl").is_file():
        return "training"
    if (p / "sweep.json").is_file() or (p / "dense_mtl").is_dir():
        return "sweep"
    if any(p.glob("seed_*")):
        return "compare"
    return None


def check_run_dir(path: str | Path, *, overwrite: bool = False, resume: bool = False,
                  inputs: Iterable[Labelled] = (), label: str | None = None,
                  layout: str | None = None,
                  exists_hint: str = "pass --overwrite to replace it or --resume to continue it"
                  ) -> Path:
    """Validate (without touching the disk) that ``path`` can be used as a run directory.

    ``inputs``: what the command reads (``(label, path)``); the run directory may not equal,
    contain or lie inside any of them (for ``resume`` too).  ``label`` names ``path`` in
    messages (default ``--resume`` / ``--out``).  ``layout``: what the resuming command
    continues (:data:`LAYOUTS`); a run of another layout is refused (a training run continued
    by ``compare`` would lose its ``results.json``, and the other way round).  ``exists_hint``:
    what the refusal of an existing non-empty ``path`` advises (the command's own options).
    """
    p = Path(path)
    if resume:
        label = label or "--resume"
        require_path(path, label)
        if p.exists() and not p.is_dir():
            raise UserError(f"{label} {p}: not a directory")
        if not p.is_dir():
            raise UserError(f"{label} {p}: no such run directory")
        if not is_run_dir(p):
            raise UserError(f"{label} {p}: not a run directory (no {CONFIG_FILE})")
        if read_marker(p) is None and not _has_run_contents(p):
            # a config.yaml alone does not make a folder ours: resuming would mark it, and a
            # later --overwrite could then delete the user's other files in it
            raise UserError(f"{label} {p}: not a run directory made by metasparsity (no "
                            f"{MARKER_FILE} marker, no checkpoints or metrics to resume)")
        found = run_layout(p)
        if layout is not None and found is not None and found != layout:
            raise UserError(f"{label} {p}: this is {LAYOUTS[found]}, not "
                            f"{LAYOUTS[layout]}; continue it with its own command")
        check_outputs_vs_inputs([(label, p)], inputs)
        return p
    label = label or "--out"
    require_path(path, label)
    check_outputs_vs_inputs([(label, p)], inputs)
    check_parents(p, label)
    if p.exists() and not p.is_dir():
        raise UserError(f"run directory {p} exists and is not a directory")
    if p.is_dir() and any(p.iterdir()):
        if not overwrite:
            raise UserError(f"run directory {p} already exists; {exists_hint}")
        check_replaceable(p, RUN, label=label)
    return p


def create_run_dir(path: str | Path, config_yaml: str, *, overwrite: bool = False,
                   layout: str | None = None, lock: RunLock | None = None) -> Path:
    """Create (or, with ``overwrite``, empty) ``path``, mark it (with its ``layout``, a key of
    :data:`LAYOUTS`, when given), and write the resolved config; ``lock`` takes the new
    folder (and, first, the one it replaces: a run another process writes is not replaced)."""
    p = Path(path)
    check_run_dir(p, overwrite=overwrite)
    if p.is_dir() and overwrite and any(p.iterdir()):
        if lock is not None:
            lock.acquire(p)  # not a run another process is writing now ...
        check_not_in_use(p, held=lock is not None)  # ... nor one inside it (a sub-run)
        shutil.rmtree(p)
    p.mkdir(parents=True, exist_ok=True)
    if lock is not None:
        lock.acquire(p)
    # before config.yaml: a folder with our config.yaml is always marked
    write_marker(p, RUN, **({"layout": layout} if layout else {}))
    atomic_write_text(p / CONFIG_FILE, config_yaml)
    return p


LOCK_FILE = ".metasparsity.lock"
"""The file a training process locks in its run directory (:class:`RunLock`)."""

_HELD: set[int] = set()  # the descriptors of this process's run locks


def _try_lock(path: Path) -> int | None:
    """A descriptor of ``path`` (created if missing) holding an exclusive ``flock``; raises
    BlockingIOError when another holds it; None where the file system has no locks."""
    import fcntl

    # read-write: an exclusive flock on NFS (emulated by POSIX locks) needs a writable file
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError:  # no locks on this file system
        os.close(fd)
        return None
    return fd


def _in_use(path: PathLike) -> UserError:
    return UserError(f"{path} is in use: another metasparsity process is writing this run now "
                     "(or this process holds it: a RunSession not closed); wait for it to end, "
                     "or stop it, first")


class RunLock:
    """An exclusive lock on a run directory while a process writes into it: ``flock`` on its
    :data:`LOCK_FILE` (the operating system drops it when the process ends, however it ends).
    A second process that would write into the same run (``--resume`` or ``--overwrite`` of a
    run being trained) is refused with a :class:`UserError` instead of replacing the first
    one's log and deleting its checkpoint in progress.  Where the file system has no locks (or
    ``fcntl`` does not exist), runs go unlocked.  DataLoader workers forked while it is held
    drop their copy (:func:`release_inherited_locks`), so that a killed process's workers do
    not keep its run locked."""

    def __init__(self) -> None:
        self._fd: int | None = None

    def acquire(self, path: PathLike) -> None:
        """Lock the run directory ``path`` (it exists), releasing any one held before."""
        self.release()
        try:
            import fcntl  # noqa: F401
        except ImportError:  # pragma: no cover - not a POSIX system
            return
        try:
            self._fd = _try_lock(Path(path) / LOCK_FILE)
        except BlockingIOError:
            raise _in_use(path) from None
        if self._fd is not None:
            _HELD.add(self._fd)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            _HELD.discard(fd)
            os.close(fd)  # closing the last descriptor drops the flock


def release_inherited_locks() -> None:
    """In a process forked from one that holds run locks (a DataLoader worker): close its copies
    of their descriptors, so that only the training process holds them."""
    for fd in list(_HELD):
        _HELD.discard(fd)
        try:
            os.close(fd)
        except OSError:
            pass


def check_not_in_use(path: PathLike, *, held: bool = False) -> None:
    """Refuse (:class:`UserError`) to replace a folder holding a run that a process is writing
    now (its own or a sub-run's :data:`LOCK_FILE` locked), e.g. a sweep's ``--overwrite``;
    ``held``: the caller holds the folder's own lock (only the sub-runs' are tried)."""
    try:
        import fcntl  # noqa: F401
    except ImportError:  # pragma: no cover - not a POSIX system
        return
    own = Path(path) / LOCK_FILE
    for lock in Path(path).rglob(LOCK_FILE):
        if held and lock == own:
            continue
        try:
            fd = _try_lock(lock)
        except BlockingIOError:
            raise _in_use(lock.parent) from None
        except OSError:
            continue
        if fd is not None:
            os.close(fd)


def remove_leftovers(run_dir: PathLike) -> list[str]:
    """Remove what a training process killed while writing left in ``run_dir``: the temporary
    copies of its own files (``.results.json.….tmp``, ``.config.yaml.….tmp``, the marker's;
    ``checkpoints/.last.….tmp``, ``.best.….tmp`` and ``checkpoints/.step_N.tmp/``), never
    complete (the writes rename them into place when done), and nothing another command writes
    there (``evaluate``'s, ``prune``'s).  Call it holding the run's :class:`RunLock`.  Returns
    their names."""
    own = {Path(run_dir): ("results.json", CONFIG_FILE, MARKER_FILE),
           Path(run_dir) / "checkpoints": ("last", "best")}
    gone = []
    for folder, names in own.items():
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            mine = any(p.name.startswith(f".{n}.") and p.name.endswith(".tmp") for n in names)
            step = folder.name == "checkpoints" and re.fullmatch(r"\.step_\d+\.tmp", p.name)
            if step and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif mine and p.is_file():
                p.unlink()
            else:
                continue
            gone.append(p.name)
    return gone


def config_diff(old: Any, new: Any, prefix: str = "") -> dict[str, list[Any]]:
    """``{dotted key: [old, new]}`` where two nested config dicts differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: dict[str, list[Any]] = {}
        for k in list(old) + [k for k in new if k not in old]:
            out.update(config_diff(old.get(k), new.get(k), f"{prefix}{k}."))
        return out
    return {} if old == new else {prefix.rstrip("."): [old, new]}


def _has_run_contents(p: Path) -> bool:
    """A run directory of a version before the marker: it has checkpoints or a metrics log."""
    return (p / "checkpoints").is_dir() or (p / "metrics.jsonl").is_file()


def update_run_config(path: str | Path, config_yaml: str) -> dict[str, list[Any]]:
    """Atomically replace a resumed run's ``config.yaml``; return ``{key: [old, new]}`` changed.

    A run directory made before the marker existed gets it here: it is being resumed, so this
    tool writes into it from now on.
    """
    p = Path(path) / CONFIG_FILE
    try:
        old = yaml.safe_load(p.read_text(encoding="utf-8")) if p.is_file() else {}
    except yaml.YAMLError:
        old = {}
    changed = config_diff(old or {}, yaml.safe_load(config_yaml) or {})
    if read_marker(p.parent) is None and _has_run_contents(p.parent):
        layout = run_layout(p.parent)
        write_marker(p.parent, RUN, **({"layout": layout} if layout else {}))
    if changed or not p.is_file():
        atomic_write_text(p, config_yaml)
    return changed


def config_text(path: str | Path) -> str | None:
    """The text of a run directory's ``config.yaml`` (None without one)."""
    p = Path(path) / CONFIG_FILE
    return p.read_text(encoding="utf-8") if p.is_file() else None


@contextmanager
def config_restored_on_refusal(path: str | Path, before: str | None) -> Iterator[None]:
    """A continued sweep or comparison whose ``config.yaml`` this invocation rewrote from
    ``before`` (None: it did not): a :class:`UserError` from one of its sub-runs (refused before
    that sub-run changed anything) puts ``before`` back, so the refused overrides are not
    recorded as the settings the run follows (the sub-runs finished meanwhile are reused as
    they are, as after any change of config)."""
    try:
        yield
    except UserError:
        if before is not None:
            atomic_write_text(Path(path) / CONFIG_FILE, before)
        raise


def require_run_dir(path: str | Path, *, need: tuple[str, ...] = (CONFIG_FILE,)) -> Path:
    """Check that ``path`` is an existing run directory holding the files in ``need``."""
    p = Path(path)
    require_path(path, "run directory")
    if p.exists() and not p.is_dir():
        raise UserError(f"run directory {p}: not a directory")
    if not p.is_dir():
        raise UserError(f"run directory {p} does not exist")
    for name in need:
        if not (p / name).exists():
            raise UserError(f"{p} is not a complete run directory: {name} is missing")
    return p
