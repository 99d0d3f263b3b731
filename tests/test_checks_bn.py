"""Notebook 01's exercise checkers: the solutions pass, the usual mistakes get a message naming them.

The right and wrong answers of each exercise are in ``ANSWERS`` at the end (run by ``test_answer_suites.py``);
what needs more than "accepted" or "refused with this message" is tested here.
"""
import copy

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from answers import Answers
from reidlab.lessons.checks import nb01 as checks

# --- exercise 1.1: fold an eval-mode BN into the conv before it ------------------------------


def fold_ok(conv, bn):
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    conv_bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    folded = copy.deepcopy(conv)
    if folded.bias is None:
        folded.bias = nn.Parameter(torch.zeros_like(bn.running_mean))
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        folded.bias.copy_((conv_bias - bn.running_mean) * scale + bn.bias)
    return folded


def fold_new_conv(conv, bn):
    """Also right: a new nn.Conv2d with the conv's settings, its parameters given outright."""
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                       dilation=conv.dilation, groups=conv.groups, bias=True)
    b = conv.bias.detach() if conv.bias is not None else 0.0
    folded.weight = nn.Parameter(conv.weight.detach() * scale[:, None, None, None])
    folded.bias = nn.Parameter(scale * (b - bn.running_mean) + bn.bias.detach())
    return folded


def test_pytorchs_own_fold_works_again_after_the_check():
    with pytest.raises(checks.ExerciseError):
        checks.check_fold_bn(lambda conv, bn: fuse_conv_bn_eval(conv, bn))
    conv, bn = nn.Conv2d(2, 3, 1).eval(), nn.BatchNorm2d(3).eval()
    assert isinstance(fuse_conv_bn_eval(conv, bn), nn.Conv2d)  # restored after the check


def _from_weights(conv, bn):
    folded = copy.deepcopy(conv)
    w, b = torch.nn.utils.fusion.fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                                      bn.eps, bn.weight, bn.bias)
    folded.weight, folded.bias = w, b
    return folded


def test_fold_bn_is_exact_on_a_resnet_block():
    """The folded conv replaces conv+BN in a torchvision block in eval mode (what deployment does)."""
    block = torchvision.models.resnet18(weights=None).layer1[0]
    with torch.no_grad():
        block.bn1.running_mean.normal_(generator=torch.Generator().manual_seed(0))
        block.bn1.running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(1))
    block.eval()
    x = torch.randn(2, 64, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = block(x)
        block.conv1, block.bn1 = fold_ok(block.conv1, block.bn1), nn.Identity()
        torch.testing.assert_close(block(x), expected, atol=1e-4, rtol=1e-4)


def _fold(conv, bn, *, eps=True, gamma=True, beta=True, conv_bias=True, sign=-1, in_place=False, keep_settings=True,
          per_input=False, with_bias=True):
    e = bn.eps if eps else 0.0
    g = bn.weight.detach() if gamma else torch.ones_like(bn.running_mean)
    scale = g / torch.sqrt(bn.running_var + e)
    b = conv.bias.detach() if (conv.bias is not None and conv_bias) else torch.zeros_like(bn.running_mean)
    bias = (b + sign * bn.running_mean) * scale + (bn.bias.detach() if beta else 0)
    if in_place:
        folded = conv
    elif keep_settings:
        folded = copy.deepcopy(conv)
    else:
        folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, groups=conv.groups, bias=True)
    if with_bias and folded.bias is None:
        folded.bias = nn.Parameter(torch.zeros_like(bn.running_mean))
    with torch.no_grad():
        view = (1, -1, 1, 1) if per_input else (-1, 1, 1, 1)
        folded.weight.copy_(conv.weight * scale.view(view))
        if folded.bias is not None:
            folded.bias.copy_(bias)
    return folded


def folding(**kwargs):
    """A learner's fold_bn with the mistakes ``kwargs`` switch on (see ``_fold``)."""
    return lambda conv, bn: _fold(conv, bn, **kwargs)


def _fold_with_scale(conv, bn, scale):
    """A fold that is right except for its per-channel ``scale`` (the learner's wrong formula for it)."""
    folded = _fold(conv, bn)
    b = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        folded.bias.copy_((b - bn.running_mean) * scale + bn.bias)
    return folded


def _fold_var(conv, bn):
    return _fold_with_scale(conv, bn, bn.weight.detach() / (bn.running_var + bn.eps))


def _fold_eps_outside_the_root(conv, bn):
    return _fold_with_scale(conv, bn, bn.weight.detach() / (torch.sqrt(bn.running_var) + bn.eps))


def _fold_into_a_conv_without_dilation(conv, bn):
    """fold_new_conv, but the new conv copies stride, padding and groups only."""
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                       groups=conv.groups, bias=True)
    right = fold_new_conv(conv, bn)
    folded.weight, folded.bias = right.weight, right.bias
    return folded


FOLD_WRONG = (
    # the shortcut the exercise forbids: "Do not call torch.nn.utils.fusion" (the first one bound before the check)
    (lambda conv, bn: fuse_conv_bn_eval(conv, bn), r"by hand, without `torch\.nn\.utils(\.fusion)?\.fuse_conv_bn_eval`"),
    (lambda conv, bn: torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn), r"without `torch\.nn\.utils(\.fusion)?\.fuse_conv_bn_eval`"),
    (lambda conv, bn: torch.nn.utils.fuse_conv_bn_eval(conv, bn), r"without `torch\.nn\.utils(\.fusion)?\.fuse_conv_bn_eval`"),
    (_from_weights, r"by hand, without `torch\.nn\.utils(\.fusion)?\.fuse_conv_bn_weights`"),
    # the mistakes
    (folding(eps=False), "left out eps"),
    (_fold_eps_outside_the_root, r"off by .*scale = gamma / sqrt\(running_var \+ eps\)"),
    (_fold_var, "divided by the variance"),
    (folding(conv_bias=False), "dropped the conv's own bias"),
    (folding(sign=+1), "running mean is subtracted"),
    (folding(beta=False), "beta is added"),
    (folding(gamma=False), "left out gamma"),
    (folding(per_input=True), "OUTPUT channel"),
    (folding(in_place=True), "changed the original"),
    (folding(keep_settings=False), "stride, padding"),
    (_fold_into_a_conv_without_dilation, r"copy the conv's stride, padding, dilation and groups"),
    (folding(with_bias=False), "has no bias"),
    (folding(eps=False, beta=False), "off by"),
    (lambda conv, bn: None, "returned None"),
    (lambda conv, bn: nn.Sequential(copy.deepcopy(conv), copy.deepcopy(bn)), "return an nn.Conv2d"),
)


# --- exercise 1.2: the running-statistics update ----------------------------------------------


def update_ok(running_mean, running_var, x, momentum):
    n = x.numel() // x.shape[1]
    mean = x.mean(dim=(0, 2, 3))
    var = x.var(dim=(0, 2, 3), unbiased=False) * n / (n - 1)
    return (1 - momentum) * running_mean + momentum * mean, (1 - momentum) * running_var + momentum * var


def update_in_place(running_mean, running_var, x, momentum):
    running_mean.mul_(1 - momentum).add_(momentum * x.mean((0, 2, 3)))
    running_var.mul_(1 - momentum).add_(momentum * x.var((0, 2, 3), unbiased=True))
    return running_mean, running_var


def _biased(rm, rv, x, m):
    return (1 - m) * rm + m * x.mean((0, 2, 3)), (1 - m) * rv + m * x.var((0, 2, 3), unbiased=False)


def _keras(rm, rv, x, m):
    return m * rm + (1 - m) * x.mean((0, 2, 3)), m * rv + (1 - m) * x.var((0, 2, 3))


def _batch_only(rm, rv, x, m):
    return x.mean((0, 2, 3)), x.var((0, 2, 3))


def _n_is_batch(rm, rv, x, m):
    n = x.shape[0]
    return (1 - m) * rm + m * x.mean((0, 2, 3)), (1 - m) * rv + m * x.var((0, 2, 3), unbiased=False) * n / (n - 1)


def _per_pixel(rm, rv, x, m):
    return (1 - m) * rm + m * x.mean(0), (1 - m) * rv + m * x.var(0)


UPDATE_WRONG = (
    (_biased, "running_var holds the unbiased estimate; you stored the biased one"),
    (_keras, "opposite"),
    (_batch_only, "replaced the running statistics"),
    (_n_is_batch, "not the batch size N"),
    (_per_pixel, r"running_mean has shape \(2, 2, 2\), expected \(2,\)"),  # reduced over the batch dim only
    (lambda rm, rv, x, m: None, "pair"),
    (lambda rm, rv, x, m: ((1 - m) * rm + m * x.mean(0).mean((1, 2)) + 0.1, rv), "running_mean is off"),
)


# --- exercise 1.3: the backward pass ------------------------------------------------------------


def _parts(x, eps):
    std = torch.sqrt(x.var(0, unbiased=False) + eps)
    return std, (x - x.mean(0)) / std


def staged_ok(g, x, gamma, eps):
    """The notebook's solution: dvar, then dmean, then dx as the sum of the three paths."""
    n = x.shape[0]
    mu = x.mean(dim=0)
    var = x.var(dim=0, unbiased=False)
    inv_std = (var + eps) ** -0.5
    dx_hat = g * gamma
    dvar = (dx_hat * (x - mu) * -0.5 * inv_std**3).sum(dim=0)
    dmean = (-dx_hat * inv_std).sum(dim=0) + dvar * (-2 * (x - mu)).mean(dim=0)
    return dx_hat * inv_std + dvar * 2 * (x - mu) / n + dmean / n, dvar, dmean


def compact_ok(g, x, gamma, eps):
    """Also right: the stages of the derivation, then dx by the compact formula of section 7, keepdim shapes."""
    std, xhat = _parts(x, eps)
    dx_hat = g * gamma
    dvar = (dx_hat * (x - x.mean(0))).sum(0, keepdim=True) * -0.5 / std**3
    dmean = -dx_hat.sum(0, keepdim=True) / std
    return gamma / std * (g - g.mean(0) - xhat * (g * xhat).mean(0)), dvar, dmean


def with_stages(dx_of):
    """A learner's answer whose dvar and dmean are right and whose dx is ``dx_of(g, x, gamma, eps)``."""
    return lambda g, x, gamma, eps: (dx_of(g, x, gamma, eps), *staged_ok(g, x, gamma, eps)[1:])


def _no_stats(g, x, gamma, eps):
    std, _ = _parts(x, eps)
    return gamma / std * g


def _no_mean_term(g, x, gamma, eps):
    std, xhat = _parts(x, eps)
    return gamma / std * (g - xhat * (g * xhat).mean(0))


def _no_var_term(g, x, gamma, eps):
    std, _ = _parts(x, eps)
    return gamma / std * (g - g.mean(0))


def _no_gamma(g, x, gamma, eps):
    return staged_ok(g, x, torch.ones_like(gamma), eps)[0]


def _unbiased(g, x, gamma, eps):
    std = torch.sqrt(x.var(0, unbiased=True) + eps)
    xhat = (x - x.mean(0)) / std
    return gamma / std * (g - g.mean(0) - xhat * (g * xhat).mean(0))


def _by_autograd(g, x, gamma, eps):
    x = x.clone().requires_grad_(True)
    y = gamma * (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + eps)
    (dx,) = torch.autograd.grad(y, x, g)
    return dx, *staged_ok(g, x.detach(), gamma, eps)[1:]


def _by_backward(g, x, gamma, eps):
    x = x.clone().requires_grad_(True)
    (gamma * (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + eps)).backward(g)
    return x.grad, *staged_ok(g, x.detach(), gamma, eps)[1:]


def _dvar_mean(g, x, gamma, eps):
    dx, dvar, dmean = staged_ok(g, x, gamma, eps)
    return dx, dvar / x.shape[0], dmean


def _dmean_direct_sign(g, x, gamma, eps):
    dx, dvar, dmean = staged_ok(g, x, gamma, eps)
    return dx, dvar, -dmean


def _by_vjp(g, x, gamma, eps):
    _, vjp = torch.func.vjp(lambda x: gamma * (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + eps), x)
    return vjp(g)[0], *staged_ok(g, x, gamma, eps)[1:]


GRAD_WRONG = (
    # the shortcut the exercise forbids: "by hand (no autograd)"
    (_by_autograd, "by hand, without `torch.autograd.grad`"),
    (_by_backward, "by hand, without `Tensor.backward`"),
    (_by_vjp, "by hand, without `torch.autograd.grad`"),
    # the mistakes
    (with_stages(_no_stats), "constants"),
    (with_stages(_no_mean_term), "-mean"),
    (with_stages(_no_var_term), "variance depends on every input"),
    (with_stages(_no_gamma), "multiply by gamma"),
    (with_stages(_unbiased), "biased variance"),
    (with_stages(lambda g, x, gamma, eps: staged_ok(g, x, gamma, eps)[0][:3]), "shape"),
    (with_stages(lambda g, x, gamma, eps: staged_ok(g, x, gamma, eps)[0] * 1.1), "off by"),
    (lambda g, x, gamma, eps: staged_ok(g, x, gamma, eps)[0], "not only dx"),  # dx alone: no stages
    (lambda g, x, gamma, eps: compact_ok(g, x, gamma, eps)[0], "staged derivation"),  # section 7's formula
    (_dvar_mean, "dvar is a sum over the batch"),
    (lambda g, x, gamma, eps: (staged_ok(g, x, gamma, eps)[0], staged_ok(g, x, gamma, eps)[1] * 2,
                               staged_ok(g, x, gamma, eps)[2]), "dvar is off"),
    (_dmean_direct_sign, "dmean is off"),
    (lambda g, x, gamma, eps: (*staged_ok(g, x, gamma, eps)[:2], torch.zeros(2)), "dmean has shape"),
)


ANSWERS = {  # run by tests/test_answer_suites.py
    checks.check_fold_bn: Answers(right=(fold_ok, fold_new_conv), wrong=FOLD_WRONG),
    checks.check_running_stats_update: Answers(right=(update_ok, update_in_place), wrong=UPDATE_WRONG),
    checks.check_bn_input_grad: Answers(right=(staged_ok, compact_ok), wrong=GRAD_WRONG),
}
