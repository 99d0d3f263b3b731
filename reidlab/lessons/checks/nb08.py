"""Checkers of notebook 08 (``notebooks/08_reid_primer.ipynb``): the re-ID evaluation protocol.

Imported by the notebook as ``from reidlab.lessons.checks import nb08 as checks``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from reidlab.lessons.checks import ExerciseError, as_number, checker, fail, passed, refuse_loops

__all__ = ["ExerciseError", "check_average_precision", "check_inp", "check_trapezoid_ap"]


def _call_ap(fn: Callable[[Any], Any], matches: list[bool]) -> float:
    return as_number(
        fn(np.array(matches, dtype=bool)), float,
        if_none="your function returned None: did it forget to `return` the AP?",
        if_wrong="return one number (the AP of the list), got {type}", finite=False,  # inf has a message of its own
    )


def _refuse_loops(fn: Callable[[Any], Any], hint: str) -> None:
    """The exercises of notebook 08 ask for no Python loop: the answer must not run a line once per item."""
    small = np.array([False, True, False, True])
    refuse_loops(fn, (small,), (np.tile(small, 4),), sizes=("a list of 4", "a list of 16"), hint=hint)


def _ap_reference(matches: list[bool]) -> float:
    ranks = [r for r, m in enumerate(matches, start=1) if m]
    return sum(j / r for j, r in enumerate(ranks, start=1)) / len(ranks)


@checker
def check_average_precision(fn: Callable[[Any], Any]) -> None:
    """Notebook 08: ``fn(matches)`` must return the non-interpolated AP of a ranked list.

    ``matches`` is a boolean numpy array over the ranked (already filtered) gallery: True
    where the item is the query's person. AP is the mean, over the true matches, of the
    precision at the rank of each match (torchreid's ``eval_market1501``).
    """
    cases = [
        [True, False, True, False, False, True],
        [False, True, True, False, True, False, False, False],
        [True, True, False, False],
        [False, False, False, True],
    ]
    for matches in cases:
        want = _ap_reference(matches)
        got = _call_ap(fn, matches)
        if math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9):
            continue
        n = len(matches)
        hits = [r for r, m in enumerate(matches, start=1) if m]
        every_rank = sum(sum(matches[:r]) / r for r in range(1, n + 1)) / n
        if math.isclose(got, every_rank, rel_tol=1e-6):
            fail("you averaged the precision at every rank; average it only at the ranks of the true matches")
        if not math.isfinite(got) or got > 1 + 1e-9:
            fail(f"AP = {got} for {matches}: ranks start at 1 (the first item has rank 1, not 0)")
        zero_based_j = sum((j - 1) / r for j, r in enumerate(hits, start=1)) / len(hits)
        if math.isclose(got, zero_based_j, rel_tol=1e-6, abs_tol=1e-9):
            fail("at the j-th true match the list holds j matches, counting that one (j starts at 1)")
        interp = sum(max(sum(matches[:r2]) / r2 for r2 in hits if r2 >= r) for r in hits) / len(hits)
        if math.isclose(got, interp, rel_tol=1e-6):
            fail("that is interpolated AP (max precision at later ranks); re-ID uses the plain precision at each match")
        if math.isclose(got, sum(j / r for j, r in enumerate(hits, start=1)) / n, rel_tol=1e-6):
            fail("divide by the number of true matches, not by the length of the list")
        fail(f"AP of {matches} should be {want:.4f}, got {got:.4f}")
    _refuse_loops(fn, "np.cumsum(matches) counts the matches up to every rank at once")
    passed("non-interpolated average precision")


def _trapezoid_reference(matches: list[bool]) -> float:
    ranks = [r for r, m in enumerate(matches, start=1) if m]
    before = [(j - 1) / (r - 1) if r > 1 else 1.0 for j, r in enumerate(ranks, start=1)]
    return sum((b + j / r) / 2 for b, (j, r) in zip(before, enumerate(ranks, start=1))) / len(ranks)


@checker
def check_trapezoid_ap(fn: Callable[[Any], Any]) -> None:
    """Notebook 08: ``fn(matches)`` must return Market-1501's (trapezoid) AP of a ranked list.

    At the j-th true match, at rank r, the official MATLAB code averages the precision at the
    match, j / r, with the precision one rank earlier, (j - 1) / (r - 1) (1 before rank 1), and
    AP is the mean of those averages over the true matches (ECN's evaluator gives the same).
    """
    cases = [
        [False, True, False, False, True, False],
        [True, False, True, False, False, True],
        [False, False, False, True],
        [True, True, False, False],
    ]
    for matches in cases:
        want = _trapezoid_reference(matches)
        got = _call_ap(fn, matches)
        if math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9):
            continue
        hits = [r for r, m in enumerate(matches, start=1) if m]
        n = len(hits)
        step = _ap_reference(matches)
        if math.isclose(got, step, rel_tol=1e-6):
            fail("that is the step (non-interpolated) AP; average each match's precision with the precision "
                 "one rank EARLIER, (j - 1) / (r - 1)")
        zero_first = sum(((j - 1) / (r - 1) if r > 1 else 0.0) + j / r for j, r in enumerate(hits, 1)) / (2 * n)
        if math.isclose(got, zero_first, rel_tol=1e-6, abs_tol=1e-9):
            fail("before rank 1 the precision is 1 (MATLAB's old_precision starts at 1), not 0")
        prev_hit = sum(((j - 1) / hits[j - 2] if j > 1 else 1.0) + j / r for j, r in enumerate(hits, 1)) / (2 * n)
        if math.isclose(got, prev_hit, rel_tol=1e-6, abs_tol=1e-9):
            fail("the precision 'just before' is at rank r - 1, the rank before this match, not at the previous match")
        if math.isclose(got, want * n / len(matches), rel_tol=1e-6):
            fail("divide by the number of true matches, not by the length of the list")
        fail(f"trapezoid AP of {matches} should be {want:.4f}, got {got:.4f}")
    _refuse_loops(fn, "np.flatnonzero gives the ranks r of all the matches at once, np.arange their counts j")
    passed("Market-1501's trapezoid AP (the official code's and ECN's rule)")


@checker
def check_inp(fn: Callable[[Any], Any]) -> None:
    """Notebook 08: ``fn(matches)`` must return the INP of a ranked list: |G| / (rank of the last true match)."""
    for matches in ([True, False, True, False, False, True, False], [False, True, True], [True, False, False]):
        hits = [r for r, m in enumerate(matches, start=1) if m]
        want = len(hits) / hits[-1]
        got = as_number(fn(np.array(matches, dtype=bool)), float,
                        if_none="your function returned None: did it forget to `return` the INP?",
                        if_wrong="return one number (the INP of the list), got {type}")
        if math.isclose(got, want, rel_tol=1e-6):
            continue
        if math.isclose(got, 1 - want, rel_tol=1e-6, abs_tol=1e-9):
            fail("that is the negative penalty NP; INP = 1 - NP = |G| / R_hard")
        if math.isclose(got, len(hits) / hits[0], rel_tol=1e-6) or math.isclose(got, 1 / hits[0], rel_tol=1e-6):
            fail("R_hard is the rank of the LAST (hardest) true match, not the first")
        if math.isclose(got, len(hits) / (hits[-1] - 1) if hits[-1] > 1 else math.inf, rel_tol=1e-6):
            fail("ranks start at 1: the last true match's rank is its position + 1")
        fail(f"INP of {matches} should be {want:.4f}, got {got:.4f}")
    _refuse_loops(fn, "np.flatnonzero gives the ranks of all the matches at once")
    passed("INP = number of true matches / rank of the hardest one")
