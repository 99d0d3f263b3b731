"""Notebook 10's exercise checkers: right answers pass, typical wrong answers fail with a message
that names the mistake; and the checkers agree with the library (the memory update and the schedule)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

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


@pytest.mark.parametrize("answer", [weights_right, weights_right_numpy, weights_simulated])
def test_weights_right_answers_pass(answer, capsys):
    checks.check_feature_weights(answer)
    assert "correct" in capsys.readouterr().out


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


@pytest.mark.parametrize(
    "wrong, message",
    [
        (_weights(ECN_RATE, reverse=True), "reversed"),
        (_weights(ECN_RATE, swap=True), "swapped"),
        (_weights(lambda e, alpha: alpha * (e + 1)), "counted from 0"),
        (_weights(lambda e, alpha: alpha), "not alpha in every epoch"),
        (_weights(lambda e, alpha: 0.0 if e == 0 else alpha), "constant"),
        (_weights(ECN_RATE, later=False), "not just 1 - a_e"),
        (_weights(ECN_RATE, factor=False), "enters the slot with weight 1 - a_e"),
        (lambda epochs, alpha: [w * 2 for w in weights_right(epochs, alpha)], "sum to 1"),
        (lambda epochs, alpha: [1 / epochs] * epochs, "sum to|should be"),
        (lambda epochs, alpha: weights_right(epochs, alpha)[1:], "one per epoch"),
        (lambda epochs, alpha: 0.41, "one number per epoch"),
        (lambda epochs, alpha: None, "returned None"),
    ],
)
def test_weights_wrong_answers_named(wrong, message):
    with pytest.raises(checks.ExerciseError, match=message):
        checks.check_feature_weights(wrong)


# --- exercise 10.2: the scaled schedule -------------------------------------------------------


def schedule_right(epochs):
    return max(1, round(5 * epochs / 60)), max(1, round(40 * epochs / 60))


def schedule_half_even(epochs):
    """Also right: numpy rounds halves to even too, as Python's round() (and so the trainer) does."""
    return tuple(max(1, int(np.round(e * epochs / 60))) for e in (5, 40))


def schedule_half_up(epochs):
    """Rounds halves up: agrees with the trainer except where 5/60 * epochs is a half (30, 54, 78, ... epochs)."""
    return tuple(max(1, math.floor(e * epochs / 60 + 0.5)) for e in (5, 40))


def test_schedule_right_answer_passes(capsys):
    checks.check_scaled_schedule(schedule_right)
    checks.check_scaled_schedule(schedule_half_even)
    assert capsys.readouterr().out.splitlines() == [
        "correct: ECN's schedule scaled: kNN from round(5/60 * E) (at least 1), LR step at round(40/60 * E)"] * 2


@pytest.mark.parametrize("epochs", [30, 54])
def test_schedule_half_up_disagrees_with_the_trainer_where_the_checker_looks(epochs):
    assert schedule_half_up(epochs) != (ECNConfig(epochs=epochs).knn_epoch, ECNConfig(epochs=epochs).decay_epoch)
    assert schedule_right(epochs) == (ECNConfig(epochs=epochs).knn_epoch, ECNConfig(epochs=epochs).decay_epoch)


@pytest.mark.parametrize("epochs", [1, 2, 3, 10, 12, 24, 30, 40, 54, 60, 100])
def test_schedule_the_exercise_asks_for_is_the_trainers(epochs):
    """The pair the exercise asks for (written out here, as a learner would) is what ECNConfig and train_source use."""
    assert schedule_right(epochs) == (ECNConfig(epochs=epochs).knn_epoch, ECNConfig(epochs=epochs).decay_epoch)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda e: (5, 40), "scale them"),
        (lambda e: (max(1, int(5 * e / 60)), max(1, int(40 * e / 60))), "NEAREST"),
        (lambda e: (round(5 * e / 60), max(1, round(40 * e / 60))), "epoch 1 at the earliest"),
        (lambda e: (max(1, round(40 * e / 60)), max(1, round(5 * e / 60))), "order"),
        (lambda e: (max(1, round(5 * e / 60)) + 1, max(1, round(40 * e / 60)) + 1), "counted from 0"),
        (lambda e: (round(5 * 60 / e), round(40 * 60 / e)), "wrong way"),
        (lambda e: 5 * e / 60, "two numbers"),
        (lambda e: (5 * e / 60, 40 * e / 60), "whole"),
        (lambda e: None, "return"),
        (schedule_half_up, r"for 30 epochs the kNN start, 5/60 \* 30 = 2.5, lies halfway.*tie to the even epoch \(2\)"),
        (lambda e: schedule_half_up(e) if e == 54 else schedule_right(e), r"for 54 epochs .* = 4.5.*\(4\); rounding "
                                                                          "halves up gives 5"),
    ],
)
def test_schedule_wrong_answers_named(wrong, message):
    with pytest.raises(checks.ExerciseError, match=message):
        checks.check_scaled_schedule(wrong)


# --- exercise 10.3: gains over source-only ----------------------------------------------------


def gain_right(table):
    base = table["source-only"]["mAP"]
    return {k: (v["mAP"] - base, 100 * (v["mAP"] - base) / base) for k, v in table.items() if k != "source-only"}


def gain_right_with_base(table):
    base = table["source-only"]["mAP"]
    return {k: (v["mAP"] - base, 100 * (v["mAP"] - base) / base) for k, v in table.items()}


@pytest.mark.parametrize("answer", [gain_right, gain_right_with_base])
def test_gain_right_answers_pass(answer, capsys):
    checks.check_relative_gain(answer)
    assert "correct" in capsys.readouterr().out


def _gain(fn):
    def answer(table):
        b = table["source-only"]
        return {k: fn(v, b) for k, v in table.items() if k != "source-only"}
    return answer


@pytest.mark.parametrize(
    "wrong, message",
    [
        (_gain(lambda v, b: (v["rank1"] - b["rank1"], 100 * (v["rank1"] - b["rank1"]) / b["rank1"])), "rank-1"),
        (_gain(lambda v, b: (b["mAP"] - v["mAP"], 100 * (b["mAP"] - v["mAP"]) / b["mAP"])), "sign"),
        (_gain(lambda v, b: (v["mAP"] - b["mAP"], (v["mAP"] - b["mAP"]) / b["mAP"])), "multiply the fraction by 100"),
        (_gain(lambda v, b: (v["mAP"] - b["mAP"], 100 * (v["mAP"] - b["mAP"]) / v["mAP"])), "BASELINE"),
        (_gain(lambda v, b: (v["mAP"] - b["mAP"], v["mAP"] - b["mAP"])), "not the points again"),
        (_gain(lambda v, b: (v["mAP"] / b["mAP"], 100 * (v["mAP"] - b["mAP"]) / b["mAP"])), "gain in points"),
        (lambda t: {"E": (5.0, 25.0)}, "no entry"),
        (lambda t: {k: (1.0, 1.0) for k in t}, "baseline"),
        (lambda t: [1, 2], "return a dict"),
        (lambda t: None, "return"),
    ],
)
def test_gain_wrong_answers_named(wrong, message):
    with pytest.raises(checks.ExerciseError, match=message):
        checks.check_relative_gain(wrong)


def test_unattempted_stub_is_explained():
    def stub(*args):
        raise NotImplementedError()

    for checker in (checks.check_feature_weights, checks.check_scaled_schedule, checks.check_relative_gain):
        with pytest.raises(checks.ExerciseError, match=NOT_ATTEMPTED):
            checker(stub)
