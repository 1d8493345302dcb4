"""Meta-learning of the sparsity strength: λ, task-subset sampling, the MAML inner/outer step."""

from metasparsity.meta.inner import (
    MODES,
    MetaStepResult,
    adapted_names,
    batch_stat_buffers,
    inner_loop,
    meta_step,
    outer_update,
)
from metasparsity.meta.lam import LearnedLambda, broadcast_lambda
from metasparsity.meta.sampler import TaskSubsetSampler

__all__ = [
    "MODES",
    "LearnedLambda",
    "MetaStepResult",
    "TaskSubsetSampler",
    "adapted_names",
    "batch_stat_buffers",
    "broadcast_lambda",
    "inner_loop",
    "meta_step",
    "outer_update",
]
