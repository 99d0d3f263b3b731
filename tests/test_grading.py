"""`make grade` (tools/assign.py grade) with real submissions built here: no student vanishes,
no grade is counted twice, and one bad submission costs only its own grade.

The instructor notebook is a tiny one (two exercises, 2 + 1 points) so that each submission
costs one kernel start; the real notebooks are graded in tests/test_assign.py.
"""
from __future__ import annotations

import copy
import csv
import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("assign", ROOT / "tools" / "assign.py")
assign = importlib.util.module_from_spec(spec)
spec.loader.exec_module(assign)


def _cell(source: str, **nbgrader):
    cell = nbformat.v4.new_code_cell(source)
    if nbgrader:
        cell.metadata["nbgrader"] = {"schema_version": 3, "locked": False, "solution": False, "grade": False,
                                     **nbgrader}
    return cell


def instructor() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(cells=[
        _cell("x = 1"),
        _cell("def answer():\n    ### BEGIN SOLUTION\n    return 42\n    ### END SOLUTION", grade_id="ex1", solution=True),
        _cell("assert answer() == 42\n### BEGIN HIDDEN TESTS\nassert answer() + 0 == 42\n### END HIDDEN TESTS",
              grade_id="ex1_test", grade=True, points=2, locked=True),
        _cell("def double(v):\n    ### BEGIN SOLUTION\n    return 2 * v\n    ### END SOLUTION", grade_id="ex2", solution=True),
        _cell("assert double(4) == 8", grade_id="ex2_test", grade=True, points=1, locked=True),
    ])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def solved(extra_first_cell: str | None = None) -> nbformat.NotebookNode:
    src = instructor()
    nb = assign.paste_solutions(assign.student_version(src), src)
    if extra_first_cell is not None:
        nb.cells.insert(1, _cell(extra_first_cell))
    return nb


@pytest.fixture
def course(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    nbformat.write(instructor(), source / "tiny.ipynb")
    subs = tmp_path / "submissions"
    subs.mkdir()
    return source, subs


def _grade(source: Path, subs: Path, out: Path, timeout: int = 60) -> tuple[int, dict]:
    code = assign.main(["grade", str(subs), "--source", str(source), "--out", str(out), "--timeout", str(timeout)])
    totals: dict[str, list] = {}
    for r in csv.DictReader(open(out)):
        t = totals.setdefault(r["student"], [0.0, 0.0, []])
        t[0] += float(r["points"])
        t[1] += float(r["max_points"])
        t[2].append(r["message"])
    return code, totals


def _write(subs: Path, student: str, nb, name: str = "tiny.ipynb") -> None:
    (subs / student).mkdir(exist_ok=True)
    nbformat.write(nb, subs / student / name)


def test_totals_and_the_executed_notebooks_are_kept_for_the_instructor(course, tmp_path):
    source, subs = course
    _write(subs, "ann", solved())
    wrong = solved()
    wrong.cells[3].source = wrong.cells[3].source.replace("return 2 * v", "return v + v + 1")  # ex2 wrong
    _write(subs, "bo, jr", wrong)  # a comma in the name: the CSV must quote it
    code, totals = _grade(source, subs, tmp_path / "g.csv")
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "g-totals.csv")))
    assert [(r["student"], float(r["points"]), float(r["max_points"])) for r in rows] == [
        ("ann", 3.0, 3.0), ("bo, jr", 2.0, 3.0)]
    assert {r["student"]: [float(r["points"]), float(r["max_points"])] for r in rows} == {
        k: v[:2] for k, v in totals.items()}
    kept = nbformat.read(tmp_path / "graded" / "bo, jr" / "tiny.ipynb", as_version=4)
    failed = [c for c in kept.cells if c.get("outputs") and c.outputs[0].get("output_type") == "error"]
    assert len(failed) == 1 and "assert double(4) == 8" in failed[0].source  # what the student's cell printed


def test_a_duplicated_graded_cell_is_scored_once(course, tmp_path):
    source, subs = course
    nb = solved()
    for copy_id in ("copy-1", "copy-2"):  # the 2-point graded cell pasted twice more
        nb.cells.append(copy.deepcopy(nb.cells[2]))
        nb.cells[-1].id = copy_id
    _write(subs, "dup", nb)
    code, totals = _grade(source, subs, tmp_path / "g.csv")
    assert code == 0 and totals["dup"][:2] == [3.0, 3.0]


def test_a_submission_cannot_remove_the_instructor_notebooks_or_other_students(course, tmp_path):
    source, subs = course
    wipe = f"import shutil\nshutil.rmtree({str(source)!r}, ignore_errors=True)\nshutil.rmtree({str(subs / 'zoe')!r}, ignore_errors=True)"
    _write(subs, "mallory", solved(wipe))
    _write(subs, "zoe", solved())
    code, totals = _grade(source, subs, tmp_path / "g.csv")
    assert code == 0 and totals["zoe"][:2] == [3.0, 3.0] and totals["mallory"][:2] == [3.0, 3.0]


def test_renamed_copies_are_graded_and_unreadable_or_missing_work_is_a_zero_with_a_reason(course, tmp_path):
    source, subs = course
    _write(subs, "copy", solved(), name="tiny (1).ipynb")
    _write(subs, "renamed", solved(), name="my work.ipynb")
    (subs / "empty").mkdir()
    (subs / "empty" / "tiny.ipynb").write_bytes(b"")
    (subs / "broken").mkdir()
    (subs / "broken" / "tiny.ipynb").write_text('{"cells": [')
    (subs / "nothing").mkdir()
    _write(subs, "ok", solved())
    code, totals = _grade(source, subs, tmp_path / "g.csv")
    assert code == 1  # some work could not be graded: the instructor must look
    assert set(totals) == {"copy", "renamed", "empty", "broken", "nothing", "ok"}  # nobody vanished
    assert totals["copy"][:2] == totals["renamed"][:2] == totals["ok"][:2] == [3.0, 3.0]
    assert totals["empty"][:2] == totals["broken"][:2] == [0.0, 3.0]
    assert all("not a readable notebook" in m for m in totals["empty"][2] + totals["broken"][2])
    assert totals["nothing"][0] == 0 and "no notebook to grade" in totals["nothing"][2][0]


def test_an_endless_loop_or_a_dead_kernel_costs_only_that_students_points(course, tmp_path):
    source, subs = course
    loop = solved()
    loop.cells[1].source = "def answer():\n    while True:\n        pass"  # ex1's solution never returns
    _write(subs, "loops", loop)
    _write(subs, "dies", solved("import os\nos._exit(1)"))
    _write(subs, "ok", solved())
    code, totals = _grade(source, subs, tmp_path / "g.csv", timeout=3)
    assert totals["ok"][:2] == [3.0, 3.0]
    assert totals["loops"][:2] == [1.0, 3.0]  # ex1's graded cell interrupted, ex2 still scored
    assert totals["dies"][:2] == [0.0, 3.0] and all("kernel died" in m for m in totals["dies"][2])


def test_grading_is_refused_when_the_kernel_cannot_import_the_checkers(course, tmp_path, capsys):
    source, subs = course
    nb = instructor()
    nb.cells.insert(0, _cell("from reidlab.lessons.checks import nb99 as checks"))  # as in a kernel without the project
    nbformat.write(nb, source / "tiny.ipynb")
    (subs / "ann").mkdir()
    nbformat.write(solved(), subs / "ann" / "tiny.ipynb")
    out = tmp_path / "grades.csv"
    with pytest.raises(SystemExit, match="cannot run `from reidlab.lessons.checks import nb99 as checks`.*nothing was graded"):
        assign.main(["grade", str(subs), "--source", str(source), "--out", str(out)])
    assert not out.exists()  # no CSV of zeros
    # the real import line passes the check
    nb.cells[0] = _cell("from reidlab.lessons.checks import nb05 as checks")
    nbformat.write(nb, source / "tiny.ipynb")
    assert assign.main(["grade", str(subs), "--source", str(source), "--out", str(out)]) == 0
    assert "ann: 3 / 3" in capsys.readouterr().out
