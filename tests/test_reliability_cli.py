"""Bad input to any training command: exit code 2, a message naming the bad thing, nothing written.
And an existing run directory is never overwritten unless ``--overwrite`` is given."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.recipes.micro import MICRO, cli

from metasparsity.builders import build_model
from metasparsity.config import load_config
from metasparsity.training.checkpoint import save_checkpoint
from metasparsity.training.run_checkpoints import load_run_checkpoint
from metasparsity.utils.io import read_json
from metasparsity.utils.rundir import create_run_dir

SEEN = ["segment", "depth", "edge", "has_sphere", "many_objects"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run directory with a (untrained) checkpoint, and one with a config but no checkpoint."""
    root = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, MICRO)
    src = root / "src"
    src.mkdir()
    (src / "config.yaml").write_text(cfg.to_yaml())
    save_checkpoint(src, 4, build_model(cfg, SEEN).state_dict(), {}, {"tasks": SEEN}, best=True)
    bare = root / "bare"
    bare.mkdir()
    (bare / "config.yaml").write_text(cfg.to_yaml())
    cmp = create_run_dir(root / "cmp", cfg.to_yaml(), layout="compare")  # a comparison's
    (cmp / "results.json").write_text('{"per_seed": {}}')
    sweep = root / "sweep"  # a sweep of a version whose marker did not say its layout
    create_run_dir(sweep, cfg.to_yaml())
    (sweep / "dense_mtl").mkdir()
    return {"src": src, "bare": bare, "cmp": cmp, "sweep": sweep}


def _listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(
    ("args", "names"),
    [
        # config values and task names
        (["train", "data.seen_tasks=[nope]"], ["data.seen_tasks", "nope"]),
        (["train", "train.tasks=[segment,nope]"], ["train.tasks", "nope"]),
        (["train", "train.max_steps=0"], ["train.max_steps", ">= 1"]),
        (["train", "model.depth=19"], ["model.depth", "18, 34, 50, 101"]),
        (["train", "train.lr=.nan"], ["train.lr"]),
        (["meta-train", "meta.meta_grad=first_order"], ["meta.meta_grad", "first_order"]),
        (["meta-train", "data.train_size=1"], ["data.train_size", "at least 2"]),
        (["sweep-lambda", "compare.lambda_grid=[]"], ["λ grid"]),
        (["sweep-lambda", "--grid", "0.1,-1"], ["--grid", "positive"]),
        (["finetune", "{src}", "--tasks", "nope"], ["--tasks", "nope"]),
        (["finetune", "{src}", "--tasks", "normal", "finetune.fraction=2"], ["finetune.fraction"]),
        # config files and data / weight paths
        (["train", "--config", "missing.yaml"], ["missing.yaml"]),
        (["train", "--config", "{src}/checkpoints/last"], ["top level"]),
        (["train", "data.name=nyuv2", "data.root=/nonexistent/nyu"], ["/nonexistent/nyu"]),
        (["train", "data.name=celebamaskhq", "data.root=/nonexistent/celeba"], ["/nonexistent/celeba"]),
        (["train", "model.pretrained=/nonexistent/r18.pth"], ["/nonexistent/r18.pth"]),
        # run and model directories
        (["evaluate", "/nonexistent/run"], ["/nonexistent/run"]),
        (["evaluate", "{bare}"], ["bare", "no checkpoint"]),
        (["evaluate", "{src}", "--split", "dev"], ["--split", "dev"]),
        (["finetune", "/nonexistent/run", "--tasks", "normal"], ["/nonexistent/run"]),
        (["finetune", "{src}", "--resume", "nope_run"], ["--resume", "nope_run"]),
        (["train", "--resume", "nope_run"], ["--resume", "nope_run"]),
        (["meta-train", "--resume", "/nonexistent/run"], ["/nonexistent/run"]),
        (["train", "--resume", "{src}/checkpoints"], ["not a run directory"]),
        (["train", "--resume", "{src}", "--config", "x.yaml"], ["--config and --resume"]),
        (["train", "--resume", "{src}", "--out", "elsewhere"], ["--out and --resume"]),
        (["train", "--out", "{src}/checkpoints/last"], ["not a directory"]),
        (["train", "--out", ""], ["--out: empty path"]),
        (["train", "--resume", "{src}/config.yaml"], ["config.yaml: not a directory"]),
        (["evaluate", "{src}/config.yaml"], ["config.yaml: not a directory"]),
        (["train", "--resume", "{src}", "--overwrite"], ["--overwrite and --resume"]),
        (["finetune", "{src}", "--resume", "{src}", "--overwrite"], ["--overwrite and --resume"]),
        (["finetune", "{src}", "--tasks", "normal", "--out", ""], ["--out: empty path"]),
        (["finetune", "{src}", "--resume", "{cmp}"], ["--resume", "a compare (or demo) run"]),
        # a run continued by the command of another kind of run
        (["train", "--resume", "{cmp}"], ["--resume", "a compare (or demo) run"]),
        (["meta-train", "--resume", "{sweep}"], ["--resume", "a sweep-lambda run"]),
        (["compare", "--resume", "{src}"], ["--resume", "a training run"]),
        (["sweep-lambda", "--resume", "{cmp}"], ["--resume", "a compare (or demo) run"]),
        (["demo", "--out", "{src}"], ["--out", "a training run"]),
        # the demo and compare check their comparison before anything is written
        (["demo", "--out", "d", "compare.methods=[bogus]"], ["bogus"]),
        (["demo", "--out", "d", "--data-only", "compare.methods=[bogus]"], ["bogus"]),
        (["demo", "--out", ""], ["--out: empty path"]),
        (["demo", "--config", ""], ["--config: empty path"]),
        (["sweep-lambda", "--grid", "1e-3,,3e-3"], ["--grid", "empty entry after '1e-3'"]),
        (["compare", "--out", "c", "compare.methods=[mtl,meta_sparsity]", "compare.budget=60",
          "meta.target=1e-6"], ["meta.target", "out of reach"]),
    ],
)
def test_bad_input_exits_2_naming_it_and_writes_nothing(tmp_path, monkeypatch, capsys, runs,
                                                        args, names):
    monkeypatch.chdir(tmp_path)
    args = [a.format(**runs) for a in args]
    before = {k: _listing(v) for k, v in runs.items()}
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    words = [a for a in args if a not in overrides]
    assert cli(*words, *MICRO, *overrides) == 2  # the bad override comes last, so it wins
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err
    for name in names:
        assert name.format(**runs) in err, (name, err)
    assert list(tmp_path.iterdir()) == []  # no run directory, no stray file
    assert {k: _listing(v) for k, v in runs.items()} == before


def test_resume_with_a_different_model_is_refused_untouched(tmp_path, runs, capsys):
    before = _listing(runs["src"])
    assert cli("train", "--resume", runs["src"], "model.depth=34") == 2
    assert "does not fit the model" in capsys.readouterr().err
    assert _listing(runs["src"]) == before


@pytest.mark.parametrize("command", ["train", "meta-train"])
def test_an_existing_run_is_only_replaced_with_overwrite(tmp_path, capsys, command):
    run = tmp_path / "run"
    create_run_dir(run, "name: old\n")  # a run directory made by the tool: it holds the marker
    (run / "results.json").write_text("{}")
    before = _listing(run)
    short = [*MICRO, "train.max_steps=2", "meta.steps=2"]
    assert cli(command, "--out", run, *short) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert _listing(run) == before
    assert cli(command, "--out", run, "--overwrite", *short) == 0
    assert read_json(run / "results.json")["steps"] == 2
    assert "name: run" in (run / "config.yaml").read_text()


def test_overwrite_never_deletes_a_directory_that_is_not_a_run(tmp_path, capsys):
    folder = tmp_path / "my_data"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    assert cli("train", "--out", folder, "--overwrite", *MICRO) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert (folder / "precious.txt").read_text() == "keep me"


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_over(tmp_path):
    run = tmp_path / "run"
    create_run_dir(run, load_config(None, MICRO).to_yaml())  # marker + config, nothing else
    assert cli("train", "--resume", run, "train.max_steps=2") == 0
    assert read_json(run / "results.json")["steps"] == 2
    assert load_run_checkpoint(run, "last").meta["step"] == 2


def test_report_of_an_empty_path_names_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli("report", "") == 2
    assert "RUN_DIR: empty path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
