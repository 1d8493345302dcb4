"""Which code made a run: ``results.json``'s ``code`` entry, and how benchmarks tell reused
runs of other code apart."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from tests.recipes.micro import MICRO, cli

from metasparsity import __version__
from metasparsity.utils import provenance
from metasparsity.utils.io import read_json, write_json
from metasparsity.utils.provenance import (
    code_identity,
    code_label,
    other_code,
    other_code_note,
    reused_from_other_code,
)

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(repo, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


@pytest.fixture
def package_in(monkeypatch):
    """Point code_identity at another folder (and forget its cached answer)."""
    def point(folder):
        monkeypatch.setattr(provenance, "_PACKAGE_DIR", folder)
        code_identity.cache_clear()
    yield point
    code_identity.cache_clear()


@needs_git
def test_code_identity_is_the_checkouts_commit_and_sees_edits_of_tracked_files(tmp_path,
                                                                              package_in):
    repo = tmp_path / "repo"
    pkg = repo / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    package_in(pkg)
    head = _git(repo, "rev-parse", "HEAD")
    assert code_identity() == {"version": __version__, "commit": head, "dirty": False}
    # an untracked file is not an edit of the code; a changed tracked file is
    (pkg / "new.py").write_text("y = 2\n")
    code_identity.cache_clear()
    assert code_identity()["dirty"] is False
    (pkg / "a.py").write_text("x = 2\n")
    code_identity.cache_clear()
    assert code_identity() == {"version": __version__, "commit": head, "dirty": True}


def test_outside_a_checkout_only_the_version_is_known(tmp_path, package_in):
    package_in(tmp_path)  # tmp_path is not inside a git work tree
    assert code_identity() == {"version": __version__, "commit": None, "dirty": None}
    assert code_label(code_identity()) == f"version {__version__}"


def test_code_label():
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert code_label({"version": "0.1.0", "commit": sha, "dirty": False}) == "0123456"
    assert code_label({"version": "0.1.0", "commit": sha, "dirty": True}) == "0123456+dirty"
    assert code_label(None) == code_label({}) == "unrecorded"


def test_other_code_groups_runs_that_this_code_did_not_make():
    here = {"version": "0.1.0", "commit": "a" * 40, "dirty": False}
    runs = [("same", {"code": dict(here)}),
            ("older", {"code": {"version": "0.1.0", "commit": "b" * 40, "dirty": False}}),
            ("older2", {"code": {"version": "0.1.0", "commit": "b" * 40, "dirty": False}}),
            ("edited", {"code": {**here, "dirty": True}}),
            ("unrecorded", {"kind": "mtl"})]
    assert other_code(runs, here) == {"bbbbbbb": ["older", "older2"],
                                      "aaaaaaa+dirty": ["edited"], "unrecorded": ["unrecorded"]}
    # a dirty tree can vouch for no run, not even one it made itself
    assert other_code([("x", {"code": {**here, "dirty": True}})], {**here, "dirty": True}) \
        == {"aaaaaaa+dirty": ["x"]}
    assert other_code([("same", {"code": dict(here)})], here) == {}


def test_reused_from_other_code_reads_finished_runs_only(tmp_path):
    finished, unfinished, old = tmp_path / "done", tmp_path / "running", tmp_path / "old"
    for d in (finished, unfinished, old):
        d.mkdir()
    write_json(finished / "results.json", {"code": code_identity()})
    write_json(old / "results.json", {"kind": "mtl"})
    other = reused_from_other_code([finished, unfinished, old, tmp_path / "missing"])
    label = code_label(code_identity())
    expected = {"unrecorded": [str(old)]}
    if label.endswith("+dirty") or label.startswith("version"):
        # no commit or an edited tree: even this code's own runs cannot be vouched for
        expected = ({label: [str(finished)]} | expected) if label.endswith("+dirty") else expected
    assert other == expected
    note = other_code_note(other, 3)
    assert note.startswith(f"{sum(map(len, other.values()))} of the 3 runs were reused")
    assert "unrecorded: 1" in note
    assert other_code_note({}, 3) == ""


def test_a_finished_run_records_the_code_that_made_it(tmp_path):
    run = tmp_path / "run"
    assert cli("train", "--out", run, *MICRO) == 0
    assert read_json(run / "results.json")["code"] == code_identity()


def test_sub_run_notes_a_finished_run_of_other_code_and_reuses_it(tmp_path, capsys):
    from metasparsity.training.session import sub_run

    here = code_identity()
    if not here["commit"]:
        pytest.skip("the package is not in a git checkout: no commit to compare with")
    old, same = tmp_path / "old", tmp_path / "same"
    other = {**here, "commit": "b" * 40, "dirty": False}
    for d, code in ((old, other), (same, here)):
        d.mkdir()
        write_json(d / "results.json", {"kind": "mtl", "code": code})
    assert sub_run(old) == ({"kind": "mtl", "code": other}, False)
    err = capsys.readouterr().err
    assert f"reusing {old}, made by other code (bbbbbbb; this is {code_label(here)})" in err
    assert sub_run(same)[0]["code"] == here
    assert capsys.readouterr().err == ""
