"""Checkers of notebook 04 (``notebooks/04_track_running_stats.ipynb``): ``track_running_stats``.

Imported by the notebook as ``from reidlab.lessons.checks import nb04 as checks``.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn

from reidlab.lessons.checks import ExerciseError, as_tensor, checker, fail, forbid, passed, small_bn_model

__all__ = ["ExerciseError", "check_bn_forward", "check_track_again"]


def _bn_norm(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + bn.eps)
    if bn.weight is not None:
        y = y * bn.weight.detach().view(shape) + bn.bias.detach().view(shape)
    return y


#: The states exercise 4.1 tries, as (flag, buffers present): built tracked, built untracked, and a tracked
#: layer whose flag was set to False afterwards (notebook 04, section 1): its buffers are still tensors.
_FORWARD_STATES = ((True, True), (False, False), (False, True))

#: Calling a BN layer, which exercise 4.1 rules out: ``bn(x)``, ``bn.forward(x)``, a copy of ``bn`` or a new BN layer.
_LAYER = (nn.modules.batchnorm._BatchNorm, "forward", "calling the layer (bn(x), bn.forward(x), a copy or a new BN layer)")

_FLIPPED = ("PyTorch decides by whether running_mean/running_var exist, not by the flag (notebook 04, the "
            "flag-flipped layer): this layer's track_running_stats was set to False after it was built, its buffers "
            "are still tensors, so in eval mode it normalises with them; the flag only stops the updates in train mode")


def _forward_layer(track: bool, buffers: bool, training: bool, g: torch.Generator) -> nn.BatchNorm2d:
    """A BatchNorm2d (eps 0.1) with random gamma/beta and, if it has buffers, random running statistics."""
    bn = nn.BatchNorm2d(4, eps=0.1, track_running_stats=buffers)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(4, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(4, generator=g))
        if buffers:
            assert bn.running_mean is not None and bn.running_var is not None  # built with track_running_stats=True
            bn.running_mean.copy_(torch.randn(4, generator=g))
            bn.running_var.copy_(torch.rand(4, generator=g) + 0.5)
    bn.track_running_stats = track
    return bn.train(training)


def _forward_mistake(got: torch.Tensor, expected: torch.Tensor, x: torch.Tensor, bn: nn.BatchNorm2d, state: str) -> str:
    """The sentence naming why ``got`` is not ``bn(x)``."""
    dims = [0, 2, 3]
    bmean, bvar = x.mean(dims), x.var(dims, unbiased=False)
    candidates = {"batch": _bn_norm(x, bmean, bvar, bn), "unbiased": _bn_norm(x, bmean, x.var(dims, unbiased=True), bn)}
    if bn.running_mean is not None and bn.running_var is not None:
        candidates["running"] = _bn_norm(x, bn.running_mean, bn.running_var, bn)
    close = {k: torch.allclose(got, v, atol=1e-4, rtol=1e-4) for k, v in candidates.items()}
    if close.get("running") and bn.training:
        return f"{state}: you normalised with running_mean/running_var; in train mode BN uses the batch's statistics"
    if close.get("batch") and not bn.training and not bn.track_running_stats:
        return f"{state}: you normalised with the batch's statistics. {_FLIPPED}"
    if close.get("batch") and not bn.training:
        return (f"{state}: you normalised with the batch's statistics; in eval mode a layer that tracks "
                "statistics uses running_mean/running_var")
    if close.get("unbiased"):
        return f"{state}: normalise with the biased batch variance (unbiased=False); running_var stores the unbiased one"
    plain = (x - bmean.view(1, -1, 1, 1)) / torch.sqrt(bvar.view(1, -1, 1, 1) + bn.eps)
    if torch.allclose(got, plain, atol=1e-4, rtol=1e-4):
        return f"{state}: scale by bn.weight (gamma) and shift by bn.bias (beta) after normalising"
    return f"{state}: the output is off by up to {(got - expected).abs().max():.3g}; did you add bn.eps to the variance?"


@checker
def check_bn_forward(fn: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]) -> None:
    """Notebook 04: ``fn(bn, x)`` must return what ``bn(x)`` returns, in all four train/eval x tracked states.

    The learner computes it from ``bn``'s buffers and parameters without calling the layer. Also
    tried on a tracked layer whose flag was set to False afterwards, buffers kept (section 1): in
    eval mode it normalises with its running statistics, since PyTorch decides by the buffers.
    """
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 4, 3, 3, generator=g) * 2 + 1
    for track, buffers in _FORWARD_STATES:
        for training in (True, False):
            bn = _forward_layer(track, buffers, training, g)
            expected = copy.deepcopy(bn)(x).detach()
            state = f"{'train' if training else 'eval'} mode, track_running_stats={track}"
            if buffers and not track:
                state += " (set after construction: the buffers are still there)"
            try:
                with forbid(_LAYER, why="compute the output from its buffers and parameters"):
                    got = fn(bn, x.clone())
            except (TypeError, AttributeError) as err:
                if not buffers:
                    fail(
                        f"{state}: {type(err).__name__}: {err}. running_mean is None when a layer does not track "
                        "statistics: such a layer normalises with the batch's statistics in eval mode too"
                    )
                raise
            got = as_tensor(got, f"bn_forward ({state})").detach()
            if got.shape != expected.shape:
                fail(f"{state}: output shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
            if not torch.allclose(got, expected, atol=1e-4, rtol=1e-4):
                fail(_forward_mistake(got, expected, x, bn, state))
    passed("bn_forward matches nn.BatchNorm2d in all four train/eval x track_running_stats states")


def _untracked_copy(seed: int) -> torch.nn.Module:
    """``small_bn_model(seed)`` as if built with ``track_running_stats=False``: flag False, buffers None."""
    model = small_bn_model(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    return model


def _tracking_mistake(bns: list[tuple[str, nn.modules.batchnorm._BatchNorm]], checkpoint: dict[str, torch.Tensor]) -> str | None:
    """The sentence naming why the BN layers do not hold the checkpoint's statistics, or None."""
    for name, m in bns:
        if m.running_mean is None or m.running_var is None:
            if m.track_running_stats:
                return (f"layer {name!r}: track_running_stats is True but running_mean is None, so PyTorch still "
                        "normalises with batch statistics in eval mode (notebook 04, section 1): the buffers must "
                        "exist before the checkpoint can fill them")
            return (f"layer {name!r} still has no running statistics: load_state_dict(strict=False) into an untracked "
                    "layer drops them without a word (section 4); give each BN layer its buffers and the flag first")
        if not m.track_running_stats:
            return f"layer {name!r}: the buffers are there but track_running_stats is still False: set it to True"
        if m.num_batches_tracked is None:
            return f"layer {name!r}: num_batches_tracked is None; create it too (a 0-dim long tensor) and load it"
    for name, m in bns:
        assert m.running_mean is not None  # the loop above returned for a layer without one
        key = f"{name}.running_mean"
        if not torch.equal(m.running_mean, checkpoint[key]):
            if torch.equal(m.running_mean, torch.zeros_like(m.running_mean)):
                return (f"layer {name!r}: running_mean is all zeros, a fresh buffer: load the checkpoint's statistics "
                        "(load_state_dict) after creating the buffers")
            return f"layer {name!r}: running_mean differs from the checkpoint's: load it"
    return None


@checker
def check_track_again(fn: Callable[[torch.nn.Module, dict], Any]) -> None:
    """Notebook 04: ``fn(model, state_dict)`` gives an untracked model the running statistics of a tracked checkpoint.

    ``model`` was built with ``track_running_stats=False`` (nested BN layers, a ``BatchNorm1d``
    among them); ``state_dict`` comes from the same architecture built tracked. Afterwards
    every BN layer must track statistics again, hold the checkpoint's buffers (its
    ``state_dict`` equal to the checkpoint), and the model in eval mode must give the tracked
    model's outputs, whatever the batch.
    """
    tracked = small_bn_model(seed=0).eval()
    checkpoint = {k: v.clone() for k, v in tracked.state_dict().items()}
    model = _untracked_copy(seed=5)  # other weights: only loading the checkpoint makes it right
    try:
        out = fn(model, {k: v.clone() for k, v in checkpoint.items()})
    except NotImplementedError:
        raise  # the student stub (a RuntimeError too), which @checker explains
    except RuntimeError as err:
        if "state_dict" in str(err):
            fail(f"load_state_dict raised: {str(err).splitlines()[0]}. With strict=True every key must have a place: "
                 "give each BN layer running_mean, running_var AND num_batches_tracked before loading")
        raise
    if isinstance(out, torch.nn.Module):
        model = out
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if len(bns) != 3:
        fail(f"the model should have its 3 BN layers, found {len(bns)}")
    mistake = _tracking_mistake(bns, checkpoint)
    if mistake:
        fail(mistake)
    state = model.state_dict()
    if state.keys() != checkpoint.keys():
        fail(f"the state_dict keys differ from the checkpoint's: missing {sorted(checkpoint.keys() - state.keys())[:3]}, "
             f"unexpected {sorted(state.keys() - checkpoint.keys())[:3]}")
    changed = [k for k in checkpoint if not torch.equal(state[k], checkpoint[k])]
    if changed:
        fail(f"{changed[:3]} differ from the checkpoint: load all of it (weights, gamma/beta and buffers)")
    g = torch.Generator().manual_seed(6)
    x = torch.randn(8, 3, 5, 5, generator=g)
    with torch.no_grad():
        model.eval()
        alone, in_batch = model(x[:2]), model(x)[:2]
        expected = tracked(x[:2])
    if not torch.allclose(alone, in_batch, atol=1e-5):
        fail("in eval mode the outputs still depend on the batch: the layers do not normalise with running statistics")
    if not torch.allclose(alone, expected, atol=1e-5):
        fail(f"in eval mode the output differs from the tracked model's by up to {(alone - expected).abs().max():.3g}")
    model.train()
    with torch.no_grad():
        model(x)
    first_name, first = bns[0]
    assert first.num_batches_tracked is not None  # _tracking_mistake found no layer without it
    if int(first.num_batches_tracked) != int(checkpoint[f"{first_name}.num_batches_tracked"]) + 1:
        fail("a training batch did not update the statistics: the layers should track again (train mode updates them)")
    passed("every BN layer tracks again, with the checkpoint's statistics: eval outputs equal the tracked model's "
           "and no longer depend on the batch")
