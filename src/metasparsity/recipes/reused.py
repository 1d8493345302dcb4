"""Reusing a finished (or continuing a started) run only when it was made with the settings
asked for now: a benchmark that reuses its runs across sessions must not put the numbers of a
run of other settings under the settings it states."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from metasparsity.config import Config
from metasparsity.utils.rundir import CONFIG_FILE, config_diff

#: Settings that do not change what a run computes (threads, workers, the progress bar, where
#: rendered data are cached), left out of the comparison.
RESULT_NEUTRAL = ("train.num_threads", "train.progress", "data.num_workers", "data.cache_dir")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def changed_settings(run_dir: str | Path, cfg: Config) -> dict[str, list[Any]]:
    """``{key: [the run's value, cfg's]}`` for every setting in which ``cfg`` differs from the
    ``config.yaml`` that ``run_dir`` was made with (empty when it has none: nothing to reuse).
    A key the run's file lacks (a setting added after it was made) counts only when ``cfg``
    gives it another value than its default."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        return {}
    old = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    defaults = _flat(yaml.safe_load(Config().to_yaml()))
    have = _flat(old)
    return {k: v for k, v in config_diff(old, yaml.safe_load(cfg.to_yaml())).items()
            if k not in RESULT_NEUTRAL and not (k not in have and v[1] == defaults.get(k))}


def check_reused_settings(expected: Mapping[Path, Config], error: Callable[[str], Any],
                          option: str = "--runs") -> None:
    """Before a benchmark reuses or continues anything: pass to ``error`` (e.g.
    ``ArgumentParser.error``: one line, exit 2) the first of ``expected``'s run folders that
    exists with other settings than the config it would be trained with now, naming the
    settings that differ."""
    for run_dir, cfg in expected.items():
        changed = changed_settings(run_dir, cfg)
        if changed:
            shown = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in list(changed.items())[:4])
            more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
            error(f"{option}: {run_dir} was made with other settings ({shown}{more}); its "
                  f"numbers would stand under these: give another {option} folder, or delete "
                  "that run to train it again")
