"""nbgrader itself accepts every notebook, as docs/INSTRUCTORS.md promises an instructor.

``tools/assign.py`` reads the same markup as nbgrader, but nbgrader is stricter in one way that
the tool is not: it scans *every* cell, markdown included, for its solution and hidden-test
markers, so a notebook whose text merely quotes a marker is rejected ("no end solution statement
found"). This test runs nbgrader's own ``generate_assignment`` over every notebook, in a course
folder laid out as the guide says, and compares nbgrader's student version with the one
``tools/assign.py release`` writes.

nbgrader is in the ``dev`` extra of ``pyproject.toml``; in an environment installed before it
was (or without the extra) the tests are skipped with a reason, not failed. nbgrader calls the
``alembic`` command for its gradebook, so the folder of this interpreter goes on the ``PATH``
(as activating the environment would). Cost: about 1 s per notebook.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

nbgrader_apps = pytest.importorskip("nbgrader.apps", reason="nbgrader is not installed: pip install -e '.[dev]'")
traitlets_config = pytest.importorskip("traitlets.config")

pytestmark = pytest.mark.e2e      # nbgrader's own app, end to end: `make test-e2e`
ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
spec = importlib.util.spec_from_file_location("assign", ROOT / "tools" / "assign.py")
assign = importlib.util.module_from_spec(spec)
spec.loader.exec_module(assign)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    """An nbgrader course folder with one assignment per notebook (source/<name>/<name>.ipynb)."""
    course = tmp_path_factory.mktemp("course")
    for path in NOTEBOOKS:
        (course / "source" / path.stem).mkdir(parents=True)
        shutil.copy(path, course / "source" / path.stem / path.name)
    config = traitlets_config.Config()
    config.CourseDirectory.root = str(course)
    config.CourseDirectory.course_id = "bn-reid"
    config.CourseDirectory.db_url = f"sqlite:///{course / 'gradebook.db'}"
    path_before = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), path_before])
    try:
        yield nbgrader_apps.NbGraderAPI(config=config), course
    finally:
        os.environ["PATH"] = path_before


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_nbgrader_generates_the_same_student_version_as_assign(api, path):
    nbgrader_api, course = api
    result = nbgrader_api.generate_assignment(path.stem)
    assert result["success"], f"nbgrader generate_assignment {path.stem} failed:\n{result.get('error', '')[-2000:]}"
    released = nbformat.read(course / "release" / path.stem / path.name, as_version=4)
    ours = assign.student_version(nbformat.read(path, as_version=4))
    assert [c.cell_type for c in released.cells] == [c.cell_type for c in ours.cells]
    for i, (theirs, mine) in enumerate(zip(released.cells, ours.cells)):
        assert theirs.source.rstrip() == mine.source.rstrip(), f"{path.name}, cell {i}: nbgrader's student version differs"
