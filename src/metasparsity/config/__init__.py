"""Typed configuration: dataclasses, YAML files and dotted ``key=value`` overrides.

>>> cfg = load_config("configs/synthscenes.yaml", ["model.depth=18", "train.max_steps=2"])

Sections ``data``, ``model``, ``train``, ``sparsity``, ``meta``, ``finetune``, ``compare``
(:mod:`~metasparsity.config.schema`); every value is checked as it is set and the keys that
depend on each other after all overrides (:mod:`~metasparsity.config.checks`), a bad one raising
a one-line :class:`ConfigError`; files and overrides are read in :mod:`~metasparsity.config.load`.
Components never see this object: builder functions turn it into plain arguments.
"""

from metasparsity.config.load import (
    config_from_dict,
    describe,
    describe_markdown,
    key_rows,
    load_config,
    parse_lambda_grid,
    parse_override,
    yaml_error_line,
)
from metasparsity.config.schema import (
    ALL_SYNTH_TASKS,
    INT_MAX,
    CompareConfig,
    Config,
    DataConfig,
    FinetuneConfig,
    MetaConfig,
    ModelConfig,
    SparsityConfig,
    TrainConfig,
)
from metasparsity.utils.errors import ConfigError

__all__ = [
    "ALL_SYNTH_TASKS",
    "INT_MAX",
    "CompareConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "FinetuneConfig",
    "MetaConfig",
    "ModelConfig",
    "SparsityConfig",
    "TrainConfig",
    "config_from_dict",
    "describe",
    "describe_markdown",
    "key_rows",
    "load_config",
    "parse_lambda_grid",
    "parse_override",
    "yaml_error_line",
]
