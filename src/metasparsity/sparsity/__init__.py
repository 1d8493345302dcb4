"""Channel-group sparsity of the shared backbone (DESIGN §2.2): groups, Ω, prox, statistics."""

from metasparsity.sparsity.budget import (
    BackboneCost,
    land_on_budget,
    land_prox,
    project_to_budget,
)
from metasparsity.sparsity.groups import (
    ConvGroups,
    SparsityStats,
    apply_masks_,
    channel_groups,
    group_gradient_ratios,
    group_norms,
    group_penalty,
    mask_zero_group_grads_,
    penalty,
    penalty_grad,
    penalty_per_layer,
    prox,
    prox_,
    prox_params,
    sparsity_stats,
    zero_group_masks,
)
from metasparsity.sparsity.proxadam import PROX_METRICS, ProxAdam, metric_prox, prox_param_groups
from metasparsity.sparsity.pruning import prune_zero_channels, pruning_report, removed_zero_masks

__all__ = [
    "BackboneCost",
    "land_on_budget",
    "land_prox",
    "project_to_budget",
    "PROX_METRICS",
    "ConvGroups",
    "ProxAdam",
    "SparsityStats",
    "apply_masks_",
    "channel_groups",
    "group_gradient_ratios",
    "group_norms",
    "group_penalty",
    "mask_zero_group_grads_",
    "metric_prox",
    "penalty",
    "penalty_grad",
    "penalty_per_layer",
    "prox",
    "prox_",
    "prox_param_groups",
    "prox_params",
    "prune_zero_channels",
    "pruning_report",
    "removed_zero_masks",
    "sparsity_stats",
    "zero_group_masks",
]
