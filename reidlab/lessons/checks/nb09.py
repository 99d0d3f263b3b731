"""Checkers of notebook 09 (``notebooks/09_exemplar_memory.ipynb``): ECN's exemplar memory.

Imported by the notebook as ``from reidlab.lessons.checks import nb09 as checks``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

import reidlab.memory
from reidlab.lessons.checks import ExerciseError, as_number, as_tensor, checker, fail, forbid, passed, refuse_loops

__all__ = ["ExerciseError", "check_memory_update", "check_soft_target", "check_temperature_for"]


def _soft_target_reference(logits: torch.Tensor, indices: torch.Tensor, k: int) -> torch.Tensor:
    """The published ``smooth_hot``: 1/k on the top-k slots of each row, then 1 on the own slot."""
    top = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :k]
    target = torch.zeros_like(logits)
    target.scatter_(1, top, 1.0 / k)
    target.scatter_(1, indices.view(-1, 1), 1.0)
    return target


def _soft_target_cases() -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """Logits (no ties) whose own slot is the top-1, inside the top-k, and outside it."""
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(4, 10, generator=g, dtype=torch.float64) * 3
    indices = torch.tensor([2, 7, 0, 5])
    order = torch.sort(logits, dim=1, descending=True).indices
    # row 0: own slot is the largest; row 1: own slot 2nd; rows 2, 3: own slot at rank 6 and 9
    for row, rank in ((0, 0), (1, 1), (2, 5), (3, 8)):
        own, other = int(indices[row]), int(order[row, rank])
        logits[row, own], logits[row, other] = logits[row, other].clone(), logits[row, own].clone()
    return [(logits, indices, 3), (logits[:2], indices[:2], 1), (logits, indices, 6)]


@checker
def check_soft_target(fn: Callable[[torch.Tensor, torch.Tensor, int], Any]) -> None:
    """Notebook 09: ``fn(logits, indices, k)`` must return ECN's neighbourhood target (``smooth_hot``).

    Each row: ``1/k`` on the ``k`` slots with the largest logits, then ``1`` on the image's own
    slot (``indices``), overriding its ``1/k`` when it is among them; no renormalisation.
    """
    for logits, indices, k in _soft_target_cases():
        want = _soft_target_reference(logits, indices, k)
        given = logits.clone()
        with forbid((reidlab.memory, "smooth_targets"), why="build the target with topk and scatter_ (smooth_targets "
                    "is the library's answer to this exercise)"):
            result = fn(given, indices.clone(), k)
        got = as_tensor(result, f"soft_target(logits, indices, k={k})")
        if not torch.equal(given, logits):
            fail("your function changed the logits in place: work on a new tensor (e.g. torch.zeros_like)")
        if tuple(got.shape) != tuple(want.shape):
            fail(f"the target has shape {tuple(got.shape)}, expected {tuple(want.shape)}: one row per image, "
                 "one column per memory slot")
        got = got.detach().to(torch.float64)
        if torch.allclose(got, want, atol=1e-6):
            continue
        n = logits.shape[0]
        rows = torch.arange(n)
        own = torch.zeros_like(want)
        own[rows, indices] = 1.0
        top = torch.sort(logits, dim=1, descending=True).indices[:, :k]
        spread = torch.zeros_like(want).scatter_(1, top, 1.0 / k)
        masked = logits.clone()
        masked[rows, indices] = float("-inf")
        others = torch.zeros_like(want).scatter_(1, torch.sort(masked, dim=1, descending=True).indices[:, :k], 1.0 / k)
        bottom = torch.zeros_like(want).scatter_(1, torch.sort(logits, dim=1).indices[:, :k], 1.0 / k)
        wrong = [
            (want / want.sum(dim=1, keepdim=True),
             "you renormalised the row to sum 1; ECN's smooth_hot does not: a row sums to 1 + (k-1)/k when the own "
             "slot is among the top-k and to 2 when it is not"),
            (spread + own,
             "you added 1 to the own slot; the published code overwrites it (scatter_ of 1 after the 1/k), so the "
             "own slot holds exactly 1"),
            (torch.where(own > 0, own, others),
             "you kept the own slot out of the top-k; the published smooth_hot takes the top-k over all slots, so "
             "the own slot (usually the largest logit) uses up one of the k places"),
            (torch.where(own > 0, own, bottom), "you took the k smallest logits; sort in descending order"),
            (spread, "the own slot must get weight 1 (exemplar invariance), whatever its rank"),
            (torch.where(spread > 0, spread * k, own),
             "each of the k neighbours gets 1/k, not 1 (the reference's softmax of a row of ones)"),
            (torch.where(spread > 0, spread, own),
             "you wrote the 1/k after the 1, so an own slot inside the top-k ends up with 1/k; write the 1 last"),
        ]
        for candidate, message in wrong:
            if torch.allclose(got, candidate, atol=1e-6):
                fail(f"(k={k}) {message}")
        bad = int(((got - want).abs() > 1e-6).any(dim=1).nonzero()[0])
        fail(f"(k={k}) row {bad} differs: expected weights {[round(v, 4) for v in want[bad].tolist()]}, got "
             f"{[round(v, 4) for v in got[bad].tolist()]}")
    g = torch.Generator().manual_seed(91)
    refuse_loops(fn, (torch.randn(2, 6, generator=g, dtype=torch.float64), torch.tensor([1, 4]), 2),
                 (torch.randn(8, 24, generator=g, dtype=torch.float64), torch.arange(0, 24, 3), 8),
                 sizes=("2 rows and k=2", "8 rows and k=8"),
                 hint="torch.topk finds every row's k largest logits at once, and Tensor.scatter_ writes them")
    passed("ECN's soft target: 1/k on the top-k, 1 on the own slot, rows not renormalised")


def _update_reference(memory: torch.Tensor, indices: torch.Tensor, features: torch.Tensor, rate: float) -> torch.Tensor:
    memory = memory.clone()
    for x, y in zip(features, indices.tolist()):
        memory[y] = rate * memory[y] + (1.0 - rate) * x
        memory[y] /= memory[y].norm()
    return memory


#: The library's memory updates, which answer exercise 9.2 in one call.
_MEMORY_UPDATES = ((reidlab.memory, "memory_update_"), (reidlab.memory, "memory_update_loop_"))


@checker
def check_memory_update(fn: Callable[..., Any], *, repeated_indices: bool = False) -> None:
    """Notebook 09: ``fn(memory, indices, features, alpha, epoch)`` must return the updated memory.

    ``M[i] <- a * M[i] + (1 - a) * f`` with ``a = alpha * epoch``, then ``M[i]`` L2-normalised,
    for each (index, feature) of the batch in order (the published ``ExemplarMemory.backward``).
    The visible check already has an index that occurs twice in a batch; ``repeated_indices=True``
    (the notebook's hidden test) adds a batch in which one index occurs three times.
    """
    g = torch.Generator().manual_seed(90)
    memory = torch.nn.functional.normalize(torch.randn(8, 5, generator=g, dtype=torch.float64), dim=1)
    features = 2.0 * torch.randn(4, 5, generator=g, dtype=torch.float64)  # not unit length, on purpose
    cases = [(torch.tensor([6, 1, 3, 4]), 0.01, 30), (torch.tensor([0, 5, 2, 7]), 0.01, 0),
             (torch.tensor([4, 1, 4, 0]), 0.01, 10)]  # index 4 twice: a one-shot update fails the visible check too
    if repeated_indices:
        cases.append((torch.tensor([2, 6, 2, 2]), 0.02, 20))
    for indices, alpha, epoch in cases:
        rate = alpha * epoch
        want = _update_reference(memory, indices, features, rate)
        with forbid(*_MEMORY_UPDATES, why="write the update with tensor operations over the batch (memory_update_ is the "
                                          "library's answer to this exercise)"):
            got = fn(memory.clone(), indices.clone(), features.clone(), alpha, epoch)
        if got is None:
            fail("your function returned None: return the updated memory")
        got = as_tensor(got, "memory").detach().to(torch.float64)
        what = f"(alpha={alpha}, epoch={epoch}, indices {indices.tolist()})"
        if tuple(got.shape) != tuple(memory.shape):
            fail(f"{what} the memory has shape {tuple(got.shape)}, expected {tuple(memory.shape)}")
        if torch.allclose(got, want, atol=1e-6):
            continue
        untouched = torch.ones(memory.shape[0], dtype=torch.bool)
        untouched[indices] = False
        if not torch.allclose(got[untouched], memory[untouched], atol=1e-9):
            fail(f"{what} you changed rows that are not in the batch; only the rows of `indices` are updated")
        if indices.unique().numel() < indices.numel():
            naive = memory.clone()
            mixed = rate * naive[indices] + (1 - rate) * features
            naive[indices] = mixed / mixed.norm(dim=1, keepdim=True)
            distinct = torch.tensor([(indices == i).sum() == 1 for i in indices.tolist()])
            if torch.allclose(got[indices[distinct]], want[indices[distinct]], atol=1e-6) or torch.allclose(got, naive, atol=1e-6):
                fail(f"{what} an index that occurs more than once in a batch must be updated once per occurrence, in "
                     "batch order, each update starting from the row the previous one wrote (the published loop); a "
                     "one-shot `memory[indices] = ...` keeps only one of them")
        wrong = [
            (_update_reference(memory, indices, features, alpha),
             "you used alpha instead of alpha*epoch as the weight of the old row"),
            (_update_reference(memory, indices, features, 1.0 - rate),
             "the weights are swapped: the old row gets alpha*epoch and the new feature 1 - alpha*epoch"),
        ]
        for candidate, message in wrong:
            if torch.allclose(got, candidate, atol=1e-6):
                fail(f"{what} {message}")
        norms = got[indices].norm(dim=1)
        if not torch.allclose(norms, torch.ones_like(norms), atol=1e-6):
            fail(f"{what} you forgot to L2-normalise the updated row (row norms {[round(v, 3) for v in norms.tolist()]}); "
                 "normalise after mixing: even a mix of two unit vectors is shorter than 1")
        fail(f"{what} the updated rows are off by up to {(got - want).abs().max().item():.3g}: "
             "M[i] <- a*M[i] + (1-a)*f with a = alpha*epoch, then M[i] /= ||M[i]||")
    more = 2.0 * torch.randn(8, 5, generator=g, dtype=torch.float64)
    refuse_loops(fn, (memory.clone(), torch.tensor([5, 2]), more[:2].clone(), 0.01, 10),
                 (memory.clone(), torch.tensor([3, 0, 6, 1, 7, 2, 5, 4]), more.clone(), 0.01, 10),
                 sizes=("a batch of 2", "a batch of 8 (no index twice)"), rule="no loop over the batch",
                 hint="update all the distinct indices of a batch in one tensor operation; only the later "
                      "occurrences of an index need another round (torch.unique, scatter_reduce)")
    passed("memory update: rate alpha*epoch (0 at epoch 0: rows replaced), rows L2-normalised"
           + (", repeated indices applied in order" if repeated_indices else ""))


@checker
def check_temperature_for(fn: Callable[[float, float], Any]) -> None:
    """Notebook 09: ``fn(gap, ratio)`` must return the temperature ``beta = gap / ln(ratio)``.

    In ``softmax(f @ M.T / beta)`` two slots whose cosines with ``f`` differ by ``gap`` have
    probabilities in the ratio ``exp(gap / beta)``, whatever the other slots; the temperature at
    which that ratio is ``ratio`` is ``gap / ln(ratio)``.
    """
    for gap, ratio in ((0.1, math.exp(2.0)), (0.3, 100.0), (0.05, 10.0), (0.5, 2.0)):
        got = as_number(fn(gap, ratio), float, if_none="your function returned None: return the temperature beta",
                         if_wrong="return one number, got {type}")
        want = gap / math.log(ratio)
        if math.isclose(got, want, rel_tol=1e-6):
            continue
        wrong = [
            (gap * math.log(ratio), "you multiplied by ln(ratio): the ratio is exp(gap / beta), so beta = gap / ln(ratio)"),
            (math.log(ratio) / gap, "that is 1 / beta: the ratio is exp(gap / beta), so beta = gap / ln(ratio)"),
            (gap / ratio, "you divided by the ratio itself; the probabilities differ by exp(gap / beta), so take its log"),
            (gap / math.log10(ratio), "use the natural logarithm (math.log), the inverse of exp in the softmax"),
            (gap / math.log2(ratio), "use the natural logarithm (math.log), the inverse of exp in the softmax"),
        ]
        for candidate, message in wrong:
            if math.isclose(got, candidate, rel_tol=1e-6):
                fail(f"(gap={gap}, ratio={ratio:.4g}) {message}")
        fail(f"(gap={gap}, ratio={ratio:.4g}) expected beta = {want:.4g}, got {got:.4g}: p_own / p_j = "
             "exp((cos_own - cos_j) / beta)")
    passed("beta = gap / ln(ratio): ECN's 0.05 makes a cosine gap of 0.1 worth a factor e^2 = 7.4")
