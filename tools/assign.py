#!/usr/bin/env python
"""Classroom assignments from the one source: the instructor's notebooks.

    python tools/assign.py release notebooks/*.ipynb --out build/assignments
    python tools/assign.py grade SUBMISSIONS_DIR --source notebooks --out build/grades.csv

The notebooks carry nbgrader's markup (see CONTRIBUTING.md): solution regions between
``### BEGIN SOLUTION`` / ``### END SOLUTION`` in cells whose metadata has
``nbgrader.solution = true``, graded test cells (``nbgrader.grade = true`` with points), and
optional ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS`` blocks. This tool reads the
same markup as nbgrader (so ``nbgrader generate_assignment`` works on these notebooks too)
and needs nothing but nbformat and nbclient:

* ``release`` writes student versions: each solution region becomes
  ``# YOUR CODE HERE`` + ``raise NotImplementedError()``, hidden tests are removed, outputs
  and execution counts are cleared.
* ``grade`` takes ``SUBMISSIONS_DIR/<student>/<notebook>.ipynb``, puts the instructor's
  graded cells back (hidden tests included, so a student cannot edit or delete them),
  executes each notebook in a fresh kernel, and writes one CSV row per graded cell:
  student, notebook, grade_id, points, max_points, and the checker's message on failure.
"""
from __future__ import annotations

import argparse
import copy
import csv
import os
import re
import sys
from pathlib import Path

import nbformat

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"


def _nbg(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def strip_solutions(source: str, *, markdown: bool = False) -> str:
    """Replace every solution region with the student stub, keeping its indentation."""
    out, inside = [], False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped == BEGIN_SOLUTION:
            if inside:
                raise ValueError("nested '### BEGIN SOLUTION'")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            if markdown:
                out.append(indent + "YOUR ANSWER HERE")
            else:
                out += [indent + "# YOUR CODE HERE", indent + "raise NotImplementedError()"]
        elif stripped == END_SOLUTION:
            if not inside:
                raise ValueError("'### END SOLUTION' without a BEGIN")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError("'### BEGIN SOLUTION' without an END")
    return "\n".join(out)


def strip_hidden_tests(source: str) -> str:
    """Remove hidden-test regions (the markers included)."""
    pattern = re.compile(rf"^[ \t]*{re.escape(BEGIN_HIDDEN)}[ \t]*\n.*?^[ \t]*{re.escape(END_HIDDEN)}[ \t]*\n?", re.S | re.M)
    stripped = pattern.sub("", source)
    if BEGIN_HIDDEN in stripped or END_HIDDEN in stripped:
        raise ValueError("unbalanced hidden-test markers")
    return stripped


def student_version(nb):
    """The student copy of an instructor notebook (a new notebook; the input is unchanged)."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        meta = _nbg(cell)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        if meta.get("solution"):
            cell.source = strip_solutions(cell.source, markdown=cell.cell_type == "markdown")
        elif any(line.strip() == BEGIN_SOLUTION for line in cell.source.splitlines()):
            raise ValueError(f"a cell has '{BEGIN_SOLUTION}' but no nbgrader solution metadata:\n{cell.source[:200]}")
        if meta.get("grade") and cell.cell_type == "code":
            cell.source = strip_hidden_tests(cell.source)
    return nb


def graded_cells(nb) -> dict[str, tuple[int, float]]:
    """grade_id -> (cell index, points) for every graded code cell."""
    return {
        _nbg(c)["grade_id"]: (i, float(_nbg(c).get("points", 0)))
        for i, c in enumerate(nb.cells)
        if _nbg(c).get("grade") and c.cell_type == "code"
    }


def restore_graded_cells(submission, source):
    """Put the instructor's graded cells (with hidden tests) back into a submission, by grade_id."""
    src = {gid: source.cells[i] for gid, (i, _) in graded_cells(source).items()}
    for j, cell in enumerate(submission.cells):
        gid = _nbg(cell).get("grade_id")
        if gid in src:
            submission.cells[j] = copy.deepcopy(src[gid])
    present = {_nbg(c).get("grade_id") for c in submission.cells}
    missing = [gid for gid in src if gid not in present]
    return submission, missing


def _error_message(cell) -> str:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return f"{out.get('ename')}: {out.get('evalue')}"
    return ""


def grade_notebook(path: Path, source_nb, *, timeout: int = 600) -> list[dict]:
    """Execute one submission (graded cells restored) and score each graded cell."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    nb, missing = restore_graded_cells(nb, source_nb)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(path.parent.resolve())}}).execute()
    rows = []
    points = graded_cells(source_nb)
    for cell in nb.cells:
        gid = _nbg(cell).get("grade_id")
        if gid in points and _nbg(cell).get("grade"):
            err = _error_message(cell)
            rows.append({"grade_id": gid, "points": 0.0 if err else points[gid][1], "max_points": points[gid][1], "message": err})
    rows += [{"grade_id": gid, "points": 0.0, "max_points": points[gid][1], "message": "graded cell deleted"} for gid in missing]
    return rows


def cmd_release(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for p in map(Path, args.notebooks):
        nb = nbformat.read(p, as_version=4)
        student = student_version(nb)
        nbformat.write(student, out / p.name)
        g = graded_cells(nb)
        print(f"{p.name}: {len(g)} graded cells, {sum(v[1] for v in g.values()):g} points -> {out / p.name}")
    return 0


def cmd_grade(args) -> int:
    subs, source_dir = Path(args.submissions), Path(args.source)
    if not subs.is_dir():
        raise SystemExit(f"no submissions folder {subs} (expected {subs}/<student>/<notebook>.ipynb)")
    rows = []
    for student_dir in sorted(d for d in subs.iterdir() if d.is_dir()):
        for path in sorted(student_dir.glob("*.ipynb")):
            src_path = source_dir / path.name
            if not src_path.exists():
                print(f"skipping {path}: no instructor notebook {src_path}", file=sys.stderr)
                continue
            for row in grade_notebook(path, nbformat.read(src_path, as_version=4), timeout=args.timeout):
                rows.append({"student": student_dir.name, "notebook": path.name, **row})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["student", "notebook", "grade_id", "points", "max_points", "message"])
        w.writeheader()
        w.writerows(rows)
    totals: dict[str, list[float]] = {}
    for r in rows:
        t = totals.setdefault(r["student"], [0.0, 0.0])
        t[0] += r["points"]
        t[1] += r["max_points"]
    for student, (got, best) in totals.items():
        print(f"{student}: {got:g} / {best:g}")
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("release", help="write student versions")
    r.add_argument("notebooks", nargs="+")
    r.add_argument("--out", default="build/assignments")
    g = sub.add_parser("grade", help="grade a folder of submissions")
    g.add_argument("submissions")
    g.add_argument("--source", default="notebooks")
    g.add_argument("--out", default="build/grades.csv")
    g.add_argument("--timeout", type=int, default=600)
    args = p.parse_args(argv)
    os.environ.setdefault("REIDLAB_PROFILE", "ci")  # grading runs at the quick sizes
    return cmd_release(args) if args.cmd == "release" else cmd_grade(args)


if __name__ == "__main__":
    sys.exit(main())
