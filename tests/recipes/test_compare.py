"""`compare`, `report` and `demo` end to end on micro budgets: every method has its row, every
number in report.md is the one in results.json, and `report` regenerates the same report."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from tests.recipes.micro import MICRO, cli

from metasparsity.report.compare import METHOD_NAMES, count_cell, mean_std
from metasparsity.utils.errors import UserError
from metasparsity.utils.io import read_json

ALL = ["stl", "mtl", "fixed_lambda", "optuna", "meta_dense", "meta_sparsity", "meta_budget"]
SMALL = [*MICRO, "data.train_size=16", "data.val_size=8", "data.test_size=8",
         "train.max_steps=10", "finetune.steps=2", "finetune.val_every=1",
         "data.tasks=[segment,has_sphere,depth,normal]", "data.seen_tasks=[segment,has_sphere]",
         "data.unseen_tasks=[depth,normal]", "compare.lambda_grid=[0.003,0.03]",
         "compare.optuna_trials=2", "meta.lambda_init=0.01"]


def _rows(md: str, first_header: str) -> dict[str, list[str]]:
    """Markdown table starting with ``| first_header |`` -> {first cell: other cells}."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    out = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = cells[1:]
    return out


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "run"
    assert cli("compare", "--out", out, f"compare.methods=[{','.join(ALL)}]", *SMALL) == 0
    return out


def test_every_method_has_its_row_and_every_number_is_from_results_json(compared):
    res = read_json(compared / "results.json")
    md = (compared / "report.md").read_text()
    assert res["methods"] == ALL and set(res["summary"]) == set(ALL)
    summary = _rows(md, "method")
    n = len(res["seeds"])
    for m in ALL:
        a = res["summary"][m]
        row = summary[METHOD_NAMES[m]]
        assert row[:11] == [
            mean_std(a["delta_m_seen"], n), mean_std(a["delta_m_unseen"], n),
            mean_std(a["delta_m_all"], n), mean_std(a["group_sparsity"], n),
            mean_std(a["param_sparsity"], n), mean_std(a["gap_to_front"], n),
            mean_std(a["params"], n, 1e-6),
            mean_std(a["macs"], n, 1e-6), count_cell(a["passes"], n),
            count_cell(a["passes_total"], n), mean_std(a["wall_time_s"], n)], m
    tasks = _rows(md, "method")  # first table again: the per-task table has the same first header
    per_task = md[md.index("## Per-task test metrics"):]
    task_rows = _rows(per_task, "method")
    header = per_task.splitlines()[2].strip("|").split("|")[1:]
    for m in ALL:
        for cell, col in zip(task_rows[METHOD_NAMES[m]], header):
            task, metric = col.split()[:2]
            assert cell == mean_std(res["summary"][m]["metrics"][task][metric], n), (m, col)
    assert tasks  # the report parsed
    # STL is the baseline of Δm: exactly zero
    assert res["summary"]["stl"]["delta_m_seen"]["mean"] == 0.0
    # the grid's cost is the whole grid; the selected λ is one of it
    fixed = res["per_seed"]["0"]["fixed_lambda"]
    assert fixed["selected_lambda"] in (0.003, 0.03) and fixed["models"] == 2
    assert len(res["per_seed"]["0"]["optuna"]["trials"]) == 2
    for png in ("delta_vs_sparsity.png", "per_layer_sparsity.png", "lambda.png", "samples.png"):
        assert (compared / png).stat().st_size > 1000, png
        assert f"]({png})" in md


def test_every_method_gets_the_same_compute_and_tuning_is_counted_on_top(compared):
    res = read_json(compared / "results.json")
    comp, rows = res["compute"], res["per_seed"]["0"]
    # budget 10 passes at batch 8 = 80 samples: fine-tuning 2 × 8 = 16, and a meta-step is
    # meta_batch 2 × (K 1 + 1) passes + 2 λ-validation passes = 6 passes × batch 4 = 24 samples:
    # 2 meta-steps fit (64 // 24)
    assert comp == {"budget_passes": 10, "meta_steps": 2, "passes_per_meta_step": 6,
                    "lambda_passes_per_meta_step": 2, "finetune_steps": 2, "batch_size": 8,
                    "meta_batch_size": 4, "finetune_batch_size": 8}
    for m in ("mtl", "fixed_lambda", "optuna"):
        assert rows[m]["passes"] == 10, m
    # meta-sparsity: (2 × 6 × 4 + 16) / 8 = 8 ≤ 10; the methods without λ-validation passes
    # (λ = 0, and budget mode's global λ, a multiplier) take the same meta-steps, 2 passes fewer
    assert rows["meta_sparsity"]["passes"] == 8
    assert rows["meta_dense"]["passes"] == rows["meta_budget"]["passes"] == 6
    assert rows["meta_sparsity"]["meta_steps"] == rows["meta_dense"]["meta_steps"] == 2
    assert res["config"]["meta"]["steps"] == 2 and res["config"]["train"]["max_steps"] == 10
    assert rows["meta_budget"]["passes_total"] == 2 * 6  # one budget run per grid point
    assert rows["fixed_lambda"]["passes_total"] == 2 * 10  # a 2-point grid costs 2 budgets
    assert rows["optuna"]["passes_total"] == 2 * 10
    assert rows["stl"]["passes"] == 2 * 10  # one model per seen task
    md = (compared / "report.md").read_text()
    assert "Equal compute: every method gets 10 batch forward-backward passes" in md
    row = _rows(md, "method")[METHOD_NAMES["fixed_lambda"]]
    assert row[8:10] == ["10", "20"]  # passes, passes incl. tuning: whole numbers


def test_a_budget_too_small_for_one_meta_step_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli("compare", "--out", out, *SMALL, "compare.budget=3") == 2
    err = capsys.readouterr().err
    assert "budget of 3 passes (batch 8) leaves no meta-step" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_sparse_methods_report_their_sparsity_and_pruned_cost(compared):
    res = read_json(compared / "results.json")
    rows = res["per_seed"]["0"]
    for p in rows["fixed_lambda"]["grid"]:
        assert 0.0 <= p["param_sparsity"] <= 1.0 and 0.0 <= p["group_sparsity"] <= 1.0
    for m in ALL:
        assert len(rows[m]["sparsity"]["per_layer"]) == 20  # every conv of the ResNet-18
        cost = rows[m]["cost"]
        assert 0 < cost["params"] <= cost["params_dense"] and 0 < cost["macs"] <= cost["macs_dense"]


def test_budget_mode_runs_at_the_grid_costs(compared):
    rows = read_json(compared / "results.json")["per_seed"]["0"]
    grid, levels = rows["fixed_lambda"]["grid"], rows["meta_budget"]["grid"]
    assert [p["target"] for p in levels] == [p["backbone_cost"]["macs"] for p in grid]
    for p in levels:
        assert p["budget"]["measure"] == "macs" and p["budget"]["target"] == p["target"]
        assert 0.0 < p["budget"]["cost"]["macs"] <= 1.0 and "delta_m_seen" in p
    assert rows["meta_budget"]["selected_target"] in [p["target"] for p in levels]


def test_meta_budget_without_targets_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli("compare", "--out", out, *SMALL, "compare.methods=[mtl,meta_budget]") == 2
    assert "meta_budget" in capsys.readouterr().err
    assert not out.exists()


def test_report_regenerates_the_same_report_without_training(compared, capsys):
    before = (compared / "report.md").read_text()
    (compared / "report.md").unlink()
    (compared / "lambda.png").unlink()
    assert cli("report", compared) == 0
    assert (compared / "report.md").read_text() == before
    assert (compared / "lambda.png").is_file()
    assert "meta-sparsity (learned λ)" in capsys.readouterr().out


def test_report_reads_every_input_before_it_writes_a_file(compared, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(compared, run)
    res = read_json(run / "results.json")
    seed = str(res["seeds"][0])
    del res["per_seed"][seed]["fixed_lambda"]["sparsity"]["per_layer"]  # read for the 2nd plot
    (run / "results.json").write_text(json.dumps(res))
    (run / "delta_vs_sparsity.png").unlink()
    before = (run / "report.md").read_text()
    assert cli("report", run) == 2
    err = capsys.readouterr().err
    assert "malformed" in err and "per_layer" in err and "Traceback" not in err
    assert not (run / "delta_vs_sparsity.png").exists()  # the first plot was not drawn either
    assert (run / "report.md").read_text() == before


def test_report_of_a_non_compare_directory_is_a_clean_error(tmp_path, capsys):
    assert cli("report", tmp_path) == 2
    assert "no results.json" in capsys.readouterr().err


def test_demo_runs_the_comparison_and_reuses_it(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", out, "--samples", "8", *SMALL, "compare.methods=[mtl]"]
    assert cli(*args) == 0
    first = capsys.readouterr().out
    assert "dense MTL" in first and str(out / "report.md") in first
    # a fresh demo writes the config its runs follow (with the equal-compute budget) at once
    assert "config.yaml updated" not in first
    assert yaml.safe_load((out / "config.yaml").read_text()) == read_json(out / "results.json")["config"]
    assert (out / "preview.png").is_file() and (out / "report.md").is_file()
    os.utime(out / "results.json", ns=(0, 0))  # whatever the file system's time resolution
    mtl = (out / "seed_0" / "mtl" / "results.json").stat().st_mtime_ns
    assert cli("demo", "--out", out, "--samples", "8", "train.progress=false") == 0
    assert "continuing the demo" in capsys.readouterr().out
    assert (out / "seed_0" / "mtl" / "results.json").stat().st_mtime_ns == mtl  # not retrained
    assert (out / "results.json").stat().st_mtime_ns > 0  # the summary is written again
    assert re.search(r"demo finished in \d+ s", capsys.readouterr().out + first)


def test_the_fixed_lambda_front_and_each_methods_gap_to_it():
    from metasparsity.recipes.compare_summary import fixed_lambda_front, gap_to_front

    def grid(*pts):  # (λ, param sparsity 0-1, Δm seen)
        return {"fixed_lambda": {"grid": [{"lam": lam, "param_sparsity": ps, "delta_m_seen": d}
                                          for lam, ps, d in pts]}}

    # two seeds; λ=0.01 is dominated (λ=0.1 is sparser and better on average)
    per_seed = {"0": grid((0.001, 0.10, 1.0), (0.01, 0.30, -6.0), (0.1, 0.50, -2.0)),
                "1": grid((0.001, 0.20, 3.0), (0.01, 0.30, -4.0), (0.1, 0.70, -6.0))}
    front = fixed_lambda_front(per_seed)
    assert [p["lam"] for p in front] == [0.001, 0.01, 0.1]
    assert [p["front"] for p in front] == [True, False, True]
    assert front[0]["param_sparsity"]["mean"] == pytest.approx(15.0)
    assert front[0]["delta_m"] == {"mean": pytest.approx(2.0), "std": pytest.approx(2 ** 0.5), "n": 2}
    assert front[2]["delta_m"]["mean"] == pytest.approx(-4.0)
    # between 15 % (Δm 2) and 60 % (Δm −4): linear; at 37.5 % the front is at −1
    assert gap_to_front(front, 37.5, 0.5) == pytest.approx(1.5)
    assert gap_to_front(front, 60.0, -4.0) == pytest.approx(0.0)
    assert gap_to_front(front, 61.0, 0.0) is None  # beyond the sparsest grid point
    # denser than the grid, no dense MTL: the densest front point is sparser and at Δm 2
    assert gap_to_front(front, 10.0, 1.0) == pytest.approx(-1.0)
    # with dense MTL (λ = 0, 0 % sparsity, Δm 5 and 3) the front starts at 0 %
    for seed, d in (("0", 5.0), ("1", 3.0)):
        per_seed[seed]["mtl"] = {"delta_m": {"seen": d}}
    front = fixed_lambda_front(per_seed)
    assert front[0]["lam"] == 0.0 and front[0]["front"]
    assert gap_to_front(front, 7.5, 1.0) == pytest.approx(-2.0)  # front: 4 + (2 − 4)·0.5 = 3
    # dense MTL beaten by a sparser grid point (Δm 1 < 2 at 15 %): flat to the left of 15 %
    for seed in ("0", "1"):
        per_seed[seed]["mtl"] = {"delta_m": {"seen": 1.0}}
    front = fixed_lambda_front(per_seed)
    assert front[0]["lam"] == 0.0 and not front[0]["front"]
    assert gap_to_front(front, 7.5, 1.0) == pytest.approx(-1.0)
    assert gap_to_front(front, 0.0, 1.0) == pytest.approx(-1.0)
    assert gap_to_front(front, 61.0, 0.0) is None


def test_meta_sparsity_with_lambda_init_0_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli("compare", "--out", out, *SMALL, "compare.methods=[mtl,meta_sparsity]",
               "meta.lambda_init=0") == 2
    assert "meta.lambda_init is 0" in capsys.readouterr().err
    assert not out.exists()


def test_meta_sparsity_in_budget_mode_when_the_config_sets_a_target(tmp_path):
    out = tmp_path / "run"
    assert cli("compare", "--out", out, *SMALL, "compare.methods=[mtl,meta_dense,meta_sparsity]",
               "meta.target=0.7") == 0
    rows = read_json(out / "results.json")["per_seed"]["0"]
    assert rows["meta_sparsity"]["budget"]["target"] == 0.7
    assert rows["meta_sparsity"]["budget"]["cost"]["macs"] <= 0.7
    assert rows["meta_dense"]["budget"] is None
    md = (out / "report.md").read_text()
    assert "| meta-sparsity, budget mode (70 % macs) |" in md and "multiplier" in md


def test_compare_fine_tunes_at_the_learned_lambda_and_keeps_the_budget(tmp_path):
    """``finetune.lam=source`` (the demo preset): the dense meta row fine-tunes without a
    penalty (its λ is 0), budget mode's fine-tuning keeps the prox at the multiplier and ends
    within its target; ``finetune.lam_unseen=0``: the unseen tasks' fine-tuning has no penalty
    and no budget hold, only the source's zero set."""
    out = tmp_path / "run"
    assert cli("compare", "--out", out, *SMALL, "compare.methods=[meta_dense,meta_sparsity]",
               "meta.target=0.7", "finetune.lam=source", "finetune.lam_unseen=0") == 0
    rows = read_json(out / "results.json")["per_seed"]["0"]
    dense = read_json(Path(rows["meta_dense"]["run_dir"]) / "results.json")
    assert dense["lam"] == 0.0 and "budget" not in dense
    ft = read_json(Path(rows["meta_sparsity"]["run_dir"]) / "results.json")
    assert ft["lam"] == rows["meta_sparsity"]["lambda_final"] > 0
    assert ft["budget"]["target"] == 0.7 and ft["budget"]["cost"]["macs"] <= 0.7
    assert ft["best_step"] == ft["steps"]
    unseen = read_json(Path(rows["meta_sparsity"]["run_dir"]).parent / "finetune_unseen"
                       / "results.json")
    assert unseen["lam"] == 0.0 and "budget" not in unseen
    assert unseen["sparsity"]["group_sparsity"] == read_json(
        Path(rows["meta_sparsity"]["run_dir"]).parent / "results.json")["sparsity"]["group_sparsity"]


def test_check_compare_tests_meta_target_only_where_a_method_takes_it():
    """``meta.target`` out of reach is refused before anything runs, unless only ``meta_budget``
    after the grid would meet it (it takes the grid's costs instead)."""
    from metasparsity.config import load_config
    from metasparsity.recipes.compare import check_compare

    far = [*SMALL, "meta.target=1e-6"]
    methods, plan = check_compare(load_config(None, [*far, "compare.methods=[fixed_lambda,meta_budget]"]))
    assert methods == ["stl", "fixed_lambda", "meta_budget"] and plan.meta_steps >= 1
    for ms in ("[meta_sparsity]", "[meta_budget,fixed_lambda]"):
        with pytest.raises(UserError, match="meta.target: 1e-06 is out of reach"):
            check_compare(load_config(None, [*far, f"compare.methods={ms}"]))


def test_a_cell_averaged_over_fewer_seeds_says_so_and_one_value_shows_no_spread():
    from metasparsity.recipes.compare_summary import mean_std_cell

    one = mean_std_cell([1.5, None, None])  # the gap exists for one seed of three
    assert one["n"] == 1 and mean_std(one, 3) == "1.50 (1 of 3 seeds)"
    two = mean_std_cell([1.0, 3.0, None])
    assert mean_std(two, 3) == "2.00 ± 1.41 (2 of 3 seeds)"
    assert mean_std(mean_std_cell([1.0, 3.0, 2.0]), 3) == "2.00 ± 1.00"
    assert mean_std(mean_std_cell([None, None]), 2) == "–"
    assert mean_std({"mean": 2.0, "std": 1.0}, 3) == "2.00 ± 1.00"  # results.json before ``n``


def test_stl_baselines_that_learned_nothing_are_a_user_error_naming_the_metrics():
    from metasparsity.eval.delta import usable_spec
    from metasparsity.recipes.compare_summary import summarize
    from metasparsity.utils.errors import UserError

    spec = {"seg": {"miou": True, "pixel_acc": True}}
    zero = {"seg": {"miou": 0.0, "pixel_acc": 0.0}}
    row = {"seen": {"test": {"seg": {"miou": 0.3, "pixel_acc": 0.5}}}, "unseen": {"test": {}},
           "sparsity": {"group_sparsity": 0.0, "param_sparsity": 0.0}, "wall_time_s": 1.0}
    with pytest.raises(UserError, match=r"seed 0's seen tasks.*seg\.miou, seg\.pixel_acc"):
        summarize({"0": {"mtl": row}}, spec, {}, {"0": {"test": zero}})
    assert usable_spec(spec, zero) == ({}, ["seg.miou", "seg.pixel_acc"])  # without ``needed``
    with pytest.raises(UserError, match="the grid's choice"):
        usable_spec(spec, zero, needed="the grid's choice")
    # one usable metric is enough
    assert usable_spec(spec, {"seg": {"miou": 0.0, "pixel_acc": 0.4}}, needed="x")[0] == {
        "seg": {"pixel_acc": True}}


def test_budget_runs_keep_their_own_target_when_fine_tuned_with_a_penalty(tmp_path):
    """With ``finetune.lam=source``, each ``meta_budget`` level fine-tunes under its own target
    (the dual ascent and the landing of budget mode), not without a budget (its runs are of kind
    ``meta_budget``) and not at the comparison's ``meta.target``."""
    out = tmp_path / "run"
    assert cli("compare", "--out", out, "compare.methods=[stl,mtl,fixed_lambda,meta_budget]",
               *SMALL, "compare.lambda_grid=[0.03]", "finetune.lam=source") == 0
    rows = read_json(out / "results.json")["per_seed"]["0"]
    (level,) = rows["meta_budget"]["grid"]
    meta_run = Path(level["meta_run_dir"])
    assert read_json(meta_run / "results.json")["kind"] == "meta_budget"
    for name in ("finetune_seen", "finetune_unseen"):
        ft = read_json(meta_run / name / "results.json")
        assert ft["source_kind"] == "meta_budget"
        assert ft["budget"]["target"] == level["target"] and ft["budget"]["measure"] == "macs"
        assert ft["budget"]["cost"]["macs"] <= level["target"] + 0.03


def test_train_budget_trains_at_the_comparisons_target_and_holds_it_on_the_unseen_tasks(tmp_path):
    """``train_budget``: plain multi-task training in budget mode at ``meta.target``, the
    multiplier from ``sparsity.lam``; its own run is the deployed model (``budget`` passes, no
    seen-task fine-tuning); with ``finetune.lam_unseen=source`` its unseen fine-tuning keeps
    the budget it trained under."""
    out = tmp_path / "run"
    assert cli("compare", "--out", out, *SMALL, "compare.methods=[mtl,train_budget]",
               "meta.target=0.7", "sparsity.lam=1e-3", "finetune.lam_unseen=source") == 0
    res = read_json(out / "results.json")
    row = res["per_seed"]["0"]["train_budget"]
    run = read_json(Path(row["run_dir"]) / "results.json")
    assert run["kind"] == "train_budget" and run["tasks"] == ["segment", "has_sphere"]
    assert run["budget"]["target"] == 0.7 and run["budget"]["measure"] == "macs"
    assert run["budget"]["cost"]["macs"] <= 0.7 and run["best_step"] == run["steps"]
    assert row["lambda_final"] == run["budget"]["lambda_final"] and row["budget"] == run["budget"]
    assert row["passes"] == row["passes_total"] == res["summary"]["mtl"]["passes"]["mean"]
    unseen = read_json(Path(row["run_dir"]) / "finetune_unseen" / "results.json")
    assert unseen["budget"]["target"] == 0.7 and unseen["budget"]["cost"]["macs"] <= 0.7 + 0.03
    md = (out / "report.md").read_text()
    assert "| plain MTL, budget mode (70 % macs) |" in md
    assert _rows(md, "method")["plain MTL, budget mode (70 % macs)"][-1].startswith("multiplier ")


def test_train_budget_takes_the_measure_and_the_seed_and_its_unseen_tasks_no_penalty(tmp_path):
    """``meta.target_measure`` is the budget's measure and each seed trains with its own seed;
    with ``finetune.lam_unseen=0`` (the demo) the unseen fine-tuning has no penalty and no
    budget, only the zero set."""
    out = tmp_path / "run"
    assert cli("compare", "--out", out, *SMALL, "compare.methods=[train_budget]",
               "compare.seeds=[1]", "meta.target=0.8", "meta.target_measure=params",
               "sparsity.lam=1e-3", "finetune.lam_unseen=0", "sparsity.multiplier_on=removable") == 0
    row = read_json(out / "results.json")["per_seed"]["1"]["train_budget"]
    run = read_json(Path(row["run_dir"]) / "results.json")
    assert run["budget"]["measure"] == "params" and run["budget"]["cost"]["params"] <= 0.8
    # the row's λ is the multiplier, not a mean with the layers held at sparsity.lam
    on = run["budget"]["multiplier_on"]
    assert 0 < sum(on) < len(on) and isinstance(run["budget"]["lambda_final"], list)
    assert row["lambda_final"] == max(v for v, o in zip(run["budget"]["lambda_final"], on) if o)
    assert yaml.safe_load((Path(row["run_dir"]) / "config.yaml").read_text())["train"]["seed"] == 1
    unseen = read_json(Path(row["run_dir"]) / "finetune_unseen" / "results.json")
    assert unseen["lam"] == 0.0 and "budget" not in unseen
    assert unseen["sparsity"]["group_sparsity"] == run["sparsity"]["group_sparsity"]
    assert "| plain MTL, budget mode (80 % params) |" in (out / "report.md").read_text()


@pytest.mark.parametrize("extra, names", [
    (["sparsity.lam=1e-3"], "meta.target"),
    (["meta.target=0.7"], "sparsity.lam"),
    (["meta.target=1e-6", "sparsity.lam=1e-3"], "meta.target: 1e-06 is out of reach"),
])
def test_train_budget_without_a_target_or_a_start_is_refused_before_anything_is_written(
        tmp_path, capsys, extra, names):
    out = tmp_path / "run"
    assert cli("compare", "--out", out, *SMALL, "compare.methods=[mtl,train_budget]", *extra) == 2
    err = capsys.readouterr().err
    assert names in err and (names == "meta.target: 1e-06 is out of reach" or "train_budget" in err)
    assert not out.exists()


def test_sub_runs_record_the_lambda_and_seed_they_trained_with(tmp_path):
    """A comparison's or sweep's sub-run writes the λ and seed it trains with into its
    ``config.yaml``, not the comparison's (``sparsity.lam`` is train_budget's start), so that
    ``train --resume`` of the sub-run rebuilds the same training."""
    from metasparsity.config import load_config
    from metasparsity.recipes.sweep import train_or_load

    cfg = load_config(None, [*SMALL, "train.max_steps=1", "sparsity.lam=1e-3", "train.seed=0"])
    for lam, kind in ((0.0, "mtl"), (0.03, "fixed_lambda")):
        d = tmp_path / kind
        res = train_or_load(cfg, d, lam, kind, ["segment", "has_sphere"], seed=2)
        saved = yaml.safe_load((d / "config.yaml").read_text())
        assert saved["sparsity"]["lam"] == lam == res["lam"] and saved["train"]["seed"] == 2
        assert res["kind"] == kind
    assert cfg.sparsity.lam == 1e-3 and cfg.train.seed == 0  # the caller's config untouched


def test_the_report_names_every_cut_backbone(compared, tmp_path):
    import shutil

    res = read_json(compared / "results.json")
    # every deployed sparse model's check reaches the comparison's results
    for rows in res["per_seed"].values():
        for m in ("mtl", "fixed_lambda", "meta_sparsity", "meta_budget"):
            assert "backbone_cut" in rows[m]["seen"], m
    cut = [(m, s) for s, rows in res["per_seed"].items() for m in res["methods"]
           if m in rows and rows[m]["seen"].get("backbone_cut")]
    assert ("**Cut backbones**" in (compared / "report.md").read_text()) == bool(cut)
    copy = tmp_path / "copy"
    shutil.copytree(compared, copy)
    seed = next(iter(res["per_seed"]))
    res["per_seed"][seed]["mtl"]["seen"]["backbone_cut"] = "layer4.0"
    (copy / "results.json").write_text(json.dumps(res))
    assert cli("report", copy) == 0
    line = next(x for x in (copy / "report.md").read_text().splitlines()
                if x.startswith("**Cut backbones**"))
    assert f"{METHOD_NAMES['mtl']}, seed {seed}, from layer4.0 on" in line


def test_a_method_row_without_what_the_comparison_reads_is_named():
    """A method of one's own returning the raw train results, None, or a row without a seen
    task failed with a KeyError or AttributeError after every method and seed had run."""
    from types import SimpleNamespace

    from metasparsity.recipes.compare import check_method_row
    from metasparsity.utils.errors import UserError

    ctx = SimpleNamespace(seen=["depth", "segment"], unseen=["normal"])
    good = {"run_dir": "r", "wall_time_s": 1.0,
            "seen": {"val": {"depth": {}, "segment": {}}, "test": {"depth": {}, "segment": {}}},
            "unseen": {"val": {}, "test": {}},
            "sparsity": {"param_sparsity": 0.0, "group_sparsity": 0.0}}
    assert check_method_row("mine", good, ctx) is good
    no_seg = {**good, "seen": {"val": {"depth": {}}, "test": {"depth": {}}}}
    part_unseen = {**good, "unseen": {"val": {"x": {}}, "test": {"x": {}}}}
    for row, words in [(None, "expected an object"), ({"test": {}}, "'run_dir' is missing"),
                       (no_seg, "row['seen']['val'] has no metrics for segment"),
                       (part_unseen, "row['unseen']['val'] has no metrics for normal")]:
        with pytest.raises(UserError, match=r"method 'mine'") as e:
            check_method_row("mine", row, ctx)
        assert words in str(e.value), str(e.value)
