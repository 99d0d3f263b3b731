"""The generated student versions work as assignments, executed as a student would run them.

For every notebook (one test each, so a new notebook is covered as soon as it lands):

1. the student version (``tools/assign.py``'s ``student_version``) runs top to bottom in a
   fresh kernel under the ``ci`` profile, in a folder of its own (as handed out);
2. no cell above the first exercise's solution cell fails: the lesson runs as written;
3. every graded cell fails, and with an :class:`reidlab.lessons.checks.ExerciseError` saying the
   exercise is not attempted yet (the ``@checker`` decorator's explanation of the stub), not a
   bare ``NotImplementedError`` / ``NameError``;
4. then, in the same kernel, the instructor's solutions are pasted back by grade_id (and the
   graded cells restored with their hidden tests, as ``grade`` does) and every cell from the
   first solution cell on is run again: nothing fails, so the assignment can be solved as
   handed out.

Step 4 reuses the kernel instead of executing the solved notebook from scratch: the cells
above the first solution are the same in both versions, and they are the expensive part.
A fresh-kernel run of a solved student version is in ``test_assign.py`` (grading test).

This file is separate from ``test_assign.py`` so that ``pytest -n 2 --dist loadfile`` runs
it beside the nbval runs of the notebooks. Cost: about one ci run per notebook.
"""
from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("assign", ROOT / "tools" / "assign.py")
assign = importlib.util.module_from_spec(spec)
spec.loader.exec_module(assign)
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
pytestmark = pytest.mark.notebooks     # whole notebooks run here: `make test-lowest` runs the unit tests only
# The data cache the notebooks (and nbval) use, read before conftest points it at tmp_path:
# a student version trains exactly what its notebook trains, so it reuses the same cache.
DATA_DIR = os.environ.get("REIDLAB_DATA_DIR")
CELL_TIMEOUT = 300


def _error(cell) -> tuple[str, str] | None:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return out["ename"], out["evalue"]
    return None


def _head(cell) -> str:
    return cell.source.strip().splitlines()[0][:80] if cell.source.strip() else "(empty)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_student_version_runs_explains_and_can_be_solved(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("REIDLAB_PROFILE", "ci")
    if DATA_DIR:
        monkeypatch.setenv("REIDLAB_DATA_DIR", DATA_DIR)
    else:
        monkeypatch.delenv("REIDLAB_DATA_DIR", raising=False)
    source = nbformat.read(path, as_version=4)
    graded = assign.graded_cells(source)
    first = assign.first_solution_index(source)
    if path.name != "00_overview.ipynb":
        assert graded and first is not None, "every notebook has graded exercises"
    if first is None:
        return
    student = assign.student_version(source)
    nbformat.write(student, tmp_path / path.name)  # the handed-out copy, in a folder of its own
    solved = assign.restore_graded_cells(assign.paste_solutions(student, source), source)[0]

    client = NotebookClient(student, timeout=CELL_TIMEOUT, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    with client.setup_kernel():
        for i, cell in enumerate(student.cells):
            client.execute_cell(cell, i)
        t_student = time.perf_counter() - t0
        errors = [_error(c) for c in student.cells]
        client.nb = solved  # nbclient stores each executed cell back into client.nb
        for i in range(first, len(solved.cells)):
            client.execute_cell(solved.cells[i], i)
    print(f"\n{path.name}: student version {t_student:.1f} s, solutions pasted back "
          f"{time.perf_counter() - t0 - t_student:.1f} s")

    before = [(i, _head(student.cells[i]), e) for i, e in enumerate(errors[:first]) if e]
    assert not before, f"cells above the first exercise fail in the student version: {before}"
    for gid, (i, _) in graded.items():
        err = errors[i]
        assert err is not None, f"{gid}: the graded cell passes in the student version (a stub passed the checker?)"
        ename, evalue = err
        assert ename == "ExerciseError" and evalue.startswith("exercise not attempted yet"), (
            f"{gid}: the unattempted exercise fails with {ename}: {evalue!r}, not the explanation; does the graded "
            f"cell pass the learner's function to a @checker of reidlab.lessons.checks.nbNN?"
        )
    after = [(i, _head(c), _error(c)) for i, c in enumerate(solved.cells) if i >= first and _error(c)]
    assert not after, f"with the solutions pasted back, cells still fail: {after}"
    for gid, (i, _) in graded.items():
        text = "".join(o.get("text", "") for o in solved.cells[i].outputs if o.get("output_type") == "stream")
        assert "correct" in text, f"{gid}: the checker did not confirm the pasted solution: {text!r}"
