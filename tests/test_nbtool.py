"""tools/nbtool.py: percent-format round trip (the authoring path of the notebooks)."""
import importlib.util
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("nbtool", ROOT / "tools" / "nbtool.py")
nbtool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nbtool)


def test_every_notebook_round_trips_through_the_text_format():
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        back = nbtool.from_percent(nbtool.to_percent(nb))
        assert [(c.cell_type, c.source) for c in back.cells] == [(c.cell_type, c.source) for c in nb.cells], path.name
        assert [c.metadata.get("nbgrader") for c in back.cells] == [c.metadata.get("nbgrader") for c in nb.cells]


def test_notebooks_follow_the_template():
    """Fixed opening (title, goal, setup cell) and closing (summary, exercises, references)."""
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        md = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        code = [c.source for c in nb.cells if c.cell_type == "code"]
        assert nb.cells[0].source.startswith(f"# {path.name[:2]} "), f"{path.name}: title cell"
        assert "**Goal.**" in nb.cells[0].source and "**Runtime.**" in nb.cells[0].source, path.name
        assert any("cfg = setup(" in c for c in code[:3]), f"{path.name}: setup cell among the first three"
        for heading in ("## Summary", "## Exercises", "## References"):
            assert heading in md, f"{path.name}: missing {heading}"
        assert all(c.execution_count is not None for c in nb.cells if c.cell_type == "code" and c.source.strip()), (
            f"{path.name}: committed without outputs from a full run"
        )
