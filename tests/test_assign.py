"""tools/assign.py: student versions generated from the instructor notebooks, and grading."""
import ast
import csv
import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("assign", ROOT / "tools" / "assign.py")
assign = importlib.util.module_from_spec(spec)
spec.loader.exec_module(assign)
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_solution_regions_become_stubs_at_their_indentation():
    src = "def f(x):\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION\n\ny = 2"
    assert assign.strip_solutions(src) == "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()\n\ny = 2"
    with pytest.raises(ValueError, match="without an END"):
        assign.strip_solutions("### BEGIN SOLUTION\nx = 1")
    with pytest.raises(ValueError, match="without a BEGIN"):
        assign.strip_solutions("x = 1\n### END SOLUTION")


def test_hidden_tests_are_removed():
    src = "check(a)\n### BEGIN HIDDEN TESTS\nassert secret(a)\n### END HIDDEN TESTS\nprint('ok')"
    assert assign.strip_hidden_tests(src) == "check(a)\nprint('ok')"
    with pytest.raises(ValueError, match="unbalanced"):
        assign.strip_hidden_tests("### BEGIN HIDDEN TESTS\nassert x")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_student_versions_hide_every_solution(path):
    nb = nbformat.read(path, as_version=4)
    student = assign.student_version(nb)
    text = "\n".join(c.source for c in student.cells if c.cell_type == "code")
    assert "### BEGIN SOLUTION" not in text and "### BEGIN HIDDEN TESTS" not in text
    assert len(student.cells) == len(nb.cells)
    assert assign.graded_cells(student).keys() == assign.graded_cells(nb).keys()
    assert all(not c.outputs and c.execution_count is None for c in student.cells if c.cell_type == "code")
    n_solutions = sum(bool(assign._nbg(c).get("solution")) for c in nb.cells)
    assert text.count("raise NotImplementedError()") >= sum(
        c.source.count("### BEGIN SOLUTION") for c in nb.cells if c.cell_type == "code"
    )
    if path.name != "00_overview.ipynb":
        assert n_solutions >= 2, "each notebook has 2-3 exercises"


def test_grading_scores_a_solved_and_an_unsolved_submission(tmp_path):
    """Both submissions start from the generated student version, each run in a fresh kernel:
    alice pasted the solutions in, bob handed it back untouched. (01: cheap, no data, 3 exercises.)"""
    source = ROOT / "notebooks" / "01_batchnorm_from_scratch.ipynb"
    subs = tmp_path / "submissions"
    (subs / "alice").mkdir(parents=True)
    (subs / "bob").mkdir()
    src_nb = nbformat.read(source, as_version=4)
    student = assign.student_version(src_nb)
    nbformat.write(assign.paste_solutions(student, src_nb), subs / "alice" / source.name)
    nbformat.write(student, subs / "bob" / source.name)
    out = tmp_path / "grades.csv"
    assert assign.main(["grade", str(subs), "--source", str(source.parent), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    graded = assign.graded_cells(src_nb)
    for student_name in ("alice", "bob"):
        mine = [r for r in rows if r["student"] == student_name]
        assert sorted(r["grade_id"] for r in mine) == sorted(graded)
        assert all(float(r["max_points"]) == graded[r["grade_id"]][1] for r in mine)
    for r in rows:
        if r["student"] == "alice":
            assert float(r["points"]) == float(r["max_points"]) and r["message"] == "", r
        else:
            assert float(r["points"]) == 0.0
            assert r["message"].startswith("ExerciseError: exercise not attempted yet"), r["message"]
    assert sum(float(r["max_points"]) for r in rows if r["student"] == "alice") == 5.0  # 2 + 1 + 2 points


# --- solutions pasted back -------------------------------------------------------------------


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_pasting_the_solutions_back_gives_the_instructor_notebook(path):
    source = nbformat.read(path, as_version=4)
    student = assign.student_version(source)
    solved = assign.paste_solutions(student, source)
    graded = {i for i, _ in assign.graded_cells(source).values()}
    for i, (a, b) in enumerate(zip(solved.cells, source.cells)):
        assert a.cell_type == b.cell_type
        if i not in graded:  # graded cells lack their hidden tests until grading restores them
            assert a.source == b.source, f"cell {i} differs after pasting the solutions back"
    restored, missing = assign.restore_graded_cells(solved, source)
    assert not missing
    assert [c.source for c in restored.cells] == [c.source for c in source.cells]
    def stubs(nb):
        return sum(c.source.count("raise NotImplementedError()") for c in nb.cells)

    regions = sum(c.source.count("### BEGIN SOLUTION") for c in source.cells if c.cell_type == "code")
    assert stubs(student) - stubs(source) == regions, "paste_solutions leaves the student version unchanged"


def _nb(*cells):
    nb = nbformat.v4.new_notebook()
    for kind, source, meta in cells:
        cell = (nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell)(source)
        if meta:
            cell.metadata["nbgrader"] = {"schema_version": 3, "locked": False, **meta}
        nb.cells.append(cell)
    return nb


def _exercise_nb(lead="**Exercise 1.2 (update the running statistics, medium).** Write `f(x)`.", hidden=False):
    test = "checks.check_thing(f)"
    if hidden:
        test += "\n### BEGIN HIDDEN TESTS\nassert f(1) == 2\n### END HIDDEN TESTS"
    solution = "def f(x):\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION"
    return _nb(
        ("md", "## Exercises\n\n" + lead, None),
        ("code", solution, {"solution": True, "grade": False, "grade_id": "ex1_2_solution"}),
        ("code", test, {"solution": False, "grade": True, "grade_id": "ex1_2_test", "points": 2, "locked": True}),
    )


def test_paste_solutions_refuses_notebooks_that_do_not_match():
    source = _exercise_nb()
    student = assign.student_version(source)
    assert "raise NotImplementedError()" in student.cells[1].source
    assert assign.paste_solutions(student, source).cells[1].source == source.cells[1].source
    assert "raise NotImplementedError()" in student.cells[1].source, "the student version is not modified"
    del student.cells[1]
    with pytest.raises(ValueError, match="ex1_2_solution.*missing"):
        assign.paste_solutions(student, source)
    other = assign.student_version(source)
    other.cells[1].metadata["nbgrader"]["grade_id"] = "ex9_9_solution"
    with pytest.raises(ValueError, match="missing"):
        assign.paste_solutions(other, source)


# --- the exercise table --------------------------------------------------------------------


def test_exercise_rows_come_from_the_lead_and_the_graded_cell():
    (row,) = assign.exercises(_exercise_nb(hidden=True), "01_x")
    assert row == {"notebook": "01_x", "number": "1.2", "title": "update the running statistics",
                   "difficulty": "medium", "answer": "f", "checker": "check_thing", "hidden": True,
                   "grade_id": "ex1_2_test", "points": 2.0}
    (row,) = assign.exercises(_exercise_nb("**Exercise 5.1 (a freeze that survives train(), hard).**"), "05_x")
    assert (row["title"], row["difficulty"], row["hidden"]) == ("a freeze that survives train()", "hard", False)


@pytest.mark.parametrize("lead", [
    "**Exercise 1.2.** Write `f(x)`.",                             # no title, no difficulty
    "**Exercise 1.2 (update the running statistics).** Write it.",  # no difficulty
    "**Exercise 1.2 (medium).** Write it.",                        # no title
    "**Exercise 1.2 (update, tricky).** Write it.",                # not a known difficulty
])
def test_a_lead_without_title_or_difficulty_is_refused_with_the_expected_form(lead):
    expected = r"^01_x: .*title and a difficulty \(easy \| medium \| hard\).*Exercise 1\.2 \("
    with pytest.raises(ValueError, match=expected):
        assign.exercises(_exercise_nb(lead), "01_x")


def test_a_graded_cell_without_its_exercise_is_refused():
    nb = _exercise_nb("Write `f(x)`.")
    with pytest.raises(ValueError, match="no '\\*\\*Exercise"):
        assign.exercises(nb, "01_x")
    del nb.cells[1]
    with pytest.raises(ValueError, match="no solution cell above"):
        assign.exercises(nb, "01_x")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_graded_exercise_has_a_title_difficulty_checker_and_points(path):
    rows = assign.exercises(nbformat.read(path, as_version=4), path.stem)
    assert len(rows) == len(assign.graded_cells(nbformat.read(path, as_version=4)))
    for r in rows:
        assert r["title"] and r["difficulty"] in assign.DIFFICULTIES and r["points"] > 0, r
        assert r["checker"].startswith("check_") and r["answer"], f"{r['grade_id']}: graded cells call a checker"
        assert r["number"].split(".")[0] == str(int(path.name[:2])), f"{r['grade_id']}: exercise {r['number']}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_answer_is_a_function_the_solution_cell_defines(path):
    """A graded cell passes its checker a function written in a solution cell, never a top-level
    value: the student stub then raises inside the checker, whose @checker decorator explains it
    (an undefined top-level answer would give a bare NameError in the graded cell)."""
    nb = nbformat.read(path, as_version=4)
    defined = {
        node.name
        for i in assign.solution_cells(nb).values() if nb.cells[i].cell_type == "code"
        for node in ast.parse(nb.cells[i].source).body if isinstance(node, ast.FunctionDef)
    }
    for r in assign.exercises(nb, path.stem):
        assert r["answer"] in defined, f"{r['grade_id']}: {r['answer']!r} is not a function of a solution cell"


def test_the_instructor_guide_table_is_generated_from_the_current_notebooks():
    guide = (ROOT / "docs" / "INSTRUCTORS.md").read_text()
    current = assign.replace_table(guide, assign.exercise_table(NOTEBOOKS))
    assert guide == current, "the exercise table in docs/INSTRUCTORS.md is out of date: run `make instructors-table`"


def test_table_update_rewrites_only_the_generated_block(tmp_path, capsys):
    doc = tmp_path / "guide.md"
    doc.write_text(f"# Guide\n\nintro\n{assign.TABLE_BEGIN}\nold table\n{assign.TABLE_END}\n\nafter\n")
    nb = tmp_path / "01_x.ipynb"
    nbformat.write(_exercise_nb(), nb)
    assert assign.main(["table", str(nb), "--update", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Guide\n\nintro\n") and text.endswith(f"{assign.TABLE_END}\n\nafter\n")
    assert "old table" not in text and "| 01_x | 1.2 | update the running statistics | `f` |" in text
    assert "1 graded exercise (0 easy, 1 medium, 0 hard) in 1 notebook, 2 points in all." in text
    assert assign.main(["table", str(nb)]) == 0
    assert "| 01_x | 1.2 |" in capsys.readouterr().out
    doc.write_text("no markers here")
    with pytest.raises(ValueError, match="expected one"):
        assign.replace_table(doc.read_text(), "x")
