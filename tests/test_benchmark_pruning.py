"""``benchmarks/pruning.py``: its markdown is rendered from the JSON it writes, so a committed
result can be re-rendered (a learned row's level is NaN in memory and ``null`` in JSON)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _pruning():
    spec = importlib.util.spec_from_file_location("bench_pruning", ROOT / "benchmarks" / "pruning.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_table_is_its_json_rendered_and_a_null_level_reads_as_a_dash():
    pruning = _pruning()
    result = json.loads((RESULTS / "pruning_avx512.json").read_text())
    learned = result["models"]["learned"]["variants"]
    assert [v["level"] for v in learned] == [None]
    text = pruning.markdown(result)
    assert text == (RESULTS / "pruning_avx512.md").read_text()
    assert "| learned | — | 0.57 |" in text
    learned[0]["level"] = math.nan                  # as the benchmark holds it before writing
    assert pruning.markdown(result) == text


def test_render_writes_the_markdown_of_a_result_and_refuses_anything_else(tmp_path, capsys):
    pruning = _pruning()
    src = tmp_path / "p.json"
    src.write_text((RESULTS / "pruning_avx512.json").read_text())
    assert pruning.main(["--render", str(src)]) == 0
    assert (tmp_path / "p.md").read_text() == (RESULTS / "pruning_avx512.md").read_text()
    bad = tmp_path / "bad.json"
    bad.write_text('{"models": {}}')
    with pytest.raises(SystemExit) as e:
        pruning.main(["--render", str(bad)])
    assert e.value.code == 2 and "not a result of this benchmark" in capsys.readouterr().err
    assert not (tmp_path / "bad.md").exists()


@pytest.mark.parametrize(("args", "words"), [
    (["--render", "{tmp}/p.md"], ["--render", "give the .json file"]),
    (["--out", "{tmp}/p.md"], ["--out", "give the .json file"]),
    (["--out", "{tmp}"], ["--out", "give the .json file"]),
    (["--out", "{tmp}/p.json", "--levels", "abc"], ["--levels"]),
    (["--out", "{tmp}/p.json", "--levels", ","], ["--levels"]),
    (["--out", "{tmp}/p.json", "--levels", "2"], ["--levels"]),
    (["--out", "{tmp}/p.json", "--threads", "0"], ["--threads"]),
    (["--out", "{tmp}/p.json", "--cpu-repeats", "0"], ["--cpu-repeats"]),
    (["--out", "{tmp}/p.json", "--run", "{tmp}/nonexistent"], ["--run", "no such run"]),
])
def test_bad_arguments_are_refused_before_any_timing_and_nothing_is_overwritten(
        tmp_path, capsys, args, words):
    pruning = _pruning()
    md = tmp_path / "p.md"
    md.write_text('{"models": []}')  # a file of the user's, whatever it holds
    with pytest.raises(SystemExit) as e:
        pruning.main([a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    for w in words:
        assert w in err, (w, err)
    assert md.read_text() == '{"models": []}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.md"]
