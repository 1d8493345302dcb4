"""Which code made a run: ``results.json``'s ``code`` entry, and how benchmarks tell reused
runs of other code apart."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from tests.recipes.micro import MICRO, cli

from metasparsity import __version__
from metasparsity.training.reuse import reused_from_other_code
from metasparsity.utils import provenance
from metasparsity.utils.io import read_json, write_json
from metasparsity.utils.provenance import (
    code_identity,
    code_label,
    machine_identity,
    machine_text,
    other_code,
    other_code_note,
    package_digest,
    run_code_label,
    same_code,
)

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(repo, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def _committed_package(repo, pkg, files, ignore=None):
    """A package folder ``pkg`` (``__init__.py`` and ``files``) inside git repository ``repo``,
    committed once; ``ignore``: a .gitignore line (the package is then left untracked)."""
    pkg.mkdir(parents=True)
    for name, text in {"__init__.py": "", **files}.items():
        (pkg / name).write_text(text)
    if ignore:
        (repo / ".gitignore").write_text(ignore + "\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    return pkg


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
    pkg = _committed_package(repo, repo / "pkg", {"a.py": "x = 1\n"})
    package_in(pkg)
    head = _git(repo, "rev-parse", "HEAD")
    first = code_identity()
    assert first == {"version": __version__, "commit": head, "dirty": False,
                     "package": package_digest(pkg)}
    # an untracked file is not an edit of the commit, but it is part of the code
    (pkg / "new.py").write_text("y = 2\n")
    code_identity.cache_clear()
    assert code_identity()["dirty"] is False
    assert code_identity()["package"] != first["package"]
    (pkg / "new.py").unlink()
    (pkg / "a.py").write_text("x = 2\n")
    code_identity.cache_clear()
    edited = code_identity()
    assert edited == {"version": __version__, "commit": head, "dirty": True,
                      "package": package_digest(pkg)}
    assert not same_code(edited, first)
    # the edit undone: the same code again, and a compiled cache is not code
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    code_identity.cache_clear()
    assert code_identity() == first


def test_the_package_digest_is_the_files_paths_and_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        (root / "sub").mkdir(parents=True)
        (root / "x.py").write_text("x = 1\n")
        (root / "sub" / "y.yaml").write_text("y: 2\n")
    assert package_digest(a) == package_digest(b)
    assert package_digest(a).startswith("sha256:") and len(package_digest(a)) == 23
    # an editor's swap and backup files, hidden files and compiled caches are not code
    for litter in (".x.py.swp", "x.py~", ".DS_Store", "sub/__pycache__/x.cpython-311.pyc"):
        (b / litter).parent.mkdir(parents=True, exist_ok=True)
        (b / litter).write_bytes(b"junk")
    assert package_digest(a) == package_digest(b)
    (b / "sub" / "y.yaml").rename(b / "y.yaml")  # same bytes, another path
    assert package_digest(a) != package_digest(b)


def test_an_unreadable_file_counts_as_such_and_does_not_stop_the_digest(tmp_path, monkeypatch):
    (tmp_path / "x.py").write_text("x = 1\n")
    (tmp_path / "y.py").write_text("y = 2\n")
    before = package_digest(tmp_path)
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "y.py":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    unreadable = package_digest(tmp_path)
    assert unreadable.startswith("sha256:") and unreadable != before


@needs_git
def test_a_repository_around_the_package_that_does_not_track_it_names_no_commit(tmp_path,
                                                                              package_in):
    """A project's own repository around its .venv, where the package is installed."""
    repo = tmp_path / "project"
    pkg = _committed_package(repo, repo / ".venv" / "site" / "pkg", {}, ignore=".venv/")
    package_in(pkg)
    assert code_identity() == {"version": __version__, "commit": None, "dirty": None,
                               "package": package_digest(pkg)}


def test_outside_a_checkout_only_the_version_is_known(tmp_path, package_in):
    package_in(tmp_path)  # tmp_path is not inside a git work tree
    assert code_identity() == {"version": __version__, "commit": None, "dirty": None,
                               "package": package_digest(tmp_path)}
    assert code_label(code_identity()) == f"version {__version__}"


def test_code_label():
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert code_label({"version": "0.1.0", "commit": sha, "dirty": False}) == "0123456"
    assert code_label({"version": "0.1.0", "commit": sha, "dirty": True}) == "0123456+dirty"
    assert code_label(None) == code_label({}) == "unrecorded"


def test_other_code_groups_runs_that_this_code_did_not_make():
    """Records from before the package digest: only the same unedited commit vouches."""
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


def test_the_same_package_is_the_same_code_whatever_the_commit():
    pkg, pkg2 = "sha256:" + "1" * 16, "sha256:" + "2" * 16
    here = {"version": "0.1.0", "commit": "a" * 40, "dirty": True, "package": pkg}
    runs = [("older commit, same package", {"code": {**here, "commit": "b" * 40, "dirty": False}}),
            ("not in a checkout", {"code": {**here, "commit": None, "dirty": None}}),
            ("other package", {"code": {**here, "package": pkg2}}),
            ("before the digest", {"code": {"version": "0.1.0", "commit": "a" * 40,
                                            "dirty": False}}),
            ("resumed across packages", {"code": here,
                                         "code_before_resume": [{**here, "package": pkg2}]}),
            ("resumed, same package", {"code": here,
                                       "code_before_resume": [{**here, "commit": "c" * 40}]})]
    assert other_code(runs, here) == {"aaaaaaa+dirty (package 22222222)": ["other package"],
                                      "aaaaaaa": ["before the digest"],
                                      "aaaaaaa+dirty after aaaaaaa+dirty (package 22222222)":
                                          ["resumed across packages"]}
    assert same_code(here, {**here, "commit": None}) and not same_code(here, None)
    # another package whose label reads like this code's is named apart by its digest
    assert other_code([("r", {"code": {**here, "package": pkg2}, "unfinished": True})], here) \
        == {"unfinished, aaaaaaa+dirty (package 22222222)": ["r"]}
    # an unedited commit without the digest on one side: the commit decides
    clean = {**here, "dirty": False}
    assert same_code({"commit": "a" * 40, "dirty": False}, clean)
    assert not same_code({"commit": "a" * 40, "dirty": False}, here)


def _checkpoint(run, meta):
    """A bare checkpoint folder with its ``state.json`` and the ``last`` pointer to it."""
    ck = run / "checkpoints" / "step_0000002"
    ck.mkdir(parents=True)
    write_json(ck / "state.json", {"step": 2, **meta})
    (run / "checkpoints" / "last").write_text("step_0000002\n")


OTHER = {"version": "0.1.0", "commit": "b" * 40, "dirty": False}


def test_reused_from_other_code_reads_finished_and_unfinished_runs(tmp_path):
    here = code_identity()
    runs = {n: tmp_path / n for n in ("done", "old", "started_here", "started_before",
                                      "started_unrecorded", "empty")}
    for d in runs.values():
        d.mkdir()
    write_json(runs["done"] / "results.json", {"code": here})
    write_json(runs["old"] / "results.json", {"kind": "mtl"})
    _checkpoint(runs["started_here"], {"code": [here]})
    _checkpoint(runs["started_before"], {"code": [OTHER]})
    _checkpoint(runs["started_unrecorded"], {})
    other = reused_from_other_code([*runs.values(), tmp_path / "missing"])
    # this code's own runs are vouched for by the package digest, edited tree or not
    assert other == {"unrecorded": [str(runs["old"])],
                     "unfinished, bbbbbbb": [str(runs["started_before"])],
                     "unfinished, unrecorded": [str(runs["started_unrecorded"])]}
    note = other_code_note(other, 6)
    assert note.startswith(f"{sum(map(len, other.values()))} of the 6 runs were reused")
    assert "unrecorded: 1" in note and "unfinished, bbbbbbb: 1" in note
    assert other_code_note({}, 3) == ""


def test_a_run_resumed_across_code_says_so_and_is_other_code(tmp_path, capsys):
    """An interrupted run continued by other code: its results.json names both codes, and
    whatever reuses it counts it as other code; sub_run notes the continuation."""
    from metasparsity.config import load_config
    from metasparsity.recipes.train import Trainer, settings_from_config
    from metasparsity.training.session import sub_run

    here = code_identity()
    run = tmp_path / "run"
    cfg = load_config(None, MICRO)
    tr = Trainer(cfg, run, settings_from_config(cfg))
    tr.setup()
    assert tr.train(stop_after=2) is None
    state = run / "checkpoints" / "step_0000002" / "state.json"
    assert read_json(state)["code"] == [here]
    write_json(state, {**read_json(state), "code": [OTHER]})  # as if older code had started it
    capsys.readouterr()
    assert sub_run(run) == (None, True)
    err = capsys.readouterr().err
    assert f"note: continuing {run}, made by other code (unfinished, bbbbbbb; " in err
    assert cli("train", "--resume", run) == 0
    res = read_json(run / "results.json")
    assert res["code"] == here and res["code_before_resume"] == [OTHER]
    assert run_code_label(res) == f"{code_label(here)} after bbbbbbb"
    assert other_code([("run", res)]) == {f"{code_label(here)} after bbbbbbb": ["run"]}
    # a run resumed by the code that started it records one code
    run2 = tmp_path / "run2"
    tr = Trainer(cfg, run2, settings_from_config(cfg))
    tr.setup()
    assert tr.train(stop_after=2) is None
    assert cli("train", "--resume", run2) == 0
    assert "code_before_resume" not in read_json(run2 / "results.json")


def test_a_finished_run_records_the_code_that_made_it(tmp_path):
    run = tmp_path / "run"
    assert cli("train", "--out", run, *MICRO) == 0
    res = read_json(run / "results.json")
    assert res["code"] == code_identity()
    assert res["machine"] == machine_identity()
    assert set(machine_identity()) == {"cpu", "cpu_capability", "cores", "python", "torch"}
    assert machine_identity()["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    m = {"cpu": "Some CPU", "cpu_capability": "AVX2", "cores": 8, "python": "3.11", "torch": "2.x"}
    assert machine_text(m) == "Some CPU (AVX2, 8 cores), torch 2.x"
    assert torch.backends.cpu.get_cpu_capability() in machine_text()


def test_sub_run_notes_a_finished_run_of_other_code_and_reuses_it(tmp_path, capsys):
    from metasparsity.training.session import sub_run

    here = code_identity()
    old, same = tmp_path / "old", tmp_path / "same"
    other = {**here, "commit": "b" * 40, "dirty": False, "package": "sha256:" + "0" * 16}
    shaped = {"kind": "mtl", "val": {}, "test": {},  # what a sweep or comparison reads
              "sparsity": {"group_sparsity": 0.0, "param_sparsity": 0.0, "per_layer": []}}
    for d, code in ((old, other), (same, here)):
        d.mkdir()
        write_json(d / "results.json", {**shaped, "code": code})
    assert sub_run(old, note=False) == ({**shaped, "code": other}, False)
    assert capsys.readouterr().err == ""  # a caller that reported every reused run at once
    assert sub_run(old) == ({**shaped, "code": other}, False)
    err = capsys.readouterr().err
    assert f"reusing {old}, made by other code (bbbbbbb; this is {code_label(here)})" in err
    assert sub_run(same)[0]["code"] == here
    assert capsys.readouterr().err == ""  # its own run, edited tree or not (the digest)


def test_command_line_writes_paths_in_the_repository_relative_to_it(tmp_path):
    root = tmp_path / "repo"
    (root / "runs").mkdir(parents=True)
    line = provenance.command_line(
        "benchmarks/x.py",
        ["--runs", str(root / "runs" / "a b"), f"--out={root}", "--grid-runs",
         str(tmp_path / "elsewhere"), "--seeds", "0", "meta.lambda_init=1e-3",
         f"model.pretrained={root / 'w.pth'}"], root)
    assert line == ("python benchmarks/x.py --runs 'runs/a b' --out=. --grid-runs "
                    f"{tmp_path / 'elsewhere'} --seeds 0 meta.lambda_init=1e-3 "
                    "model.pretrained=w.pth")
