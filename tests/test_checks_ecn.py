"""Notebook 10's exercise checkers: right answers pass, typical wrong answers fail with a message
that names the mistake; and the checkers agree with reidlab.ecn (the loss and the schedule)."""
from __future__ import annotations

import pytest
import torch

from reidlab.lessons.checks import NOT_ATTEMPTED
from reidlab.lessons.checks import nb10 as checks
from reidlab.ecn import ECNConfig, ecn_loss

# --- exercise 10.1: ECN's total loss ----------------------------------------------------------


def loss_right(loss_src, loss_tgt, lam):
    if loss_tgt is None:
        return loss_src
    return (1 - lam) * loss_src + lam * loss_tgt


def test_loss_right_answer_passes(capsys):
    checks.check_ecn_total_loss(loss_right)
    assert "correct" in capsys.readouterr().out


def test_loss_checker_agrees_with_the_trainer(capsys):
    """reidlab.ecn.ecn_loss is what train_ecn optimises: the checker must accept it."""
    checks.check_ecn_total_loss(ecn_loss)
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda s, t, lam: s if t is None else s + lam * t, "convex combination"),
        (lambda s, t, lam: s if t is None else lam * s + (1 - lam) * t, "swapped"),
        (lambda s, t, lam: s if t is None else (s + t) / 2, "plain average"),
        (lambda s, t, lam: s if t is None else s + t, "plain sum"),
        (lambda s, t, lam: s if t is None else ((1 - lam) * s + lam * t).item(), "return a tensor"),
        (lambda s, t, lam: s if t is None else torch.tensor(float(((1 - lam) * s + lam * t).detach())), "not connected"),
        (lambda s, t, lam: (1 - lam) * s + lam * t, "source-only"),
        (lambda s, t, lam: (1 - lam) * s + lam * (t if t is not None else 0), "weight 1"),
        (lambda s, t, lam: None, "return"),
    ],
)
def test_loss_wrong_answers_named(wrong, message):
    with pytest.raises(checks.ExerciseError, match=message):
        checks.check_ecn_total_loss(wrong)


# --- exercise 10.2: the scaled schedule -------------------------------------------------------


def schedule_right(epochs):
    return max(1, round(5 * epochs / 60)), max(1, round(40 * epochs / 60))


def test_schedule_right_answer_passes(capsys):
    checks.check_scaled_schedule(schedule_right)
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("epochs", [1, 2, 3, 10, 12, 24, 40, 60, 100])
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

    for checker in (checks.check_ecn_total_loss, checks.check_scaled_schedule, checks.check_relative_gain):
        with pytest.raises(checks.ExerciseError, match=NOT_ATTEMPTED):
            checker(stub)
