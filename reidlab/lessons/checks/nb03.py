"""Checkers of notebook 03 (``notebooks/03_momentum_running_stats.ipynb``): momentum and running statistics.

Imported by the notebook as ``from reidlab.lessons.checks import nb03 as checks``.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from reidlab.lessons.checks import ExerciseError, as_tensor, checker, fail, passed

__all__ = ["EX03_BATCHES", "EX03_MOMENTUM", "ExerciseError", "check_keras_to_torch",
           "check_running_mean_after_steps", "check_update_running_var"]


#: The three batches of exercise 3.1 (8 samples x 2 features each); the notebook prints them and the
#: checker tries the learner's function on them first.
EX03_BATCHES: tuple[tuple[tuple[float, float], ...], ...] = (
    ((1.0, 4.0), (3.0, 4.0), (2.0, 2.0), (2.0, 6.0), (1.0, 3.0), (3.0, 5.0), (2.0, 4.0), (2.0, 4.0)),
    ((5.0, 0.0), (7.0, 2.0), (6.0, 1.0), (6.0, 1.0), (4.0, -1.0), (8.0, 3.0), (6.0, 2.0), (6.0, 0.0)),
    ((0.0, 1.0), (-2.0, 1.0), (2.0, 1.0), (0.0, 1.0), (1.0, 1.0), (-1.0, 1.0), (0.0, 1.0), (0.0, 1.0)),
)
EX03_MOMENTUM = 0.1


def _other_batches() -> list[torch.Tensor]:
    """Four batches of 3 features and different sizes, each with its own mean: the checker's own data."""
    g = torch.Generator().manual_seed(3)
    shifts = ((5, (1.0, -2.0, 0.0)), (8, (3.0, 0.0, -1.0)), (3, (-2.0, 4.0, 1.0)), (6, (0.5, 1.0, 2.0)))
    return [torch.randn(n, 3, generator=g) + torch.tensor(shift) for n, shift in shifts]


def _ema(means: Sequence[torch.Tensor], weight_new: float, start: torch.Tensor) -> torch.Tensor:
    r = start
    for mu in means:
        r = (1 - weight_new) * r + weight_new * mu
    return r


def _bn_running_mean(batches: Sequence[torch.Tensor], momentum: float) -> torch.Tensor:
    """What ``nn.BatchNorm1d`` itself holds after ``batches`` (the reference)."""
    bn = torch.nn.BatchNorm1d(batches[0].shape[1], momentum=momentum).double().train()
    with torch.no_grad():
        for b in batches:
            bn(b.double())
    return bn.running_mean.clone()


def _running_mean_mistake(got: torch.Tensor, batches: Sequence[torch.Tensor], momentum: float) -> str | None:
    """The sentence naming the usual mistake that gives ``got``, or None."""
    means = [b.double().mean(0) for b in batches]
    zero = torch.zeros_like(means[0])
    wrong = [
        (_ema(means, 1 - momentum, zero), "you weighted the new batch by 1 - momentum (Keras' convention); in "
                                          "PyTorch the new batch gets weight momentum: r <- (1 - m) r + m x"),
        (torch.stack(means).mean(0), "that is the plain average of the batch means (momentum=None); with a "
                                     "momentum the update is exponential"),
        (means[-1], "that is the last batch's mean: the running mean remembers earlier batches"),
        (_ema(means[1:], momentum, means[0]), "you started from the first batch's mean; a fresh BN layer starts "
                                              "from running_mean = 0"),
    ]
    if momentum != EX03_MOMENTUM:
        wrong.append((_ema(means, EX03_MOMENTUM, zero), f"with momentum={momentum} you computed the update with "
                                                        f"{EX03_MOMENTUM}: use the `momentum` argument"))
    return next((message for candidate, message in wrong if torch.allclose(got, candidate, atol=1e-4)), None)


@checker
def check_running_mean_after_steps(fn: Callable[[list[torch.Tensor], float], Any]) -> None:
    """Notebook 03: ``fn(batches, momentum)`` must return the ``running_mean`` of a fresh ``BatchNorm1d``.

    ``batches`` is a list of ``(N, C)`` tensors that a fresh ``nn.BatchNorm1d(C, momentum=momentum)``
    sees in train mode, in order; the answer is compared with that layer's buffer. Tried on the
    three batches of :data:`EX03_BATCHES` with momentum 0.1 (the notebook prints them, and the
    confirmation prints the result), then on four batches of 3 features with momentum 0.3.
    """
    cases = [([torch.tensor(b) for b in EX03_BATCHES], EX03_MOMENTUM, "the three batches above"),
             (_other_batches(), 0.3, "4 batches of 3 features")]
    for batches, momentum, what in cases:
        expected = _bn_running_mean(batches, momentum)
        try:
            got = fn([b.clone() for b in batches], momentum)
        except NotImplementedError:
            raise  # a RuntimeError too: the student stub, which @checker explains
        except RuntimeError as err:
            fail(f"with {what} (momentum={momentum}) your function raised RuntimeError: {err}. The number of "
                 f"features is batches[0].shape[1]: start from torch.zeros of that size")
        got = as_tensor(got, "running_mean").detach().to(torch.float64)
        channels = expected.shape[0]
        if tuple(got.shape) != (channels,):
            fail(f"with {what}: running_mean has one value per feature, expected shape ({channels},), got "
                 f"{tuple(got.shape)}; take each batch's mean over dim 0")
        if torch.allclose(got, expected, atol=1e-4):
            continue
        fail(_running_mean_mistake(got, batches, momentum) or (
            f"with {what} (momentum={momentum}) running_mean is off by up to "
            f"{(got - expected).abs().max().item():.3g}: apply r <- (1 - momentum) r + momentum * (batch mean over "
            f"dim 0) once per batch, starting from r = 0"))
    first = _bn_running_mean(cases[0][0], EX03_MOMENTUM)
    passed(f"running_mean after the three batches = {[round(v, 4) for v in first.tolist()]}; "
           f"right on other batches and momenta too")


@checker
def check_keras_to_torch(fn: Callable[[float], Any]) -> None:
    """Notebook 03: ``fn(keras_momentum)`` must return the equivalent PyTorch ``momentum`` (``1 - keras``)."""
    for keras in (0.99, 0.9, 0.999, 0.5):
        got = fn(keras)
        if got is None:
            fail("the function returned None: return the PyTorch momentum")
        got = float(got)
        if abs(got - keras) < 1e-9 and keras != 0.5:
            fail(f"for Keras momentum {keras} you returned {got}: the same number means the opposite in PyTorch "
                 f"(there it is the weight of the NEW batch)")
        if abs(got - (1 - keras)) > 1e-9:
            fail(f"for Keras momentum {keras} you returned {got}, expected {1 - keras:g}: Keras keeps momentum of "
                 f"the old value, PyTorch takes momentum of the new batch")
    passed("PyTorch momentum = 1 - Keras momentum (Keras' default 0.99 is PyTorch's 0.01)")


@checker
def check_update_running_var(fn: Callable[[torch.Tensor, torch.Tensor, float], Any]) -> None:
    """Notebook 03: ``fn(running_var, x, momentum)`` must return BN's new ``running_var`` for an (N, C) batch."""
    g = torch.Generator().manual_seed(0)
    for n, momentum in ((4, 0.1), (16, 0.3)):
        x = torch.randn(n, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
        bn = torch.nn.BatchNorm1d(3, momentum=momentum).double().train()
        bn.running_var.copy_(torch.tensor([1.5, 0.5, 2.0]))
        start = bn.running_var.clone()
        with torch.no_grad():
            bn(x)
        got = fn(start.clone(), x.clone(), momentum)
        got = as_tensor(got, "running_var").to(torch.float64)
        if tuple(got.shape) != (3,):
            fail(f"running_var has one value per channel: expected shape (3,), got {tuple(got.shape)}")
        if torch.allclose(got, bn.running_var, atol=1e-6):
            continue
        biased = (1 - momentum) * start + momentum * x.var(0, unbiased=False)
        keras = momentum * start + (1 - momentum) * x.var(0, unbiased=True)
        if torch.allclose(got, biased, atol=1e-6):
            fail("you used the biased variance (divide by n); running_var stores the unbiased one (divide by n - 1), "
                 "even though the batch itself is normalised with the biased one")
        if torch.allclose(got, keras, atol=1e-6):
            fail("you weighted the new batch by 1 - momentum (Keras' convention); PyTorch: (1 - m) r + m var")
        if torch.allclose(got, (1 - momentum) * start + momentum * x.var(1, unbiased=True).mean(), atol=1e-6) or (
            torch.allclose(got, (1 - momentum) * start + momentum * x.var(), atol=1e-6)
        ):
            fail("take the variance per channel over the batch dimension (dim 0)")
        fail(f"running_var is off by up to {(got - bn.running_var).abs().max().item():.3g} (batch of {n}, "
             f"momentum {momentum})")
    passed("running_var update, unbiased and PyTorch-weighted, matches nn.BatchNorm1d")
