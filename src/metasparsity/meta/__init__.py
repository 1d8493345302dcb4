"""Meta-learning of the sparsity strength: λ, task-subset sampling, the inner loop, the meta-step
and its reduction over processes, the outer update, and λ's implicit-function hypergradient
(a diagnostic of the meta-gradient's horizon)."""

from metasparsity.meta.hypergrad import implicit_lambda_grad
from metasparsity.meta.inner import MODES, adapted_names, batch_stat_buffers, inner_loop
from metasparsity.meta.lam import LearnedLambda, broadcast_lambda
from metasparsity.meta.meta_step import MetaStepResult, meta_step
from metasparsity.meta.outer import RelativeClip, outer_update
from metasparsity.meta.sampler import TaskSubsetSampler

__all__ = [
    "MODES",
    "LearnedLambda",
    "MetaStepResult",
    "TaskSubsetSampler",
    "adapted_names",
    "batch_stat_buffers",
    "broadcast_lambda",
    "implicit_lambda_grad",
    "inner_loop",
    "meta_step",
    "outer_update",
    "RelativeClip",
]
