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


def test_key_figures_come_from_the_saving_cells_output():
    import base64

    import pytest

    png = base64.b64encode(b"\x89PNG fake").decode()
    nb = {"cells": [
        {"cell_type": "code", "source": ["fig = draw()\n", 'viz.savefig(fig, "07_demo")\n'],
         "outputs": [{"output_type": "display_data", "data": {"image/png": png, "text/plain": "<Figure>"}}]},
        {"cell_type": "code", "source": ["print('no figure here')"], "outputs": []},
    ]}
    assert nbtool.key_figures(nb) == {"07_demo": b"\x89PNG fake"}
    nb["cells"][0]["outputs"].append(nb["cells"][0]["outputs"][0])        # two figures: which one is meant?
    with pytest.raises(ValueError, match="2 PNG outputs"):
        nbtool.key_figures(nb)
    nb["cells"][0]["outputs"] = []                                          # not executed
    with pytest.raises(ValueError, match="0 PNG outputs"):
        nbtool.key_figures(nb)


def test_committed_figures_are_the_committed_notebooks_figures():
    """figures/ (README, site) must be what the notebooks show: run `make figures` after re-executing one."""
    import json

    expected = {}
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        expected.update(nbtool.key_figures(json.loads(path.read_text())))
    assert len(expected) == 12
    stale = [name for name, png in expected.items() if (ROOT / "figures" / f"{name}.png").read_bytes() != png]
    assert not stale, f"figures/ differs from the notebooks' outputs for {stale}: run `make figures`"
