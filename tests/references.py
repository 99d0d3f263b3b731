"""Slow, readable references the library's fast code is tested against (not part of ``reidlab``).

:func:`evaluate_rank_reference` is the per-query loop notebook 08 writes by hand, with
:func:`reidlab.evaluation.evaluate_rank`'s arguments and result; ``tests/test_evaluation.py``
checks that the two agree exactly and ``benchmarks/bench_evaluation.py`` times them.
"""
from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from reidlab.evaluation import Distances, RankResult, check_rank_inputs
from reidlab.evaluation import _check_ap_rule, _excluded, _finish  # the protocol's pieces, shared on purpose


def evaluate_rank_reference(
    distmat: Distances,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    *,
    ap: str = "step",
) -> RankResult:
    """The slow, readable Market-1501 evaluation: one full stable argsort per query.

    The loop notebook 08 writes by hand, and the reference
    :func:`reidlab.evaluation.evaluate_rank` is tested against (identical numbers). Arguments
    and result as in ``evaluate_rank``; several times slower on a Market-size problem.
    """
    ap = _check_ap_rule(ap)
    d, qp, gp, qc, gc, max_rank = check_rank_inputs(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    nq = d.shape[0]
    first_rank = np.zeros(nq, dtype=np.int64)
    aps = np.full(nq, np.nan)
    inp = np.full(nq, np.nan)
    for i in range(nq):
        # 1. rank the whole gallery; ties keep gallery order (stable sort)
        order = np.argsort(d[i], kind="stable")
        # 2. drop same-id-same-camera images and junk
        keep = ~_excluded(qp[i], qc[i], gp[order], gc[order])
        matches = gp[order][keep] == qp[i]  # True where the ranked item is the query's person
        if not matches.any():
            continue  # no true match left: the query is skipped, not counted as a failure
        # 3. 1-based ranks of the true matches in the remaining list
        hit_ranks = np.flatnonzero(matches) + 1
        first_rank[i] = hit_ranks[0]  # CMC: the query is a hit at every rank >= this one
        # 4. AP: the precision (true matches so far / rank) at each true match, averaged
        precision = np.cumsum(matches) / np.arange(1, len(matches) + 1)  # at every rank
        terms = precision[matches]
        if ap == "trapezoid":  # MATLAB: the mean of the precision one rank earlier and at the match
            terms = (np.r_[1.0, precision][hit_ranks - 1] + terms) / 2  # 1.0 "before rank 1"
        aps[i] = math.fsum(terms) / len(hit_ranks)  # fsum: exactly rounded, order-free
        # 5. INP = 1 - NP: number of true matches / rank of the hardest (last) one
        inp[i] = len(hit_ranks) / hit_ranks[-1]
    return _finish(first_rank, aps, inp, max_rank, ap)

