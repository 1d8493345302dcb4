"""The one-way layering of STYLE.md §1, checked on every import statement (lazy ones too), with
no exception.

utils at the bottom; config, data, sparsity, eval and models import only utils (and themselves);
meta imports sparsity; report imports eval; builders (config → model: the data set's task table
and the model zoo) import data and models; export reads models, data and eval; training (the
infrastructure every recipe runs on) imports eval; recipes import anything below the CLI;
commands import config, data, recipes and report; cli imports commands.  Anything may read
``metasparsity.__version__``."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "metasparsity"

ALLOWED = {
    "utils": {"utils"},
    "config": {"utils", "config"},
    "data": {"utils", "data"},
    "sparsity": {"utils", "sparsity"},
    "eval": {"utils", "eval"},
    "models": {"utils", "models"},
    "meta": {"utils", "sparsity", "meta"},
    "report": {"utils", "eval", "report"},
    "builders": {"utils", "data", "models", "builders"},
    "export": {"utils", "data", "models", "eval", "export"},
    "training": {"utils", "eval", "training"},
    "recipes": {"utils", "config", "data", "models", "sparsity", "meta", "eval", "report",
                "builders", "export", "training", "recipes"},
    "commands": {"utils", "config", "data", "recipes", "report", "commands"},
    "cli": {"utils", "commands"},
    "__main__": {"cli"},
}


def _layer(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("metasparsity"):
                    yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("metasparsity"):
            yield node.lineno, node.module


FILES = sorted(p for p in SRC.rglob("*.py") if p.name != "__init__.py" or p.parent != SRC)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_go_one_way(path):
    layer = _layer(path)
    allowed = ALLOWED[layer]
    bad = []
    for line, mod in _imports(path):
        parts = mod.split(".")
        target = parts[1] if len(parts) > 1 else ""
        if target == "" and mod == "metasparsity":  # the package root holds only __version__
            continue
        if target in allowed:
            continue
        bad.append(f"line {line}: {mod}")
    assert not bad, f"{path.relative_to(SRC)} ({layer}) imports upwards: {bad}"


def test_every_module_has_a_layer():
    assert {_layer(p) for p in FILES} <= set(ALLOWED)
