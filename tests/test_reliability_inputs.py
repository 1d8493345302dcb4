"""Issue 13, Deliver 4: every list and number is checked before anything is written, and the
malformed content of every file we read is a one-line error naming the file (exit code 2 through
the command line), never a traceback.

The config keys are covered generically by ``tests/test_reliability_config.py`` and
``tests/test_reliability_property.py``; here are the cases of the issue and the file readers.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tests.data.fixtures import write_celebamaskhq_raw, write_mtan, write_nyud_mt
from tests.recipes.micro import MICRO, cli

from metasparsity.builders import build_model
from metasparsity.config import load_config, parse_lambda_grid
from metasparsity.data import build_dataset
from metasparsity.data.celebamaskhq import read_meta
from metasparsity.data.celebamaskhq_prepare import prepare_celebamaskhq, read_attribute_file
from metasparsity.data.loading import check_ids, load_npy, missing_files_error, read_lines
from metasparsity.data.nyuv2 import detect_layout
from metasparsity.training.checkpoint import save_checkpoint
from metasparsity.utils.errors import ConfigError, UserError
from metasparsity.utils.io import check_json_shape, load_json, load_jsonl

SEEN = ["segment", "depth", "edge", "has_sphere", "many_objects"]


def _one_line_error(err: str) -> str:
    """The single stderr line of a refused command (no traceback, no continuation lines)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "error" in lines[0] and "Traceback" not in err
    return lines[0]


# ----------------------------------------------------------------------------- lists and numbers

@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["sweep-lambda", "--grid", "nan,inf"], ["--grid", "nan", "finite"]),
        (["sweep-lambda", "--grid", "0.1,inf"], ["--grid", "inf", "finite"]),
        (["sweep-lambda", "--grid", "0.1,0.1"], ["--grid", "more than once"]),
        (["sweep-lambda", "--grid", "0.1,abc"], ["--grid", "'abc'"]),
        (["sweep-lambda", "--grid", ","], ["--grid", "empty"]),
        (["sweep-lambda", "--grid", "1e-3,"], ["--grid", "'1e-3,'", "empty entry at the end"]),
        (["sweep-lambda", "--grid", "1e-3,,3e-3"], ["--grid", "empty entry after '1e-3'"]),
        (["sweep-lambda", "--grid", ",1e-3"], ["--grid", "empty entry at the start"]),
        (["sweep-lambda", "--grid", "1e-3, ,3e-3"], ["--grid", "empty entry"]),
        (["sweep-lambda", "--grid", "1e-3,0.001"], ["--grid", "more than once"]),
        (["compare", "compare.lambda_grid=[-1]"], ["compare.lambda_grid[0]", "> 0"]),
        (["compare", "compare.lambda_grid=[.nan]"], ["compare.lambda_grid[0]", "finite"]),
        (["compare", "compare.lambda_grid=[]"], ["compare.lambda_grid", "λ grid"]),
        (["compare", "compare.seeds=[-3]"], ["compare.seeds[0]", ">= 0"]),
        (["compare", "compare.seeds=[]"], ["compare.seeds", "empty"]),
        (["compare", "compare.seeds=[1,1]"], ["compare.seeds", "more than once"]),
        (["compare", "compare.methods=[]"], ["compare.methods", "empty"]),
        (["compare", "compare.methods=[mtl,mtl]"], ["compare.methods", "more than once"]),
        (["train", "train.device=gpu"], ["train.device", "cuda:N"]),
        (["train", "train.device=cuda:x"], ["train.device", "cuda:N"]),
        pytest.param(["train", "train.device=mps"], ["train.device='mps'", "MPS"],
                     marks=pytest.mark.skipif(torch.backends.mps.is_available(),
                                              reason="this machine has MPS")),
        pytest.param(["sweep-lambda", "--grid", "1e-3", "train.device=mps"],
                     ["train.device='mps'", "MPS"],
                     marks=pytest.mark.skipif(torch.backends.mps.is_available(),
                                              reason="this machine has MPS")),
        *(pytest.param([cmd, "compare.methods=[mtl]", "train.device=cuda:3"], ["train.device='cuda:3'"],
                       marks=pytest.mark.skipif(torch.cuda.device_count() > 3,
                                                reason="this machine has cuda:3"))
          for cmd in ("compare", "demo")),
        (["train", "model.width=0.001"], ["model.width", "no channels"]),
        (["train", "model.width=1e6"], ["model.width", "<= 8"]),
        (["train", "model.head_channels=100000000"], ["model.head_channels", "<= 4096"]),
        (["train", "model.aspp_rates=[]"], ["model.aspp_rates", "empty"]),
        (["train", "model.aspp_rates=[-1,2,3]"], ["model.aspp_rates[0]", ">= 1"]),
        (["train", "model.aspp_rates=[1,2]"], ["model.aspp_rates", "three"]),
        (["train", "model.output_stride=32"], ["data.image_size", "output_stride"]),
        (["train", "train.max_steps=99999999999999999999"], ["train.max_steps", "<="]),
        (["train", "train.lr=1e999"], ["train.lr", "finite"]),
        (["train", "meta.inner_lr=-.inf"], ["meta.inner_lr", "finite"]),
        (["train", "data.root="], ["data.root", "empty"]),
        (["train", "name=../elsewhere"], ["name", "folder name"]),
        (["train", "data.tasks=[segment,segment]"], ["data.tasks", "more than once"]),
        (["meta-train", "meta.subsets=[[segment],[]]"], ["meta.subsets[1]", "empty"]),
    ],
)
def test_bad_lists_and_numbers_exit_2_before_anything_is_written(tmp_path, monkeypatch, capsys,
                                                                  args, names):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    words = [a for a in args if "=" not in a or a.startswith("-")]
    overrides = [a for a in args if a not in words]
    assert cli(*words, "--out", out, *MICRO, *overrides) == 2
    line = _one_line_error(capsys.readouterr().err)
    for name in names:
        assert name in line, (name, line)
    assert list(tmp_path.iterdir()) == []  # not even the --out folder


def test_parse_lambda_grid_checks_like_the_config_field():
    assert parse_lambda_grid("1e-4, 3e-4,1e-3") == [1e-4, 3e-4, 1e-3]
    for bad in ("nan", "inf,1", "-1", "0", "1,1", "", "x"):
        with pytest.raises(ConfigError, match="--grid"):
            parse_lambda_grid(bad)


def test_unusable_devices_are_user_errors_naming_train_device(monkeypatch):
    from metasparsity.utils.device import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.backends.mps.is_available():
        with pytest.raises(UserError, match=r"train\.device='mps'.*MPS"):
            resolve_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match=r"train\.device='cuda:1'.*CUDA is not available"):
            resolve_device("cuda:1")
    # a CUDA machine with one GPU: cuda:0 is fine, cuda:3 does not exist
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(UserError, match=r"train\.device='cuda:3'.*1 CUDA device \(cuda:0\)"):
        resolve_device("cuda:3")
    with pytest.raises(UserError, match=r"train\.device='bogus'"):
        resolve_device("bogus")


def _source_run(path: Path) -> Path:
    """A run directory ``finetune`` accepts as its source (config + best checkpoint), no training."""
    path.mkdir()
    cfg = load_config(None, MICRO)
    (path / "config.yaml").write_text(cfg.to_yaml())
    save_checkpoint(path, 2, build_model(cfg, SEEN).state_dict(), {}, {"tasks": SEEN}, best=True)
    return path


@pytest.mark.parametrize(("tasks", "words"), [
    ("normal,normal", ["--tasks", "'normal'", "more than once"]),
    (" normal , depth,normal", ["--tasks", "'normal'", "more than once"]),
    ("normal,", ["--tasks", "'normal,'", "empty entry"]),
    ("normal,,depth", ["--tasks", "'normal,,depth'", "empty entry"]),
    (",normal", ["--tasks", "empty entry"]),
    (",", ["--tasks", "at least one task"]),
    ("", ["--tasks", "at least one task"]),
])
def test_finetune_tasks_with_empty_entries_or_duplicates_are_refused(tmp_path, capsys, tasks, words):
    src = _source_run(tmp_path / "src")
    before = sorted((str(p), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    assert cli("finetune", src, "--tasks", tasks, *MICRO) == 2
    line = _one_line_error(capsys.readouterr().err)
    for w in words:
        assert w in line, (w, line)
    assert sorted((str(p), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


def test_sweep_skips_metrics_whose_dense_baseline_is_0(tmp_path, monkeypatch, capsys):
    """A degenerate dense model (here: an F1 of 0 on many_objects, forced on the real tiny run)
    leaves that metric out of Δm, named in sweep.json and sweep.md, as compare does."""
    import metasparsity.recipes.sweep as sweep
    from metasparsity.eval.delta import delta_m
    from metasparsity.utils.io import read_json

    real = sweep.train_or_load

    def degenerate_dense(cfg, run_dir, lam, kind, *a, **k):
        res = real(cfg, run_dir, lam, kind, *a, **k)
        if kind == "mtl":
            res["test"]["many_objects"]["f1"] = 0.0
            res["val"]["many_objects"]["f1"] = 0.0
        return res

    monkeypatch.setattr(sweep, "train_or_load", degenerate_dense)
    out = tmp_path / "sweep"
    assert cli("sweep-lambda", "--out", out, *MICRO, "data.train_size=8", "train.max_steps=2",
               "--grid", "0.001") == 0
    summary = read_json(out / "sweep.json")
    assert summary["left_out"] == {"test": ["many_objects.f1"], "val": ["many_objects.f1"]}
    assert summary["selected"] == 0.001
    (row,) = summary["rows"]
    assert summary["spec"]["many_objects"] == {"accuracy": True, "f1": True}  # the table's columns
    spec = {t: {m: h for m, h in ms.items() if (t, m) != ("many_objects", "f1")}
            for t, ms in summary["spec"].items()}
    assert row["delta_m"] == pytest.approx(delta_m(row["test"], summary["dense"]["test"], spec))
    md = (out / "sweep.md").read_text()
    assert "Left out of Δm because the dense-MTL baseline is 0 or undefined: many_objects.f1" in md
    assert "many_objects.f1" in capsys.readouterr().out
    assert (out / "delta_vs_sparsity.png").is_file()


def test_evaluate_with_an_architecture_override_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(None, MICRO)
    (run / "config.yaml").write_text(cfg.to_yaml())
    save_checkpoint(run, 2, build_model(cfg, SEEN).state_dict(), {}, {"tasks": SEEN}, best=True)
    before = sorted((str(p), p.stat().st_mtime_ns) for p in run.rglob("*"))
    for override in ("model.depth=34", "model.width=0.25", "model.head_channels=16"):
        assert cli("evaluate", run, override) == 2
        line = _one_line_error(capsys.readouterr().err)
        assert "fit" in line and "model." in line
    assert sorted((str(p), p.stat().st_mtime_ns) for p in run.rglob("*")) == before


def test_a_pickled_pretrained_file_is_refused_without_torchs_advice(tmp_path, capsys):
    evil = tmp_path / "r18.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "x": Path("/")}, evil)
    out = tmp_path / "out"
    assert cli("train", "--out", out, *MICRO, f"model.pretrained={evil}") == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "pickled Python objects" in line and "safetensors" in line and str(evil) in line
    assert "weights_only" not in line
    assert not out.exists()


# ----------------------------------------------------------------------------- config files

def test_yaml_syntax_error_is_one_line_with_its_position(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  image_size: 32\n  tasks: [segment, depth\ntrain:\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    msg = str(e.value)
    assert "\n" not in msg and f"config {bad}: YAML syntax error at line" in msg and "column" in msg
    assert cli("config", "--config", bad) == 2
    _one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b"- a\n- b\n", b"just a string\n",
                                     b"data: [1, 2]\n", b"train:\n  lr: .nan\n",
                                     b"[" * 5000 + b"]" * 5000])
def test_malformed_config_files_are_config_errors(tmp_path, content):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- report

def _shaped_results() -> dict:
    """results.json with every key ``report`` checks, but a config without data.name: the old
    ``report`` drew delta_vs_sparsity.png and then failed on report.md (a half-written report)."""
    return {
        "config": {"name": "x", "data": {}, "model": {}, "train": {}, "meta": {}, "finetune": {},
                   "compare": {"lambda_grid": [0.001]}},
        "methods": ["mtl"], "seeds": [0], "seen_tasks": ["segment"], "unseen_tasks": [],
        "spec": {"seen": {}, "unseen": {}},
        "summary": {"mtl": {"param_sparsity": {"mean": 0.0, "std": 0.0},
                            "delta_m_seen": {"mean": 0.0, "std": 0.0}}},
        "per_seed": {"0": {"mtl": {}}}, "total_wall_time_s": 1.0,
    }


@pytest.mark.parametrize(("content", "words"), [
    ("[]", ["expected an object", "a list"]),
    ('"str"', ["expected an object"]),
    ("null", ["expected an object", "null"]),
    ('{"seeds": 5}', ["'config' is missing"]),
    ("{not json", ["not valid JSON"]),
    (json.dumps({**_shaped_results(), "seeds": "0"}), ["['seeds']", "expected a list"]),
    (json.dumps({**_shaped_results(), "seeds": []}), ["no seeds"]),
    (json.dumps({**_shaped_results(), "per_seed": {}}), ["KeyError"]),
    (json.dumps(_shaped_results()), []),  # the old report left delta_vs_sparsity.png behind
])
def test_report_of_a_results_file_of_another_kind_is_one_line_and_writes_nothing(
        tmp_path, capsys, content, words):
    (tmp_path / "results.json").write_text(content)
    assert cli("report", tmp_path) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert str(tmp_path / "results.json") in line
    for w in words:
        assert w in line, (w, line)
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


# ----------------------------------------------------------------------------- JSON helpers

def test_load_json_names_the_file_and_the_problem(tmp_path):
    p = tmp_path / "results.json"
    schema = {"steps": int, "metrics": {"val?": dict}, "tasks": [str]}
    p.write_text(json.dumps({"steps": 3, "metrics": {}, "tasks": ["a"]}))
    assert load_json(p, schema)["steps"] == 3
    cases = {
        "[1, 2]": "expected an object",
        '{"steps": "3", "metrics": {}, "tasks": []}': "['steps']: expected an integer",
        '{"steps": true, "metrics": {}, "tasks": []}': "got true/false",
        '{"steps": 3, "tasks": []}': "'metrics' is missing",
        '{"steps": 3, "metrics": {"val": 1}, "tasks": []}': "['val']: expected an object",
        '{"steps": 3, "metrics": {}, "tasks": ["a", 1]}': "['tasks'][1]",
        '{"steps": 3,': "not valid JSON (line 1",
    }
    for text, words in cases.items():
        p.write_text(text)
        with pytest.raises(UserError) as e:
            load_json(p, schema, what="results file")
        msg = str(e.value)
        assert "\n" not in msg and str(p) in msg and words in msg, (text, msg)
    p.write_bytes(b"\xff\xfe")
    with pytest.raises(UserError, match="UTF-8"):
        load_json(p)
    with pytest.raises(UserError, match="missing"):
        load_json(tmp_path / "nope.json")
    assert check_json_shape({"a": 1.5}, {"a": float}) is None
    assert check_json_shape({"a": 1}, {"a": float}) is None


def test_load_jsonl_skips_only_a_cut_last_line(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert [r["step"] for r in load_jsonl(p)] == [1, 2]
    p.write_text('{"step": 1}\n{"step": \n{"step": 3}\n')
    with pytest.raises(UserError, match="line 2"):
        load_jsonl(p)
    p.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(UserError, match="line 2: expected a JSON object"):
        load_jsonl(p)


# ----------------------------------------------------------------------------- data readers

def test_npy_of_the_wrong_kind_is_named(tmp_path):
    cases = {
        "strings.npy": np.array(["a", "b"]),
        "complex.npy": np.zeros((2, 2), dtype=np.complex64),
        "empty.npy": np.zeros((0, 3)),
    }
    for name, arr in cases.items():
        np.save(tmp_path / name, arr)
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with open(tmp_path / "archive.npy", "wb") as f:  # an .npz archive under a .npy name
        np.savez(f, a=np.zeros(3))
    (tmp_path / "truncated.npy").write_bytes((tmp_path / "complex.npy").read_bytes()[:90])
    for name in [*cases, "objects.npy", "archive.npy", "truncated.npy"]:
        with pytest.raises(UserError) as e:
            load_npy(tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and "\n" not in str(e.value), name
    np.save(tmp_path / "ok.npy", np.ones((2, 2), dtype=bool))
    assert load_npy(tmp_path / "ok.npy").dtype == bool


def test_nyu_arrays_of_wrong_shape_or_dtype_are_named(tmp_path):
    mt = write_mtan(tmp_path / "m", 3, 2)
    cfg = load_config(None, ["data.name=nyuv2", f"data.root={mt['root']}", "data.tasks=[segment,depth,normal]",
                             "data.seen_tasks=[segment,depth]", "data.unseen_tasks=[normal]",
                             "data.image_size=24", "data.val_size=1", "data.train_size=null",
                             "data.test_size=null"])
    val = Path(mt["root"]) / "val"
    np.save(val / "normal" / "1.npy", np.array([["x"] * 3] * 4))  # wrong dtype
    ds = build_dataset(cfg, "test")
    with pytest.raises(UserError) as e:
        ds[1]
    assert str(val / "normal" / "1.npy") in str(e.value) and "\n" not in str(e.value)
    np.save(val / "depth" / "0.npy", np.zeros((2, 24, 32, 1), dtype=np.float32))  # wrong shape
    with pytest.raises(UserError) as e:  # item 0: read when the split is built
        build_dataset(cfg, "test")
    assert str(val / "depth" / "0.npy") in str(e.value) and "\n" not in str(e.value)


def test_nyu_layout_messages_are_one_line(tmp_path):
    for root, layout in ((None, "auto"), (tmp_path / "nope", "auto"), (tmp_path, "auto"),
                         (tmp_path, "mtan"), (tmp_path, "nyud_mt")):
        with pytest.raises(UserError) as e:
            detect_layout(root, layout)
        assert "\n" not in str(e.value) and "<root>/" in str(e.value)
    assert "\n" not in str(missing_files_error([Path(f"/x/{i}") for i in range(9)], "NYU-v2 test"))


@pytest.mark.parametrize(("content", "words"), [
    (b"\xff\xfe\x00\x01", "UTF-8"),
    (b"000001\n../../etc/passwd\n", "not an image id"),
    (b"000001\n000001\n", "more than once"),
    (b"\n\n", "lists no ids"),
])
def test_nyu_split_files_of_the_wrong_form_are_named(tmp_path, content, words):
    fx = write_nyud_mt(tmp_path / "d", 3, 2)
    split = Path(fx["root"]) / "gt_sets" / "val.txt"
    split.write_bytes(content)
    with pytest.raises(UserError, match=words) as e:
        build_dataset(load_config(None, ["data.name=nyuv2", f"data.root={fx['root']}",
                                         "data.tasks=[segment,depth]", "data.seen_tasks=[segment]",
                                         "data.unseen_tasks=[depth]", "data.image_size=24"]), "test")
    assert str(split) in str(e.value) and "\n" not in str(e.value)


def test_read_lines_and_check_ids(tmp_path):
    p = tmp_path / "ids.txt"
    p.write_text(" a \n\nb\n")
    assert check_ids(read_lines(p, "split file"), p) == ["a", "b"]
    with pytest.raises(UserError, match="missing split file"):
        read_lines(tmp_path / "none.txt", "split file")
    for bad in (["a/b"], [".hidden"], ["a b"], ["x", "x"]):
        with pytest.raises(UserError):
            check_ids(bad, p)


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    root = tmp_path_factory.mktemp("celeba")
    raw = write_celebamaskhq_raw(root / "raw", ids=(0, 1, 2, 3, 4, 5), mask_size=32, image_size=64)
    return {"raw": raw, "prepared": prepare_celebamaskhq(raw["root"], root / "prepared", classes=3,
                                                          size=16, progress=False, workers=1)}


def _copy_prepared(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize(("meta", "words"), [
    ([1, 2, 3], "expected an object"),
    ({"classes": "3", "attributes": []}, "['classes']: expected an integer"),
    ({"classes": 5, "attributes": []}, "expected 3 or 19"),
    ({"classes": 3, "attributes": "Male"}, "['attributes']: expected a list"),
    ({"classes": 3, "attributes": ["Male", 7]}, "['attributes'][1]"),
    ({"classes": 3, "attributes": ["Male", "Male"]}, "listed twice"),
    ({"classes": 3, "attributes": ["Male"], "class_names": ["a"]}, "1 class names for 3 classes"),
    ({"attributes": ["Male"]}, "'classes' is missing"),
])
def test_celeba_meta_of_the_wrong_shape_is_named(celeba, tmp_path, meta, words):
    root = _copy_prepared(celeba["prepared"], tmp_path / "p")
    (root / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError) as e:
        read_meta(root)
    msg = str(e.value)
    assert words in msg and str(root / "meta.json") in msg and "\n" not in msg, msg


def test_celeba_layout_messages_are_one_line(celeba, tmp_path):
    for root in (None, tmp_path / "nope", tmp_path, celeba["raw"]["root"]):
        with pytest.raises(UserError) as e:
            read_meta(root)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize(("text", "words"), [
    ("2\nMale Male\n0.jpg 1 -1\n1.jpg 1 1\n", "named twice"),
    ("2\nMale Smiling\n0.jpg 1 -1\n0.jpg 1 1\n", "listed twice"),
    ("3\nMale Smiling\n0.jpg 1 -1\n1.jpg 1 1\n", "announces 3"),
    ("2\nMale Smiling\n0.jpg 1 -1\n1.jpg 1 0\n", "values must be -1 or 1"),
    ("2\nMale Smiling\n0.jpg 1 -1\n1.jpg 1\n", "line 4"),
    ("x\nMale\n", "line 1"),
])
def test_attribute_files_with_wrong_counts_or_values(tmp_path, text, words):
    p = tmp_path / "CelebAMask-HQ-attribute-anno.txt"
    p.write_text(text)
    with pytest.raises(UserError, match=words) as e:
        read_attribute_file(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def _celeba_cfg(root):
    return load_config(None, ["data.name=celebamaskhq", f"data.root={root}",
                              "data.tasks=[segment,Male]", "data.seen_tasks=[segment]",
                              "data.unseen_tasks=[Male]", "data.image_size=16",
                              "data.train_size=null", "data.val_size=null", "data.test_size=null"])


def test_celeba_images_that_are_not_images_or_truncated_or_of_the_wrong_mode(celeba, tmp_path):
    root = _copy_prepared(celeba["prepared"], tmp_path / "p")
    ds = build_dataset(_celeba_cfg(root), "train")
    ids = ds.ids
    assert len(ids) >= 3
    victims = {
        root / "images" / f"{ids[0]}.jpg": b"not an image at all",
        root / "images" / f"{ids[1]}.jpg": (root / "images" / f"{ids[1]}.jpg").read_bytes()[:200],
    }
    for path, data in victims.items():
        path.write_bytes(data)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "labels" / f"{ids[2]}.png")  # RGB
    for k in range(3):
        with pytest.raises(UserError) as e:
            ds[k]
        assert "\n" not in str(e.value) and str(root) in str(e.value)
    # a label of another size than its image
    if len(ids) > 3:
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "labels" / f"{ids[3]}.png")
        with pytest.raises(UserError, match="8x8"):
            ds[3]


def test_celeba_split_file_of_the_wrong_form(celeba, tmp_path):
    root = _copy_prepared(celeba["prepared"], tmp_path / "p")
    (root / "splits" / "train.txt").write_bytes(b"\x80\x81binary")
    with pytest.raises(UserError, match="UTF-8"):
        build_dataset(_celeba_cfg(root), "train")
    (root / "splits" / "train.txt").write_text("0\n../../x\n")
    with pytest.raises(UserError, match="not an image id"):
        build_dataset(_celeba_cfg(root), "train")


def test_corrupt_npy_in_training_exits_2_with_one_line(tmp_path, capsys):
    mt = write_mtan(tmp_path / "m", 4, 2, size=(16, 16))
    for sub in ("train", "val"):
        for i in range(4 if sub == "train" else 2):
            np.save(Path(mt["root"]) / sub / "depth" / f"{i}.npy", np.array([["?"] * 4] * 4))
    args = [*MICRO, "data.name=nyuv2", f"data.root={mt['root']}", "data.tasks=[segment,depth,normal]",
            "data.seen_tasks=[segment,depth]", "data.unseen_tasks=[normal]", "data.image_size=16",
            "data.train_size=null", "data.val_size=1", "data.test_size=null", "train.batch_size=2",
            "train.eval_batch_size=2"]
    assert cli("train", "--out", tmp_path / "run", *args) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "depth" in line and ".npy" in line


def test_pickle_module_is_not_needed_to_refuse(tmp_path):
    """A raw pickle (not a torch file) given as pretrained weights: refused, one line."""
    from metasparsity.models import BACKBONES, load_pretrained

    p = tmp_path / "w.pth"
    p.write_bytes(pickle.dumps({"conv1.weight": [1, 2, 3]}))
    with pytest.raises(UserError) as e:
        load_pretrained(BACKBONES["resnet18"](width=0.125), p)
    assert "\n" not in str(e.value) and "weights_only" not in str(e.value)


def test_json_shapes_with_alternatives_of_lists_or_objects():
    """A per-layer λ is a list where a global one is a number: ``(float, [float])``."""
    shape = {"lam?": (float, [float]), "ref?": (dict, type(None))}
    for ok in ({}, {"lam": 0.1}, {"lam": [0.1, 2]}, {"lam": []}, {"ref": None}, {"ref": {"a": 1}}):
        assert check_json_shape(ok, shape) is None, ok
    assert check_json_shape({"lam": [0.1, "a"]}, shape) == \
        "top level['lam'][1]: expected a number, got the string 'a'"
    assert "expected a number" in check_json_shape({"lam": "a"}, shape)
    assert check_json_shape({"lam": {"a": 1}}, shape) == \
        "top level['lam']: expected a number or a list of a number, got an object"
    assert check_json_shape({"ref": 3}, shape) == \
        "top level['ref']: expected an object or null, got int 3"
