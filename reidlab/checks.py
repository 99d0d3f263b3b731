"""Exercise checkers: feedback that says *what* is wrong, not a bare ``assert``.

Each exercise's graded cell calls one ``check_*`` function with the learner's answer. A
wrong answer raises :class:`ExerciseError` with a sentence aimed at the usual mistake
(e.g. "running_var holds the unbiased estimate; you stored the biased one"); a right one
prints a short confirmation. nbgrader counts a graded cell as failed when it raises, so
the same checkers serve self-study and classroom grading.

How exercises work is shown in notebook 00; a checker lives here (not in the notebook) so
the student version of a notebook can call it without seeing the solution.
"""
from __future__ import annotations

from typing import Any, Callable

import torch


class ExerciseError(AssertionError):
    """A wrong answer, with an explanation a learner can act on."""


def fail(message: str) -> None:
    raise ExerciseError(message)


def passed(what: str) -> None:
    print(f"correct: {what}")


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if x is None:
        fail(f"{name} is None: did the function forget to `return` its result?")
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception:  # noqa: BLE001 - any conversion failure is the learner's type error
            fail(f"{name} should be a tensor, got {type(x).__name__}")
    return x


def expect_close(
    actual: Any,
    expected: torch.Tensor,
    *,
    name: str,
    hint: str = "",
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> None:
    """Fail with a message naming ``name`` unless ``actual`` matches ``expected`` (shape, then values)."""
    actual = _as_tensor(actual, name)
    if tuple(actual.shape) != tuple(expected.shape):
        fail(f"{name} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}. {hint}".strip())
    actual = actual.detach().to(expected.dtype)
    if not torch.allclose(actual, expected, atol=atol, rtol=rtol):
        diff = (actual - expected).abs().max().item()
        fail(f"{name} is off by up to {diff:.3g}. {hint}".strip())


# --- notebook 00 -------------------------------------------------------------------------


def _softmax_t(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(scores / temperature, dim=-1)


def check_softmax_temperature(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """Notebook 00: ``fn(scores, temperature)`` must return softmax(scores / temperature) over the last dim."""
    scores = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 0.0, 3.0, 1.0]])
    out = fn(scores.clone(), 1.0)
    out = _as_tensor(out, "softmax(scores, 1.0)")
    if out.shape == scores.shape and torch.allclose(out.sum(-1), torch.ones(2), atol=1e-4):
        pass
    elif out.shape == scores.shape and torch.allclose(out.sum(0), torch.ones(4), atol=1e-4):
        fail("each column sums to 1: normalise over the last dimension (dim=-1), one distribution per row")
    elif out.shape == scores.shape:
        fail("the rows do not sum to 1: divide exp(scores / T) by its sum over the last dimension")
    expect_close(out, _softmax_t(scores, 1.0), name="softmax(scores, 1.0)")
    for t in (0.05, 5.0):
        got = _as_tensor(fn(scores.clone(), t), f"softmax(scores, {t})")
        if torch.allclose(got.to(scores.dtype), _softmax_t(scores, 1 / t), atol=1e-4):
            fail(f"with T={t} you computed softmax(scores * T): the temperature divides the scores")
        if torch.isnan(got).any():
            fail(f"NaN at T={t}: subtract the row maximum before exp() to avoid overflow")
        expect_close(got, _softmax_t(scores, t), name=f"softmax(scores, {t})", hint="divide the scores by T")
    big = torch.tensor([[1000.0, 999.0]])
    got = _as_tensor(fn(big, 1.0), "softmax([[1000, 999]], 1.0)")
    if not torch.isfinite(got).all():
        fail("exp(1000) overflows to inf: subtract each row's maximum before exp() (the result is unchanged)")
    passed("softmax with temperature, stable for large scores")
