"""The manual covers the code: every config key is in ``docs/configs.md`` (written from the
schema, and equal to what ``metasparsity config --keys --markdown`` prints now), every option of
every command and every ``compare`` method is named in the README."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from metasparsity.cli import build_parser, main
from metasparsity.config import describe, describe_markdown, key_rows
from metasparsity.recipes.compare_methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _subcommands(parser: argparse.ArgumentParser, prefix: str = ""):
    """``(name, parser)`` of every command and sub-command (``data preview`` too)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix} {name}".strip()
                yield full, sub
                yield from _subcommands(sub, full)


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [o for a in parser._actions for o in a.option_strings
            if o.startswith("--") and o != "--help"]


def test_docs_configs_md_is_the_schema_rendered_now():
    text = (ROOT / "docs" / "configs.md").read_text(encoding="utf-8")
    assert text == describe_markdown(), (
        "docs/configs.md is out of date: run `make docs` (metasparsity config --keys --markdown)")
    for key, _typ, _default, _allowed, help_text in key_rows():
        assert f"| `{key}` |" in text
        assert help_text, f"config key {key} has no help text"
    assert describe().splitlines()[0].startswith("name: 'run'")


def test_config_markdown_needs_keys(capsys):
    assert main(["config", "--markdown"]) == 2
    assert "--keys" in capsys.readouterr().err
    assert main(["config", "--keys", "--markdown"]) == 0
    assert capsys.readouterr().out == describe_markdown()
    # --keys describes the schema: a config or an override given with it would be ignored
    assert main(["config", "--keys", "train.lr=abc"]) == 2
    assert "train.lr=abc" in capsys.readouterr().err
    assert main(["config", "--keys", "--config", "configs/synthscenes.yaml"]) == 2
    assert "--config configs/synthscenes.yaml" in capsys.readouterr().err


# the README's sentence on the options every command that trains takes
TRAINING = {"train", "meta-train", "finetune", "sweep-lambda", "compare", "demo"}
SHARED = re.compile(r"Commands that train take `--config FILE`, `--out RUN_DIR`,\s+`--resume "
                    r"RUN_DIR`, `--overwrite`")


def test_every_command_option_is_named_where_the_readme_shows_its_command():
    """Each option of a command appears in a paragraph or table row of the README that names
    ``metasparsity <command>`` (the options every training command shares: in their sentence)."""
    assert SHARED.search(README)
    blocks = re.split(r"\n\s*\n|\n(?=\|)", README)  # paragraphs, and each table row alone
    missing = []
    commands = dict(_subcommands(build_parser()))
    assert {"train", "meta-train", "prune", "data preview", "data prepare"} <= set(commands)
    for name, sub in commands.items():
        text = "\n".join(b for b in blocks if re.search(rf"metasparsity {re.escape(name)}\b", b))
        assert text, f"the README never shows metasparsity {name}"
        shared = {"--config", "--out", "--resume", "--overwrite"} if name in TRAINING else set()
        missing += [f"{name} {o}" for o in _options(sub)
                    if o not in shared and not re.search(rf"{re.escape(o)}(?![\w-])", text)]
    missing += [o for o in _options(build_parser()) if o not in README]
    assert not missing, f"options the README never names beside their command: {missing}"


def test_every_compare_method_is_named_in_the_readme():
    names = list(METHODS)
    assert {"stl", "mtl", "fixed_lambda", "meta_sparsity", "train_budget"} <= set(names)
    assert not [n for n in names if f"`{n}`" not in README]


def test_every_yaml_config_example_in_the_docs_loads(tmp_path):
    """A config shown in the docs is one a user copies: each ```yaml block with a top-level
    section loads (docs/real_data.md's two were refused, their seen tasks SynthScenes')."""
    from metasparsity.config import load_config

    found = 0
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, block in enumerate(re.findall(r"```yaml\n(.*?)```", doc.read_text("utf-8"), re.S)):
            if not re.match(r"(data|model|train|sparsity|meta|finetune|compare):", block):
                continue  # a fragment (a list, a comment), not a config file
            path = tmp_path / f"{doc.stem}_{i}.yaml"
            path.write_text(block, encoding="utf-8")
            load_config(path)  # a ConfigError names the key
            found += 1
    assert found >= 2
