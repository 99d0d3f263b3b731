#!/usr/bin/env python
"""Classroom assignments from the one source: the instructor's notebooks.

    python tools/assign.py release notebooks/*.ipynb --out build/assignments
    python tools/assign.py grade SUBMISSIONS_DIR --source notebooks --out build/grades.csv
    python tools/assign.py table notebooks/*.ipynb [--update docs/INSTRUCTORS.md]

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
* ``table`` prints the exercises as a markdown table (title and difficulty from each
  exercise's bold lead ``**Exercise 1.2 (title, medium).**``, points from the graded cells);
  ``--update FILE`` rewrites the generated block of ``FILE`` (``make instructors-table``).

``paste_solutions`` does what a diligent student does (the instructor's solutions typed into
the student version); the tests use it to check that the student versions can be solved.
"""
from __future__ import annotations

import argparse
import ast
import copy
import csv
import io
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
    """Put the instructor's graded cells (with hidden tests) back into a submission, by grade_id.

    The first cell with a grade_id becomes the instructor's; a copy of it further down (a
    duplicated graded cell) loses its grade markup, so each grade_id is scored once.
    Returns ``(submission, missing grade_ids)``.
    """
    src = {gid: source.cells[i] for gid, (i, _) in graded_cells(source).items()}
    seen: set[str] = set()
    for j, cell in enumerate(submission.cells):
        gid = _nbg(cell).get("grade_id")
        if gid in src and gid not in seen:
            submission.cells[j] = copy.deepcopy(src[gid])
            seen.add(gid)
        elif gid in seen:
            cell.metadata.pop("nbgrader", None)
    missing = [gid for gid in src if gid not in seen]
    return submission, missing


def solution_cells(nb) -> dict[str, int]:
    """grade_id -> cell index for every solution cell (code or markdown)."""
    return {_nbg(c)["grade_id"]: i for i, c in enumerate(nb.cells) if _nbg(c).get("solution")}


def first_solution_index(nb) -> int | None:
    """Index of the first solution cell: everything above it runs the same in the student version."""
    return min(solution_cells(nb).values(), default=None)


def paste_solutions(student, source):
    """The student version with the instructor's solutions typed back in, matched by grade_id.

    A new notebook; ``student`` is unchanged. Graded cells are left as they are (put the
    hidden tests back with :func:`restore_graded_cells`, as grading does).
    """
    solved = copy.deepcopy(student)
    wanted = {gid: source.cells[i].source for gid, i in solution_cells(source).items()}
    found = solution_cells(solved)
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise ValueError(f"solution cells {missing} of the instructor notebook are missing from the student version")
    for gid, i in found.items():
        if gid not in wanted:
            raise ValueError(f"solution cell {gid!r} of the student version is not in the instructor notebook")
        solved.cells[i].source = wanted[gid]
    return solved


# --- the exercise table (docs/INSTRUCTORS.md) ---------------------------------------------

DIFFICULTIES = ("easy", "medium", "hard")
#: An exercise's bold lead, e.g. ``**Exercise 1.2 (update the running statistics, medium).**``.
EXERCISE_LEAD = re.compile(r"\*\*Exercise\s+(?P<number>\d+\.\d+)\s*(?:\((?P<paren>(?:[^()]|\([^()]*\))*)\))?\s*\.?\*\*")
TABLE_BEGIN = "<!-- BEGIN exercise table: generated by `make instructors-table`, do not edit by hand -->"
TABLE_END = "<!-- END exercise table -->"


def parse_exercise_lead(markdown: str) -> dict | None:
    """Number, title and difficulty of the last exercise lead in a markdown cell (None if it has none)."""
    leads = list(EXERCISE_LEAD.finditer(markdown))
    if not leads:
        return None
    lead = leads[-1]
    title, _, difficulty = (lead["paren"] or "").rpartition(", ")
    if difficulty.strip() not in DIFFICULTIES or not title.strip():
        raise ValueError(
            f"exercise lead {lead.group(0)!r} needs a title and a difficulty ({' | '.join(DIFFICULTIES)}), "
            f"e.g. **Exercise {lead['number']} (a short title, medium).** (CONTRIBUTING.md, Exercises)"
        )
    return {"number": lead["number"], "title": " ".join(title.split()), "difficulty": difficulty.strip()}


def _checker_call(source: str) -> tuple[str, str]:
    """(checker name, its first argument as written) of the first ``check_*`` call in a graded cell."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return "", ""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            if name.startswith("check_"):
                return name, ast.unparse(node.args[0]) if node.args else ""
    return "", ""


def exercises(nb, notebook: str = "") -> list[dict]:
    """One row per graded cell: the exercise it grades (from the markdown above its solution) and its points.

    Raises ``ValueError`` naming the cell when a graded cell has no solution cell above it or the
    exercise's bold lead lacks a title or a difficulty.
    """
    rows, solutions = [], sorted(solution_cells(nb).values())
    for gid, (i, points) in graded_cells(nb).items():
        above = [j for j in solutions if j < i]
        if not above:
            raise ValueError(f"{notebook}: graded cell {gid!r} has no solution cell above it")
        lead = None
        for j in range(above[-1] - 1, -1, -1):  # the nearest markdown cell with an exercise lead
            if nb.cells[j].cell_type != "markdown":
                continue
            try:
                lead = parse_exercise_lead(nb.cells[j].source)
            except ValueError as err:
                raise ValueError(f"{notebook}: {err}") from None
            if lead:
                break
        if lead is None:
            raise ValueError(
                f"{notebook}: no '**Exercise N.K (title, difficulty).**' lead above the solution of {gid!r}"
            )
        checker, answer = _checker_call(nb.cells[i].source)
        hidden = BEGIN_HIDDEN in nb.cells[i].source
        rows.append({"notebook": notebook, **lead, "answer": answer, "checker": checker, "hidden": hidden,
                     "grade_id": gid, "points": points})
    return rows


def _cell_text(text: str) -> str:
    return text.replace("|", "\\|")  # a bar would end the table cell


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("s" if n != 1 else "")


def exercise_table(paths) -> str:
    """The markdown table of every graded exercise in ``paths``, with a totals line."""
    rows = [r for p in map(Path, paths) for r in exercises(nbformat.read(p, as_version=4), p.stem)]
    lines = [
        "| notebook | exercise | what it asks | answer | checker | hidden tests | difficulty | points | grade_id |",
        "|---|---|---|---|---|---|---|---:|---|",
    ]
    for r in rows:
        answer = f"`{r['answer']}`" if r["answer"] else "—"
        checker = f"`{r['checker']}`" if r["checker"] else "—"
        hidden = "yes" if r["hidden"] else "—"
        lines.append(f"| {r['notebook']} | {r['number']} | {_cell_text(r['title'])} | {_cell_text(answer)} | "
                     f"{checker} | {hidden} | {r['difficulty']} | {r['points']:g} | `{r['grade_id']}` |")
    by_level = ", ".join(f"{sum(r['difficulty'] == d for r in rows)} {d}" for d in DIFFICULTIES)
    notebooks = len({r["notebook"] for r in rows})
    lines += ["", f"{_plural(len(rows), 'graded exercise')} ({by_level}) in {_plural(notebooks, 'notebook')}, "
                  f"{sum(r['points'] for r in rows):g} points in all."]
    return "\n".join(lines)


def replace_table(text: str, table: str) -> str:
    """``text`` with the block between :data:`TABLE_BEGIN` and :data:`TABLE_END` replaced by ``table``."""
    if text.count(TABLE_BEGIN) != 1 or text.count(TABLE_END) != 1:
        raise ValueError(f"expected one {TABLE_BEGIN!r} and one {TABLE_END!r} line")
    head, rest = text.split(TABLE_BEGIN)
    _, tail = rest.split(TABLE_END)
    return f"{head}{TABLE_BEGIN}\n{table}\n{TABLE_END}{tail}"


def _error_message(cell) -> str:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            return f"{out.get('ename')}: {out.get('evalue')}"
    return ""


def grade_notebook(path: Path, source_nb, *, timeout: int = 600, keep: Path | None = None) -> list[dict]:
    """Execute one submission (graded cells restored) and score each graded cell once.

    A cell past ``timeout`` (an endless loop) is interrupted and the notebook goes on, so the
    graded cells after it are still scored. A kernel that dies scores what it had not reached 0.
    With ``keep``, the executed notebook (outputs and error messages included) is written there,
    for the instructor to read what a student's cells printed.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    nb = nbformat.read(path, as_version=4)
    nb, missing = restore_graded_cells(nb, source_nb)
    died = ""
    try:
        NotebookClient(nb, timeout=timeout, interrupt_on_timeout=True, kernel_name="python3", allow_errors=True,
                       resources={"metadata": {"path": str(path.parent.resolve())}}).execute()
    except DeadKernelError as err:
        died = f"the kernel died ({str(err).strip().splitlines()[0] if str(err).strip() else 'no message'})"
    if keep is not None:
        keep.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, keep)
    rows = []
    points = graded_cells(source_nb)
    for cell in nb.cells:
        gid = _nbg(cell).get("grade_id")
        if gid in points and _nbg(cell).get("grade"):
            ran = cell.get("execution_count") is not None
            err = _error_message(cell) or ("" if ran else died or "not executed")
            rows.append({"grade_id": gid, "points": 0.0 if err else points[gid][1], "max_points": points[gid][1],
                         "message": err})
    rows += [{"grade_id": gid, "points": 0.0, "max_points": points[gid][1], "message": "graded cell deleted"}
             for gid in missing]
    return rows


#: The line of a notebook that imports its checkers (``from reidlab.lessons.checks import nb05 as checks``).
_CHECKS_IMPORT = re.compile(r"^\s*(from reidlab\.lessons\.checks import \w+ as checks|import reidlab\.lessons\.checks\S*)\s*$",
                            re.M)


def check_grading_kernel(sources: dict, *, timeout: int = 120) -> None:
    """Refuse to grade when the kernel that will run the submissions cannot import their checkers.

    Without the project installed in the ``python3`` kernel's environment every graded cell
    fails on its import, and every student would score 0 as if all had answered wrong. One
    kernel runs each instructor notebook's import line first; ``SystemExit`` says what failed.
    """
    from nbclient import NotebookClient

    lines = sorted({m.group(1).strip() for nb in sources.values() for c in nb.cells if c.cell_type == "code"
                    for m in _CHECKS_IMPORT.finditer(c.source)})
    if not lines:
        return
    probe = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(line) for line in lines])
    NotebookClient(probe, timeout=timeout, kernel_name="python3", allow_errors=True).execute()
    for line, cell in zip(lines, probe.cells):
        if (err := _error_message(cell)):
            raise SystemExit(
                f"error: the grading kernel cannot run `{line}` ({err}), so every submission would score 0. "
                "Install the project into the environment of the python3 kernel (`make install`, or "
                "`pip install -e .` there) and grade again; nothing was graded")


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def match_submission(nb, sources: dict) -> str | None:
    """The instructor notebook a submission answers: the one sharing the most grade ids with it.

    A copy saved as ``name (1).ipynb`` or renamed keeps its cells' grade ids, so it still
    finds its notebook. ``None`` when it shares none.
    """
    ids = {_nbg(c).get("grade_id") for c in nb.cells} - {None}
    shared = {name: len(ids & set(graded_cells(src))) for name, src in sources.items()}
    best = max(shared, key=shared.get, default=None)
    return best if best is not None and shared[best] > 0 else None


def _zero_rows(source_nb, message: str) -> list[dict]:
    return [{"grade_id": gid, "points": 0.0, "max_points": pts, "message": message}
            for gid, (_, pts) in graded_cells(source_nb).items()]


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


def cmd_table(args) -> int:
    try:
        table = exercise_table(sorted(args.notebooks))
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    if args.update:
        from reidlab.files import atomic_write_text

        path = Path(args.update)
        atomic_write_text(path, replace_table(path.read_text(), table))  # a full disk keeps the old guide whole
        print(f"updated the exercise table in {path}")
    else:
        print(table)
    return 0


def cmd_grade(args) -> int:
    """Grade every student folder; a row for every student, 0 with the reason where nothing could be graded.

    Everything is read before anything runs: the instructor notebooks, then every submission
    (its bytes), so a submission that deletes files cannot change what the others are graded
    against. Each submission then runs on a copy in a temporary folder of its own. Exits 1
    when any student or notebook could not be graded as handed in (the CSV says why).
    """
    import tempfile

    from reidlab.files import atomic_write_text

    subs, source_dir = Path(args.submissions), Path(args.source)
    if not subs.is_dir():
        raise SystemExit(f"no submissions folder {subs} (expected {subs}/<student>/<notebook>.ipynb)")
    sources = {}
    for p in sorted(source_dir.glob("*.ipynb")):
        try:
            nb = nbformat.read(p, as_version=4)
        except (OSError, ValueError) as err:
            raise SystemExit(f"cannot read the instructor notebook {p}: {err}") from None
        if graded_cells(nb):
            sources[p.name] = nb
    if not sources:
        raise SystemExit(f"no instructor notebook with graded cells in {source_dir}")
    check_grading_kernel(sources)

    plan: list[tuple[str, str, bytes | None, str]] = []  # (student, notebook, submission bytes, problem)
    problems = 0
    for student_dir in sorted(d for d in subs.iterdir() if d.is_dir()):
        student, found = student_dir.name, {}
        files = sorted(p for p in student_dir.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
        for path in files:
            data = path.read_bytes()
            try:
                nb = nbformat.reads(data.decode("utf-8"), as_version=4)
            except (UnicodeDecodeError, ValueError) as err:  # empty, truncated, not a notebook
                name = path.name if path.name in sources else None
                reason = f"{path.name} is not a readable notebook ({str(err).splitlines()[0][:120] or 'empty'})"
                plan.append((student, name or path.name, None, reason))
                problems += 1
                continue
            name = path.name if path.name in sources else match_submission(nb, sources)
            if name is None:
                print(f"{student}: {path.name} answers none of the notebooks in {source_dir}; not graded",
                      file=sys.stderr)
                problems += 1
            elif name in found:
                print(f"{student}: {path.name} is a second submission for {name}; grading {found[name][0]}",
                      file=sys.stderr)
                problems += 1
            else:
                found[name] = (path.name, data)
        for name, (_, data) in sorted(found.items()):
            plan.append((student, name, data, ""))
        if not any(s == student for s, *_ in plan):
            plan.append((student, "", None, "no notebook to grade in this folder"))
            problems += 1

    rows = []
    for k, (student, name, data, problem) in enumerate(plan, 1):
        print(f"[{k}/{len(plan)}] {student} {name}".rstrip(), flush=True)
        if data is None:
            graded = _zero_rows(sources[name], problem) if name in sources else [
                {"grade_id": "", "points": 0.0, "max_points": 0.0, "message": problem}]
        else:
            # a folder of its own, removed afterwards whatever the submission did to it
            with tempfile.TemporaryDirectory(prefix="grade-", ignore_cleanup_errors=True) as tmp:
                copy_path = Path(tmp) / name
                copy_path.write_bytes(data)
                try:
                    graded = grade_notebook(copy_path, sources[name], timeout=args.timeout,
                                            keep=Path(args.out).parent / "graded" / student / name)
                except Exception as err:  # noqa: BLE001 - this submission scores 0 with the reason; the others go on
                    graded = _zero_rows(sources[name], f"could not be graded: {type(err).__name__}: {err}"[:300])
                    problems += 1
        rows += [{"student": student, "notebook": name, **row} for row in graded]

    atomic_write_text(args.out, _csv(rows, ["student", "notebook", "grade_id", "points", "max_points", "message"]))
    totals: dict[str, dict] = {}
    for r in rows:
        t = totals.setdefault(r["student"], {"student": r["student"], "points": 0.0, "max_points": 0.0})
        t["points"] += r["points"]
        t["max_points"] += r["max_points"]
    for t in totals.values():
        print(f"{t['student']}: {t['points']:g} / {t['max_points']:g}")
    total_path = Path(args.out).with_name(Path(args.out).stem + "-totals.csv")
    atomic_write_text(total_path, _csv(list(totals.values()), ["student", "points", "max_points"]))
    print(f"wrote {args.out}, {total_path} (one total per student) and the executed notebooks in "
          f"{Path(args.out).parent / 'graded'}" + (f"; {problems} submission problem(s), see the messages" if problems else ""))
    return 1 if problems else 0


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
    t = sub.add_parser("table", help="print the exercise table (markdown) of the notebooks")
    t.add_argument("notebooks", nargs="+")
    t.add_argument("--update", metavar="FILE", help="rewrite the generated table block of FILE instead")
    args = p.parse_args(argv)
    os.environ.setdefault("REIDLAB_PROFILE", "ci")  # grading runs at the quick sizes
    return {"release": cmd_release, "grade": cmd_grade, "table": cmd_table}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
