"""Root pytest hooks: say how many notebook cells nbval re-executed, beside the unit tests."""
from __future__ import annotations

from collections import Counter

_outcomes: Counter = Counter()
_notebooks: set[str] = set()


def pytest_runtest_logreport(report):
    if report.when != "call" and not (report.when == "setup" and report.outcome != "passed"):
        return
    path = report.nodeid.split("::", 1)[0]
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
