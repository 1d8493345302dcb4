"""Damaged or mismatched run folders met by ``--resume``, ``finetune``, ``evaluate``, ``prune`` and
``report``: a one-line error, exit code 2, and nothing on disk changed (not even ``config.yaml``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tests.recipes.micro import MICRO, cli

from metasparsity.utils.io import read_json


def _snapshot(root: Path) -> list[tuple[str, bytes]]:
    return sorted((str(p.relative_to(root)), p.read_bytes()) for p in root.rglob("*") if p.is_file())


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _refused(capsys, root: Path, args: list, words: list[str]) -> str:
    """Run ``args``: exit 2, one line holding each of ``words``, nothing under ``root`` changed."""
    before = _snapshot(root)
    assert cli(*args) == 2
    msg = _one_line(capsys.readouterr().err)
    for w in words:
        assert w in msg, (w, msg)
    assert _snapshot(root) == before
    return msg


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A finished ``train`` run (``base``), one fine-tuning of it, and a second training."""
    root = tmp_path_factory.mktemp("resume")
    assert cli("train", "--out", root / "base", *MICRO) == 0
    assert cli("train", "--out", root / "other", *MICRO, "data.seed=1") == 0
    assert cli("finetune", root / "base", "--tasks", "normal", "--out", root / "ft", *MICRO) == 0
    return root


def _copy(runs: Path, name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copytree(runs / name, dst)
    return dst


@pytest.mark.parametrize(("line", "words"), [
    ('{"step": 2, "kind": "tr', ["line 2", "not valid JSON"]),
    ('[1, 2]', ["line 2", "expected a JSON object"]),
    ('{"step": "x"}', ["step", '"x"', "whole number"]),
    ('{"step": 1e999}', ["step", "whole number"]),
    ('{"step": 2.5}', ["step", "2.5", "whole number"]),
])
def test_a_damaged_run_log_is_refused_before_the_config_changes(runs, tmp_path, capsys, line, words):
    run = _copy(runs, "base", tmp_path)
    log = run / "metrics.jsonl"
    lines = log.read_text().splitlines()
    lines[1] = line
    log.write_text("\n".join(lines) + "\n")
    before = _snapshot(run)
    assert cli("train", "--resume", run, "train.max_steps=6") == 2
    msg = _one_line(capsys.readouterr().err)
    assert "metrics.jsonl" in msg
    for w in words:
        assert w in msg, (w, msg)
    assert _snapshot(run) == before


def test_a_run_log_cut_short_on_its_last_line_still_resumes(runs, tmp_path):
    run = _copy(runs, "base", tmp_path)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 9, "kind": "tr')  # a killed process's last write
    assert cli("train", "--resume", run, "train.max_steps=6") == 0
    assert read_json(run / "results.json")["steps"] == 6


def test_finetune_with_a_model_override_that_changes_shapes_is_refused(runs, tmp_path, capsys):
    src = _copy(runs, "base", tmp_path)
    before = _snapshot(tmp_path)
    assert cli("finetune", src, "--tasks", "normal", *MICRO, "model.width=0.25") == 2
    msg = _one_line(capsys.readouterr().err)
    assert "do not fit" in msg and "model." in msg and "another shape" in msg
    assert _snapshot(tmp_path) == before
    assert not (src / "finetune_normal").exists()


def test_evaluate_refuses_data_tasks_that_leave_out_a_task_of_the_model(runs, tmp_path, capsys):
    run = _copy(runs, "base", tmp_path)
    _refused(capsys, run, ["evaluate", run, "data.tasks=[segment,depth]",
                           "data.seen_tasks=[segment,depth]", "data.unseen_tasks=[]"],
             ["data.tasks", "edge"])


def test_finetune_resume_refuses_a_training_run(runs, tmp_path, capsys):
    run = _copy(runs, "other", tmp_path)
    _refused(capsys, run, ["finetune", runs / "base", "--resume", run, "finetune.steps=6"],
             ["not a fine-tuning"])


def test_train_resume_refuses_a_fine_tuning(runs, tmp_path, capsys):
    run = _copy(runs, "ft", tmp_path)
    _refused(capsys, run, ["train", "--resume", run, "train.max_steps=6"],
             ["is a fine-tuning", "own command"])


def test_finetune_resume_refuses_another_source(runs, tmp_path, capsys):
    run = _copy(runs, "ft", tmp_path)
    _refused(capsys, run, ["finetune", runs / "other", "--resume", run, "finetune.steps=6"],
             ["fine-tunes", str(runs / "base")])
    # its own source resumes it
    assert cli("finetune", runs / "base", "--resume", run, "finetune.steps=6") == 0
    assert read_json(run / "results.json")["source"] == str(runs / "base")


@pytest.mark.parametrize(("sub", "content", "words"), [
    ("lam_0.001", "", ["lam_0.001/results.json", "not valid JSON"]),
    ("lam_0.001", "[]", ["lam_0.001/results.json", "expected an object"]),
    ("dense_mtl", '{"kind": "mtl"}', ["dense_mtl/results.json", "'val' is missing"]),
    ("dense_mtl", '{"kind": "mtl", "val": {}, "sparsity": {"group_sparsity": "x"}}',
     ["dense_mtl/results.json", "group_sparsity"]),
])
def test_a_continued_sweep_refuses_a_damaged_sub_run_result_before_anything_changes(
        runs, tmp_path, capsys, sub, content, words):
    sweep = runs / "sweep"
    if not sweep.exists():
        assert cli("sweep-lambda", "--out", sweep, "--grid", "0.001", *MICRO) == 0
    run = _copy(runs, "sweep", tmp_path)
    (run / sub / "results.json").write_text(content)
    before = _snapshot(run)
    assert cli("sweep-lambda", "--resume", run, "train.max_steps=5") == 2
    msg = _one_line(capsys.readouterr().err)
    for w in [*words, "nothing was changed", "delete that file"]:
        assert w in msg, (w, msg)
    assert _snapshot(run) == before
    # as the message says: without the file, the sub-run is finished again from its checkpoint
    (run / sub / "results.json").unlink()
    assert cli("sweep-lambda", "--resume", run) == 0
    assert read_json(run / sub / "results.json")["steps"] == 4


@pytest.mark.parametrize("command", ["evaluate", "prune", "finetune", "train --resume"])
def test_a_checkpoint_damaged_to_hold_nan_weights_is_refused_and_nothing_changes(
        runs, tmp_path, capsys, command):
    """Training never saves non-finite weights, so such a checkpoint was damaged since: it is
    neither scored (all-null metrics), pruned, fine-tuned, nor treated as a divergence on resume
    (which would set the run's checkpoints aside)."""
    from safetensors.torch import load_file, save_file

    run = _copy(runs, "base", tmp_path)
    for f in run.glob("checkpoints/step_*/model.safetensors"):
        state = load_file(f)
        state["backbone.conv1.weight"].view(-1)[0] = float("nan")
        save_file(state, f)
    before = _snapshot(tmp_path)
    args = {"evaluate": ["evaluate", run], "prune": ["prune", run, "--no-latency"],
            "finetune": ["finetune", run, "--tasks", "normal"],
            "train --resume": ["train", "--resume", run, "train.max_steps=6"]}[command]
    assert cli(*args) == 2
    msg = _one_line(capsys.readouterr().err)
    assert "NaN or infinite weights" in msg and "backbone.conv1.weight" in msg
    assert _snapshot(tmp_path) == before


def _comparison(runs: Path) -> Path:
    out = runs / "compare"
    if not out.exists():
        assert cli("compare", "--out", out, *MICRO, "compare.methods=[mtl,meta_sparsity]",
                   "compare.budget=16") == 0
    return out


@pytest.mark.parametrize(("damage", "words"), [
    (lambda r: (r / "samples.npz").write_text("garbage"), ["samples.npz", "cannot be read"]),
    (lambda r: (r / "samples.npz").write_bytes(b""), ["samples.npz", "cannot be read"]),
    (lambda r: __import__("numpy").savez(r / "samples.npz", image=__import__("numpy").zeros(3)),
     ["samples.npz", "malformed"]),
    (lambda r: _edit_line(r / "seed_0/meta_sparsity/metrics.jsonl", 3, '{"step": 3, "kind": "me'),
     ["metrics.jsonl", "line 3", "not valid JSON"]),
    (lambda r: _edit_line(r / "seed_0/meta_sparsity/metrics.jsonl", 3,
                          '{"step": 2, "kind": "meta", "group_sparsity": 0.1}'),
     ["metrics.jsonl", "'lambda' is missing"]),
], ids=["samples-garbage", "samples-empty", "samples-shape", "log-line", "log-record"])
def test_report_reads_every_input_before_it_writes_any_picture(runs, tmp_path, capsys, damage,
                                                                words):
    run = tmp_path / "compare"
    shutil.copytree(_comparison(runs), run)
    damage(run)
    before = _snapshot(run)
    assert cli("report", run) == 2
    msg = _one_line(capsys.readouterr().err)
    for w in words:
        assert w in msg, (w, msg)
    assert _snapshot(run) == before


def _edit_line(path: Path, n: int, text: str) -> None:
    lines = path.read_text().splitlines()
    assert lines[n - 1].startswith("{")
    lines[n - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_a_moved_comparison_reports_from_its_own_logs(runs, tmp_path):
    """The λ plot reads the meta-training log inside the folder reported, not the one the
    comparison recorded (a path relative to where it ran, or the folder before a move)."""
    run = tmp_path / "moved"
    shutil.copytree(_comparison(runs), run)
    log = runs / "compare" / "seed_0" / "meta_sparsity" / "metrics.jsonl"
    saved = log.read_bytes()
    log.write_text("damaged\n{}\n")  # the original is not read
    try:
        (run / "lambda.png").unlink()
        assert cli("report", run) == 0
        assert (run / "lambda.png").is_file()
    finally:
        log.write_bytes(saved)


@pytest.mark.parametrize("command", ["train", "meta-train", "finetune"])
def test_resuming_with_fewer_steps_than_were_trained_is_refused(runs, tmp_path, capsys, command):
    """A run at step 4 resumed with 2 steps would end at once, its config.yaml saying 2."""
    if command == "meta-train" and not (runs / "meta").exists():
        assert cli("meta-train", "--out", runs / "meta", *MICRO) == 0
    name, args, key = {
        "train": ("base", ["train", "--resume"], "train.max_steps=2"),
        "meta-train": ("meta", ["meta-train", "--resume"], "meta.steps=2"),
        "finetune": ("ft", ["finetune", runs / "base", "--resume"], "finetune.steps=2"),
    }[command]
    run = _copy(runs, name, tmp_path)
    before = _snapshot(run)
    assert cli(*args, run, key) == 2
    msg = _one_line(capsys.readouterr().err)
    assert "trained 4 steps" in msg and key.split("=")[0] in msg and "at least 4" in msg
    assert _snapshot(run) == before


@pytest.mark.parametrize(("key", "value", "words"), [
    ("tasks", 5, ["'tasks'", "got int 5"]),
    ("stream", "x", ["'stream'", "expected an object"]),
    ("best_score", None, ["'best_score'", "expected a number, got null"]),
    ("step", "4", ["not a checkpoint's state"]),
])
@pytest.mark.parametrize("command", ["evaluate", "train --resume"])
def test_a_checkpoint_state_of_the_wrong_shape_is_named_and_nothing_changes(
        runs, tmp_path, capsys, key, value, words, command):
    import json

    run = _copy(runs, "base", tmp_path)
    for f in run.glob("checkpoints/step_*/state.json"):
        state = json.loads(f.read_text())
        state[key] = value
        f.write_text(json.dumps(state))
    before = _snapshot(run)
    args = ["evaluate", run] if command == "evaluate" else ["train", "--resume", run,
                                                             "train.max_steps=6"]
    assert cli(*args) == 2
    msg = _one_line(capsys.readouterr().err)
    for w in ["state.json", *words]:
        assert w in msg, (w, msg)
    assert _snapshot(run) == before


def test_a_copied_source_resumes_the_fine_tuning_inside_it(runs, tmp_path):
    """The default layout (the fine-tuning inside its source) survives a copy of the source,
    as in a copied comparison: the checkpoint records the original's path, not the copy's."""
    first = _copy(runs, "base", tmp_path)
    assert cli("finetune", first, "--tasks", "normal", *MICRO) == 0
    copy = tmp_path / "copy"
    shutil.copytree(first, copy)
    assert cli("finetune", copy, "--resume", copy / "finetune_normal", "finetune.steps=6") == 0
    assert read_json(copy / "finetune_normal" / "results.json")["steps"] == 6


def test_a_sub_run_refused_late_puts_the_continued_sweeps_config_back(runs, tmp_path, capsys):
    """An unfinished sub-run is checked when the sweep reaches it, after config.yaml took the
    new overrides: its refusal (here: fewer steps than it trained) puts the old config back."""
    sweep = runs / "sweep"
    if not sweep.exists():
        assert cli("sweep-lambda", "--out", sweep, "--grid", "0.001", *MICRO) == 0
    run = _copy(runs, "sweep", tmp_path)
    (run / "lam_0.001" / "results.json").unlink()  # unfinished: it will be resumed
    before = _snapshot(run)
    assert cli("sweep-lambda", "--resume", run, "train.max_steps=2") == 2
    msg = _one_line(capsys.readouterr().err)
    assert "lam_0.001" in msg and "trained 4 steps" in msg
    assert _snapshot(run) == before
    assert cli("sweep-lambda", "--resume", run) == 0  # as it was, it continues


def test_a_checkpoint_naming_a_task_its_data_lacks_is_named_as_such(runs, tmp_path, capsys):
    import json

    run = _copy(runs, "base", tmp_path)
    for f in run.glob("checkpoints/step_*/state.json"):
        state = json.loads(f.read_text())
        state["tasks"] = ["nope"]
        f.write_text(json.dumps(state))
    before = _snapshot(run)
    for args in (["evaluate", run], ["prune", run, "--no-latency"]):
        assert cli(*args) == 2
        msg = _one_line(capsys.readouterr().err)
        assert "checkpoint" in msg and "'nope'" in msg and "state.json was damaged" in msg
    assert _snapshot(run) == before


@pytest.mark.parametrize("pointer", ["best", "last"])
def test_a_folder_in_place_of_a_checkpoint_pointer_is_refused_before_anything_changes(
        runs, tmp_path, capsys, pointer):
    run = _copy(runs, "base", tmp_path)
    (run / "checkpoints" / pointer).unlink()
    (run / "checkpoints" / pointer).mkdir()
    before = _snapshot(run)
    assert cli("train", "--resume", run, "train.max_steps=6") == 2
    msg = _one_line(capsys.readouterr().err)
    assert f"checkpoints/{pointer} is not a pointer file" in msg
    assert _snapshot(run) == before
    (run / "checkpoints" / pointer).rmdir()  # as the message says
    assert cli("train", "--resume", run, "train.max_steps=6") == 0
