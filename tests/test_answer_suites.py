"""Every graded exercise's checker against its suite of right and wrong answers (``tests/answers.py``).

The graded exercises are read from the notebooks (nbgrader's graded cells, each calling one
``checks.check_*``), so an exercise added without a suite fails here. Each right answer must be
accepted; each wrong answer refused with an :class:`~reidlab.lessons.checks.ExerciseError` whose
message names the mistake (the suite's regex).
"""
from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

from answers import MIN_RIGHT, MIN_WRONG, Answers
from reidlab.lessons.checks import ExerciseError

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def graded_checkers() -> dict[str, str]:
    """``"nbNN.check_name"`` -> the graded cell's grade id, for every graded cell of every notebook."""
    found = {}
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            meta = cell.get("metadata", {}).get("nbgrader", {})
            if cell["cell_type"] == "code" and meta.get("grade"):
                visible = "".join(cell["source"]).split("### BEGIN HIDDEN TESTS")[0]
                for name in set(re.findall(r"checks\.(check_\w+)\(", visible)):
                    found[f"nb{path.name[:2]}.{name}"] = meta["grade_id"]
    return found


def _name(check) -> str:
    return f"{check.__module__.rsplit('.', 1)[-1]}.{check.__name__}"


def suites() -> dict[str, tuple]:
    """``"nbNN.check_name"`` -> ``(checker, Answers)`` from the ``ANSWERS`` of every ``tests/test_checks*.py``."""
    merged: dict[str, tuple] = {}
    for path in sorted(TESTS.glob("test_checks*.py")):
        for check, answers in getattr(importlib.import_module(path.stem), "ANSWERS", {}).items():
            assert _name(check) not in merged, f"{_name(check)} has two suites"
            assert isinstance(answers, Answers), f"{path.name}: ANSWERS[{_name(check)}] is not an Answers"
            merged[_name(check)] = (check, answers)
    return merged


GRADED, SUITES = graded_checkers(), suites()
RIGHT = [(name, i) for name in sorted(SUITES) for i in range(len(SUITES[name][1].right))]
WRONG = [(name, i) for name in sorted(SUITES) for i in range(len(SUITES[name][1].wrong))]


def test_the_notebooks_have_graded_exercises():
    assert len(GRADED) >= 30  # 30 today; a parse that finds none would make the next test vacuous


def test_every_graded_exercise_has_a_suite():
    missing = sorted(f"{name} ({GRADED[name]})" for name in GRADED if name not in SUITES)
    assert not missing, (
        f"graded exercises without right and wrong answers in a tests/test_checks*.py ANSWERS dict "
        f"(>= {MIN_RIGHT} right, >= {MIN_WRONG} wrong; tests/answers.py): {missing}"
    )


@pytest.mark.parametrize("name, i", RIGHT, ids=[f"{n}-right{i}" for n, i in RIGHT])
def test_a_right_answer_is_accepted(name, i, capsys):
    check, answers = SUITES[name]
    check(answers.right[i])
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("name, i", WRONG, ids=[f"{n}-wrong{i}" for n, i in WRONG])
def test_a_wrong_answer_is_refused_with_its_mistake_named(name, i):
    check, answers = SUITES[name]
    answer, message = answers.wrong[i]
    with pytest.raises(ExerciseError, match=message):
        check(answer)
