"""Checkers of notebook 01 (``notebooks/01_batchnorm_from_scratch.ipynb``): BatchNorm from scratch.

Imported by the notebook as ``from reidlab.lessons.checks import nb01 as checks``.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from reidlab.lessons.checks import ExerciseError, as_tensor, checker, expect_close, fail, forbid, passed

__all__ = ["ExerciseError", "check_bn_input_grad", "check_fold_bn", "check_running_stats_update"]


def _pair(result: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        fail(f"{what} should return a pair (mean, var), got {type(result).__name__}")
    return as_tensor(result[0], f"{what}[0] (mean)"), as_tensor(result[1], f"{what}[1] (var)")


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> bool:
    return tuple(a.shape) == tuple(b.shape) and torch.allclose(a.detach().to(b.dtype), b, atol=atol, rtol=1e-4)


def _conv_bn_pair(
    seed: int, *, bias: bool, stride: int, padding: int, dilation: int, groups: int, eps: float
) -> tuple[nn.Conv2d, nn.BatchNorm2d, torch.Tensor]:
    """A conv and an eval-mode BN with non-trivial parameters and buffers, and a probe input."""
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(4, 6, 3, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias)
    bn = nn.BatchNorm2d(6, eps=eps)
    assert bn.running_mean is not None and bn.running_var is not None  # track_running_stats=True, the default
    with torch.no_grad():
        conv.weight.normal_(generator=g)
        if conv.bias is not None:  # built with bias=bias
            conv.bias.normal_(generator=g)
        bn.weight.uniform_(0.5, 2.0, generator=g)
        bn.bias.normal_(generator=g)
        bn.running_mean.normal_(generator=g)
        bn.running_var.uniform_(0.05, 3.0, generator=g)  # small variances make a forgotten eps visible
    x = torch.randn(3, 4, 9, 9, generator=g)
    return conv.eval(), bn.eval(), x  # a model being deployed is in eval mode


def _folded_candidates(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of the usual wrong folds, keyed by the sentence that names the mistake."""
    assert bn.running_mean is not None and bn.running_var is not None  # _conv_bn_pair's layer tracks statistics
    w, mu, var = conv.weight.detach(), bn.running_mean, bn.running_var
    gamma, beta = bn.weight.detach(), bn.bias.detach()
    b = conv.bias.detach() if conv.bias is not None else torch.zeros_like(mu)
    s = gamma / torch.sqrt(var + bn.eps)
    per_out = lambda v: v.view(-1, 1, 1, 1)  # noqa: E731
    cands = {
        "you left out eps: the scale is gamma / sqrt(running_var + eps), with the layer's own bn.eps":
            (w * per_out(gamma / torch.sqrt(var)), (b - mu) * gamma / torch.sqrt(var) + beta),
        "you divided by the variance: the scale is gamma / sqrt(running_var + eps) (a standard deviation)":
            (w * per_out(gamma / (var + bn.eps)), (b - mu) * gamma / (var + bn.eps) + beta),
        "the bias is wrong: it is scale * (conv_bias - running_mean) + beta; you dropped the conv's own bias":
            (w * per_out(s), beta - mu * s),
        "the bias is wrong: the running mean is subtracted, bias = scale * (conv_bias - running_mean) + beta":
            (w * per_out(s), (b + mu) * s + beta),
        "the bias is wrong: beta is added after scaling, bias = scale * (conv_bias - running_mean) + beta":
            (w * per_out(s), (b - mu) * s),
        "the weight is wrong: multiply every output channel's filter by gamma / sqrt(running_var + eps); "
        "you left out gamma":
            (w * per_out(1 / torch.sqrt(var + bn.eps)), (b - mu) / torch.sqrt(var + bn.eps) + beta),
    }
    return cands


#: PyTorch's own fold, which exercise 1.1 rules out (``torch.nn.utils`` re-exports both functions).
_FUSION = tuple((owner, name) for owner in (torch.nn.utils.fusion, torch.nn.utils)
                for name in ("fuse_conv_bn_eval", "fuse_conv_bn_weights"))


@checker
def check_fold_bn(fn: Callable[[nn.Conv2d, nn.BatchNorm2d], Any]) -> None:
    """Notebook 01: ``fn(conv, bn)`` returns a new ``nn.Conv2d`` equal to ``bn(conv(x))`` with ``bn`` in eval mode.

    Tried on a conv without a bias (stride 2, padding 1, dilation 2, ``eps=1e-3``) and one with a bias
    (grouped, no padding, ``eps=0.1``), both followed by a BN layer with non-trivial running
    statistics; ``conv`` and ``bn`` must be left unchanged.
    """
    cases = [(11, False, 2, 1, 2, 1, 1e-3), (12, True, 1, 0, 1, 2, 0.1)]  # seed, bias, stride, padding, dilation, groups, eps
    for seed, bias, stride, padding, dilation, groups, eps in cases:
        conv, bn, x = _conv_bn_pair(seed, bias=bias, stride=stride, padding=padding, dilation=dilation, groups=groups,
                                    eps=eps)
        what = f"a conv {'with' if bias else 'without'} a bias"
        before = {k: v.clone() for k, v in (*conv.state_dict().items(), *[("bn." + k, v) for k, v in bn.state_dict().items()])}
        with torch.no_grad():
            expected = bn(conv(x))
        try:
            with forbid(*_FUSION, why="scale the conv's weight and bias yourself (the exercise: do not call "
                                      "torch.nn.utils.fusion)"):
                folded = fn(conv, bn)
        except NotImplementedError:
            raise  # the student stub (a RuntimeError too), which @checker explains
        except RuntimeError as err:
            fail(f"with {what}: RuntimeError: {err}. The scale has one value per OUTPUT channel: reshape it to "
                 f"(C_out, 1, 1, 1) to multiply the weight of shape (C_out, C_in / groups, kH, kW)")
        after = {k: v for k, v in (*conv.state_dict().items(), *[("bn." + k, v) for k, v in bn.state_dict().items()])}
        if after.keys() != before.keys() or any(not torch.equal(before[k], after[k]) for k in before):
            fail("you changed the original conv or BN layer: build a new conv (copy.deepcopy(conv), or nn.Conv2d with "
                 "the same settings) so that the unfolded model still works")
        if folded is None:
            fail("the function returned None: return the folded nn.Conv2d")
        if not isinstance(folded, nn.Conv2d):
            fail(f"return an nn.Conv2d, got {type(folded).__name__}")
        if folded.bias is None:
            fail(f"with {what}: the folded conv has no bias; it needs one, scale * (conv_bias - running_mean) + beta")
        settings = ("stride", "padding", "dilation", "groups")
        if any(getattr(folded, k) != getattr(conv, k) for k in settings):
            fail(f"with {what}: copy the conv's stride, padding, dilation and groups (got "
                 f"{[getattr(folded, k) for k in settings]}, expected {[getattr(conv, k) for k in settings]})")
        with torch.no_grad():
            got = folded(x)
        if got.shape == expected.shape and torch.allclose(got, expected, atol=1e-4, rtol=1e-4):
            continue
        w, b = folded.weight.detach(), folded.bias.detach()
        for message, (cw, cb) in _folded_candidates(conv, bn).items():
            if w.shape == cw.shape and torch.allclose(w, cw, atol=1e-5) and torch.allclose(b, cb, atol=1e-5):
                fail(f"with {what}: {message}")
        fail(f"with {what}: the folded conv's output is off by up to {(got - expected).abs().max().item():.3g}; "
             f"weight = conv.weight * scale per output channel, scale = gamma / sqrt(running_var + eps)")
    passed("the folded conv equals conv followed by the eval-mode BN (with and without a conv bias); "
           "the originals are unchanged")


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


#: Autograd, which exercise 1.3 (a derivation by hand) rules out.
_AUTOGRAD = ((torch.autograd, "grad"), (torch.autograd, "backward"), (torch.Tensor, "backward"))


def _staged_reference(g: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor, eps: float) -> tuple[torch.Tensor, ...]:
    """(dx, dvar, dmean) by autograd through the graph with mu and var as nodes: dvar is the gradient
    reaching var, dmean the gradient reaching mu (directly and through var), both of shape (C,)."""
    xr = x.clone().requires_grad_(True)
    mu = xr.mean(0)
    var = ((xr - mu) ** 2).mean(0)
    y = gamma * (xr - mu) / torch.sqrt(var + eps)
    return tuple(t.detach() for t in torch.autograd.grad(y, (xr, var, mu), g))


def _stages(result: Any, n: int, c: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The learner's (dx, dvar, dmean) as float64 tensors of shapes (n, c), (c,), (c,)."""
    if isinstance(result, torch.Tensor) or not isinstance(result, (tuple, list)) or len(result) != 3:
        fail("return the three stages (dx, dvar, dmean), not only dx: the exercise asks for the staged derivation, "
             "dvar (the gradient reaching the batch variance, one value per channel), then dmean (reaching the batch "
             "mean), then dx")
    dx, dvar, dmean = (as_tensor(t, name).detach().to(torch.float64) for t, name in zip(result, ("dx", "dvar", "dmean")))
    if tuple(dx.shape) != (n, c):
        fail(f"the gradient dx has shape {tuple(dx.shape)}, expected {(n, c)} (one value per input)")
    for name, t in (("dvar", dvar), ("dmean", dmean)):
        if tuple(t.shape) not in ((c,), (1, c)):
            fail(f"{name} has shape {tuple(t.shape)}: var and mu have one value per channel, so {name} has shape ({c},); "
                 f"sum over the batch dim 0")
    return dx, dvar.reshape(c), dmean.reshape(c)


def _dx_mistake(got: torch.Tensor, g: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor, eps: float) -> str | None:
    """The sentence naming the usual mistake behind a wrong dx, or None."""
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
    n = x.shape[0]
    std_u = torch.sqrt(x.var(0, unbiased=True) + eps)
    xhat_u = (x - x.mean(0)) / std_u
    for mean_gx in ((g * xhat_u).mean(0), (g * xhat_u).sum(0) / (n - 1)):
        wrong["BN normalises with the biased variance (divide by n), in the forward pass and so in its gradient"] = (
            gamma / std_u * (g - g.mean(0) - xhat_u * mean_gx))
        found = next((message for message, value in wrong.items() if torch.allclose(got, value, atol=1e-6)), None)
        if found:
            return found
    return None


@checker
def check_bn_input_grad(fn: Callable[..., Any]) -> None:
    """Notebook 01: ``fn(grad_out, x, gamma, eps)`` returns ``(dx, dvar, dmean)`` of training-mode BN, x of shape (N, C).

    The staged derivation: ``dvar`` is the gradient reaching the batch variance, ``dmean`` the one
    reaching the batch mean (directly and through the variance), ``dx`` the input gradient, the sum
    of the three paths. The references are autograd's through ``gamma * (x - mean) / sqrt(var +
    eps)`` with batch statistics (biased variance), in float64; autograd itself is refused while
    ``fn`` runs.
    """
    gen = torch.Generator().manual_seed(103)
    x = torch.randn(6, 3, generator=gen, dtype=torch.float64) * 2 + 1
    gamma = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5
    g = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    eps = 1e-5
    want, want_var, want_mean = _staged_reference(g, x, gamma, eps)
    with forbid(*_AUTOGRAD, why="derive dvar, dmean and dx from the computation graph yourself (the checker "
                                "compares them with autograd's)"):
        result = fn(g.clone(), x.clone(), gamma.clone(), eps)
    got, dvar, dmean = _stages(result, *x.shape)
    if not torch.allclose(dvar, want_var, atol=1e-6, rtol=1e-5):
        if torch.allclose(dvar * x.shape[0], want_var, atol=1e-6, rtol=1e-5):
            fail("dvar is a sum over the batch (every sample reaches the variance), not a mean")
        fail(f"dvar is off by up to {(dvar - want_var).abs().max().item():.3g}: the variance enters x_hat = (x - mu) * "
             "(var + eps) ** -0.5, so dvar = sum over the batch of dx_hat * (x - mu) * -0.5 * (var + eps) ** -1.5")
    if not torch.allclose(dmean, want_mean, atol=1e-6, rtol=1e-5):
        fail(f"dmean is off by up to {(dmean - want_mean).abs().max().item():.3g}: mu enters x_hat directly (sum of "
             "-dx_hat / sqrt(var + eps)) and through the variance (dvar * mean of -2 (x - mu))")
    mistake = _dx_mistake(got, g, x, gamma, eps)
    if mistake:
        fail(mistake)
    expect_close(got, want, name="dL/dx", atol=1e-6, rtol=1e-5,
                 hint="dx = dx_hat / sqrt(var + eps) + dvar * 2 (x - mu) / n + dmean / n, the three paths")
    passed("the BN input gradient matches autograd")
