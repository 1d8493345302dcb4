"""``benchmarks/paper_scale.py`` and ``benchmarks/stream_throughput.py``: the step time read off
the runs' logs, a shrunk end-to-end run of each on fixtures in the real layouts, bad options."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import paper_scale  # noqa: E402

# the paper configs' model and batches shrunk to a CPU test (the report says so)
SHRINK = ["model.width=0.0625", "model.head_channels=8", "data.image_size=32",
          "train.batch_size=2", "train.eval_batch_size=2", "meta.batch_size=2",
          "meta.meta_batch=2", "data.num_workers=0", "train.num_threads=1"]


def _bench(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_time_per_step_is_the_median_after_the_first_logged_interval(tmp_path):
    m = tmp_path / "metrics.jsonl"
    recs = [{"step": 5, "kind": "train", "time": 9.0},  # startup and warm-up before it
            {"step": 10, "kind": "train", "time": 10.0},
            {"step": 15, "kind": "train", "time": 11.0},  # 0.2 s/step
            {"step": 15, "kind": "val", "time": 12.0},
            {"step": 20, "kind": "train", "time": 13.5},  # 0.5 s/step
            {"step": 25, "kind": "train", "time": 14.0}]  # 0.1 s/step
    m.write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    sec, n = paper_scale._per_step(m, "train")
    assert n == 3 and sec == pytest.approx(statistics.median([0.2, 0.5, 0.1]))
    with pytest.raises(RuntimeError, match="fewer than three"):
        paper_scale._per_step(m, "meta")


def test_a_shrunk_paper_config_runs_through_both_benchmarks(tmp_path):
    p = _bench("paper_scale.py", "--configs", "nyuv2_mtan_paper", "--train-steps", "8",
               "--log-every", "2", "--meta-steps", "8", "--amp", "false", "--fixture-size", "8",
               "--end-to-end", "--out", str(tmp_path), "--name", "ps", *SHRINK)
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads((tmp_path / "ps.json").read_text())
    assert [(r["config"], r["command"]) for r in doc["rows"]] == [
        ("nyuv2_mtan_paper", "train"), ("nyuv2_mtan_paper", "meta-train")]
    train, meta = doc["rows"]
    assert train["intervals"] == 2 and meta["intervals"] == 2
    # full-run estimates from the config with the overrides: 10,000 and 2,000 steps
    assert train["estimates_min"]["train"] == pytest.approx(10_000 * train["s_per_step"] / 60)
    assert meta["estimates_min"]["meta-train"] == pytest.approx(2_000 * meta["s_per_step"] / 60)
    assert meta["batch"] == 2 and meta["meta_batch"] == 2
    assert doc["end_to_end"][0].startswith("finetune nyuv2_mtan_paper --tasks normal")
    md = (tmp_path / "ps.md").read_text()
    assert "overrides: model.width=0.0625" in md and "| nyuv2_mtan_paper | meta-train |" in md

    p = _bench("stream_throughput.py", "--config", "nyuv2_mtan_paper", "--workers", "0",
               "--fixture-size", "40", "--steps", "1", "--warmup", "0", "--out", str(tmp_path),
               "--name", "st")
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads((tmp_path / "st.json").read_text())
    assert [r["command"] for r in doc["rows"]] == ["train", "meta-train"]
    assert doc["sizes"]["support"] + doc["sizes"]["query"] + doc["sizes"]["lambda_val"] \
        == doc["sizes"]["train"]


@pytest.mark.parametrize("name, args, message", [
    ("paper_scale.py", ["--train-steps", "8", "--log-every", "5"], "--train-steps must be"),
    ("paper_scale.py", ["--configs", "nyu"], "invalid choice"),
    ("stream_throughput.py", ["--steps", "0"], "--steps >= 1"),
])
def test_bad_options_exit_2_before_any_work(tmp_path, name, args, message):
    p = _bench(name, *args, "--out", str(tmp_path / "out"))
    assert p.returncode == 2 and message in p.stderr
    assert not (tmp_path / "out").exists()
