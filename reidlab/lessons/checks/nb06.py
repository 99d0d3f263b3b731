"""Checkers of notebook 06 (``notebooks/06_dsbn.ipynb``): domain-specific BN.

The split-batch forward, routing target test data through the target branch with its running
statistics, and the statistics a single BN learns from mixed batches. Imported by the notebook
as ``from reidlab.lessons.checks import nb06 as checks``.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch

from reidlab.dsbn import convert_dsbn, domain, dsbn_layers
from reidlab.lessons.checks import ExerciseError, as_tensor, checker, fail, passed

__all__ = ["ExerciseError", "check_merge_stats", "check_split_dsbn_forward", "check_target_features"]


def _bn_pair(bn_class: type, c: int, seed: int) -> list[torch.nn.Module]:
    """Two BN layers (source, target) with distinct, non-default gamma/beta and running statistics."""
    g = torch.Generator().manual_seed(seed)
    pair = []
    for shift in (0.0, 2.0):
        bn = bn_class(c)
        with torch.no_grad():
            bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(c, generator=g))
            bn.running_mean.copy_(torch.randn(c, generator=g) + shift)
            bn.running_var.copy_(torch.rand(c, generator=g) + 0.5 + shift)
        pair.append(bn)
    return pair


def _buffers(bns: list[torch.nn.Module]) -> list[torch.Tensor]:
    return [b.detach().clone() for bn in bns for b in bn.buffers()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.allclose(x.double(), y.double(), atol=1e-6) for x, y in zip(a, b))


def _call_split(fn: Callable[..., Any], x: torch.Tensor, pair: list[torch.nn.Module], what: str) -> torch.Tensor:
    out = fn(x.clone(), pair[0], pair[1])
    out = as_tensor(out, what)
    if tuple(out.shape) != tuple(x.shape):
        fail(f"{what} has shape {tuple(out.shape)}, expected {tuple(x.shape)}: the output has one row per input "
             f"sample, the two halves concatenated back along dim 0")
    return out.detach()


#: The usual ways of getting the training-mode split wrong, and what to say about each.
_SPLIT_MISTAKES = {
    "swapped": "the first half of the batch is the source half: it goes through bn_source, the second half "
               "through bn_target (you swapped them)",
    "reordered": "concatenate the outputs in the input order (source half first), or every sample ends up in "
                 "another sample's row",
    "all_target": "in training the batch is split: only the second half goes through bn_target; you sent the "
                  "whole batch through it",
    "all_source": "in training the batch is split: only the first half goes through bn_source; you sent the "
                  "whole batch through it",
    "running": "in training each half is normalised with its own batch statistics; you used the stored running "
               "statistics (is a branch in eval mode?)",
}


def _split_variant(x: torch.Tensor, pair: list[torch.nn.Module], how: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The output of one way of writing the training-mode forward (``"right"`` or a key of
    :data:`_SPLIT_MISTAKES`) on copies of ``pair``, and the copies' buffers afterwards."""
    half = x.shape[0] // 2
    s, t = copy.deepcopy(pair)
    with torch.no_grad():
        if how == "right":
            y = torch.cat([s(x[:half]), t(x[half:])])
        elif how == "swapped":
            y = torch.cat([t(x[:half]), s(x[half:])])
        elif how == "reordered":
            y = torch.cat([t(x[half:]), s(x[:half])])
        elif how == "all_target":
            y = t(x)
        elif how == "all_source":
            y = s(x)
        else:  # "running": the halves normalised with the stored statistics (eval behaviour)
            y = torch.cat([s.eval()(x[:half]), t.eval()(x[half:])])
    return y, _buffers([s, t])


def _check_split_training(fn: Callable[..., Any], x: torch.Tensor, pair: list[torch.nn.Module]) -> None:
    """Training mode: each half through its own branch, both branches' running statistics updated."""
    want, want_state = _split_variant(x, pair, "right")
    given = copy.deepcopy(pair)
    got = _call_split(fn, x, given, f"split_dsbn_forward(x of shape {tuple(x.shape)}) in training")
    if not torch.allclose(got, want, atol=1e-5):
        for how, message in _SPLIT_MISTAKES.items():
            if torch.allclose(got, _split_variant(x, pair, how)[0], atol=1e-5):
                fail(message)
        fail(f"the training output is off by up to {(got - want).abs().max().item():.3g}: bn_source(first half) "
             f"and bn_target(second half), concatenated with torch.cat along dim 0")
    if not _same(_buffers(given), want_state):
        fail("the output is right but the branches' running statistics did not update as BN's do: call the "
             "modules bn_source(...) and bn_target(...) themselves, once each per step")


def _check_split_eval(fn: Callable[..., Any], xe: torch.Tensor, pair: list[torch.nn.Module]) -> None:
    """Eval mode: every sample through the target branch, odd batches included."""
    n = xe.shape[0]
    s, t = (bn.eval() for bn in copy.deepcopy(pair))
    with torch.no_grad():
        want = t(xe)
        split = torch.cat([s(xe[: n // 2]), t(xe[n // 2:])])
        source = s(xe)
    given = [bn.eval() for bn in copy.deepcopy(pair)]
    try:
        got = _call_split(fn, xe, given, f"split_dsbn_forward in eval mode (batch of {n})")
    except ValueError:
        fail(f"in eval mode a batch of {n} raised ValueError: eval does not split, every sample goes through "
             f"bn_target, so odd batches are fine")
    if torch.allclose(got, want, atol=1e-5):
        return
    if torch.allclose(got, split, atol=1e-5):
        fail("in eval mode do not split the batch: every sample goes through bn_target (check bn_source.training)")
    if torch.allclose(got, source, atol=1e-5):
        fail("in eval mode the samples go through bn_target, not bn_source")
    fail(f"the eval-mode output is off by up to {(got - want).abs().max().item():.3g}: return bn_target(x) with "
         f"both modules in eval mode")


def _check_split_odd_batch(fn: Callable[..., Any], odd: torch.Tensor, pair: list[torch.nn.Module]) -> None:
    """Training mode, a batch that cannot be halved: a ValueError, not an assert or a silent uneven split."""
    try:
        fn(odd, pair[0], pair[1])
    except ValueError:
        return
    except AssertionError:
        fail("an odd batch raised AssertionError: raise ValueError instead (`assert` is removed under python -O, "
             "and then the batch would be split unevenly without a word)")
    except Exception as e:  # noqa: BLE001 - any other error is the wrong kind
        fail(f"an odd batch raised {type(e).__name__} ({e}); check n % 2 yourself and raise a ValueError that "
             f"says the batch cannot be split into two halves")
    fail(f"an odd batch of {odd.shape[0]} in training went through without an error; it cannot be cut into a "
         f"source half and a target half of equal size: raise ValueError")


@checker
def check_split_dsbn_forward(fn: Callable[[torch.Tensor, torch.nn.Module, torch.nn.Module], Any]) -> None:
    """Notebook 06: ``fn(x, bn_source, bn_target)`` is the split-batch DSBN forward.

    Training mode (``bn_source.training``): first half through ``bn_source``, second half through
    ``bn_target``, concatenated in the input order, both modules' running statistics updated; an
    odd batch raises ``ValueError``. Eval mode: every sample through ``bn_target``. Tried on
    ``BatchNorm2d`` and ``BatchNorm1d`` branches.
    """
    g = torch.Generator().manual_seed(61)
    for bn_class, shape in ((torch.nn.BatchNorm2d, (6, 3, 4, 4)), (torch.nn.BatchNorm1d, (8, 3))):
        half = shape[0] // 2
        x = torch.cat([torch.randn(half, *shape[1:], generator=g),
                       3.0 * torch.randn(half, *shape[1:], generator=g) + 5.0])   # source, then target
        pair = [bn.train() for bn in _bn_pair(bn_class, shape[1], 62)]
        _check_split_training(fn, x, pair)
        for n in (5, 4):
            _check_split_eval(fn, torch.randn(n, *shape[1:], generator=g) + 1.0, pair)
    pair = [bn.train() for bn in _bn_pair(torch.nn.BatchNorm1d, 3, 63)]
    _check_split_odd_batch(fn, torch.randn(7, 3, generator=g), pair)
    passed("split-batch DSBN: source half -> bn_source, target half -> bn_target, eval -> bn_target, "
           "odd batches rejected")


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
                c = bn.num_features
                bn.running_mean.copy_(torch.randn(c, generator=g) + 2.0 * d)
                bn.running_var.copy_(torch.rand(c, generator=g) + 0.5 + d)
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
