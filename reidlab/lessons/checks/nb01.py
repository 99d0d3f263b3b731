"""Checkers of notebook 01 (``notebooks/01_batchnorm_from_scratch.ipynb``): BatchNorm from scratch.

Imported by the notebook as ``from reidlab.lessons.checks import nb01 as checks``.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from reidlab.lessons.checks import ExerciseError, as_tensor, checker, expect_close, fail, passed

__all__ = ["ExerciseError", "check_bn_input_grad", "check_channel_stats", "check_running_stats_update"]


def _pair(result: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        fail(f"{what} should return a pair (mean, var), got {type(result).__name__}")
    return as_tensor(result[0], f"{what}[0] (mean)"), as_tensor(result[1], f"{what}[1] (var)")


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> bool:
    return tuple(a.shape) == tuple(b.shape) and torch.allclose(a.detach().to(b.dtype), b, atol=atol, rtol=1e-4)


@checker
def check_channel_stats(fn: Callable[[torch.Tensor], Any]) -> None:
    """Notebook 01: ``fn(x)`` for ``x`` of shape (N, C, H, W) returns BN's per-channel ``(mean, var)``.

    Both of shape ``(C,)``, reduced over dims (0, 2, 3); ``var`` is the biased variance that
    BN divides by.
    """
    gen = torch.Generator().manual_seed(101)
    for shape in ((4, 3, 5, 6), (2, 5, 3, 3)):
        n, c, h, w = shape
        x = torch.randn(shape, generator=gen) * torch.linspace(0.5, 3.0, c).view(1, c, 1, 1)
        x = x + torch.arange(c, dtype=x.dtype).view(1, c, 1, 1)
        mean, var = _pair(fn(x.clone()), f"channel_stats(x of shape {shape})")
        want_mean = x.mean(dim=(0, 2, 3))
        want_var = x.var(dim=(0, 2, 3), unbiased=False)
        got = tuple(mean.shape)
        if got != (c,):
            if got == (c, h, w):
                fail(f"mean has shape {got}: you reduced over the batch dim 0 only. BN's statistics are per "
                     "channel over the batch AND every pixel: reduce over dims (0, 2, 3)")
            if got == (n, c):
                fail(f"mean has shape {got}: those are per-image statistics (instance norm). BN also averages "
                     "over the batch: reduce over dims (0, 2, 3)")
            if got in ((n,), (n, h, w), (h, w), (n, 1, h, w)):
                fail(f"mean has shape {got}: you reduced over the channel dim 1. BN keeps one statistic per "
                     "channel: reduce over every dim except 1, i.e. (0, 2, 3)")
            if mean.numel() == c:
                fail(f"mean has shape {got}: return one value per channel as a flat vector of shape ({c},) "
                     "(keepdim=False, or .flatten())")
            fail(f"mean has shape {got}, expected ({c},): reduce over dims (0, 2, 3)")
        expect_close(mean, want_mean, name="mean", hint="the mean over dims (0, 2, 3)")
        if tuple(var.shape) != (c,):
            fail(f"var has shape {tuple(var.shape)}, expected ({c},): reduce over the same dims (0, 2, 3) as the mean")
        if _close(var, x.var(dim=(0, 2, 3), unbiased=True)):
            fail("var is the unbiased estimate (divides by n - 1). BN normalises with the biased variance: divide "
                 "by n = N*H*W (unbiased=False, or correction=0)")
        if _close(var, want_var.sqrt()):
            fail("you returned the standard deviation; return the variance (its square)")
        expect_close(var, want_var, name="var", hint="the biased variance over dims (0, 2, 3)")
    passed("per-channel mean and biased variance over (N, H, W)")


@checker
def check_running_stats_update(fn: Callable[..., Any]) -> None:
    """Notebook 01: ``fn(running_mean, running_var, x, momentum)`` returns the updated ``(mean, var)``.

    ``x`` has shape (N, C, H, W); PyTorch's rule is ``running <- (1 - momentum) * running +
    momentum * batch_stat`` with the *unbiased* batch variance in ``running_var``.
    """
    gen = torch.Generator().manual_seed(102)
    x = torch.randn(3, 2, 2, 2, generator=gen) * 2 + torch.tensor([1.0, -3.0]).view(1, 2, 1, 1)
    rm0, rv0 = torch.tensor([0.5, -0.5]), torch.tensor([2.0, 0.25])
    n = x.numel() // x.shape[1]
    mean = x.mean(dim=(0, 2, 3))
    biased = x.var(dim=(0, 2, 3), unbiased=False)
    unbiased = biased * n / (n - 1)
    for m in (0.1, 0.3):
        got_mean, got_var = _pair(fn(rm0.clone(), rv0.clone(), x.clone(), m), f"update(..., momentum={m})")
        want_mean = (1 - m) * rm0 + m * mean
        want_var = (1 - m) * rv0 + m * unbiased
        if _close(got_mean, m * rm0 + (1 - m) * mean):
            fail("momentum is the weight of the NEW batch in PyTorch: running <- (1 - momentum) * running + "
                 "momentum * batch_stat (Keras' `momentum`/decay is the opposite)")
        if _close(got_mean, mean) or _close(got_var, unbiased):
            fail("you replaced the running statistics by the batch's: blend them, "
                 "running <- (1 - momentum) * running + momentum * batch_stat")
        expect_close(got_mean, want_mean, name="running_mean", hint="(1 - momentum) * running_mean + momentum * batch mean")
        if _close(got_var, (1 - m) * rv0 + m * biased):
            fail("running_var holds the unbiased estimate; you stored the biased one (multiply the batch "
                 "variance by n / (n - 1), n = N*H*W)")
        bs = x.shape[0]
        if _close(got_var, (1 - m) * rv0 + m * biased * bs / (bs - 1)):
            fail("the n / (n - 1) correction counts every value of a channel, n = N*H*W, not the batch size N")
        expect_close(got_var, want_var, name="running_var",
                     hint="(1 - momentum) * running_var + momentum * unbiased batch variance")
    passed("running <- (1 - momentum) * running + momentum * batch stat, unbiased variance")


@checker
def check_bn_input_grad(fn: Callable[..., Any]) -> None:
    """Notebook 01: ``fn(grad_out, x, gamma, eps)`` returns dL/dx of training-mode BN for x of shape (N, C).

    The reference is autograd through ``gamma * (x - mean) / sqrt(var + eps)`` with batch
    statistics (biased variance), in float64.
    """
    gen = torch.Generator().manual_seed(103)
    x = torch.randn(6, 3, generator=gen, dtype=torch.float64) * 2 + 1
    gamma = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5
    g = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    eps = 1e-5
    xr = x.clone().requires_grad_(True)
    y = gamma * (xr - xr.mean(0)) / torch.sqrt(xr.var(0, unbiased=False) + eps)
    (want,) = torch.autograd.grad(y, xr, g)
    got = as_tensor(fn(g.clone(), x.clone(), gamma.clone(), eps), "bn_input_grad(...)")
    if tuple(got.shape) != tuple(x.shape):
        fail(f"the gradient has shape {tuple(got.shape)}, expected {tuple(x.shape)} (one value per input)")
    got = got.detach().to(torch.float64)
    std = torch.sqrt(x.var(0, unbiased=False) + eps)
    xhat = (x - x.mean(0)) / std
    wrong = {
        "you treated the mean and variance as constants (that is the eval-mode gradient, gamma / std * grad); "
        "in training they are computed from the batch, so every input also moves them":
            gamma / std * g,
        "missing the -mean(grad_out) term: the batch mean depends on every input, so each input also receives "
        "-mean(dL/dx_hat) through it":
            gamma / std * (g - xhat * (g * xhat).mean(0)),
        "missing the -x_hat * mean(grad_out * x_hat) term: the batch variance depends on every input too":
            gamma / std * (g - g.mean(0)),
        "multiply by gamma: y = gamma * x_hat + beta, so dL/dx_hat = gamma * grad_out":
            1 / std * (g - g.mean(0) - xhat * (g * xhat).mean(0)),
    }
    for message, value in wrong.items():
        if torch.allclose(got, value, atol=1e-6):
            fail(message)
    n = x.shape[0]
    std_u = torch.sqrt(x.var(0, unbiased=True) + eps)
    xhat_u = (x - x.mean(0)) / std_u
    if torch.allclose(got, gamma / std_u * (g - g.mean(0) - xhat_u * (g * xhat_u).mean(0)), atol=1e-6) or torch.allclose(
        got, gamma / std_u * (g - g.mean(0) - xhat_u * (g * xhat_u).sum(0) / (n - 1)), atol=1e-6
    ):
        fail("BN normalises with the biased variance (divide by n), in the forward pass and so in its gradient")
    expect_close(got, want, name="dL/dx", atol=1e-6, rtol=1e-5,
                 hint="dx = gamma / std * (g - mean(g) - x_hat * mean(g * x_hat)), means over the batch dim")
    passed("the BN input gradient matches autograd")
