"""tools/assign.py: student versions generated from the instructor notebooks, and grading."""
import csv
import importlib.util
import shutil
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
    source = ROOT / "notebooks" / "00_overview.ipynb"
    subs = tmp_path / "submissions"
    (subs / "alice").mkdir(parents=True)
    (subs / "bob").mkdir()
    shutil.copy(source, subs / "alice" / source.name)  # the solutions pasted back in
    nbformat.write(assign.student_version(nbformat.read(source, as_version=4)), subs / "bob" / source.name)
    out = tmp_path / "grades.csv"
    assert assign.main(["grade", str(subs), "--source", str(source.parent), "--out", str(out)]) == 0
    rows = {r["student"]: r for r in csv.DictReader(open(out))}
    assert float(rows["alice"]["points"]) == float(rows["alice"]["max_points"]) == 1.0
    assert rows["alice"]["message"] == ""
    assert float(rows["bob"]["points"]) == 0.0 and "NotImplementedError" in rows["bob"]["message"]
