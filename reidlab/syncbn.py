"""Synchronised BatchNorm: batch statistics over the whole batch, however many processes share it.

Why: with data parallelism each process (each GPU) runs its own copy of every BN layer on
its own slice of the batch, so in training each layer normalises with the mean and variance of
*its slice*: 128 images on 4 GPUs are four batches of 32 as far as BN is concerned. Results then
change with the number of devices (notebook 11 measures it). SyncBN all-reduces the per-channel
sums across processes, so every process normalises with the statistics of the global batch:
exactly what one process would compute on the concatenated batch, gradients included.

:class:`SyncBatchNorm` is written out here because PyTorch's ``nn.SyncBatchNorm`` runs only on
GPUs; this one runs wherever ``torch.distributed`` does (gloo on the CPU, NCCL on CUDA), so
the CPU tests and notebook 11 synchronise BN too. It is two differentiable
``all_reduce`` calls (:class:`AllReduceSum`, whose backward all-reduces the gradients) around
the usual formula, and it keeps ``nn.BatchNorm``'s state_dict layout, so a
checkpoint moves freely between synchronised and plain BN. Outside a process group, or in eval
mode, it is a plain BatchNorm. :func:`convert_sync_bn` puts it into a model where PyTorch's layer
cannot run, and PyTorch's ``nn.SyncBatchNorm`` (fused CUDA kernels, the same statistics and the
same state_dict layout) where it can: on CUDA with NCCL.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .bn import is_bn
from .runtime import module_device

__all__ = ["AllReduceSum", "SyncBatchNorm", "global_moments", "convert_sync_bn"]


class AllReduceSum(torch.autograd.Function):
    """``all_reduce(x, SUM)`` that gradients flow through: the backward of a sum over processes is
    the sum over processes of the gradients (every process's output depends on every input)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def global_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel mean and biased variance of ``x`` over every process's batch, and the global count.

    Two passes (the mean first, then the squared deviations from it), each one differentiable
    all-reduce of a ``C``-vector; a process group must be initialised.
    """
    dims = [d for d in range(x.dim()) if d != 1]
    count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
    total = AllReduceSum.apply(torch.cat([x.sum(dims), count]))
    n = total[-1]
    mean = total[:-1] / n
    shape = [1, -1] + [1] * (x.dim() - 2)
    var = AllReduceSum.apply(((x - mean.view(shape)) ** 2).sum(dims)) / n
    return mean, var, int(n.detach().item())


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the global batch across processes (see the module docstring).

    Works for ``(N, C)``, ``(N, C, L)`` and ``(N, C, H, W)`` inputs. The running statistics are
    updated as ``nn.BatchNorm`` updates them for the global batch (unbiased variance with the
    global count, ``momentum=None`` as a cumulative average), so they are identical on every
    process without any broadcast.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"SyncBatchNorm expects (N, C, ...) input, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        synced = self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not synced:
            return super().forward(x)
        mean, var, n = global_moments(x)
        if n < 2:
            raise ValueError("SyncBatchNorm needs more than one sample in the global batch to train")
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), n)
        shape = [1, -1] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
        # called only with track_running_stats, so the three buffers exist
        assert self.num_batches_tracked is not None and self.running_mean is not None and self.running_var is not None
        self.num_batches_tracked.add_(1)
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - m).add_(mean, alpha=m)
        self.running_var.mul_(1 - m).add_(var * (n / (n - 1)), alpha=m)

    @classmethod
    def from_bn(cls, bn: _BatchNorm) -> "SyncBatchNorm":
        """A SyncBatchNorm with ``bn``'s settings, parameters, buffers and train/eval flag."""
        sync = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        sync.to(module_device(bn))
        sync.load_state_dict(bn.state_dict())
        if bn.affine:
            sync.weight.requires_grad_(bn.weight.requires_grad)
            sync.bias.requires_grad_(bn.bias.requires_grad)
        sync.train(bn.training)
        return sync


def convert_sync_bn(model: nn.Module, *, trainable_only: bool = True) -> nn.Module:
    """Replace the BN layers of ``model`` by synchronised ones, in place; returns ``model``.

    Each layer gets PyTorch's ``nn.SyncBatchNorm`` (``nn.SyncBatchNorm.convert_sync_batchnorm``)
    when it sits on a CUDA device and the process group runs NCCL, and :class:`SyncBatchNorm`
    everywhere else: on the CPU with gloo, where PyTorch's layer does not run, and outside a
    process group (decided when converting, :func:`_torch_layer_fits`). Notebook 11 runs with
    gloo, so it gets the layer it writes out. Both layers keep the parameters, buffers,
    ``requires_grad`` flags and train/eval flag, and the state_dict layout.

    ``trainable_only`` (the default) leaves alone every BN layer that is in eval mode (a
    frozen stage: ECN's conv1..layer2, pinned to eval by ``ReIDNet.train``), since a layer
    that uses its running statistics has nothing to synchronise. Put the model in train mode
    first (``model.train()``), so that exactly the frozen layers are in eval.
    """
    backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else None
    for name, child in list(model.named_children()):
        if is_bn(child) and isinstance(child, _BatchNorm):
            if child.training or not trainable_only:
                setattr(model, name, _synced(child, backend))
        else:
            convert_sync_bn(child, trainable_only=trainable_only)
    return model


def _torch_layer_fits(device: torch.device, backend: str | None) -> bool:
    """Whether a BN layer on ``device`` gets PyTorch's ``nn.SyncBatchNorm``: on CUDA with NCCL.

    ``backend`` is the process group's (``dist.get_backend()``, ``None`` outside one; a
    ``'cpu:gloo,cuda:nccl'`` group sends CUDA tensors through NCCL too).
    """
    return device.type == "cuda" and backend is not None and "nccl" in str(backend)


def _synced(bn: _BatchNorm, backend: str | None) -> _BatchNorm:
    """``bn`` synchronised: PyTorch's layer where it fits, else :class:`SyncBatchNorm` (a layer
    already of that kind is returned as it is)."""
    if _torch_layer_fits(module_device(bn), backend):
        return bn if isinstance(bn, nn.SyncBatchNorm) else nn.SyncBatchNorm.convert_sync_batchnorm(bn)
    return bn if isinstance(bn, SyncBatchNorm) else SyncBatchNorm.from_bn(bn)
