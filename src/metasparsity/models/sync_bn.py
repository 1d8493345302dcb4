"""Synchronised BatchNorm for data parallel training: statistics of every rank's batch together
(PyTorch's :class:`torch.nn.SyncBatchNorm` on CUDA, :class:`CpuSyncBatchNorm` over Gloo on CPU)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _AllReduceSum(torch.autograd.Function):
    """``Σ_r x_r`` on every rank; the gradient of each ``x_r`` is ``Σ_r`` of the output's
    gradients (every rank's loss depends on the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(grad)


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of every rank's batch together, on CPU
    tensors (Gloo); PyTorch's :class:`torch.nn.SyncBatchNorm` (used on GPUs) refuses the CPU.

    In training mode under a process group, over every rank's ``[B, C, …]`` input (``N`` =
    samples × spatial positions of all ranks): ``mean = Σ_r Σ x / N``,
    ``var = Σ_r Σ (x − mean)² / N``, through an all-reduce whose backward all-reduces the
    gradients, so the gradient is the global batch's as well.  Running
    statistics are updated as BatchNorm does (unbiased variance ``N/(N−1)``; ``momentum=None``:
    cumulative average).  In evaluation, or in a single process, it is plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and _distributed()):
            return super().forward(input)
        all_reduce = _AllReduceSum.apply
        self._check_input_dim(input)
        c = input.shape[1]
        dims = [0] + list(range(2, input.dim()))
        shape = [1, c] + [1] * (input.dim() - 2)
        count = input.new_full((1,), float(input.numel() // max(c, 1)))
        total = all_reduce(torch.cat([input.sum(dims), count]))
        n = total[c]
        mean = total[:c] / n
        centred = input - mean.reshape(shape)
        var = all_reduce((centred * centred).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                unbiased = var * (n / (n - 1)) if float(n) > 1 else var
                self.running_mean.mul_(1 - f).add_(f * mean.detach())
                self.running_var.mul_(1 - f).add_(f * unbiased.detach())
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        return out


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm of ``module`` synchronised over ranks: :class:`torch.nn.SyncBatchNorm` on
    CUDA, :class:`CpuSyncBatchNorm` on the CPU.  Parameters and buffers are shared with the
    original layers (state-dict names unchanged); returns the converted module."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if (isinstance(module, nn.modules.batchnorm._BatchNorm)
            and not isinstance(module, CpuSyncBatchNorm)):
        out = CpuSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        if module.affine:
            out.weight = module.weight
            out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_batchnorm(child, device))
    return out
