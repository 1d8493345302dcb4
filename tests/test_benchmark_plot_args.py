"""The benchmarks that read finished runs or result files and write a picture or a table
(``budget_paths.py``, ``budget_front_plot.py``, ``zero_groups.py``) refuse a bad ``--out`` and a
damaged input before writing anything: exit 2, one line naming it, nothing on disk changed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNWRITABLE = "/proc/metasparsity_plot.png"  # no file can be made there, not even by root


def _bench(name: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1",
                               "PATH": "/usr/bin:/bin"})


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path below ``root``: a file's bytes, None for a folder."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
            for p in sorted(root.rglob("*"))}


def _refused(p: subprocess.CompletedProcess, words: list[str]) -> None:
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    err = p.stderr.strip().splitlines()
    assert "error:" in err[-1], err
    for w in words:
        assert w in err[-1], (w, err[-1])


# ---------------------------------------------------------------------------- budget_paths.py

REC = {"step": 25, "kind": "train", "cost": 0.5, "target": 0.5, "lambda": 4e-4}


def _log(path: Path, lines: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))


def _budget_runs(tmp: Path, lines: list | None = None) -> Path:
    """A ``--runs`` folder with one plain budget run whose log has ``lines`` (default: good)."""
    lines = lines or [dict(REC, step=25 * (i + 1)) for i in range(8)]
    _log(tmp / "runs" / "seed_0" / "budget_macs_0.5" / "metrics.jsonl", lines)
    return tmp / "runs"


def _paths_case(tmp: Path, case: str) -> tuple[list, list[str]]:
    out = tmp / "paths.png"
    out.write_text("mine")  # an earlier picture: kept
    meta = [{"step": s, "kind": "meta", "cost": 0.5, "target": 0.5, "lambda": [1e-3]}
            for s in (1, 2, 3)]
    bad = {"not_json": ([REC, "{nope", REC], ["metrics.jsonl", "line 2", "not valid JSON"]),
           "not_object": ([REC, [1, 2], REC], ["metrics.jsonl", "line 2", "a JSON object"]),
           "no_target": ([{k: v for k, v in REC.items() if k != "target"}],
                         ["metrics.jsonl", "'target' is missing"]),
           "cost_text": ([dict(REC, cost="x")], ["metrics.jsonl", "['cost']", "a number"]),
           "step_float": ([dict(REC, step=2.5)], ["metrics.jsonl", "['step']", "an integer"]),
           "lambda_empty": ([dict(REC, **{"lambda": []})], ["metrics.jsonl", "['lambda']", ">= 0, not all 0"]),
           "lambda_zero": ([dict(REC, step=s, **{"lambda": 0.0}) for s in range(1, 9)],
                           ["metrics.jsonl", "['lambda']", ">= 0, not all 0"])}
    if case in bad:
        lines, words = bad[case]
        return ["--runs", _budget_runs(tmp, lines), "--out", out], words
    if case == "not_utf8":
        runs = _budget_runs(tmp)
        (runs / "seed_0" / "budget_macs_0.5" / "metrics.jsonl").write_bytes(b"\xff\xfe\x00")
        return ["--runs", runs, "--out", out], ["metrics.jsonl", "UTF-8"]
    if case == "finetune_log":
        runs = _budget_runs(tmp, meta)
        _log(runs / "seed_0" / "budget_macs_0.5" / "finetune_seen" / "metrics.jsonl",
             ["{nope", REC])
        return ["--runs", runs, "--out", out], ["finetune_seen", "line 1", "not valid JSON"]
    if case == "out_folder":
        (tmp / "pic.png").mkdir()
        return ["--runs", _budget_runs(tmp), "--out", tmp / "pic.png"], ["--out", "is a folder"]
    if case == "out_unwritable":
        return ["--runs", _budget_runs(tmp), "--out", UNWRITABLE], ["--out", "cannot write it"]
    assert case == "out_below_a_file"
    return (["--runs", _budget_runs(tmp), "--out", out / "p.png"],
            ["--out", f"{out} is not a folder"])


@pytest.mark.parametrize("case", ["not_json", "not_object", "no_target", "cost_text",
                                  "step_float", "lambda_empty", "lambda_zero", "not_utf8",
                                  "finetune_log", "out_folder", "out_below_a_file",
                                  "out_unwritable"])
def test_budget_paths_refuses_a_damaged_log_or_a_bad_out(tmp_path, case):
    args, words = _paths_case(tmp_path, case)
    before = _tree(tmp_path)
    _refused(_bench("budget_paths.py", *args), words)
    assert _tree(tmp_path) == before


def test_budget_paths_writes_then_replaces_its_picture(tmp_path):
    runs = _budget_runs(tmp_path)
    out = tmp_path / "new" / "paths.svg"
    for _ in range(2):  # writes it, then replaces it
        p = _bench("budget_paths.py", "--runs", runs, "--out", out)
        assert p.returncode == 0, p.stderr[-2000:]
        assert out.read_text().lstrip().startswith("<?xml")
    assert [x.name for x in out.parent.iterdir()] == ["paths.svg"]  # no temporary file left


# ------------------------------------------------------------------------ budget_front_plot.py

CELL = {"std": 0.0, "n": 3}
GOOD = {"target": 0.5,
        "grid": [{"lam": lam, "backbone_macs": {"mean": m, **CELL}, "delta_m": {"mean": d, **CELL}}
                 for lam, m, d in [(0.0, 100.0, 0.0), (1e-3, 25.0, 2.0), (3e-3, 10.0, -1.0)]],
        "rows": [{"seed": 0, "backbone_macs": 50.0, "delta_m": 1.0,
                  "gap_to_seed_front_at_macs": 0.1},
                 {"seed": 1, "backbone_macs": 40.0, "delta_m": 1.5,
                  "gap_to_seed_front_at_macs": 0.3},
                 {"seed": "mean ± std", "backbone_macs": "not read", "delta_m": "not read"}]}


def _grid_entry(**change) -> list[dict]:
    return [{**GOOD["grid"][0], **change}]


def _front_case(tmp: Path, case: str) -> tuple[list, list[str]]:
    good = tmp / "good.json"
    good.write_text(json.dumps(GOOD))
    out = tmp / "front.png"
    out.write_text("mine")  # an earlier picture: kept
    bad = tmp / "bad.json"
    files = {"grid_empty": ("--grid", ""),
             "grid_list": ("--grid", "[1, 2]"),
             "grid_no_lam": ("--grid", {"grid": [{k: v for k, v in GOOD["grid"][0].items()
                                                   if k != "lam"}]}),
             "grid_mean_null": ("--grid", {"grid": _grid_entry(delta_m={"mean": None, "std": 0})}),
             "grid_not_list": ("--grid", {"grid": 5}),
             "target_text": ("--grid", dict(GOOD, target="half")),
             "rows_not_list": ("--results", dict(GOOD, rows={"seed": 0})),
             "row_not_object": ("--results", dict(GOOD, rows=[1])),
             "row_macs_text": ("--results", dict(GOOD, rows=[dict(GOOD["rows"][0],
                                                                  backbone_macs="x")])),
             "row_gap_text": ("--results", dict(GOOD, rows=[dict(GOOD["rows"][0],
                                                                 gap_to_seed_front_at_macs="x")]))}
    words = {"grid_empty": ["not valid JSON"], "grid_list": ["expected an object"],
             "grid_no_lam": ["['grid'][0]", "'lam' is missing"],
             "grid_mean_null": ["['delta_m']['mean']", "null"],
             "grid_not_list": ["['grid']", "got int 5"], "target_text": ["['target']"],
             "rows_not_list": ["['rows']"], "row_not_object": ["['rows'][0]", "an object"],
             "row_macs_text": ["['rows'][0]['backbone_macs']", "a number"],
             "row_gap_text": ["['rows'][0]['gap_to_seed_front_at_macs']"]}
    if case in files:
        opt, content = files[case]
        bad.write_text(content if isinstance(content, str) else json.dumps(content))
        grid, results = (bad, good) if opt == "--grid" else (good, bad)
        return (["--grid", grid, "--results", results, "--out", out],
                [opt, "bad.json", *words[case]])
    if case == "results_missing":
        return (["--grid", good, "--results", tmp / "nowhere.json", "--out", out],
                ["--results", "nowhere.json"])
    if case == "results_folder":
        (tmp / "dir.json").mkdir()
        return (["--grid", good, "--results", tmp / "dir.json", "--out", out],
                ["--results", "dir.json", "directory"])
    if case == "out_folder":
        (tmp / "pic.png").mkdir()
        return (["--grid", good, "--results", good, "--out", tmp / "pic.png"],
                ["--out", "is a folder"])
    if case == "out_unwritable":
        return (["--grid", good, "--results", good, "--out", UNWRITABLE],
                ["--out", "cannot write it"])
    assert case == "out_below_a_file"
    return (["--grid", good, "--results", good, "--out", out / "f.png"],
            ["--out", f"{out} is not a folder"])


@pytest.mark.parametrize("case", ["grid_empty", "grid_list", "grid_no_lam", "grid_mean_null",
                                  "grid_not_list", "target_text", "rows_not_list",
                                  "row_not_object", "row_macs_text", "row_gap_text",
                                  "results_missing", "results_folder", "out_folder",
                                  "out_below_a_file", "out_unwritable"])
def test_budget_front_plot_refuses_a_damaged_result_file_or_a_bad_out(tmp_path, case):
    args, words = _front_case(tmp_path, case)
    before = _tree(tmp_path)
    p = _bench("budget_front_plot.py", *args)
    _refused(p, words)
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert _tree(tmp_path) == before


def test_budget_front_plot_writes_then_replaces_its_picture(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(GOOD))
    out = tmp_path / "new" / "front.png"
    for _ in range(2):  # writes it, then replaces it
        p = _bench("budget_front_plot.py", "--grid", good, "--results", good, "--out", out)
        assert p.returncode == 0, p.stderr[-2000:]
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "good: Δm +1.25 ± 0.35 at 45.0 % of the MACs (n=2)" in p.stdout
    assert [x.name for x in out.parent.iterdir()] == ["front.png"]  # no temporary file left


# ------------------------------------------------------------------------------ zero_groups.py

def _zero_case(tmp: Path, case: str) -> tuple[list, list[str]]:
    run = tmp / "seed_0" / "run"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"kind": "train"}))
    out = tmp / "table.md"
    out.write_text("mine")  # an earlier table: kept
    pattern = str(tmp / "seed_*" / "run")
    if case == "out_folder":
        (tmp / "t.md").mkdir()
        return ["--runs", pattern, "--out", tmp / "t.md"], ["--out", "is a folder"]
    if case == "out_below_a_file":
        return ["--runs", pattern, "--out", out / "t.md"], ["--out", f"{out} is not a folder"]
    if case == "out_not_md":
        return ["--runs", pattern, "--out", tmp / "t.png"], ["--out", ".md"]
    if case == "results_not_json":
        (run / "results.json").write_text("{nope")
        return ["--runs", pattern, "--out", out], ["--runs", "results.json", "not valid JSON"]
    assert case == "results_shape"
    (run / "results.json").write_text("[]")
    return ["--runs", pattern, "--out", out], ["--runs", "results.json", "expected an object"]


@pytest.mark.parametrize("case", ["out_folder", "out_below_a_file", "out_not_md",
                                  "results_not_json", "results_shape"])
def test_zero_groups_refuses_a_bad_out_or_a_damaged_results_file(tmp_path, case):
    args, words = _zero_case(tmp_path, case)
    before = _tree(tmp_path)
    _refused(_bench("zero_groups.py", *args), words)
    assert _tree(tmp_path) == before
