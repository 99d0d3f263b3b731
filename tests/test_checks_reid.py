"""Notebook 08's exercise checkers, and its hand-written metrics against reidlab.evaluation.

Each checker's right and wrong answers are in ``ANSWERS`` at the end (run by ``test_answer_suites.py``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from answers import Answers
from reidlab.lessons.checks import nb08 as checks
from reidlab.evaluation import evaluate_rank

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "08_reid_primer.ipynb"


# --- exercise 8.1: average precision ------------------------------------------------------


def ap_solution(matches):
    ranks = np.flatnonzero(matches) + 1
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


def ap_by_cumsum(matches):
    """Also right (the notebook's): the precision at every rank, averaged over the ranks of the matches."""
    matches = np.asarray(matches, dtype=bool)
    precision = np.cumsum(matches) / np.arange(1, len(matches) + 1)
    return float(precision[matches].mean())


def ap_loop(matches):
    """The right number, with the Python loop the exercise rules out."""
    found, total = 0, 0.0
    for rank, match in enumerate(matches, start=1):
        if match:
            found += 1
            total += found / rank
    return total / found


def ap_comprehension(matches):
    """A loop too: the comprehension runs once per match."""
    ranks = np.flatnonzero(matches) + 1
    return float(np.mean([j / r for j, r in enumerate(ranks, start=1)]))


def ap_every_rank(matches):
    m = np.asarray(matches, dtype=float)
    return float(np.mean(np.cumsum(m) / np.arange(1, len(m) + 1)))


def ap_zero_based_rank(matches):
    ranks = np.flatnonzero(matches)
    with np.errstate(divide="ignore"):
        return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


def ap_zero_based_count(matches):
    ranks = np.flatnonzero(matches) + 1
    return float(np.mean(np.arange(len(ranks)) / ranks))


def ap_interpolated(matches):
    m = np.asarray(matches, dtype=float)
    prec = np.cumsum(m) / np.arange(1, len(m) + 1)
    return float(np.mean(np.maximum.accumulate(prec[::-1])[::-1][m > 0]))


def ap_by_length(matches):
    ranks = np.flatnonzero(matches) + 1
    return float(np.sum(np.arange(1, len(ranks) + 1) / ranks) / len(matches))


AP_WRONG = (
    # what the exercise rules out: "without a Python loop"
    (ap_loop, r"asks for no Python loop, but a line of `ap_loop` ran \d+ times for a list of 4 and \d+ times for a list"),
    (ap_comprehension, "asks for no Python loop"),
    # the mistakes
    (ap_every_rank, "only at the ranks of the true matches"),
    (ap_zero_based_rank, "ranks start at 1"),
    (ap_zero_based_count, "j starts at 1"),
    (ap_interpolated, "that is interpolated AP"),
    (ap_by_length, "divide by the number of true matches"),
    (lambda m: None, "forget to `return`"),
    (lambda m: [0.5, 0.5], "one number"),
)


# --- exercise 8.2: Market-1501's trapezoid AP ------------------------------------------------


def trapezoid_solution(matches):
    ranks = np.flatnonzero(matches) + 1
    j = np.arange(1, len(ranks) + 1)
    before = np.where(ranks > 1, (j - 1) / np.maximum(ranks - 1, 1), 1.0)
    return float(np.mean((before + j / ranks) / 2))


def trapezoid_by_cumsum(matches):
    """Also right: the precision curve, and the same curve shifted one rank later (1 before rank 1)."""
    matches = np.asarray(matches, dtype=bool)
    precision = np.cumsum(matches) / np.arange(1, len(matches) + 1)
    before = np.concatenate([[1.0], precision[:-1]])
    return float(np.mean((before + precision)[matches] / 2))


def trapezoid_loop(matches):
    """The right number, written as the official MATLAB code's loop (ruled out by the exercise)."""
    ap, old_recall, old_precision, found, n = 0.0, 0.0, 1.0, 0, int(np.sum(matches))
    for rank, match in enumerate(matches, start=1):
        found += bool(match)
        recall, precision = found / n, found / rank
        ap += (recall - old_recall) * (old_precision + precision) / 2
        old_recall, old_precision = recall, precision
    return ap


def trapezoid_zero_first(matches):
    ranks = np.flatnonzero(matches) + 1
    j = np.arange(1, len(ranks) + 1)
    return float(np.mean(((j - 1) / np.maximum(ranks - 1, 1) + j / ranks) / 2))


def trapezoid_previous_hit(matches):
    ranks = np.flatnonzero(matches) + 1
    j = np.arange(1, len(ranks) + 1)
    before = np.r_[1.0, (j[1:] - 1) / ranks[:-1]]
    return float(np.mean((before + j / ranks) / 2))


def test_trapezoid_answers_are_evaluate_rank_on_a_filtered_list():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = rng.random(12) < 0.3
        m[rng.integers(12)] = True
        dist = np.arange(12, dtype=float)[None]
        res = evaluate_rank(dist, [1], np.where(m, 1, 2), [0], np.ones(12, int), max_rank=1, ap="trapezoid")
        for answer in (trapezoid_solution, trapezoid_by_cumsum, trapezoid_loop):
            assert res.mAP == pytest.approx(answer(m))


TRAPEZOID_WRONG = (
    (trapezoid_loop, "asks for no Python loop, but a line of `trapezoid_loop`"),
    (ap_solution, "that is the step"),
    (trapezoid_zero_first, "before rank 1 the precision is 1"),
    (trapezoid_previous_hit, "not at the previous match"),
    (lambda m: trapezoid_solution(m) * np.sum(m) / len(m), "divide by the number of true matches"),
    (lambda m: None, "returned None"),
)


# --- exercise 8.3: INP --------------------------------------------------------------------


def inp_solution(matches):
    ranks = np.flatnonzero(matches) + 1
    return len(ranks) / ranks[-1]


def inp_by_argmax(matches):
    """Also right: the last match is the first one of the reversed list."""
    matches = np.asarray(matches, dtype=bool)
    return matches.sum() / (len(matches) - np.argmax(matches[::-1]))


def inp_loop(matches):
    found = last = 0
    for rank, match in enumerate(matches, start=1):
        if match:
            found, last = found + 1, rank
    return found / last


INP_WRONG = (
    (inp_loop, "asks for no Python loop, but a line of `inp_loop`"),
    (lambda m: 1 - inp_solution(m), "that is the negative penalty"),
    (lambda m: len(np.flatnonzero(m)) / (np.flatnonzero(m)[0] + 1), "rank of the LAST"),
    (lambda m: len(np.flatnonzero(m)) / np.flatnonzero(m)[-1], "ranks start at 1"),
    (lambda m: None, "forget to `return`"),
)


def test_a_loop_check_puts_the_tracer_back():
    """The loop check traces the answer with sys.settrace: a tracer in place (a debugger's) is restored, also
    when the answer fails."""
    def tracer(frame, event, arg):
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        with pytest.raises(checks.ExerciseError, match="no Python loop"):
            checks.check_inp(inp_loop)
        assert sys.gettrace() is tracer
        with pytest.raises(ZeroDivisionError):
            checks._refuse_loops(lambda m: 1 / 0 if len(m) > 4 else 0.5, "")
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(previous)


# --- the notebook's hand-written metrics agree with reidlab.evaluation ------------------------


def _notebook_function(name: str):
    """Execute the code cell of notebook 08 that defines ``name`` and return the function."""
    nb = json.loads(NOTEBOOK.read_text())
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "code" and f"def {name}(" in src:
            namespace: dict = {"np": np}
            exec(compile(src, f"08_reid_primer:{name}", "exec"), namespace)
            return namespace[name]
    raise AssertionError(f"notebook 08 has no cell defining {name}")


@pytest.mark.skipif(not NOTEBOOK.exists(), reason="notebook 08 not built")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_notebook_metrics_by_hand_match_evaluate_rank(seed):
    rng = np.random.default_rng(seed)
    nq, ng = 12, 60
    q_pids = rng.integers(1, 6, nq)
    g_pids = rng.choice([-1, 0, 1, 2, 3, 4, 5, 6], ng)
    q_cams, g_cams = rng.integers(0, 3, nq), rng.integers(0, 3, ng)
    dist = rng.integers(0, 8, (nq, ng)).astype(float)  # many ties: gallery order must decide
    by_hand = _notebook_function("metrics_by_hand")(dist, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    ref = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    cmc, mAP, mINP = by_hand
    np.testing.assert_allclose(cmc, ref.cmc, atol=1e-12)
    assert mAP == pytest.approx(ref.mAP, abs=1e-12)
    assert mINP == pytest.approx(ref.mINP, abs=1e-12)


ANSWERS = {  # run by tests/test_answer_suites.py
    checks.check_average_precision: Answers(right=(ap_solution, ap_by_cumsum), wrong=AP_WRONG),
    checks.check_trapezoid_ap: Answers(right=(trapezoid_solution, trapezoid_by_cumsum), wrong=TRAPEZOID_WRONG),
    checks.check_inp: Answers(right=(inp_solution, inp_by_argmax), wrong=INP_WRONG),
}
