"""Notebook 08's exercise checkers, and its hand-written metrics against reidlab.evaluation."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reidlab.lessons.checks import nb08 as checks
from reidlab.evaluation import evaluate_rank

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "08_reid_primer.ipynb"


# --- exercise 8.1: average precision ------------------------------------------------------


def ap_solution(matches):
    ranks = np.flatnonzero(matches) + 1
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


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
    ranks = np.flatnonzero(matches)
    return float(np.mean([prec[r:][m[r:] > 0].max() for r in ranks]))


def ap_by_length(matches):
    ranks = np.flatnonzero(matches) + 1
    return float(np.sum(np.arange(1, len(ranks) + 1) / ranks) / len(matches))


def test_ap_solution_passes(capsys):
    checks.check_average_precision(ap_solution)
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, message",
    [
        (ap_every_rank, "only at the ranks of the true matches"),
        (ap_zero_based_rank, "ranks start at 1"),
        (ap_zero_based_count, "j starts at 1"),
        (ap_interpolated, "interpolated"),
        (ap_by_length, "number of true matches"),
        (lambda m: None, "return"),
        (lambda m: [0.5, 0.5], "one number"),
    ],
)
def test_ap_wrong_answers_named(wrong, message):
    with pytest.raises(checks.ExerciseError, match=message):
        checks.check_average_precision(wrong)


# --- exercise 8.2: the Market exclusion ---------------------------------------------------


def trapezoid_solution(matches):
    ranks = np.flatnonzero(matches) + 1
    j = np.arange(1, len(ranks) + 1)
    before = np.where(ranks > 1, (j - 1) / np.maximum(ranks - 1, 1), 1.0)
    return float(np.mean((before + j / ranks) / 2))


def trapezoid_zero_first(matches):
    ranks = np.flatnonzero(matches) + 1
    j = np.arange(1, len(ranks) + 1)
    return float(np.mean(((j - 1) / np.maximum(ranks - 1, 1) + j / ranks) / 2))


def trapezoid_previous_hit(matches):
    ranks = np.flatnonzero(matches) + 1
    j = np.arange(1, len(ranks) + 1)
    before = np.r_[1.0, (j[1:] - 1) / ranks[:-1]]
    return float(np.mean((before + j / ranks) / 2))


def test_trapezoid_solution_passes_and_equals_evaluate_rank(capsys):
    checks.check_trapezoid_ap(trapezoid_solution)
    assert "correct" in capsys.readouterr().out
    rng = np.random.default_rng(0)
    for _ in range(20):  # the solution is evaluate_rank's trapezoid rule on an already filtered list
        m = rng.random(12) < 0.3
        m[rng.integers(12)] = True
        dist = np.arange(12, dtype=float)[None]
        res = evaluate_rank(dist, [1], np.where(m, 1, 2), [0], np.ones(12, int), max_rank=1, ap="trapezoid")
        assert res.mAP == pytest.approx(trapezoid_solution(m))


@pytest.mark.parametrize(
    "wrong, message",
    [
        (ap_solution, "that is the step"),
        (trapezoid_zero_first, "before rank 1 the precision is 1"),
        (trapezoid_previous_hit, "not at the previous match"),
        (lambda m: trapezoid_solution(m) * np.sum(m) / len(m), "number of true matches"),
        (lambda m: None, "returned None"),
    ],
)
def test_trapezoid_wrong_answers_named(wrong, message):
    with pytest.raises(checks.ExerciseError, match=message):
        checks.check_trapezoid_ap(wrong)


# --- exercise 8.3: INP --------------------------------------------------------------------


def inp_solution(matches):
    ranks = np.flatnonzero(matches) + 1
    return len(ranks) / ranks[-1]


def test_inp_solution_passes(capsys):
    checks.check_inp(inp_solution)
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda m: 1 - inp_solution(m), "negative penalty"),
        (lambda m: len(np.flatnonzero(m)) / (np.flatnonzero(m)[0] + 1), "LAST"),
        (lambda m: len(np.flatnonzero(m)) / np.flatnonzero(m)[-1], "ranks start at 1"),
        (lambda m: None, "return"),
    ],
)
def test_inp_wrong_answers_named(wrong, message):
    with pytest.raises(checks.ExerciseError, match=message):
        checks.check_inp(wrong)


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
