"""Checkers of notebook 08 (``notebooks/08_reid_primer.ipynb``): the re-ID evaluation protocol.

Imported by the notebook as ``from reidlab.lessons.checks import nb08 as checks``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from reidlab.lessons.checks import ExerciseError, as_number, checker, fail, passed

__all__ = ["ExerciseError", "check_average_precision", "check_inp", "check_market_exclusion"]


def _call_ap(fn: Callable[[Any], Any], matches: list[bool]) -> float:
    return as_number(
        fn(np.array(matches, dtype=bool)), float,
        if_none="your function returned None: did it forget to `return` the AP?",
        if_wrong="return one number (the AP of the list), got {type}",
    )


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
    passed("non-interpolated average precision")


_MARKET_G_PIDS = [5, 5, 5, 7, 7, -1, 0, 5, 0, 9, -1, 7]
_MARKET_G_CAMS = [0, 1, 2, 0, 1, 0, 0, 0, 2, 1, 2, 2]


def _market_keep_reference(q_pid: int, q_cam: int, g_pids, g_cams):
    g_pids, g_cams = np.asarray(g_pids), np.asarray(g_cams)
    return ~(((g_pids == q_pid) & (g_cams == q_cam)) | (g_pids == -1))


@checker
def check_market_exclusion(fn: Callable[..., Any]) -> None:
    """Notebook 08: ``fn(q_pid, q_camid, g_pids, g_camids)`` must return the gallery mask the Market protocol keeps."""
    g_pids, g_cams = np.array(_MARKET_G_PIDS), np.array(_MARKET_G_CAMS)
    for q_pid, q_cam in ((5, 0), (7, 1), (9, 2)):
        want = _market_keep_reference(q_pid, q_cam, g_pids, g_cams)
        got = fn(q_pid, q_cam, g_pids.copy(), g_cams.copy())
        if got is None:
            fail("your function returned None: return the boolean mask of gallery items to keep")
        got = np.asarray(got)
        if got.dtype != bool or got.shape != want.shape:
            fail(
                f"return a boolean mask with one entry per gallery item (shape {want.shape}), "
                f"got dtype {got.dtype} and shape {got.shape}"
            )
        if np.array_equal(got, want):
            continue
        if np.array_equal(got, ~want):
            fail("your mask is inverted: True should mark the items that are KEPT")
        same_cam = g_cams == q_cam
        same_id = g_pids == q_pid
        if (~got & (g_pids == 0) & ~same_cam).any():
            fail("distractors (pid 0) stay in the gallery as negatives; do not remove them")
        if (~got & same_cam & ~same_id & (g_pids != -1)).any():
            fail("you removed other people seen by the query's camera: only the SAME person in the same camera goes")
        if (~got & same_id & ~same_cam).any():
            fail("you removed the query's person in other cameras: those are the true matches, keep them")
        if (got & (g_pids == -1)).any():
            fail("junk images (pid -1) must be removed for every query")
        if (got & same_id & same_cam).any():
            fail("the query's person in the query's own camera must be removed")
        fail(f"wrong mask for query (pid {q_pid}, camera {q_cam}): expected {want.astype(int).tolist()}")
    passed("Market-1501 exclusion: same id AND same camera removed, junk removed, distractors kept")


@checker
def check_inp(fn: Callable[[Any], Any]) -> None:
    """Notebook 08: ``fn(matches)`` must return the INP of a ranked list: |G| / (rank of the last true match)."""
    for matches in ([True, False, True, False, False, True, False], [False, True, True], [True, False, False]):
        hits = [r for r, m in enumerate(matches, start=1) if m]
        want = len(hits) / hits[-1]
        got = fn(np.array(matches, dtype=bool))
        if got is None:
            fail("your function returned None: did it forget to `return` the INP?")
        got = float(got)
        if math.isclose(got, want, rel_tol=1e-6):
            continue
        if math.isclose(got, 1 - want, rel_tol=1e-6, abs_tol=1e-9):
            fail("that is the negative penalty NP; INP = 1 - NP = |G| / R_hard")
        if math.isclose(got, len(hits) / hits[0], rel_tol=1e-6) or math.isclose(got, 1 / hits[0], rel_tol=1e-6):
            fail("R_hard is the rank of the LAST (hardest) true match, not the first")
        if math.isclose(got, len(hits) / (hits[-1] - 1) if hits[-1] > 1 else math.inf, rel_tol=1e-6):
            fail("ranks start at 1: the last true match's rank is its position + 1")
        fail(f"INP of {matches} should be {want:.4f}, got {got:.4f}")
    passed("INP = number of true matches / rank of the hardest one")
