"""Notebook 01's exercise checkers: the solutions pass, the usual mistakes get a message naming them."""
import pytest
import torch

from reidlab.lessons.checks import nb01 as checks

# --- exercise 1.1: per-channel statistics ----------------------------------------------------


def stats_ok(x):
    return x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)


def test_channel_stats_solution_passes(capsys):
    checks.check_channel_stats(stats_ok)
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda x: (x.mean(0), x.var(0, unbiased=False)), "batch dim 0 only"),
        (lambda x: (x.mean((2, 3)), x.var((2, 3), unbiased=False)), "instance norm"),
        (lambda x: (x.mean(1), x.var(1, unbiased=False)), "channel dim 1"),
        (lambda x: (x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), keepdim=True)), "flat vector"),
        (lambda x: (x.mean((0, 2, 3)), x.var((0, 2, 3))), "unbiased"),
        (lambda x: (x.mean((0, 2, 3)), x.std((0, 2, 3), unbiased=False)), "standard deviation"),
        (lambda x: (x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)[:1]), "var has shape"),
        (lambda x: x.mean((0, 2, 3)), "pair"),
        (lambda x: (x.mean((0, 2, 3)) + 1, x.var((0, 2, 3), unbiased=False)), "mean is off"),
    ],
)
def test_channel_stats_mistakes(wrong, message):
    with pytest.raises(checks.ExerciseError, match=message):
        checks.check_channel_stats(wrong)


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
