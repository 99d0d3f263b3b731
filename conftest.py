"""Root pytest hooks: say how many notebook cells nbval re-executed, beside the unit tests, and
how long each notebook took (the series' budget under the ``ci`` profile is 90 s a notebook)."""
from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

NOTEBOOK_BUDGET_S = 90

_outcomes: Counter = Counter()
_notebooks: set[str] = set()
_seconds: defaultdict[str, float] = defaultdict(float)


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::", 1)[0]
    if path.endswith(".ipynb"):
        _seconds[path] += report.duration  # setup (the kernel's start), call and teardown of every cell
    if report.when != "call" and not (report.when == "setup" and report.outcome != "passed"):
        return
    kind = "notebook cells" if path.endswith(".ipynb") else "unit tests"
    if kind == "notebook cells":
        _notebooks.add(path)
    _outcomes[(kind, report.outcome)] += 1


def pytest_terminal_summary(terminalreporter):
    if not _outcomes:
        return
    parts = []
    for kind in ("unit tests", "notebook cells"):
        counts = {o: n for (k, o), n in _outcomes.items() if k == kind}
        if counts:
            detail = ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
            extra = f" in {len(_notebooks)} notebooks" if kind == "notebook cells" else ""
            parts.append(f"{kind}: {detail}{extra}")
    terminalreporter.write_line("; ".join(parts))
    if _seconds:
        times = ", ".join(f"{Path(p).name.split('_')[0]} {s:.0f} s" for p, s in sorted(_seconds.items()))
        over = [Path(p).stem for p, s in sorted(_seconds.items()) if s > NOTEBOOK_BUDGET_S]
        terminalreporter.write_line(
            f"seconds per notebook (kernel start included): {times}; "
            + (f"over the {NOTEBOOK_BUDGET_S} s budget: {', '.join(over)}" if over else f"all within {NOTEBOOK_BUDGET_S} s")
        )
