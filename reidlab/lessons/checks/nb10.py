"""Checkers of notebook 10 (``notebooks/10_ecn_pipeline.ipynb``): the ECN pipeline.

Imported by the notebook as ``from reidlab.lessons.checks import nb10 as checks``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from reidlab.ecn.config import ECN_DECAY_EPOCH, ECN_EPOCHS, ECN_KNN_EPOCH, scaled_schedule
from reidlab.lessons.checks import ExerciseError, checker, fail, passed

__all__ = ["ExerciseError", "check_feature_weights", "check_relative_gain", "check_scaled_schedule"]


# The reference answer of exercise 10.2 is the trainer's own rule (one rule for the trainer,
# train_source, the notebook and this checker): ECN's 60 epochs, lr step at epoch 40, the
# neighbourhood (kNN) term from epoch 5 on (the code's ``epoch > 4``, 0-based), scaled.


def _memory_weights(epochs: int, rate: Callable[[int], float]) -> list[float]:
    """Weight of each epoch's feature in a slot written once per epoch as ``M <- a_e M + (1 - a_e) f_e``."""
    weights = []
    for e in range(epochs):
        later = math.prod(rate(j) for j in range(e + 1, epochs))
        weights.append((1 - rate(e)) * later)
    return weights


def _as_weights(got: Any, epochs: int) -> list[float]:
    if got is None:
        fail("your function returned None: return the list of weights, one per epoch")
    try:
        values = [float(v) for v in got]
    except (TypeError, ValueError):
        fail(f"return one number per epoch (a list of length epochs), got {type(got).__name__}")
    if len(values) != epochs:
        fail(f"for {epochs} epochs return {epochs} weights, one per epoch (entry e: the feature written in epoch e); "
             f"got {len(values)}")
    return values


def _same(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) for x, y in zip(a, b))


@checker
def check_feature_weights(fn: Callable[[int, float], Any]) -> None:
    """Notebook 10: ``fn(epochs, alpha)`` must return the weight of each epoch's feature in a memory slot.

    The slot of a target image is written once per epoch ``e = 0 .. epochs - 1`` as
    ``M <- a_e M + (1 - a_e) f_e`` with ECN's rate ``a_e = alpha * e`` (the re-normalisation
    after each write is ignored). Entry ``e`` of the answer is the weight of ``f_e`` after the
    last epoch: ``(1 - a_e) * a_{e+1} * ... * a_{epochs-1}``. Since ``a_0 = 0`` the first write
    replaces the initial row, so the weights sum to 1.
    """
    cases = ((4, 0.01), (60, 0.01), (10, 0.05), (3, 0.25), (1, 0.3))
    for epochs, alpha in cases:
        want = _memory_weights(epochs, lambda e: alpha * e)
        got = _as_weights(fn(epochs, alpha), epochs)
        if _same(got, want):
            continue
        wrong = {
            "the order is reversed: entry e is the feature written in epoch e, the first epoch first":
                want[::-1],
            "a_e weighs the OLD row and 1 - a_e the new feature (M <- a M + (1 - a) f); you swapped them":
                [a * math.prod(1 - alpha * j for j in range(e + 1, epochs))
                 for e, a in ((e, alpha * e) for e in range(epochs))],
            "epochs are counted from 0, as ECN's code does: a = alpha * epoch is 0 in the first epoch, so that "
            "write replaces the (empty) slot":
                _memory_weights(epochs, lambda e: alpha * (e + 1)),
            "the rate grows with the epoch: a_e = alpha * e, not alpha in every epoch":
                _memory_weights(epochs, lambda e: alpha),
            "the rate grows with the epoch: a_e = alpha * e, not alpha (from epoch 1 on you used a constant)":
                _memory_weights(epochs, lambda e: 0.0 if e == 0 else alpha),
            "every later write multiplies what is already in the slot by its a: the feature of epoch e keeps "
            "(1 - a_e) * a_{e+1} * ... * a_{E-1}, not just 1 - a_e":
                [1 - alpha * e for e in range(epochs)],
            "the feature of epoch e enters the slot with weight 1 - a_e before the later writes shrink it":
                [math.prod(alpha * j for j in range(e + 1, epochs)) for e in range(epochs)],
        }
        for message, values in wrong.items():
            if _same(got, values):
                fail(message)
        total = sum(got)
        if not math.isclose(total, 1.0, abs_tol=1e-9):
            fail(f"for {epochs} epochs and alpha={alpha} your weights sum to {total:.6g}; they must sum to 1 "
                 "(a_0 = 0: the first write replaces the slot, and every later write splits it into a and 1 - a)")
        shown = ", ".join(f"{w:.4g}" for w in want[-3:])
        fail(f"for {epochs} epochs and alpha={alpha} the last weights should be [..., {shown}], got "
             f"[..., {', '.join(f'{w:.4g}' for w in got[-3:])}]")
    ecn, short = _memory_weights(60, lambda e: 0.01 * e)[-1], _memory_weights(4, lambda e: 0.01 * e)[-1]
    passed(f"each epoch's share of a memory slot: the last epoch's feature holds {100 * ecn:.0f} % of it after ECN's "
           f"60 epochs, {100 * short:.0f} % after 4 epochs")


@checker
def check_scaled_schedule(fn: Callable[[int], Any]) -> None:
    """Notebook 10: ``fn(epochs)`` must return ``(knn_epoch, decay_epoch)``: ECN's 5 and 40 of 60, scaled.

    Both are 0-based epochs rounded to the nearest integer (as :attr:`reidlab.ecn.ECNConfig.decay_epoch`
    does); the kNN term never starts before epoch 1, because during epoch 0 the memory is still
    being filled (its update rate ``alpha * epoch`` is 0 and unvisited slots are zeros). The
    reference is the trainer's own :func:`reidlab.ecn.config.scaled_schedule`, whose ``round`` takes
    a tie to the even epoch: 30 and 54 epochs put the kNN start at 2.5 and 4.5, where rounding
    halves up gives another epoch than the trainer's.
    """
    cases = (60, 12, 10, 24, 3, 100, 40, 30, 54)
    for epochs in cases:
        want = scaled_schedule(epochs)
        got = fn(epochs)
        if got is None:
            fail("your function returned None: return the pair (knn_epoch, decay_epoch)")
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            fail(f"return two numbers, (knn_epoch, decay_epoch); got {got!r}")
        try:
            knn, decay = (int(v) for v in got)
        except (TypeError, ValueError):
            fail(f"return two whole epoch numbers, got {got!r}")
        if any(float(v) != int(v) for v in got):
            fail(f"epochs are whole numbers: round the scaled values (got {got!r} for {epochs} epochs)")
        if (knn, decay) == want:
            continue
        if (decay, knn) == want:
            fail("the order is (knn_epoch, decay_epoch): the kNN epoch first")
        if (knn, decay) == (ECN_KNN_EPOCH, ECN_DECAY_EPOCH):
            fail(f"for a {epochs}-epoch run you returned ECN's own (5, 40): scale them by epochs / 60")
        if (knn, decay) == (want[0] + 1, want[1] + 1):
            fail("epochs are counted from 0, as in the code: ECN's `epoch > 4` is epoch 5, its decay `epoch // 40` "
                 "starts at epoch 40")
        if epochs == 3 and knn == 0:
            fail("for a short run the kNN term would start at epoch 0, while the memory is still being filled "
                 "(alpha * epoch = 0, unvisited slots are zeros): start it at epoch 1 at the earliest")
        if epochs == 10 and decay == 6:
            fail("round to the NEAREST epoch (40/60 * 10 = 6.67 -> 7); int() and // round down")
        half_up = tuple(max(1, math.floor(e * epochs / ECN_EPOCHS + 0.5)) for e in (ECN_KNN_EPOCH, ECN_DECAY_EPOCH))
        if (knn, decay) == half_up:
            fail(f"for {epochs} epochs the kNN start, 5/60 * {epochs} = {5 * epochs / 60:g}, lies halfway between two "
                 f"epochs: the trainer (reidlab.ecn.config.scaled_schedule) rounds with Python's round(), which takes "
                 f"a tie to the even epoch ({want[0]}); rounding halves up gives {knn}")
        if epochs != 60 and (knn, decay) == (round(5 * 60 / epochs), round(40 * 60 / epochs)):
            fail("scaled the wrong way: the run is shorter than ECN's 60 epochs, so multiply by epochs / 60")
        fail(f"for {epochs} epochs expected (knn_epoch, decay_epoch) = {want}, got {(knn, decay)}")
    passed("ECN's schedule scaled: kNN from round(5/60 * E) (at least 1), LR step at round(40/60 * E)")


def _gain_pair(got: dict, name: str) -> tuple[float, float]:
    """The learner's ``(points, percent)`` for ``name`` as two floats."""
    try:
        points, percent = (float(v) for v in got[name])
    except (TypeError, ValueError):
        fail(f"the entry for {name!r} should be a pair of numbers (points, percent), got {got[name]!r}")
    return points, percent


@checker
def check_relative_gain(fn: Callable[..., Any]) -> None:
    """Notebook 10: ``fn(table)`` must return ``{method: (points, percent)}``, each method's mAP gain over source-only.

    ``table`` maps a method name to ``{'rank1': ..., 'mAP': ...}`` in percent. ``points`` is
    ``mAP - mAP_source_only`` (percentage points), ``percent`` the same relative to the
    baseline, ``100 * points / mAP_source_only``. The baseline itself may be left out or
    given ``(0, 0)``.
    """
    tables = (
        {"source-only": {"rank1": 40.0, "mAP": 20.0}, "E": {"rank1": 50.0, "mAP": 25.0},
         "E+C": {"rank1": 62.0, "mAP": 33.0}, "E+C+N": {"rank1": 75.0, "mAP": 43.0}},
        {"source-only": {"rank1": 10.0, "mAP": 8.0}, "E": {"rank1": 9.0, "mAP": 6.0},
         "E+N": {"rank1": 20.0, "mAP": 14.0}},
    )
    for table in tables:
        got = fn({k: dict(v) for k, v in table.items()})
        if got is None:
            fail("your function returned None: return a dict {method: (points, percent)}")
        if not isinstance(got, dict):
            fail(f"return a dict {{method: (points, percent)}}, got {type(got).__name__}")
        base = table["source-only"]["mAP"]
        for name, row in table.items():
            if name == "source-only":
                if name in got and any(abs(v) > 1e-9 for v in _gain_pair(got, name)):
                    fail("source-only is the baseline: its gain over itself is (0, 0); or leave it out")
                continue
            if name not in got:
                fail(f"no entry for {name!r}: give every method except the baseline")
            points, percent = _gain_pair(got, name)
            want_pts = row["mAP"] - base
            want_pct = 100 * want_pts / base
            if math.isclose(points, want_pts, abs_tol=1e-6) and math.isclose(percent, want_pct, abs_tol=1e-6):
                continue
            r1_pts = row["rank1"] - table["source-only"]["rank1"]
            if math.isclose(points, r1_pts, abs_tol=1e-6):
                fail("that is the rank-1 gain: the exercise asks for mAP")
            if math.isclose(points, -want_pts, abs_tol=1e-6):
                fail("the sign is reversed: gain = method - source-only (positive when the method is better)")
            if not math.isclose(points, want_pts, abs_tol=1e-6):
                fail(f"{name}: the gain in points is mAP({name}) - mAP(source-only) = {want_pts:.2f}, got {points:.2f}")
            if math.isclose(percent, want_pct / 100, abs_tol=1e-6):
                fail("the relative gain is asked in percent: multiply the fraction by 100")
            if math.isclose(percent, 100 * want_pts / row["mAP"], abs_tol=1e-6):
                fail("divide by the BASELINE's mAP (source-only), not by the method's own")
            if math.isclose(percent, want_pts, abs_tol=1e-6):
                fail("the percent value is the gain relative to the baseline, 100 * points / mAP(source-only), "
                     "not the points again")
            fail(f"{name}: expected ({want_pts:.2f} points, {want_pct:.2f} %), got ({points:.2f}, {percent:.2f})")
    passed("mAP gain over source-only, in points and relative to the baseline")
