"""Checkers of notebook 06 (``notebooks/06_dsbn.ipynb``): domain-specific BN.

The running statistics each branch of a DSBN layer keeps after one split batch, routing target
test data through the target branch with its running statistics, and the statistics a single BN
learns from mixed batches. Imported by the notebook as
``from reidlab.lessons.checks import nb06 as checks``.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch.nn.modules.batchnorm import _BatchNorm

import reidlab.bn
from reidlab.dsbn import DSBN2d, convert_dsbn, domain, dsbn_layers
from reidlab.lessons.checks import ExerciseError, as_tensor, checker, fail, forbid, passed

__all__ = ["ExerciseError", "check_merge_stats", "check_split_step_stats", "check_target_features"]


#: The usual ways of getting exercise 6.1 wrong, each with the sentence that names it.
_STEP_MISTAKES = {
    "swapped": "the branches are swapped: the first half of the batch is the source half, so the source branch's "
               "statistics come from x[:N // 2] and the target branch's from x[N // 2:]",
    "shared": "both branches got the statistics of the whole batch: that is what one shared BN would store; in a "
              "split batch each branch sees only its own half",
    "biased": "running_var stores the unbiased batch variance (divide by n - 1, n = images x positions of the "
              "half); you used the biased one, which BN only normalises with",
    "reversed": "the momentum weighs the new batch, not the old value: running = (1 - momentum) * running + "
                "momentum * batch statistic",
    "replaced": "the running statistics are a moving average: (1 - momentum) * running + momentum * batch "
                "statistic; you replaced them with the batch's statistics",
    "std": "running_var holds a variance; you averaged standard deviations (or stored one)",
    "source_kept": "the source branch is in training mode too and saw the first half: both branches update in a "
                   "split step; you left the source branch at its starting statistics",
    "target_kept": "the target branch is in training mode too and saw the second half: both branches update in a "
                   "split step; you left the target branch at its starting statistics",
    "per_image_n": "the unbiased variance divides by (number of values - 1), and a channel of the half has "
                   "N/2 x H x W values, not N/2",
}


#: What exercise 6.1 rules out ("no BN module and no F.batch_norm"): a BN module's forward (DSBN2d's branches
#: included) and the batch-norm functions.
_BN_FORWARD = ((torch.nn.modules.batchnorm._BatchNorm, "forward", "a BN module (nn.BatchNorm2d, DSBN2d)"),
               (torch.nn.functional, "batch_norm"), (torch, "batch_norm"), (reidlab.bn, "batch_norm"))


def _half_stats(part: torch.Tensor, unbiased: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    return part.mean(dim=(0, 2, 3)), part.var(dim=(0, 2, 3), unbiased=unbiased)


def _step_variant(x: torch.Tensor, rm: torch.Tensor, rv: torch.Tensor, momentum: float, how: str):
    """((source mean, var), (target mean, var)) as one way of doing exercise 6.1 computes them."""
    half = x.shape[0] // 2
    parts = (x[half:], x[:half]) if how == "swapped" else (x, x) if how == "shared" else (x[:half], x[half:])
    out = []
    for d, part in enumerate(parts):
        mean, var = _half_stats(part, unbiased=how != "biased")
        if how == "per_image_n":
            n = part.shape[0] * part.shape[2] * part.shape[3]
            var = part.var(dim=(0, 2, 3), unbiased=False) * n / (part.shape[0] - 1)
        if how == "reversed":
            out.append((momentum * rm + (1 - momentum) * mean, momentum * rv + (1 - momentum) * var))
        elif how == "replaced":
            out.append((mean, var))
        elif how == "std":
            out.append(((1 - momentum) * rm + momentum * mean, ((1 - momentum) * rv.sqrt() + momentum * var.sqrt()) ** 2))
        elif (how == "source_kept" and d == 0) or (how == "target_kept" and d == 1):
            out.append((rm.clone(), rv.clone()))
        else:
            out.append(((1 - momentum) * rm + momentum * mean, (1 - momentum) * rv + momentum * var))
    return tuple(out)


def _branch_stats(bn: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(running_mean, running_var)`` of a branch of a DSBN layer this module built."""
    # DSBN2d and convert_dsbn make each branch a BN layer, here always with track_running_stats=True
    assert isinstance(bn, _BatchNorm) and bn.running_mean is not None and bn.running_var is not None
    return bn.running_mean, bn.running_var


def _layer_after_split_step(x: torch.Tensor, rm: torch.Tensor, rv: torch.Tensor, momentum: float):
    """What ``reidlab.dsbn.DSBN2d`` really stores: the reference answer of exercise 6.1."""
    layer = DSBN2d(x.shape[1], momentum=momentum).train()
    with torch.no_grad():
        for bn in layer.bns:
            mean, var = _branch_stats(bn)
            mean.copy_(rm)
            var.copy_(rv)
        layer(x)
    return tuple((mean.clone(), var.clone()) for mean, var in map(_branch_stats, layer.bns))


def _unpack_stats(result: Any, c: int) -> list[torch.Tensor]:
    """[source mean, source var, target mean, target var] from the learner's nested pairs, with shape checks."""
    if result is None:
        fail("the function returned None: return ((source_mean, source_var), (target_mean, target_var))")
    shape_hint = "return ((source_mean, source_var), (target_mean, target_var))"
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        fail(f"{shape_hint}: two pairs, one per branch; got {type(result).__name__}"
             + (f" of length {len(result)}" if isinstance(result, (tuple, list)) else ""))
    flat = []
    for branch, pair in zip(("source", "target"), result):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            fail(f"{shape_hint}: the {branch} entry should be a pair (mean, var), got {type(pair).__name__}")
        for what, t in zip(("mean", "var"), pair):
            t = as_tensor(t, f"{branch}_{what}").detach().to(torch.float64)
            if tuple(t.shape) != (c,):
                fail(f"{branch}_{what} has shape {tuple(t.shape)}; a BN layer keeps one value per channel, shape "
                     f"({c},): reduce over the images and the positions, dims (0, 2, 3)")
            flat.append(t)
    return flat


def _close(a: list[torch.Tensor], b: tuple) -> bool:
    flat = [t.to(torch.float64) for pair in b for t in pair]
    return all(torch.allclose(x, y, atol=1e-4, rtol=1e-4) for x, y in zip(a, flat))


@checker
def check_split_step_stats(fn: Callable[..., Any]) -> None:
    """Notebook 06, exercise 6.1: ``fn(x, running_mean, running_var, momentum)`` returns the running
    statistics of both branches of a fresh two-branch DSBN2d after one split training step on ``x``.

    The reference is ``reidlab.dsbn.DSBN2d`` itself; each typical mistake (swapped halves, the whole
    batch's statistics, the biased variance, the momentum the wrong way round, ...) gets its sentence.
    Tried with two momenta, so a hard-coded 0.1 shows.
    """
    g = torch.Generator().manual_seed(67)
    c = 3
    for n, h, w, momentum in ((8, 3, 2, 0.1), (6, 2, 5, 0.3)):
        x = torch.cat([torch.randn(n // 2, c, h, w, generator=g),                     # source half
                       2.5 * torch.randn(n // 2, c, h, w, generator=g) + 4.0])        # target half
        rm = torch.randn(c, generator=g) * 0.5
        rv = torch.rand(c, generator=g) + 0.5
        want = _layer_after_split_step(x, rm, rv, momentum)
        with forbid(*_BN_FORWARD, why="compute each half's mean and unbiased variance with tensor operations"):
            result = fn(x.clone(), rm.clone(), rv.clone(), momentum)
        got = _unpack_stats(result, c)
        if _close(got, want):
            continue
        if momentum != 0.1 and _close(got, _layer_after_split_step(x, rm, rv, 0.1)):
            fail(f"you used momentum 0.1, not the momentum passed in ({momentum})")
        for how, message in _STEP_MISTAKES.items():
            if _close(got, _step_variant(x, rm, rv, momentum, how)):
                fail(message)
        names = ("source_mean", "source_var", "target_mean", "target_var")
        worst = max(range(4), key=lambda i: (got[i] - [t for p in want for t in p][i].double()).abs().max().item())
        fail(f"{names[worst]} is off: each branch's running statistic becomes (1 - momentum) * running + momentum "
             f"* the statistic of its own half (mean over dims 0, 2, 3; unbiased variance)")
    passed("each branch moved towards its own half: (1 - momentum) * running + momentum * half's mean / "
           "unbiased variance")


def _dsbn_model() -> torch.nn.Module:
    """A small two-branch DSBN network (converted with eval_domain=0) whose branches hold different statistics."""
    g = torch.Generator().manual_seed(64)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(5),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
    convert_dsbn(model, 2, eval_domain=0)
    with torch.no_grad():
        for layer in dsbn_layers(model):
            for d, bn in enumerate(layer.bns):
                assert isinstance(bn, _BatchNorm)  # convert_dsbn's branches are BN layers
                mean, var = _branch_stats(bn)
                c = bn.num_features
                mean.copy_(torch.randn(c, generator=g) + 2.0 * d)
                var.copy_(torch.rand(c, generator=g) + 0.5 + d)
                bn.weight.add_(0.3 * d)
    return model


@checker
def check_target_features(fn: Callable[[torch.nn.Module, torch.Tensor], Any]) -> None:
    """Notebook 06: ``fn(model, images)`` returns target-branch features with running statistics.

    The model (converted with ``eval_domain=0``, so a plain ``model.eval()`` would use the
    *source* branch) must come back with its mode, every DSBN layer's ``domain`` and every
    running statistic exactly as they were.
    """
    images = torch.randn(6, 3, 7, 7, generator=torch.Generator().manual_seed(65)) * 1.5 + 0.5
    reference = _dsbn_model().eval()
    with torch.no_grad():
        with domain(reference, 1):
            want = reference(images)
        with domain(reference, 0):
            source_branch = reference(images)
        batch_stats = copy.deepcopy(reference).train()
        with domain(batch_stats, 1):
            batch_target = batch_stats(images)

    for start_training, preset in ((True, None), (False, 0)):
        model = _dsbn_model().train(start_training)
        layers = dsbn_layers(model)
        if preset is not None:
            layers[0].domain = preset            # someone chose the source branch for this layer earlier
        domains = [layer.domain for layer in layers]
        buffers = [b.clone() for b in model.buffers()]
        got = fn(model, images.clone())
        got = as_tensor(got, "target_features(model, images)")
        if tuple(got.shape) != tuple(want.shape):
            fail(f"the features have shape {tuple(got.shape)}, expected {tuple(want.shape)} (one row per image)")
        got = got.detach().float()
        changed = not all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
        if changed:
            fail("the model's running statistics changed: you ran it in train mode, so BN normalised with the "
                 "test batch's statistics and updated its buffers; call model.eval() first (and restore the mode)")
        if not torch.allclose(got, want, atol=1e-5):
            if torch.allclose(got, source_branch, atol=1e-5):
                fail("these are the source branch's features: this model was converted with eval_domain=0, so "
                     "model.eval() alone routes through branch 0; choose the target branch explicitly with "
                     "`with domain(model, 1):`")
            if torch.allclose(got, batch_target, atol=1e-5):
                fail("the target branch normalised with the batch's own statistics (train mode); the test asks "
                     "for its running statistics: eval mode")
            fail(f"the features are off by up to {(got - want).abs().max().item():.3g}: eval mode, every DSBN "
                 f"layer on branch 1")
        if model.training != start_training:
            fail(f"the model came in {'train' if start_training else 'eval'} mode and left in "
                 f"{'train' if model.training else 'eval'} mode: remember model.training and restore it "
                 f"(model.train(was_training))")
        now = [layer.domain for layer in layers]
        if now != domains:
            fail(f"the layers' domain settings were {domains} before the call and {now} after: restore them "
                 f"(the `with domain(model, 1):` context manager does)")
    passed("target test features: eval mode, branch 1 chosen explicitly, model left as found")


@checker
def check_merge_stats(fn: Callable[..., Any]) -> None:
    """Notebook 06: ``fn(mean_s, var_s, mean_t, var_t)`` returns the 50/50 mixture's per-channel ``(mean, var)``."""
    g = torch.Generator().manual_seed(66)
    f64 = torch.float64
    mean_s, mean_t = torch.randn(5, generator=g, dtype=f64), torch.randn(5, generator=g, dtype=f64) + 2
    var_s, var_t = torch.rand(5, generator=g, dtype=f64) + 0.2, torch.rand(5, generator=g, dtype=f64) * 3 + 0.5
    want_mean = (mean_s + mean_t) / 2
    want_var = (var_s + var_t) / 2 + ((mean_s - mean_t) / 2) ** 2
    result = fn(mean_s.clone(), var_s.clone(), mean_t.clone(), var_t.clone())
    if result is None:
        fail("the function returned None: return the tuple (mean, var)")
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        fail(f"return two things, (mean, var), each with one value per channel; got {type(result).__name__}")
    mean = as_tensor(result[0], "mean").to(torch.float64)
    var = as_tensor(result[1], "var").to(torch.float64)
    for name, t in (("mean", mean), ("var", var)):
        if tuple(t.shape) != (5,):
            fail(f"{name} should have one value per channel, shape (5,), got {tuple(t.shape)}: do not reduce over "
                 f"the channels")
    if not torch.allclose(mean, want_mean, atol=1e-8):
        if torch.allclose(mean, mean_s + mean_t, atol=1e-8):
            fail("the mixture's mean is the average of the two means (each domain is half of the data), not their sum")
        fail(f"the mean is off by up to {(mean - want_mean).abs().max().item():.3g}: (mean_s + mean_t) / 2")
    if torch.allclose(var, want_var, atol=1e-8):
        passed("mixture statistics: mean of the means; mean of the variances + variance of the means")
        return
    wrong = {
        "you averaged the two variances only: the mixture is also spread by the distance between the two means; "
        "add the variance of the means, ((mean_s - mean_t) / 2) ** 2":
            (var_s + var_t) / 2,
        "the spread term is the variance of the two means, ((mean_s - mean_t) / 2) ** 2 = (mean_s - mean_t) ** 2 / 4, "
        "not the squared difference itself":
            (var_s + var_t) / 2 + (mean_s - mean_t) ** 2,
        "you averaged standard deviations: average the variances (and add the variance of the means)":
            ((var_s.sqrt() + var_t.sqrt()) / 2) ** 2,
        "you averaged the standard deviations before adding the spread term: average the variances, then add "
        "((mean_s - mean_t) / 2) ** 2":
            ((var_s.sqrt() + var_t.sqrt()) / 2) ** 2 + ((mean_s - mean_t) / 2) ** 2,
        "the spread term is the variance of the two means, ((mean_s - mean_t) / 2) ** 2, not half the squared "
        "difference":
            (var_s + var_t) / 2 + (mean_s - mean_t) ** 2 / 2,
    }
    for message, value in wrong.items():
        if torch.allclose(var, value, atol=1e-8):
            fail(message)
    fail(f"the variance is off by up to {(var - want_var).abs().max().item():.3g}: (var_s + var_t) / 2 + "
         f"((mean_s - mean_t) / 2) ** 2")
