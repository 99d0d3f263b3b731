import pytest
import torch

from reidlab import checks


def stable(scores, t):
    z = scores / t
    z = z - z.max(-1, keepdim=True).values
    return z.exp() / z.exp().sum(-1, keepdim=True)


def test_correct_softmax_passes(capsys):
    checks.check_softmax_temperature(stable)
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda s, t: torch.softmax(s * t, -1), "temperature divides"),
        (lambda s, t: torch.softmax(s / t, 0), "dim=-1"),
        (lambda s, t: (s / t).exp() / (s / t).exp().sum(-1, keepdim=True), "overflows"),
        (lambda s, t: None, "return"),
        (lambda s, t: torch.softmax(s / t, -1)[:, :2], "shape"),
    ],
)
def test_wrong_answers_get_a_specific_message(wrong, message):
    with pytest.raises(checks.ExerciseError, match=message):
        checks.check_softmax_temperature(wrong)
