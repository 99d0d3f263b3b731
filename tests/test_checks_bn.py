"""Notebook 01's exercise checkers: the solutions pass, the usual mistakes get a message naming them."""
import copy

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

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


def test_fold_bn_solutions_pass(capsys):
    checks.check_fold_bn(fold_ok)
    checks.check_fold_bn(lambda conv, bn: fuse_conv_bn_eval(conv, bn))  # PyTorch's own fold
    assert capsys.readouterr().out.count("correct") == 2


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


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"eps": False}, "left out eps"),
        ({"conv_bias": False}, "dropped the conv's own bias"),
        ({"sign": +1}, "running mean is subtracted"),
        ({"beta": False}, "beta is added"),
        ({"gamma": False}, "left out gamma"),
        ({"per_input": True}, "OUTPUT channel"),
        ({"in_place": True}, "changed the original"),
        ({"keep_settings": False}, "stride, padding"),
        ({"with_bias": False}, "has no bias"),
    ],
)
def test_fold_bn_mistakes(kwargs, message):
    with pytest.raises(checks.ExerciseError, match=message):
        checks.check_fold_bn(lambda conv, bn: _fold(conv, bn, **kwargs))


def test_fold_bn_other_wrong_answers():
    with pytest.raises(checks.ExerciseError, match="returned None"):
        checks.check_fold_bn(lambda conv, bn: None)
    with pytest.raises(checks.ExerciseError, match="return an nn.Conv2d"):
        checks.check_fold_bn(lambda conv, bn: nn.Sequential(copy.deepcopy(conv), copy.deepcopy(bn)))
    with pytest.raises(checks.ExerciseError, match="divided by the variance"):
        checks.check_fold_bn(lambda conv, bn: _fold_var(conv, bn))
    with pytest.raises(checks.ExerciseError, match="off by"):
        checks.check_fold_bn(lambda conv, bn: _fold(conv, bn, eps=False, beta=False))


def _fold_var(conv, bn):
    folded = _fold(conv, bn)
    scale = bn.weight.detach() / (bn.running_var + bn.eps)
    b = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
        folded.bias.copy_((b - bn.running_mean) * scale + bn.bias)
    return folded


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


def test_running_update_solutions_pass(capsys):
    checks.check_running_stats_update(update_ok)
    checks.check_running_stats_update(update_in_place)
    assert capsys.readouterr().out.count("correct") == 2


def _biased(rm, rv, x, m):
    return (1 - m) * rm + m * x.mean((0, 2, 3)), (1 - m) * rv + m * x.var((0, 2, 3), unbiased=False)


def _keras(rm, rv, x, m):
    return m * rm + (1 - m) * x.mean((0, 2, 3)), m * rv + (1 - m) * x.var((0, 2, 3))


def _batch_only(rm, rv, x, m):
    return x.mean((0, 2, 3)), x.var((0, 2, 3))


def _n_is_batch(rm, rv, x, m):
    n = x.shape[0]
    return (1 - m) * rm + m * x.mean((0, 2, 3)), (1 - m) * rv + m * x.var((0, 2, 3), unbiased=False) * n / (n - 1)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (_biased, "running_var holds the unbiased estimate; you stored the biased one"),
        (_keras, "opposite"),
        (_batch_only, "replaced the running statistics"),
        (_n_is_batch, "not the batch size N"),
        (lambda rm, rv, x, m: None, "pair"),
        (lambda rm, rv, x, m: ((1 - m) * rm + m * x.mean(0).mean((1, 2)) + 0.1, rv), "running_mean is off"),
    ],
)
def test_running_update_mistakes(wrong, message):
    with pytest.raises(checks.ExerciseError, match=message):
        checks.check_running_stats_update(wrong)


# --- exercise 1.3: the backward pass ------------------------------------------------------------


def _parts(x, eps):
    std = torch.sqrt(x.var(0, unbiased=False) + eps)
    return std, (x - x.mean(0)) / std


def grad_ok(g, x, gamma, eps):
    std, xhat = _parts(x, eps)
    return gamma / std * (g - g.mean(0) - xhat * (g * xhat).mean(0))


def test_bn_input_grad_solution_passes(capsys):
    checks.check_bn_input_grad(grad_ok)
    assert "correct" in capsys.readouterr().out


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
    return grad_ok(g, x, torch.ones_like(gamma), eps)


def _unbiased(g, x, gamma, eps):
    std = torch.sqrt(x.var(0, unbiased=True) + eps)
    xhat = (x - x.mean(0)) / std
    return gamma / std * (g - g.mean(0) - xhat * (g * xhat).mean(0))


@pytest.mark.parametrize(
    "wrong, message",
    [
        (_no_stats, "constants"),
        (_no_mean_term, "-mean"),
        (_no_var_term, "variance depends on every input"),
        (_no_gamma, "multiply by gamma"),
        (_unbiased, "biased variance"),
        (lambda g, x, gamma, eps: grad_ok(g, x, gamma, eps)[:3], "shape"),
        (lambda g, x, gamma, eps: grad_ok(g, x, gamma, eps) * 1.1, "off by"),
    ],
)
def test_bn_input_grad_mistakes(wrong, message):
    with pytest.raises(checks.ExerciseError, match=message):
        checks.check_bn_input_grad(wrong)
