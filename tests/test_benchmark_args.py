"""The benchmarks that train refuse bad arguments before their first training (exit 2, one line,
nothing written); ``benchmarks/meta_step.py`` runs on the preset (its λ0 is ``auto``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench(name: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1",
                               "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize(("script", "args", "words"), [
    ("fixed_lambda_grid.py", ["--jobs", "0"], ["--jobs"]),
    ("fixed_lambda_grid.py", ["--seeds", "0", "0"], ["--seeds", "once"]),
    ("fixed_lambda_grid.py", ["--grid-adam", "0"], ["--grid-adam", "λ > 0"]),
    ("fixed_lambda_grid.py", ["foo.bar=1"], ["unknown key", "'foo'"]),
    ("fixed_lambda_grid.py", ["meta.steps=-1"], ["meta.steps"]),
    ("lambda_inits.py", ["--inits", "abc"], ["--inits", "'abc'"]),
    ("lambda_inits.py", ["--measure", "bogus"], ["--measure"]),
    ("lambda_inits.py", ["--target", "-0.5"], ["--target"]),
    ("lambda_inits.py", ["--grid-config", "/nonexistent.yaml"], ["/nonexistent.yaml"]),
    ("lambda_inits.py", ["--name", "a/b"], ["--name"]),
    ("budget_train.py", ["--seeds", "0", "0"], ["--seeds"]),
    ("budget_train.py", ["--grid", "-0.001"], ["--grid"]),
    ("budget_train.py", ["--jobs", "-1"], ["--jobs"]),
    ("hypergrad_horizon.py", ["--init", "abc"], ["meta.lambda_init"]),
    ("hypergrad_horizon.py", ["--seeds", "0,0"], ["--seeds"]),
    ("zero_set_jitter.py", ["--tail", "1"], ["--tail"]),
    ("zero_set_jitter.py", ["--inits", ""], ["--inits"]),
    ("zero_set_jitter.py", ["--inits", "abc"], ["meta.lambda_init"]),
])
def test_a_training_benchmark_refuses_bad_arguments_before_training(tmp_path, script, args,
                                                                    words):
    runs, out = tmp_path / "runs", tmp_path / "out"
    extra = ["--grid-runs", tmp_path / "grid"] if script in ("lambda_inits.py",
                                                              "budget_train.py") else []
    p = _bench(script, "--runs", runs, "--out", out, *extra, *args)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    last = p.stderr.strip().splitlines()[-1]
    assert "Traceback" not in p.stderr and "error:" in last, p.stderr
    for w in words:
        assert w in last, (w, last)
    assert not runs.exists() and not out.exists()


def test_an_out_that_is_a_file_is_refused_before_training(tmp_path):
    f = tmp_path / "afile"
    f.write_text("mine")
    p = _bench("fixed_lambda_grid.py", "--runs", tmp_path / "runs", "--out", f)
    assert p.returncode == 2 and "is not a folder" in p.stderr, p.stderr
    assert f.read_text() == "mine" and not (tmp_path / "runs").exists()


def test_meta_step_runs_on_the_preset(tmp_path):
    """The preset's λ0 is ``auto``: the benchmark computes it as meta-train does (it passed the
    word to LearnedLambda, a TypeError, before)."""
    p = _bench("meta_step.py", "--out-dir", tmp_path, "--no-memory", "--repeats", "1",
               "--warmup", "0", "--threads", "1", "--variants", "plain", "lambda_path K=1",
               timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = json.loads((tmp_path / "meta_step.json").read_text())
    assert "plain" in json.dumps(rows) and "lambda_path K=1" in json.dumps(rows)


@pytest.mark.parametrize("script", ["heldout_trap.py", "paper_scale.py", "stream_throughput.py",
                                    "gradient_scale.py", "prox_cost.py"])
def test_a_measuring_benchmark_refuses_an_out_file_and_a_name_that_leaves_it(tmp_path, script):
    f = tmp_path / "afile"
    f.write_text("mine")
    runs = ["--runs", tmp_path] if script == "heldout_trap.py" else []
    p = _bench(script, *runs, "--out", f)
    assert p.returncode == 2 and "is not a folder" in p.stderr, p.stderr[-2000:]
    assert f.read_text() == "mine"
    if script in ("heldout_trap.py", "paper_scale.py", "stream_throughput.py"):
        for name in ("../escaped", "", "a/b"):
            p = _bench(script, *runs, "--out", tmp_path / "out", "--name", name)
            assert p.returncode == 2 and "--name must be a file stem" in p.stderr, p.stderr[-2000:]
        assert sorted(x.name for x in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize(("script", "args", "words"), [
    ("data_throughput.py", ["--images", "0"], ["--images"]),
    ("data_throughput.py", ["--workers", "-1"], ["--workers"]),
    ("data_throughput.py", ["--out", "{tmp}/x.md"], ["--out", ".json"]),
    ("paper_scale.py", ["--budget-s", "-1", "--out", "{tmp}/out"], ["--budget-s"]),
    ("paper_scale.py", ["--log-every", "0", "--out", "{tmp}/out"], ["--log-every"]),
    ("meta_step.py", ["--threads", "0"], ["--threads", "got 0"]),
    ("meta_step.py", ["--threads", "1", "100000"], ["--threads", "got 100000"]),
    ("meta_step.py", ["--batch-size", "0"], ["--batch-size", "got 0"]),
    ("meta_step.py", ["--batch-size", "401"], ["--batch-size", "got 401"]),
    ("meta_step.py", ["--repeats", "0"], ["--repeats", "got 0"]),
    ("meta_step.py", ["--warmup", "-1"], ["--warmup", "got -1"]),
    ("meta_step.py", ["--memory-steps", "0"], ["--memory-steps", "got 0"]),
    ("meta_step.py", ["--image-size", "8"], ["--image-size", "got 8"]),
    ("meta_step.py", ["--device", "bogus"], ["--device", "bogus"]),
    ("meta_step.py", ["--device", "cuda:99"], ["--device", "cuda:99"]),
    ("meta_step.py", ["--variants", "plain", "bogus"], ["--variants", "'bogus'"]),
    ("gradient_scale.py", ["--threads", "0", "configs/synthscenes.yaml"], ["--threads", "got 0"]),
    ("gradient_scale.py", ["--threads", "1025", "configs/synthscenes.yaml"], ["got 1025"]),
    ("gradient_scale.py", ["--batches", "0", "configs/synthscenes.yaml"], ["--batches", "got 0"]),
    ("gradient_scale.py", ["--batch-size", "0", "configs/synthscenes.yaml"], ["--batch-size"]),
    ("gradient_scale.py", ["--batches", "2", "--batch-size", "401", "configs/synthscenes.yaml"],
     ["--batches 2", "--batch-size 401", "800 training images"]),
    ("gradient_scale.py", ["/nonexistent.yaml"], ["/nonexistent.yaml"]),
    # where the data is not, a stand-in is refused when asked (it was silent and the only way)
    ("gradient_scale.py", ["--no-stand-in", "configs/nyuv2_paper.yaml"],
     ["data.root 'data/NYUD_MT' is not a folder here", "data.root=..."]),
    ("gradient_scale.py", ["configs/synthscenes.yaml", "model.pretrained=/nonexistent.pth",
                           "--no-stand-in"], ["model.pretrained '/nonexistent.pth'"]),
    ("gradient_scale.py", ["model.width=0.25"], ["the config files the overrides are for"]),
    ("gradient_scale.py", ["configs/synthscenes.yaml", "model.nope=1"], ["model.nope"]),
    ("prox_cost.py", ["--threads", "0"], ["--threads", "got 0"]),
    ("prox_cost.py", ["--threads", "1", "1025"], ["--threads", "got 1025"]),
    ("prox_cost.py", ["--batch-size", "0"], ["--batch-size", "got 0"]),
    ("prox_cost.py", ["--repeats", "0"], ["--repeats", "got 0"]),
    ("prox_cost.py", ["--warmup", "-1"], ["--warmup", "got -1"]),
    ("prox_cost.py", ["--lr", "0"], ["--lr", "got 0.0"]),
    ("prox_cost.py", ["--lam", "-1"], ["--lam", "got -1.0"]),
    ("prox_cost.py", ["--lam-euclidean", "nan"], ["--lam-euclidean", "got nan"]),
])
def test_measuring_options_out_of_range_are_refused_before_any_work(tmp_path, script, args,
                                                                    words):
    out = ([OUT_OPTION.get(script, "--out"), tmp_path / "out", *CHEAP[script]]
           if script in CHEAP else [])
    p = _bench(script, *out, *[a.format(tmp=tmp_path) for a in args])
    assert p.returncode == 2, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert "Traceback" not in p.stderr and "error:" in last, p.stderr[-2000:]
    for w in words:
        assert w in last, (w, last)
    assert list(tmp_path.iterdir()) == []


CHEAP = {  # the shortest run of each, were a bad option let through
    "meta_step.py": ["--no-memory", "--variants", "plain", "--repeats", "1", "--warmup", "0",
                     "--threads", "1"],
    "gradient_scale.py": ["--batches", "1", "--batch-size", "1", "--threads", "1"],
    "prox_cost.py": ["--batch-size", "1", "--repeats", "1", "--warmup", "0", "--threads", "1"],
}
OUT_OPTION = {"meta_step.py": "--out-dir"}


def _heldout_runs(root: Path) -> list[str]:
    """Two held-out runs of seed 0 (λ0 auto and 0.0001); heldout_trap.py's arguments for them."""
    for init in ("auto", "0.0001"):
        d = root / "seed_0" / f"heldout_{init}"
        d.mkdir(parents=True)
        recs = [{"step": k + 1, "kind": "meta", "lambda": 1e-3, "group_sparsity": 0.25,
                 "lambda_val_loss": 2.0 + 0.01 * (k % 5), "grad_lambda_explicit": 0.0,
                 "grad_lambda_implicit": 1.0, "grad_lambda_prox": None, "subsets": [["a"]]}
                for k in range(20)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return ["--runs", str(root), "--seeds", "0", "--inits", "0.0001,auto", "--tail", "10",
            "--block", "5", "--name", "t"]


@pytest.mark.parametrize(("script", "files"), [
    ("heldout_trap.py", ["t.json", "t.md", "t.png"]),
    ("meta_step.py", ["meta_step.json", "meta_step.md"]),
    ("gradient_scale.py", ["gradient_scale.json", "gradient_scale.md"]),
    ("prox_cost.py", ["prox_cost.json", "prox_cost.md"]),
])
def test_a_measuring_benchmark_checks_all_its_outputs_before_writing_the_first(tmp_path, script,
                                                                               files):
    """One output that is a folder is refused before any is written: the others (an earlier
    run's) are left as they were (heldout_trap.py wrote its JSON, then failed on the .md)."""
    args = _heldout_runs(tmp_path / "runs") if script == "heldout_trap.py" else [
        *CHEAP[script], *(["configs/synthscenes.yaml"] if script == "gradient_scale.py" else [])]
    for blocked in files:
        out = tmp_path / f"out_{blocked}"
        (out / blocked).mkdir(parents=True)
        for f in files:
            if f != blocked:
                (out / f).write_text("mine")
        p = _bench(script, OUT_OPTION.get(script, "--out"), out, *args)
        assert p.returncode == 2, p.stderr[-2000:]
        last = p.stderr.strip().splitlines()[-1]
        assert "Traceback" not in p.stderr and str(out / blocked) in last, p.stderr[-2000:]
        assert sorted(x.name for x in out.iterdir()) == sorted(files)
        assert not any((out / blocked).iterdir())
        assert all((out / f).read_text() == "mine" for f in files if f != blocked)


def test_meta_step_refuses_an_out_dir_that_is_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("mine")
    p = _bench("meta_step.py", "--out-dir", f, *CHEAP["meta_step.py"])
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "--out-dir" in p.stderr.splitlines()[-1] and "is not a folder" in p.stderr
    assert f.read_text() == "mine" and sorted(x.name for x in tmp_path.iterdir()) == ["afile"]


def test_gradient_scale_measures_with_overrides_and_says_where_it_stands_in(tmp_path):
    """The paper configs' λ is to be re-centred on the real data: the data's folder and the
    weights are overrides, and a stand-in for what is missing is said, not silent."""
    p = _bench("gradient_scale.py", *CHEAP["gradient_scale.py"], "--out", tmp_path,
               "configs/nyuv2_paper.yaml", "data.root=/nonexistent/NYUD_MT", "model.depth=18",
               "model.width=0.125", "data.image_size=32", "model.pretrained=/nonexistent.pth")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "data.root '/nonexistent/NYUD_MT' is not a folder here: SynthScenes stand-in" in p.stderr
    assert "model.pretrained '/nonexistent.pth' is not a file here: from scratch" in p.stderr
    (row,) = json.loads((tmp_path / "gradient_scale.json").read_text())["rows"]
    assert row["model"] == "ResNet-18 width 0.125" and row["image_size"] == 32
    assert row["data"].startswith("SynthScenes stand-in") and not row["pretrained"]
    table = (tmp_path / "gradient_scale.md").read_text()
    assert "configs/nyuv2_paper.yaml data.root=/nonexistent/NYUD_MT model.depth=18" in table
