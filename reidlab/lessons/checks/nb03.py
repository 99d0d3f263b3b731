"""Checkers of notebook 03 (``notebooks/03_momentum_running_stats.ipynb``): momentum and running statistics.

Imported by the notebook as ``from reidlab.lessons.checks import nb03 as checks``.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

import reidlab.bn
from reidlab.lessons.checks import ExerciseError, as_tensor, checker, fail, forbid, passed

__all__ = ["EX03_BATCHES", "EX03_MOMENTUM", "ExerciseError", "check_from_keras", "check_pooled_mean_var",
           "check_running_mean_after_steps"]


#: The three batches of exercise 3.1 (8 samples x 2 features each); the notebook prints them and the
#: checker tries the learner's function on them first.
EX03_BATCHES: tuple[tuple[tuple[float, float], ...], ...] = (
    ((1.0, 4.0), (3.0, 4.0), (2.0, 2.0), (2.0, 6.0), (1.0, 3.0), (3.0, 5.0), (2.0, 4.0), (2.0, 4.0)),
    ((5.0, 0.0), (7.0, 2.0), (6.0, 1.0), (6.0, 1.0), (4.0, -1.0), (8.0, 3.0), (6.0, 2.0), (6.0, 0.0)),
    ((0.0, 1.0), (-2.0, 1.0), (2.0, 1.0), (0.0, 1.0), (1.0, 1.0), (-1.0, 1.0), (0.0, 1.0), (0.0, 1.0)),
)
EX03_MOMENTUM = 0.1

#: Running a BN layer, which exercise 3.1 rules out: a BN module's forward and the functions behind it.
_BN_FORWARD = ((torch.nn.modules.batchnorm._BatchNorm, "forward", "a BN layer (nn.BatchNorm1d(...)(x))"),
               (torch.nn.functional, "batch_norm"), (torch, "batch_norm"), (reidlab.bn, "batch_norm"))


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
    assert bn.running_mean is not None  # built with track_running_stats=True, the default
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
            with forbid(*_BN_FORWARD, why="apply r <- (1 - momentum) r + momentum * (batch mean) yourself, once per "
                                          "batch, from r = 0"):
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


#: Keras' ``BatchNormalization`` configurations the checker of exercise 3.2 ports.
_KERAS_CONFIGS = ({"momentum": 0.99, "epsilon": 1e-3}, {"momentum": 0.9, "epsilon": 0.05})


def _keras_layer(channels: int, seed: int) -> dict[str, torch.Tensor]:
    """The four weights of a trained Keras ``BatchNormalization`` layer (made up, all different)."""
    g = torch.Generator().manual_seed(seed)
    return {"gamma": torch.rand(channels, generator=g) + 0.5, "beta": torch.randn(channels, generator=g),
            "moving_mean": torch.randn(channels, generator=g), "moving_variance": torch.rand(channels, generator=g) * 0.1 + 0.02}


def _keras_inference(w: dict[str, torch.Tensor], x: torch.Tensor, epsilon: float) -> torch.Tensor:
    s = (1, -1, 1, 1)
    return w["gamma"].view(s) * (x - w["moving_mean"].view(s)) / torch.sqrt(w["moving_variance"].view(s) + epsilon) + w["beta"].view(s)


def _keras_moving_mean(start: torch.Tensor, batches: Sequence[torch.Tensor], keras_momentum: float) -> torch.Tensor:
    """Keras: ``moving = momentum * moving + (1 - momentum) * batch_mean`` (momentum: the OLD value's weight)."""
    m = start
    for b in batches:
        m = keras_momentum * m + (1 - keras_momentum) * b.mean(dim=(0, 2, 3))
    return m


def _port_mistake(layer: torch.nn.modules.batchnorm._BatchNorm, w: dict[str, torch.Tensor], x: torch.Tensor, config: dict) -> str:
    """The sentence naming why the ported layer's eval output differs from Keras'."""
    swapped = dict(w, gamma=w["beta"], beta=w["gamma"])
    stats_swapped = dict(w, moving_mean=w["moving_variance"], moving_variance=w["moving_mean"].abs())
    with torch.no_grad():
        got = layer.eval()(x)
    candidates = [
        (_keras_inference(w, x, layer.eps), f"eps: Keras adds its own `epsilon` (config['epsilon'], {config['epsilon']:g} "
                                            f"here) to the variance, your layer {layer.eps:g}: pass eps=config['epsilon']"),
        (_keras_inference(swapped, x, config["epsilon"]), "gamma (the scale) goes into weight and beta (the shift) into bias"),
        (_keras_inference(stats_swapped, x, config["epsilon"]), "moving_mean goes into running_mean and moving_variance into "
                                                                "running_var"),
    ]
    for candidate, message in candidates:
        if torch.allclose(got, candidate, atol=1e-4, rtol=1e-4):
            return message
    return (f"the eval-mode output differs from Keras' by up to {(got - _keras_inference(w, x, config['epsilon'])).abs().max():.3g}: "
            "copy gamma, beta, moving_mean and moving_variance into weight, bias, running_mean and running_var")


@checker
def check_from_keras(fn: Callable[[dict, dict], Any]) -> None:
    """Notebook 03: ``fn(weights, config)`` ports a Keras ``BatchNormalization`` layer to an ``nn.BatchNorm2d``.

    ``weights`` holds ``gamma``, ``beta``, ``moving_mean`` and ``moving_variance`` (tensors of
    shape ``(C,)``) and ``config`` Keras' ``momentum`` and ``epsilon``. The port must give Keras'
    inference output in eval mode and, trained further, update ``running_mean`` exactly as
    Keras updates ``moving_mean``. (``running_var`` cannot follow Keras' ``moving_variance``:
    Keras 3 averages biased batch variances.) Tried on two configurations.
    """
    for k, config in enumerate(_KERAS_CONFIGS):
        w = _keras_layer(4, seed=30 + k)
        g = torch.Generator().manual_seed(40 + k)
        x = torch.randn(6, 4, 3, 3, generator=g) * 0.3 + 0.2
        layer = fn({name: t.clone() for name, t in w.items()}, dict(config))
        if layer is None:
            fail("the function returned None: return the nn.BatchNorm2d")
        if not isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            fail(f"return a BN layer (nn.BatchNorm2d), got {type(layer).__name__}")
        if layer.num_features != 4 or layer.weight is None or layer.running_mean is None:
            fail("build nn.BatchNorm2d(C) with affine=True and track_running_stats=True (the defaults), C = len(gamma)")
        with torch.no_grad():
            out = layer.eval()(x)
        if not torch.allclose(out, _keras_inference(w, x, config["epsilon"]), atol=1e-4, rtol=1e-4):
            fail(f"with Keras config {config}: {_port_mistake(layer, w, x, config)}")
        batches = [torch.randn(8, 4, 3, 3, generator=g) + i for i in range(3)]
        start = layer.running_mean.clone()
        layer.train()
        with torch.no_grad():
            for b in batches:
                layer(b)
        want = _keras_moving_mean(w["moving_mean"], batches, config["momentum"])
        if torch.allclose(layer.running_mean, want, atol=1e-4):
            continue
        if torch.allclose(layer.running_mean, _keras_moving_mean(start, batches, 1 - config["momentum"]), atol=1e-4):
            fail(f"with Keras momentum {config['momentum']} the running mean follows the last batches far too fast: "
                 f"you copied Keras' momentum, the weight of the OLD value; PyTorch's momentum is the weight of the NEW "
                 f"batch, 1 - {config['momentum']}")
        if layer.momentum is None:
            fail("momentum=None is a cumulative average; Keras' update is exponential: momentum = 1 - config['momentum']")
        fail(f"after 3 training batches running_mean is off Keras' moving_mean by up to "
             f"{(layer.running_mean - want).abs().max().item():.3g}: set momentum = 1 - config['momentum']")
    passed("Keras' inference output and its moving_mean updates, for both configurations")


def _pooled_mistake(mean: torch.Tensor, var: torch.Tensor, batches: Sequence[torch.Tensor]) -> str | None:
    """The sentence naming the usual mistake behind a wrong pooled (mean, var), or None."""
    sizes = torch.tensor([float(len(b)) for b in batches], dtype=torch.float64)
    means = torch.stack([b.mean(0) for b in batches])
    variances = torch.stack([b.var(0) for b in batches])
    total = sizes.sum()
    right_mean = (sizes[:, None] * means).sum(0) / total
    within = ((sizes - 1)[:, None] * variances).sum(0)
    between = (sizes[:, None] * (means - right_mean) ** 2).sum(0)
    if torch.allclose(mean, means.mean(0), atol=1e-6) and not torch.allclose(mean, right_mean, atol=1e-6):
        return ("the mean: you averaged the batch means with equal weights (what momentum=None does); weight each "
                "batch mean by its size")
    if not torch.allclose(mean, right_mean, atol=1e-6):
        return f"the mean is off by up to {(mean - right_mean).abs().max().item():.3g}: sum(n_k * mean_k) / sum(n_k)"
    wrong = [
        (variances.mean(0), "that is the plain average of the batch variances (what momentum=None stores): it "
                            "ignores the batch sizes and the spread between the batch means"),
        (within / (total - 1), "you left out the spread between the batch means: add sum(n_k * (mean_k - mean)^2) to "
                               "the within-batch sum of squares"),
        ((within + between) / total, "that is the biased variance (divided by N); return the unbiased one, divided "
                                     "by N - 1"),
        (((sizes[:, None] * variances).sum(0) + between) / (total - 1),
         "the batch variances are unbiased: batch k contributes (n_k - 1) * var_k to the sum of squares, not n_k * var_k"),
    ]
    return next((message for candidate, message in wrong if torch.allclose(var, candidate, atol=1e-6)), None)


@checker
def check_pooled_mean_var(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Any]) -> None:
    """Notebook 03: ``fn(means, variances, sizes)`` returns the mean and unbiased variance of all samples together.

    ``means`` and ``variances`` have shape ``(K, C)`` (each batch's mean and *unbiased*
    variance), ``sizes`` shape ``(K,)``. Compared, in float64, with the statistics of the
    concatenated samples, which the function does not see.
    """
    g = torch.Generator().manual_seed(33)
    shapes = ((3, (2.0, -1.0)), (10, (0.0, 0.5)), (5, (4.0, 1.0)), (8, (-1.0, 3.0)))
    batches = [torch.randn(n, 2, generator=g, dtype=torch.float64) * 1.5 + torch.tensor(mu, dtype=torch.float64)
               for n, mu in shapes]
    means = torch.stack([b.mean(0) for b in batches])
    variances = torch.stack([b.var(0) for b in batches])
    sizes = torch.tensor([len(b) for b in batches])
    result = fn(means.clone(), variances.clone(), sizes.clone())
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        fail(f"return a pair (mean, var), got {type(result).__name__}")
    mean = as_tensor(result[0], "mean").detach().to(torch.float64)
    var = as_tensor(result[1], "var").detach().to(torch.float64)
    for name, t in (("mean", mean), ("var", var)):
        if tuple(t.shape) != (2,):
            fail(f"{name} has shape {tuple(t.shape)}: one value per channel, shape (C,) = (2,); reduce over the batches (dim 0)")
    everything = torch.cat(batches)
    if torch.allclose(mean, everything.mean(0), atol=1e-6) and torch.allclose(var, everything.var(0), atol=1e-6):
        passed("the exact mean and unbiased variance of all samples, from the batch statistics alone")
        return
    fail(_pooled_mistake(mean, var, batches) or (
        f"var is off by up to {(var - everything.var(0)).abs().max().item():.3g}: the sum of squares of all samples is "
        f"sum((n_k - 1) * var_k) + sum(n_k * (mean_k - mean)^2); divide it by N - 1"))
