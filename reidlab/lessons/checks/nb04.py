"""Checkers of notebook 04 (``notebooks/04_track_running_stats.ipynb``): ``track_running_stats``.

Imported by the notebook as ``from reidlab.lessons.checks import nb04 as checks``.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn

from reidlab.lessons.checks import ExerciseError, apply_and_list_bns, as_tensor, checker, fail, passed, small_bn_model

__all__ = ["ExerciseError", "check_bn_forward", "check_make_untracked"]


def _bn_norm(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, bn: torch.nn.Module) -> torch.Tensor:
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + bn.eps)
    if bn.weight is not None:
        y = y * bn.weight.detach().view(shape) + bn.bias.detach().view(shape)
    return y


@checker
def check_bn_forward(fn: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]) -> None:
    """Notebook 04: ``fn(bn, x)`` must return what ``bn(x)`` returns, in all four train/eval x tracked states.

    The learner computes it from ``bn``'s buffers and parameters without calling the layer.
    """
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 4, 3, 3, generator=g) * 2 + 1
    dims = [0, 2, 3]
    for track in (True, False):
        for training in (True, False):
            bn = nn.BatchNorm2d(4, eps=0.1, track_running_stats=track)
            with torch.no_grad():
                bn.weight.copy_(torch.rand(4, generator=g) + 0.5)
                bn.bias.copy_(torch.randn(4, generator=g))
                if track:
                    bn.running_mean.copy_(torch.randn(4, generator=g))
                    bn.running_var.copy_(torch.rand(4, generator=g) + 0.5)
            bn.train(training)
            expected = copy.deepcopy(bn)(x).detach()
            state = f"{'train' if training else 'eval'} mode, track_running_stats={track}"
            called: list[bool] = []
            handle = bn.register_forward_hook(lambda *_: called.append(True))
            try:
                got = fn(bn, x.clone())
            except (TypeError, AttributeError) as err:
                if not track:
                    fail(
                        f"{state}: {type(err).__name__}: {err}. running_mean is None when a layer does not track "
                        "statistics: such a layer normalises with the batch's statistics in eval mode too"
                    )
                raise
            finally:
                handle.remove()
            if called:
                fail("you called the layer itself: compute the output from its buffers and parameters instead")
            got = as_tensor(got, f"bn_forward ({state})").detach()
            if got.shape != expected.shape:
                fail(f"{state}: output shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
            if torch.allclose(got, expected, atol=1e-4, rtol=1e-4):
                continue
            bmean, bvar = x.mean(dims), x.var(dims, unbiased=False)
            candidates = {
                "batch": _bn_norm(x, bmean, bvar, bn),
                "unbiased": _bn_norm(x, bmean, x.var(dims, unbiased=True), bn),
            }
            if track:
                candidates["running"] = _bn_norm(x, bn.running_mean, bn.running_var, bn)
            close = {k: torch.allclose(got, v, atol=1e-4, rtol=1e-4) for k, v in candidates.items()}
            if close.get("running") and training:
                fail(f"{state}: you normalised with running_mean/running_var; in train mode BN uses the batch's statistics")
            if close.get("batch") and track and not training:
                fail(
                    f"{state}: you normalised with the batch's statistics; in eval mode a layer that tracks "
                    "statistics uses running_mean/running_var"
                )
            if close.get("unbiased"):
                fail(f"{state}: normalise with the biased batch variance (unbiased=False); running_var stores the unbiased one")
            plain = (x - bmean.view(1, -1, 1, 1)) / torch.sqrt(bvar.view(1, -1, 1, 1) + bn.eps)
            if torch.allclose(got, plain, atol=1e-4, rtol=1e-4):
                fail(f"{state}: scale by bn.weight (gamma) and shift by bn.bias (beta) after normalising")
            fail(f"{state}: the output is off by up to {(got - expected).abs().max():.3g}; did you add bn.eps to the variance?")
    passed("bn_forward matches nn.BatchNorm2d in all four train/eval x track_running_stats states")


@checker
def check_make_untracked(fn: Callable[[torch.nn.Module], Any]) -> None:
    """Notebook 04: ``fn(model)`` must turn every BN layer of ``model`` into an untracked one, in place.

    Untracked means what ``nn.BatchNorm2d(..., track_running_stats=False)`` builds: the flag
    is False *and* the buffers are ``None``, so both modes use batch statistics and the
    ``state_dict`` has no running-stat keys. gamma/beta and other weights stay as they were.
    """
    model = small_bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    model, bns = apply_and_list_bns(fn, model)
    if len(bns) != 3:
        fail(f"the model should still have its 3 BN layers, found {len(bns)}: change them, do not remove them")
    for name, m in bns:
        if m.track_running_stats:
            fail(f"layer {name!r} still has track_running_stats=True (nested layers count too: use model.modules())")
    for name, m in bns:
        if m.running_mean is not None or m.running_var is not None:
            fail(
                f"layer {name!r}: you set track_running_stats=False but left running_mean/running_var in place; "
                "in eval mode PyTorch still normalises with them. Set them (and num_batches_tracked) to None"
            )
    extra = [k for k in model.state_dict() if "running" in k or "num_batches_tracked" in k]
    if extra:
        fail(f"the state_dict still holds {extra[:3]}: set num_batches_tracked to None as well")
    after = model.state_dict()
    for k, v in before.items():
        if k not in after or not torch.equal(after[k], v):
            fail(f"{k} changed or disappeared: keep the weights, gamma and beta as they were")
    x = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.eval()
        y_eval = model(x)
        model.train()
        y_train = model(x)
    if not torch.allclose(y_eval, y_train, atol=1e-5):
        fail("eval() and train() give different outputs: an untracked model normalises with batch statistics in both")
    passed("every BN layer is untracked: batch statistics in both modes, no running-stat keys")
