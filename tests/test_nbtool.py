"""tools/nbtool.py: percent-format round trip (the authoring path of the notebooks)."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

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
        # nbval's markers are cell tags: the code a learner reads carries no test machinery
        assert not [c.source.splitlines()[0] for c in nb.cells if "NBVAL_" in c.source], f"{path.name}: # NBVAL_ comment"
        tags = [t for c in nb.cells for t in c.metadata.get("tags", [])]
        assert "nbval-check-output" in tags, f"{path.name}: no output is checked"
        setup_cell = next(c for c in nb.cells if c.cell_type == "code" and "cfg = setup(" in c.source)
        assert "nbval-ignore-output" in setup_cell.metadata.get("tags", []), f"{path.name}: the setup cell's output varies"


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


def test_run_reports_each_bad_notebook_and_runs_the_others(tmp_path):
    import nbformat
    good = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])
    good.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    failing = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 / 0")])
    slow = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import time; time.sleep(60)")])
    for name, nb in [("b_fails.ipynb", failing), ("c_slow.ipynb", slow), ("e_good.ipynb", good)]:
        nbformat.write(nb, tmp_path / name)
    (tmp_path / "d_not_json.ipynb").write_text("{ not json")
    paths = [tmp_path / n for n in ("a_missing.ipynb", "b_fails.ipynb", "c_slow.ipynb", "d_not_json.ipynb", "e_good.ipynb")]
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "nbtool.py"), "run", "--timeout", "5",
                           "--out", str(tmp_path / "out"), *map(str, paths)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    table = {line.split()[0]: line for line in proc.stdout.splitlines() if line.split()}
    assert "cannot read" in table["a_missing.ipynb"] and "cannot read" in table["d_not_json.ipynb"]
    assert "ZeroDivisionError" in table["b_fails.ipynb"] and "Timeout" in table["c_slow.ipynb"]
    assert table["e_good.ipynb"].split()[-1] == "yes" and "1/5 ok" in proc.stdout
    ran = nbformat.read(tmp_path / "out" / "e_good.ipynb", as_version=4)
    assert ran.cells[0].outputs[0]["text"] == "42\n"


def test_a_notebook_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    import nbformat
    from reidlab import files

    target = tmp_path / "nb.ipynb"
    old = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    nbtool.write_notebook(old, target)
    before = target.read_bytes()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    big = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("y = 2\n" * 10000)])
    with pytest.raises(files.DiskFullError, match="disk full"):
        nbtool.write_notebook(big, target)
    assert target.read_bytes() == before and list(tmp_path.iterdir()) == [target]
