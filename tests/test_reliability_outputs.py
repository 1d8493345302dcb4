"""Issue 13, Deliver 1 and 5: outputs never destroy inputs, and errors of the operating system
are one line and exit code 2.

1. An output never equals, contains or lies inside one of the command's inputs (real paths are
   compared); ``--overwrite`` replaces only a folder that the tool made, recognised by its marker
   ``.metasparsity.json`` (kind and version), never by a file name.  Refused: exit code 2, one
   line naming the path, the inputs byte-identical.
5. Permission, read-only, full disk, a path under a file: one line naming the path, exit code 2.

Plus: a second Ctrl-C during the cleanup of the first still exits 130 with one line.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import time
from pathlib import Path

import pytest
from tests.data.fixtures import write_celebamaskhq_raw
from tests.recipes.micro import MICRO, cli, finish, start_long_training

from metasparsity.builders import build_model
from metasparsity.config import load_config
from metasparsity.training.checkpoint import save_checkpoint
from metasparsity.training.session import STOPPING
from metasparsity.utils.errors import UserError
from metasparsity.utils.rundir import (
    COMPACT_MODEL,
    MARKER_FILE,
    PREPARED_DATA,
    RUN,
    check_outputs_vs_inputs,
    create_run_dir,
    made_by_us,
    overlap,
    read_marker,
    write_marker,
)

SEEN = ["segment", "depth", "edge", "has_sphere", "many_objects"]


def snapshot(*roots: Path) -> dict[str, bytes | None]:
    """Every file (content) and folder (None) under ``roots``, keyed by path."""
    out: dict[str, bytes | None] = {}
    for root in roots:
        root = Path(root)
        out[str(root)] = None if root.is_dir() else root.read_bytes()
        if root.is_dir():
            for p in sorted(root.rglob("*")):
                out[str(p)] = None if p.is_dir() else p.read_bytes()
    return out


def one_line_error(err: str, command: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"metasparsity {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


def refused(capsys, args: list, command: str, names: list, untouched: list[Path]) -> str:
    """Run ``args``; assert exit 2, one line naming every one of ``names``, and ``untouched``
    byte-identical."""
    before = snapshot(*untouched)
    assert cli(*args) == 2
    line = one_line_error(capsys.readouterr().err, command)
    for name in names:
        assert str(name) in line, (name, line)
    assert snapshot(*untouched) == before
    return line


def make_run(path: Path) -> Path:
    """A run directory (made by the tool: it holds the marker) with an untrained checkpoint."""
    cfg = load_config(None, MICRO)
    create_run_dir(path, cfg.to_yaml())
    save_checkpoint(path, 4, build_model(cfg, SEEN).state_dict(), {}, {"tasks": SEEN}, best=True)
    (path / "metrics.jsonl").write_text('{"step": 4, "kind": "train"}\n')
    return path


@pytest.fixture
def src_run(tmp_path):
    return make_run(tmp_path / "runs" / "meta")


# ----------------------------------------------------------------------------- the rule itself

def test_overlap_compares_real_paths(tmp_path):
    a = tmp_path / "a"
    (a / "b").mkdir(parents=True)
    (tmp_path / "link").symlink_to(a)
    assert overlap(a, a) == "is"
    assert overlap(tmp_path / "link", a) == "is"
    assert overlap(a / ".." / "a", a) == "is"
    assert overlap(a / "b" / "new", a) == "lies inside"
    assert overlap(tmp_path / "link" / "b", a) == "lies inside"
    assert overlap(tmp_path, a / "b") == "contains"
    assert overlap(tmp_path / "ab", a) is None  # a prefix of the name is not a parent
    assert overlap(a / "b", tmp_path / "other") is None
    check_outputs_vs_inputs([("--out", tmp_path / "x")], [("--src", a), ("data.root", None)])
    with pytest.raises(UserError, match="lies inside --src"):
        check_outputs_vs_inputs([("--out", tmp_path / "link" / "new")], [("--src", a)])


def test_the_marker_has_kind_and_version_and_a_malformed_one_does_not_count(tmp_path):
    write_marker(tmp_path, RUN)
    doc = read_marker(tmp_path)
    assert doc["kind"] == "run" and doc["version"] == 1
    assert made_by_us(tmp_path, RUN) and not made_by_us(tmp_path, COMPACT_MODEL)
    for text in ["", "[]", '{"kind": "run"}', '{"kind": "run", "version": true}',
                 '{"kind": 3, "version": 1}', "not json"]:
        (tmp_path / MARKER_FILE).write_text(text)
        assert not made_by_us(tmp_path), text


# ----------------------------------------------------------------------------- the cases

def test_prepare_into_the_folder_holding_the_source_is_refused(tmp_path, capsys):
    """``data prepare celebamaskhq --src P/raw --out P --overwrite`` deleted P/raw."""
    p = tmp_path / "P"
    write_celebamaskhq_raw(p / "raw", ids=(0, 1, 2), mask_size=16, image_size=16)
    write_marker(p, PREPARED_DATA)  # even a folder we prepared: it holds the source now
    refused(capsys, ["data", "prepare", "celebamaskhq", "--src", p / "raw", "--out", p,
                     "--overwrite", "--no-progress", "--size", "16"],
            "data", [p, "contains --src", p / "raw"], [p])


def test_prepare_inside_the_source_or_into_it_is_refused(tmp_path, capsys):
    raw = write_celebamaskhq_raw(tmp_path / "raw", ids=(0, 1, 2), mask_size=16,
                                 image_size=16)["root"]
    for out in [raw / "prepared", raw]:
        refused(capsys, ["data", "prepare", "celebamaskhq", "--src", raw, "--out", out,
                         "--overwrite", "--no-progress", "--size", "16"],
                "data", [out, raw], [tmp_path])


def test_prepare_overwrites_only_a_prepared_folder(tmp_path, capsys):
    raw = write_celebamaskhq_raw(tmp_path / "raw", ids=(0, 1, 2), mask_size=16,
                                 image_size=16)["root"]
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    args = ["data", "prepare", "celebamaskhq", "--src", raw, "--out", out, "--no-progress",
            "--size", "16", "--overwrite"]
    refused(capsys, args, "data", [out, "not a prepared data folder"], [tmp_path])
    out = tmp_path / "prepared"
    assert cli(*args[:6], out, *args[7:-1]) == 0
    assert read_marker(out)["kind"] == PREPARED_DATA
    assert cli(*args[:6], out, *args[7:]) == 0  # our own folder: replaced


def test_prune_into_the_run_itself_is_refused(src_run, capsys):
    """``prune runs/X --out runs/X --overwrite`` deleted the run's checkpoints and config."""
    refused(capsys, ["prune", src_run, "--out", src_run, "--overwrite", "--no-latency"],
            "prune", [src_run, "config.yaml"], [src_run])


def test_prune_overwrites_only_a_compact_model_folder(src_run, tmp_path, capsys):
    """``prune RUN --out some_folder --overwrite`` deleted unrelated files."""
    folder = tmp_path / "some_folder"
    folder.mkdir()
    (folder / "thesis.tex").write_text("three years of work")
    refused(capsys, ["prune", src_run, "--out", folder, "--overwrite", "--no-latency"],
            "prune", [folder, "not a compact model folder"], [folder, src_run])
    other = make_run(tmp_path / "other_run")  # one of ours, but of another kind
    refused(capsys, ["prune", src_run, "--out", other, "--overwrite", "--no-latency"],
            "prune", [other, "is a run directory, not a compact model folder"], [other, src_run])


def test_prune_into_a_folder_holding_the_run_is_refused(src_run, capsys):
    runs = src_run.parent
    write_marker(runs, COMPACT_MODEL)  # even when marked: the source lies inside it
    refused(capsys, ["prune", src_run, "--out", runs, "--overwrite", "--no-latency"],
            "prune", [runs, "contains"], [runs])


def test_finetune_into_its_source_run_is_refused(src_run, capsys):
    """``finetune runs/meta --tasks depth --out runs/meta --overwrite`` replaced the source."""
    refused(capsys, ["finetune", src_run, "--tasks", "depth", "--out", src_run, "--overwrite"],
            "finetune", [src_run, "config.yaml"], [src_run])
    refused(capsys, ["finetune", src_run, "--tasks", "depth", "--out", src_run.parent,
                     "--overwrite"],
            "finetune", [src_run.parent, "contains"], [src_run])
    refused(capsys, ["finetune", src_run, "--tasks", "depth", "--out",
                     src_run / "checkpoints" / "best", "--overwrite"],
            "finetune", ["lies inside", "checkpoints"], [src_run])
    refused(capsys, ["finetune", src_run, "--resume", src_run],
            "finetune", [src_run, "config.yaml"], [src_run])


@pytest.mark.parametrize("command", ["train", "meta-train", "sweep-lambda", "compare", "demo"])
def test_overwrite_of_a_folder_with_a_config_yaml_not_made_by_us_is_refused(tmp_path, capsys,
                                                                            command):
    """``--overwrite`` deleted a folder holding ``config.yaml`` (``foo: bar``) and ``code.py``."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "config.yaml").write_text("foo: bar\n")
    (folder / "code.py").write_text("print('precious')\n")
    refused(capsys, [command, "--out", folder, "--overwrite", *MICRO], command,
            [folder, "not a run directory made by metasparsity", MARKER_FILE], [folder])


def test_resume_of_a_folder_with_only_a_valid_config_yaml_is_refused_and_leaves_it_unmarked(
        tmp_path, capsys):
    """Resuming it would mark it as ours, and a later ``--overwrite`` would delete its files."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "config.yaml").write_text("name: mine\n")
    (folder / "code.py").write_text("print('precious')\n")
    refused(capsys, ["train", "--resume", folder], "train",
            [folder, "not a run directory made by metasparsity"], [folder])
    assert not (folder / MARKER_FILE).exists()


def test_a_run_of_the_previous_version_resumes_and_is_then_ours(tmp_path, capsys):
    run = tmp_path / "old"
    assert cli("train", "--out", run, *MICRO, "train.max_steps=2") == 0
    (run / MARKER_FILE).unlink()  # as the previous version wrote it
    capsys.readouterr()
    refused(capsys, ["train", "--out", run, "--overwrite", *MICRO], "train",
            [run, "not a run directory"], [run])
    assert cli("train", "--resume", run, "train.max_steps=5") == 0  # resume needs no marker
    assert made_by_us(run, RUN)
    assert cli("train", "--out", run, "--overwrite", *MICRO, "train.max_steps=1") == 0
    assert made_by_us(run, RUN) and (run / "results.json").is_file()


@pytest.mark.parametrize(
    ("command", "out", "override", "relation"),
    [
        ("train", "cache", "data.cache_dir={out}", "is the same path as data.cache_dir"),
        ("train", "run", "data.cache_dir={out}/cache", "contains data.cache_dir"),
        ("meta-train", "run", "model.pretrained={out}/r18.pth", "contains model.pretrained"),
        ("sweep-lambda", "data/run", "data.root={tmp}/data", "lies inside data.root"),
        ("compare", "shared/run", "data.cache_dir={tmp}/shared", "lies inside data.cache_dir"),
        ("train", "run", "--config={out}/my.yaml", "contains --config"),
    ],
)
def test_out_may_not_overlap_a_path_of_the_config(tmp_path, capsys, command, out, override,
                                                  relation):
    out = tmp_path / out
    out.mkdir(parents=True)
    write_marker(out, RUN)  # even a run directory of ours
    (out / "my.yaml").write_text("name: mine\n")
    (out / "r18.pth").write_bytes(b"weights")
    arg = override.format(out=out, tmp=tmp_path)
    extra = arg.split("=", 1) if arg.startswith("--") else [arg]
    refused(capsys, [command, "--out", out, "--overwrite", *extra, *MICRO], command,
            [out, relation], [tmp_path])


def test_resume_may_not_overlap_a_path_of_the_config(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    refused(capsys, ["train", "--resume", run, f"data.cache_dir={run}"], "train",
            [run, "data.cache_dir"], [run])


def test_demo_and_preview_outputs_may_not_overlap_their_inputs(tmp_path, capsys):
    out = tmp_path / "demo"
    refused(capsys, ["demo", "--out", out, f"data.cache_dir={out}/cache"], "demo",
            [out, "contains data.cache_dir"], [tmp_path])
    cache = tmp_path / "cache"
    cache.mkdir()
    refused(capsys, ["data", "preview", "--out", cache / "p.png", f"data.cache_dir={cache}"],
            "data", [cache, "lies inside data.cache_dir"], [tmp_path])


def compact_model_and_image(tmp_path: Path) -> tuple[Path, Path]:
    """A compact model folder ``tmp_path/model`` and an 8×8 image ``tmp_path/photos/img.png``."""
    import numpy as np
    from PIL import Image
    from tests.test_export_predict import sparse_model

    from metasparsity.export import save_compact_model

    model_dir = tmp_path / "model"
    save_compact_model(sparse_model(), model_dir,
                       {"tasks": [], "image_size": 32,
                        "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3}})
    img = tmp_path / "photos" / "img.png"
    img.parent.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    return model_dir, img


def test_predict_never_writes_over_the_model_or_files_it_did_not_make(tmp_path, capsys):
    model_dir, img = compact_model_and_image(tmp_path)
    refused(capsys, ["predict", model_dir, img, "--out", model_dir], "predict",
            [model_dir, "MODEL_DIR"], [tmp_path])
    refused(capsys, ["predict", model_dir, img, "--out", img.parent], "predict",
            [img.parent, "contains IMAGE"], [tmp_path])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "img_segment.npy").write_bytes(b"my own array")
    refused(capsys, ["predict", model_dir, img, "--out", mine], "predict",
            [mine, "not a predictions folder"], [tmp_path])
    ours = tmp_path / "pred"
    assert cli("predict", model_dir, img, "--out", ours) == 0
    assert made_by_us(ours, "predictions")
    assert cli("predict", model_dir, img, "--out", ours) == 0  # our own files: replaced
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli("predict", model_dir, img, "--out", empty) == 0  # an empty folder: taken
    assert made_by_us(empty, "predictions")


def test_predict_refuses_a_non_empty_folder_it_did_not_make(tmp_path, capsys, src_run):
    """``predict MODEL img.png --out DIR`` added its files to any folder (``keep.txt``, a run)."""
    model_dir, img = compact_model_and_image(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("my notes")
    refused(capsys, ["predict", model_dir, img, "--out", mine], "predict",
            ["--out", mine, "not a predictions folder"], [tmp_path])
    refused(capsys, ["predict", model_dir, img, "--out", src_run], "predict",
            ["--out", src_run, "is a run directory, not a predictions folder"], [tmp_path])
    refused(capsys, ["predict", model_dir, img, "--out", tmp_path / "runs"], "predict",
            ["--out", tmp_path / "runs", "not a predictions folder"], [tmp_path])


def test_preview_replaces_an_existing_file_only_with_overwrite(src_run, capsys):
    """``data preview --out RUN/samples.png`` silently replaced the run's file."""
    png = src_run / "samples.png"
    png.write_bytes(b"the run's own samples")
    refused(capsys, ["data", "preview", "--out", png, "-n", "1", *MICRO], "data",
            ["--out", png, "already exists", "--overwrite"], [src_run])
    assert cli("data", "preview", "--out", png, "-n", "1", "--overwrite", *MICRO) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in src_run.iterdir() if p.name.startswith(".samples")] == []


@pytest.mark.parametrize(("args", "command", "label"), [
    (["prune", "{run}", "--out", ""], "prune", "--out"),
    (["prune", ""], "prune", "run directory"),
    (["evaluate", ""], "evaluate", "run directory"),
    (["finetune", "", "--tasks", "depth"], "finetune", "run directory"),
    (["data", "preview", "--out", "", "-n", "1"], "data", "--out"),
    (["data", "preview", "--config", "", "-n", "1"], "data", "--config"),
    (["predict", "{model}", "{img}", "--out", ""], "predict", "--out"),
    (["predict", "", "{img}"], "predict", "MODEL_DIR"),
    (["predict", "{model}", ""], "predict", "IMAGE"),
    (["data", "prepare", "celebamaskhq", "--src", "", "--out", "prepared"], "data", "--src"),
    (["data", "prepare", "celebamaskhq", "--src", "{run}", "--out", ""], "data", "--out"),
    (["train", "--config", ""], "train", "--config"),
])
def test_an_empty_path_is_refused_naming_the_option(tmp_path, capsys, monkeypatch, src_run,
                                                     args, command, label):
    """``--out ""`` fell back to the default location; an empty RUN_DIR read as ``.``."""
    model_dir, img = compact_model_and_image(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = [a.format(run=src_run, model=model_dir, img=img) for a in args]
    overrides = MICRO if command in ("evaluate", "finetune", "train") or "preview" in args else []
    line = refused(capsys, [*args, *overrides], command, [f"{label}: empty path"], [tmp_path])
    assert "does not exist" not in line


def test_a_file_for_a_directory_or_a_directory_for_a_file_is_named_so(tmp_path, capsys,
                                                                       src_run):
    """``evaluate FILE`` said "does not exist"; an image folder "no such file"; ``--config DIR``
    "missing config file"."""
    model_dir, img = compact_model_and_image(tmp_path)
    f = tmp_path / "notes.txt"
    f.write_text("a file")
    for args, command in [(["evaluate", f], "evaluate"), (["prune", f], "prune"),
                          (["finetune", f, "--tasks", "depth"], "finetune"),
                          (["predict", f, img, "--out", tmp_path / "p"], "predict")]:
        line = refused(capsys, args, command, [f, "not a directory"], [tmp_path])
        assert "does not exist" not in line
    line = refused(capsys, ["predict", model_dir, img.parent, "--out", tmp_path / "p"], "predict",
                   [img.parent, "is a directory"], [tmp_path])
    assert "no such file" not in line
    for command in [["train", "--out", tmp_path / "run"], ["data", "preview", "-n", "1"]]:
        line = refused(capsys, [*command, "--config", img.parent, *MICRO], command[0],
                       [img.parent, "is a directory"], [tmp_path])
        assert "missing" not in line
    from metasparsity.utils.io import load_json  # every text file read names a folder so
    with pytest.raises(UserError, match=r"results file .* is a directory, not a file"):
        load_json(img.parent, what="results file")
    (src_run / "checkpoints").rename(tmp_path / "ck")
    (src_run / "checkpoints").write_text("not a folder")
    refused(capsys, ["evaluate", src_run], "evaluate",
            [src_run / "checkpoints", "not a directory"], [tmp_path])


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_an_unwritable_preview_names_the_path_given_not_a_temporary_file(capsys):
    line = refused(capsys, ["data", "preview", "--out", "/proc/x.png", "-n", "1", *MICRO], "data",
                   ["/proc/x.png"], [])
    assert ".tmp" not in line


def test_evaluate_output_may_not_overlap_the_data(src_run, capsys):
    out = src_run / "eval_test.json"
    refused(capsys, ["evaluate", src_run, f"data.cache_dir={out}"], "evaluate",
            [out, "data.cache_dir"], [src_run])


# ----------------------------------------------------------------------------- OS errors

def test_out_under_a_regular_file_is_refused_up_front(tmp_path, capsys, src_run):
    f = tmp_path / "notes.txt"
    f.write_text("a file")
    for args, command in [
        (["train", "--out", f / "run", *MICRO], "train"),
        (["meta-train", "--out", f / "sub" / "run", *MICRO], "meta-train"),
        (["demo", "--out", f / "demo", *MICRO], "demo"),
        (["prune", src_run, "--out", f / "model"], "prune"),
        (["data", "preview", "--out", f / "p.png", *MICRO], "data"),
    ]:
        line = refused(capsys, args, command, [f, "not a folder"], [tmp_path])
        assert str(args[args.index("--out") + 1]) in line


@pytest.mark.parametrize("link", ["dangling", "loop"])
def test_out_as_a_link_to_nothing_is_refused_up_front_and_leaves_no_staging_folder(
        tmp_path, capsys, src_run, link):
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "nowhere" / "x" if link == "dangling" else out)
    target = os.readlink(out)
    raw = tmp_path / "raw"
    write_celebamaskhq_raw(raw)
    for args, command in [
        (["train", "--out", out, *MICRO], "train"),
        (["prune", src_run, "--out", out, "--no-latency"], "prune"),
        (["data", "prepare", "celebamaskhq", "--src", raw, "--out", out, "--no-progress"], "data"),
    ]:
        refused(capsys, args, command, [out, "symbolic link to nothing"], [src_run, raw])
        assert os.readlink(out) == target
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "raw", "runs"]


def test_cache_dir_under_a_regular_file_is_refused_up_front(tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("a file")
    refused(capsys, ["train", "--out", tmp_path / "run", f"data.cache_dir={f}/cache", *MICRO],
            "train", [f"data.cache_dir {f}/cache", "not a folder"], [f])
    refused(capsys, ["train", "--out", tmp_path / "run", f"data.cache_dir={f}", *MICRO],
            "train", [f, "not a folder"], [f])
    assert not (tmp_path / "run").exists()


def _fail_mkdir_under(monkeypatch, root: Path, err: int, text: str) -> None:
    real = Path.mkdir

    def mkdir(self, *a, **kw):
        if self == root or root in self.parents:
            raise OSError(err, text, str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "mkdir", mkdir)


def test_read_only_out_is_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    out = tmp_path / "ro" / "run"
    _fail_mkdir_under(monkeypatch, tmp_path / "ro", errno.EROFS, "Read-only file system")
    line = refused(capsys, ["train", "--out", out, *MICRO], "train",
                   ["Read-only file system", out], [tmp_path])
    assert line == f"metasparsity train: error: Read-only file system: {out}"


def test_permission_denied_is_one_line_naming_the_path(tmp_path, capsys, monkeypatch, src_run):
    out = tmp_path / "locked" / "model"
    _fail_mkdir_under(monkeypatch, tmp_path / "locked", errno.EACCES, "Permission denied")
    refused(capsys, ["prune", src_run, "--out", out, "--no-latency"], "prune",
            ["Permission denied", tmp_path / "locked"], [src_run])


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as write(2) reports it: no path

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "run"
    line = refused(capsys, ["train", "--out", out, *MICRO], "train",
                   ["No space left on device", out], [])
    assert line.startswith("metasparsity train: error: No space left on device: ")


def test_an_os_error_deep_in_a_command_is_one_line(tmp_path, capsys, monkeypatch, src_run):
    import metasparsity.utils.io as io

    target = src_run / "eval_test.json"

    def denied(path, obj):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(io, "write_json", denied)
    line = refused(capsys, ["evaluate", src_run], "evaluate", [target], [src_run])
    assert line == f"metasparsity evaluate: error: Permission denied: {target}"


# ----------------------------------------------------------------------------- double Ctrl-C

@pytest.mark.parametrize("gap", ["after_message", "immediately"])
def test_a_second_ctrl_c_during_cleanup_still_exits_130_with_one_line(tmp_path, gap):
    run = tmp_path / "run"
    proc = start_long_training(run)
    proc.send_signal(signal.SIGINT)
    first = ""
    if gap == "after_message":
        while "interrupted at step" not in first and proc.poll() is None:
            first += proc.stderr.readline()  # the message is out: the process is cleaning up
    else:
        time.sleep(0.005)  # most likely while the checkpoint is being saved
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    _, rest = finish(proc)
    err = first + rest
    assert proc.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if lines and lines[0].startswith(STOPPING):  # the Ctrl-C came during a step
        lines = lines[1:]
    assert len(lines) == 1 and "Traceback" not in err, err
    # not "mid-step, at once": a second Ctrl-C within SECOND_AFTER_S is the same Ctrl-C
    assert lines[0].startswith("metasparsity train: interrupted at step ")
    assert f"resume with: metasparsity train --resume {run}" in lines[0]
    assert cli("train", "--resume", run, "train.max_steps=5", "train.val_every=5") == 0
    assert json.loads((run / "results.json").read_text())["steps"] == 5


def test_a_user_error_raised_in_a_dataloader_worker_is_one_line():
    """PyTorch re-raises a worker's exception with the worker's traceback as its message."""
    from torch.utils.data import DataLoader, Dataset

    from metasparsity.cli import user_message
    from metasparsity.utils.errors import UserError

    class Bad(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise UserError("label image /data/x.png has mode RGB; expected one channel")

    with pytest.raises(UserError) as e:
        next(iter(DataLoader(Bad(), num_workers=1)))
    assert "Original Traceback" in str(e.value)  # what PyTorch makes of it
    assert user_message(e.value) == "label image /data/x.png has mode RGB; expected one channel"


def test_an_os_error_raised_in_a_dataloader_worker_is_one_line():
    from torch.utils.data import DataLoader, Dataset

    from metasparsity.cli import os_error_message

    class Bad(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise PermissionError(13, "Permission denied", "/data/cache/000001.npz")

    with pytest.raises(OSError) as e:
        next(iter(DataLoader(Bad(), num_workers=1)))
    msg = os_error_message(e.value)
    assert "\n" not in msg and "Traceback" not in msg and "/data/cache/000001.npz" in msg


def test_a_ctrl_c_held_back_by_a_training_step_goes_through_the_programs_handler():
    """A Ctrl-C during a step's in-place update is held back and delivered after it; it must go
    through the program's handler, which ignores every later Ctrl-C, so that a second one cannot
    cut the checkpoint save short (it came out as a plain 'interrupted' without the step)."""
    from metasparsity.cli import _interrupt_once
    from metasparsity.training.interrupt import DeferInterrupt

    old = signal.signal(signal.SIGINT, _interrupt_once)
    try:
        with pytest.raises(KeyboardInterrupt):
            with DeferInterrupt():
                os.kill(os.getpid(), signal.SIGINT)  # held back until the block ends
                time.sleep(0.05)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


def test_demo_into_a_folder_that_holds_no_demo_advises_only_its_own_options(tmp_path, capsys):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "a.txt").write_text("mine")
    line = refused(capsys, ["demo", "--out", out, *MICRO], "demo", [out, "holds no demo"], [out])
    assert "--resume" not in line  # demo has no --resume: the same command continues a demo


def test_out_inside_another_runs_checkpoints_is_refused(tmp_path, capsys, src_run):
    other = make_run(tmp_path / "other")
    inside = other / "checkpoints" / "step_0000001"
    for args, command in [(["prune", src_run, "--out", inside, "--no-latency"], "prune"),
                          (["train", "--out", other / "checkpoints" / "x", *MICRO], "train")]:
        refused(capsys, args, command, [other, "checkpoints", "rotates"], [other, src_run])


def test_check_output_file_names_the_suffix_a_folder_and_a_file_parent(tmp_path):
    from metasparsity.utils.rundir import check_output_file

    (tmp_path / "dir.png").mkdir()
    (tmp_path / "afile").write_text("mine")
    check_output_file(tmp_path / "new" / "a.png", (".png", ".svg"))  # a folder to be made: fine
    for path, words in [(tmp_path / "a.jpg", "give a .png or .svg file"),
                        (tmp_path / "dir.png", "is a folder"),
                        (tmp_path / "afile" / "a.png", "is not a folder")]:
        with pytest.raises(UserError, match=words):
            check_output_file(path, (".png", ".svg"), "--out")


def test_the_interrupt_message_names_a_command_that_continues_the_run(tmp_path):
    """demo has no --resume (running it again continues its folder): it was told to use one."""
    import argparse

    from metasparsity.commands.common import interrupt_message
    from metasparsity.utils.rundir import RunInterrupted

    top = make_run(tmp_path / "top")
    sub = top / "seed_0" / "mtl"
    demo = argparse.Namespace(command="demo", out=str(top))
    assert interrupt_message(demo, RunInterrupted(5, sub)) == (
        f"interrupted at step 5 of {sub}; continue with the same command "
        f"(metasparsity demo --out {top}): finished runs are reused")
    compare = argparse.Namespace(command="compare", out=str(top), resume=None)
    assert interrupt_message(compare, RunInterrupted(None, sub, cut_short=True)) == (
        f"interrupted mid-step of {sub}, at once; resume with: metasparsity compare --resume {top}")
    fine = argparse.Namespace(command="finetune", out=str(top), resume=None, source="runs/meta")
    assert interrupt_message(fine, RunInterrupted(4, top, cut_short=True)) == (
        f"interrupted mid-step, at once; resume with: metasparsity finetune runs/meta --resume "
        f"{top} (from step 4, the last checkpoint)")
    assert interrupt_message(fine, RunInterrupted(None, top, cut_short=True)) == (
        "interrupted mid-step, at once, before the first checkpoint; nothing to resume: run the "
        "command again with --overwrite")
