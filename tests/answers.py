"""What every graded exercise's checker is tested with (``tests/test_answer_suites.py`` runs them).

Each ``tests/test_checks*.py`` file declares, in a module-level ``ANSWERS`` dict, one
:class:`Answers` per checker of its notebook: at least two *different* right answers the checker
must accept (two ways a learner may solve it, not the same code twice), and at least three
plausible wrong ones (the mistakes learners make, and the shortcuts the exercise forbids), each
with the regular expression its message must match, so that the feedback names the mistake.
A graded exercise whose checker has no such suite fails ``test_answer_suites.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

MIN_RIGHT, MIN_WRONG = 2, 3


@dataclass(frozen=True)
class Answers:
    """Right answers a checker must accept and wrong answers ``(answer, message regex)`` it must refuse."""

    right: tuple[Callable[..., Any], ...]
    wrong: tuple[tuple[Callable[..., Any], str], ...]

    def __post_init__(self) -> None:
        if len(self.right) < MIN_RIGHT or len({getattr(r, "__code__", r) for r in self.right}) < len(self.right):
            raise ValueError(f"give at least {MIN_RIGHT} different right answers, got {len(self.right)}")
        if len(self.wrong) < MIN_WRONG:
            raise ValueError(f"give at least {MIN_WRONG} wrong answers, got {len(self.wrong)}")
