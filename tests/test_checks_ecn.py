"""Notebook 10's exercise checkers: right answers pass, typical wrong answers fail with a message
that names the mistake; and the checkers agree with the library (the memory update and the schedule).

Each checker's right and wrong answers are in ``ANSWERS`` at the end (run by ``test_answer_suites.py``).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from answers import Answers
from reidlab.lessons.checks import NOT_ATTEMPTED
from reidlab.lessons.checks import nb10 as checks
from reidlab.ecn import ECNConfig

# --- exercise 10.1: how long the memory remembers ---------------------------------------------


def weights_right(epochs, alpha):
    out = []
    for e in range(epochs):
        w = 1 - alpha * e
        for later in range(e + 1, epochs):
            w *= alpha * later
        out.append(w)
    return out


def weights_right_numpy(epochs, alpha):
    """The same, written backwards with a running product (and returned as an array)."""
    a = alpha * np.arange(epochs)
    kept = np.append(np.cumprod(a[::-1])[::-1][1:], 1.0)   # a_{e+1} * ... * a_{E-1}
    return (1 - a) * kept


def weights_simulated(epochs, alpha):
    """A learner may also simulate the writes with one-hot 'features' (no re-normalisation)."""
    row = torch.zeros(epochs, dtype=torch.float64)
    for e in range(epochs):
        a = alpha * e
        row = a * row + (1 - a) * torch.eye(epochs, dtype=torch.float64)[e]
    return row


def test_weights_checker_agrees_with_the_memory():
    """The weights the exercise asks for are what reidlab.memory's update leaves in a slot written once per epoch,
    when the features of one image change little from epoch to epoch (so each re-normalisation is almost a
    no-op, the approximation the exercise states): f_e = normalise(u + eps * v_e), u and the v_e orthonormal."""
    from reidlab.memory import InvarianceLoss

    epochs, alpha, eps = 5, 0.1, 1e-3
    basis = torch.eye(epochs + 1, dtype=torch.float64)
    crit = InvarianceLoss(1, epochs + 1, beta=0.05, knn=0, alpha=alpha).double()
    for e in range(epochs):
        f = torch.nn.functional.normalize(basis[0] + eps * basis[e + 1], dim=0)[None].requires_grad_(True)
        crit(f, torch.tensor([0]), e).backward()
    share = crit.memory[0, 1:] / eps   # the component along v_e is eps times the weight of f_e
    want = torch.tensor(weights_right(epochs, alpha), dtype=torch.float64)
    assert torch.allclose(share, want, rtol=1e-3, atol=1e-6), (share, want)


def _weights(rate, *, factor=True, later=True, reverse=False, swap=False):
    def answer(epochs, alpha):
        out = []
        for e in range(epochs):
            a = rate(e, alpha)
            if swap:
                w = a
                for j in range(e + 1, epochs):
                    w *= 1 - rate(j, alpha)
            else:
                w = (1 - a) if factor else 1.0
                if later:
                    for j in range(e + 1, epochs):
                        w *= rate(j, alpha)
            out.append(w)
        return out[::-1] if reverse else out
    return answer


ECN_RATE = lambda e, alpha: alpha * e  # noqa: E731


WEIGHTS_WRONG = (
    (_weights(ECN_RATE, reverse=True), "the order is reversed"),
    (_weights(ECN_RATE, swap=True), "you swapped them"),
    (_weights(lambda e, alpha: alpha * (e + 1)), "epochs are counted from 0"),
    (_weights(lambda e, alpha: alpha), "not alpha in every epoch"),
    (_weights(lambda e, alpha: 0.0 if e == 0 else alpha), "from epoch 1 on you used a constant"),
    (_weights(ECN_RATE, later=False), "not just 1 - a_e"),
    (_weights(ECN_RATE, factor=False), "enters the slot with weight 1 - a_e"),
    (lambda epochs, alpha: [w * 2 for w in weights_right(epochs, alpha)], "your weights sum to 2; they must sum to 1"),
    (lambda epochs, alpha: [1 / epochs] * epochs, "the last weights should be"),
    (lambda epochs, alpha: weights_right(epochs, alpha)[1:], "return 4 weights, one per epoch"),
    (lambda epochs, alpha: 0.41, "one number per epoch"),
    (lambda epochs, alpha: None, "returned None"),
)


# --- exercise 10.2: the scaled schedule -------------------------------------------------------


def schedule_right(epochs):
    return max(1, round(5 * epochs / 60)), max(1, round(40 * epochs / 60))


def schedule_half_even(epochs):
    """Also right: numpy rounds halves to even too, as Python's round() (and so the trainer) does."""
    return tuple(max(1, int(np.round(e * epochs / 60))) for e in (5, 40))


def schedule_half_up(epochs):
    """Rounds halves up: agrees with the trainer except where 5/60 * epochs is a half (30, 54, 78, ... epochs)."""
    return tuple(max(1, math.floor(e * epochs / 60 + 0.5)) for e in (5, 40))


@pytest.mark.parametrize("epochs", [30, 54])
def test_schedule_half_up_disagrees_with_the_trainer_where_the_checker_looks(epochs):
    assert schedule_half_up(epochs) != (ECNConfig(epochs=epochs).knn_epoch, ECNConfig(epochs=epochs).decay_epoch)
    assert schedule_right(epochs) == (ECNConfig(epochs=epochs).knn_epoch, ECNConfig(epochs=epochs).decay_epoch)


@pytest.mark.parametrize("epochs", [1, 2, 3, 10, 12, 24, 30, 40, 54, 60, 100])
def test_schedule_the_exercise_asks_for_is_the_trainers(epochs):
    """The pair the exercise asks for (written out here, as a learner would) is what ECNConfig and train_source use."""
    assert schedule_right(epochs) == (ECNConfig(epochs=epochs).knn_epoch, ECNConfig(epochs=epochs).decay_epoch)


SCHEDULE_WRONG = (
    (lambda e: (5, 40), "you returned ECN's own \\(5, 40\\): scale them"),
    (lambda e: (max(1, int(5 * e / 60)), max(1, int(40 * e / 60))), "round to the NEAREST epoch"),
    (lambda e: (round(5 * e / 60), max(1, round(40 * e / 60))), "epoch 1 at the earliest"),
    (lambda e: (max(1, round(40 * e / 60)), max(1, round(5 * e / 60))), "the order is \\(knn_epoch, decay_epoch\\)"),
    (lambda e: (max(1, round(5 * e / 60)) + 1, max(1, round(40 * e / 60)) + 1), "epochs are counted from 0"),
    (lambda e: (round(5 * 60 / e), round(40 * 60 / e)), "scaled the wrong way"),
    (lambda e: 5 * e / 60, "return two numbers"),
    (lambda e: (5 * e / 60, 40 * e / 60), "epochs are whole numbers"),
    (lambda e: None, "returned None"),
    (schedule_half_up, r"for 30 epochs the kNN start, 5/60 \* 30 = 2.5, lies halfway.*tie to the even epoch \(2\)"),
    (lambda e: schedule_half_up(e) if e == 54 else schedule_right(e), r"for 54 epochs .* = 4.5.*\(4\); rounding "
                                                                      "halves up gives 5"),
)


# --- exercise 10.3: gains over source-only ----------------------------------------------------


def gain_right(table):
    base = table["source-only"]["mAP"]
    return {k: (v["mAP"] - base, 100 * (v["mAP"] - base) / base) for k, v in table.items() if k != "source-only"}


def gain_right_with_base(table):
    base = table["source-only"]["mAP"]
    return {k: (v["mAP"] - base, 100 * (v["mAP"] - base) / base) for k, v in table.items()}


def gain_by_ratio(table):
    """Also right: the relative gain from the ratio of the two mAPs, 100 * (mAP / baseline - 1)."""
    base = table["source-only"]["mAP"]
    gains = {}
    for name, row in table.items():
        if name != "source-only":
            gains[name] = (row["mAP"] - base, 100 * (row["mAP"] / base - 1))
    return gains


def _gain(fn):
    def answer(table):
        b = table["source-only"]
        return {k: fn(v, b) for k, v in table.items() if k != "source-only"}
    return answer


GAIN_WRONG = (
    (_gain(lambda v, b: (v["rank1"] - b["rank1"], 100 * (v["rank1"] - b["rank1"]) / b["rank1"])), "that is the rank-1 gain"),
    (_gain(lambda v, b: (b["mAP"] - v["mAP"], 100 * (b["mAP"] - v["mAP"]) / b["mAP"])), "the sign is reversed"),
    (_gain(lambda v, b: (v["mAP"] - b["mAP"], (v["mAP"] - b["mAP"]) / b["mAP"])), "multiply the fraction by 100"),
    (_gain(lambda v, b: (v["mAP"] - b["mAP"], 100 * (v["mAP"] - b["mAP"]) / v["mAP"])), "divide by the BASELINE's mAP"),
    (_gain(lambda v, b: (v["mAP"] - b["mAP"], v["mAP"] - b["mAP"])), "not the points again"),
    (_gain(lambda v, b: (v["mAP"] / b["mAP"], 100 * (v["mAP"] - b["mAP"]) / b["mAP"])),
     "the gain in points is mAP\\(E\\) - mAP\\(source-only\\)"),
    (lambda t: {"E": (5.0, 25.0)}, "no entry for 'E\\+C'"),
    (lambda t: {k: (1.0, 1.0) for k in t}, "its gain over itself is \\(0, 0\\)"),
    (lambda t: [1, 2], "return a dict .*, got list"),
    (lambda t: None, "returned None"),
)


def test_unattempted_stub_is_explained():
    def stub(*args):
        raise NotImplementedError()

    for checker in (checks.check_feature_weights, checks.check_scaled_schedule, checks.check_relative_gain):
        with pytest.raises(checks.ExerciseError, match=NOT_ATTEMPTED):
            checker(stub)


ANSWERS = {  # run by tests/test_answer_suites.py
    checks.check_feature_weights: Answers(right=(weights_right, weights_right_numpy, weights_simulated),
                                          wrong=WEIGHTS_WRONG),
    checks.check_scaled_schedule: Answers(right=(schedule_right, schedule_half_even), wrong=SCHEDULE_WRONG),
    checks.check_relative_gain: Answers(right=(gain_right, gain_right_with_base, gain_by_ratio), wrong=GAIN_WRONG),
}
