"""Config errors through the command line (exit code 2, the key named, nothing written) and the
``data preview`` / ``demo`` commands."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from metasparsity.cli import main

SMALL = ["data.image_size=32", "train.progress=false"]


@pytest.mark.parametrize(
    ("override", "key", "words"),
    [
        ("data.imagesize=32", "data.imagesize", "unknown key"),        # unknown key
        ("train.max_steps=abc", "train.max_steps", "integer"),        # wrong type
        ("data.augment=maybe", "data.augment", "true or false"),      # wrong type
        ("model.depth=19", "model.depth", "choose one of"),           # bad choice
        ("meta.meta_grad=zeroth", "meta.meta_grad", "choose one of"),  # bad choice
        ("train.lr=-0.1", "train.lr", "out of range"),                # range (open minimum)
        ("data.image_size=8", "data.image_size", "out of range"),     # range
        ("finetune.fraction=1.5", "finetune.fraction", "out of range"),  # range (maximum)
    ],
)
def test_config_errors_exit_2_naming_the_key(capsys, override, key, words):
    assert main(["config", override]) == 2
    err = capsys.readouterr().err
    assert key in err and words in err
    assert "Traceback" not in err


def test_unknown_key_in_a_yaml_file(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("data:\n  image_size: 32\n  trian_size: 10\n")
    assert main(["config", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "data.trian_size" in err and "data.train_size" in err  # names it, suggests the fix


def test_a_key_given_twice_in_a_yaml_file_is_an_error(tmp_path, capsys):
    cfg = tmp_path / "twice.yaml"
    cfg.write_text("meta:\n  target: 0.5\n  target: 0.7\n")
    assert main(["config", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "'target' is given twice" in err and "line 3" in err and "Traceback" not in err
    # a YAML merge (<<) whose keys are then set again is not a repeat
    cfg.write_text("data: &d {image_size: 32}\nmodel:\n  depth: 18\n")
    assert main(["config", "--config", str(cfg)]) == 0
    # ``1`` and ``true`` are one key once read (1 == True): refused, named as written
    cfg.write_text("meta:\n  1: a\n  true: b\n")
    assert main(["config", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "the keys '1' and 'true' are the same key" in err and "line 3" in err
    assert "Traceback" not in err


def test_real_exit_code_from_the_console_entry():
    out = subprocess.run([sys.executable, "-m", "metasparsity", "config", "model.depth=19"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "model.depth" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["data.image_size=abc"],           # bad override
        ["data.nosuchkey=1"],              # unknown key
        ["-n", "0"],                       # no samples
        ["--split", "dev"],                # unknown split
        ["data.name=nosuchdata"],          # unknown data set
    ],
)
def test_preview_with_bad_arguments_writes_nothing(tmp_path, monkeypatch, capsys, args):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "p" / "preview.png"
    assert main(["data", "preview", "--out", str(out), *args]) == 2
    assert "error" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    # and without --out, the default runs/preview.png is not created either
    assert main(["data", "preview", *args]) == 2
    assert list(tmp_path.iterdir()) == []


def test_preview_rejects_a_non_png_output(tmp_path, capsys):
    assert main(["data", "preview", "--out", str(tmp_path / "x.jpg")]) == 2
    assert "--out" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_preview_writes_a_png(tmp_path, capsys):
    out = tmp_path / "sub" / "grid.png"
    assert main(["data", "preview", "--out", str(out), "-n", "3", "--split", "val", *SMALL]) == 0
    assert str(out) in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.format == "PNG"
        w, h = im.size
    # three rows of panels plus a legend; six columns (RGB, 4 dense tasks, attributes)
    assert h > 3 * 150 and w > 5 * 150
    assert [p.name for p in out.parent.iterdir()] == ["grid.png"]  # no temporary left behind


def test_preview_default_location(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "preview", "-n", "1", *SMALL]) == 0
    assert (tmp_path / "runs" / "preview.png").is_file()


def test_demo_writes_preview_and_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--samples", "24", "--data-only", *SMALL]) == 0
    assert (out / "preview.png").is_file()
    summary = json.loads((out / "data_summary.json").read_text())
    assert summary["samples"] == 24 and summary["image_size"] == 32
    shares = summary["class_pixel_share"]
    assert set(shares) == {"floor", "wall", "ceiling", "sphere", "box", "cylinder"}
    assert abs(sum(shares.values()) - 1) < 1e-6 and shares["floor"] > 0.1
    assert set(summary["attribute_positive_share"]) == {"has_sphere", "many_objects", "light_left"}
    assert str(out / "preview.png") in capsys.readouterr().out


def test_demo_bad_override_writes_nothing(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "data.image_size=oops"]) == 2
    assert not out.exists()
