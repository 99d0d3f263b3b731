"""Checker of notebook 00 (``notebooks/00_overview.ipynb``): its example exercise, a softmax with temperature.

Imported by the notebook as ``from reidlab.lessons.checks import nb00 as checks``.
"""
from __future__ import annotations

from typing import Callable

import torch

from reidlab.lessons.checks import ExerciseError, as_tensor, checker, expect_close, fail, forbid, passed

__all__ = ["ExerciseError", "check_softmax_temperature"]


#: What exercise 0.1 rules out ("by hand with torch.exp, not torch.softmax"), however it is reached.
_SOFTMAXES = tuple((owner, name) for owner in (torch, torch.Tensor, torch.nn.functional, torch.special)
                   for name in ("softmax", "log_softmax"))


def _softmax_t(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(scores / temperature, dim=-1)


def _call(fn: Callable[[torch.Tensor, float], torch.Tensor], scores: torch.Tensor, temperature: float) -> object:
    """The learner's softmax, with the library's softmax refused while it runs."""
    with forbid(*_SOFTMAXES, why="compute exp(scores / T - row max) and divide by its row sum"):
        return fn(scores, temperature)


@checker
def check_softmax_temperature(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """Notebook 00: ``fn(scores, temperature)`` must return softmax(scores / temperature) over the last dim."""
    scores = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 0.0, 3.0, 1.0]])
    out = _call(fn, scores.clone(), 1.0)
    out = as_tensor(out, "softmax(scores, 1.0)")
    if out.shape == scores.shape and torch.allclose(out.sum(-1), torch.ones(2), atol=1e-4):
        pass
    elif out.shape == scores.shape and torch.allclose(out.sum(0), torch.ones(4), atol=1e-4):
        fail("each column sums to 1: normalise over the last dimension (dim=-1), one distribution per row")
    elif out.shape == scores.shape:
        fail("the rows do not sum to 1: divide exp(scores / T) by its sum over the last dimension")
    expect_close(out, _softmax_t(scores, 1.0), name="softmax(scores, 1.0)")
    for t in (0.05, 5.0):
        got = as_tensor(_call(fn, scores.clone(), t), f"softmax(scores, {t})")
        if torch.allclose(got.to(scores.dtype), _softmax_t(scores, 1 / t), atol=1e-4):
            fail(f"with T={t} you computed softmax(scores * T): the temperature divides the scores")
        if torch.isnan(got).any():
            fail(f"NaN at T={t}: subtract the row maximum before exp() to avoid overflow")
        expect_close(got, _softmax_t(scores, t), name=f"softmax(scores, {t})", hint="divide the scores by T")
    big = torch.tensor([[1000.0, 999.0], [-1000.0, 0.0]])
    got = as_tensor(_call(fn, big, 1.0), "softmax([[1000, 999], [-1000, 0]], 1.0)")
    if not torch.isfinite(got[:1]).all():
        fail("exp(1000) overflows to inf: subtract each row's maximum before exp() (the result is unchanged)")
    if not torch.isfinite(got).all():
        fail("the row [-1000, 0] gives NaN: subtract each row's own maximum (dim=-1, keepdim=True), "
             "not one maximum for the whole tensor, nor the mean")
    passed("softmax with temperature, stable for large scores")
