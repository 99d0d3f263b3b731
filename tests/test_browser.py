"""Sliders tested as a person uses them: JupyterLab + ipywidgets in headless Chromium.

For every notebook that has sliders we start JupyterLab on 127.0.0.1 (free port, random
token), open the notebook, run all cells, wait for each slider to render, move it with the
arrow keys and assert that the figure below it changed. Screenshots go to build/browser/
for a person to look at. The server we started is stopped by its own PID.

Needs Debian's ``chromium`` and the ``playwright`` Python package (its own browser download
cannot work offline; we drive the system Chromium through ``executable_path``). Skipped when
either is missing; ``.ci/run`` installs both so CI runs it. Marker: ``browser``.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "build" / "browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed"),
]


def slider_notebooks() -> list[str]:
    """Notebooks whose code calls slider_plot (read from the files, so new ones are covered)."""
    found = []
    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        if any("slider_plot(" in "".join(c["source"]) for c in cells if c["cell_type"] == "code"):
            found.append(path.name)
    return found


BROKEN = "zz_broken_slider.ipynb"


def _write_broken_notebook(path: Path) -> None:
    """A notebook whose slider callback ignores the slider: the figure never changes."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "from reidlab.lessons.widgets import Slider, slider_plot\n"
        "def draw(x):\n"
        "    fig, ax = plt.subplots(figsize=(3, 2))\n"
        "    ax.plot([0, 1], [0, 1])  # bug: x is ignored\n"
        "    return fig\n"
        "sp = slider_plot(draw, x=Slider(1.0, 0.0, 2.0))"
    )]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on 127.0.0.1 serving notebooks/; yields (base_url, token)."""
    port, token = _free_port(), secrets.token_hex(16)
    workdir = tmp_path_factory.mktemp("lab")
    # Serve copies: JupyterLab autosaves, and tests never write into the tracked tree.
    served = workdir / "notebooks"
    shutil.copytree(ROOT / "notebooks", served, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    _write_broken_notebook(served / BROKEN)
    # Render every cell (JupyterLab 4 virtualises long notebooks, leaving off-screen widgets unrendered).
    settings = workdir / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    env = dict(os.environ, REIDLAB_PROFILE="ci", JUPYTER_CONFIG_DIR=str(workdir / "config"),
               JUPYTER_RUNTIME_DIR=str(workdir / "runtime"), JUPYTERLAB_SETTINGS_DIR=str(workdir / "settings"))
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={served}",
           "--ServerApp.open_browser=False", "--LabApp.news_url=", "--LabServerApp.workspaces_dir=" + str(workdir),
           "--allow-root"]
    log = open(workdir / "lab.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("JupyterLab did not start:\n" + (workdir / "lab.log").read_text()[-3000:])
                time.sleep(0.5)
        yield base, token
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the process group we started, nothing else
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_FLAGS)
        yield b
        b.close()


def _run_all(page) -> None:
    page.locator(".jp-NotebookPanel").first.wait_for(timeout=60_000)
    # A fresh server may ask which kernel to start; accept the notebook's own (python3).
    dialog = page.locator(".jp-Dialog").filter(has_text="Select Kernel")
    try:
        dialog.wait_for(timeout=10_000)
        dialog.get_by_role("button", name="Select").click()
    except Exception:  # no dialog: the kernel started by itself
        pass
    page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(timeout=60_000)
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()


def _wait_until(condition, seconds: float, message: str) -> None:
    deadline = time.time() + seconds
    while not condition():
        if time.time() > deadline:
            raise AssertionError(message)
        time.sleep(0.25)


def _figure_after(slider):
    """The PNG of the first figure output after the slider's cell output area."""
    cell = slider.locator("xpath=ancestor::div[contains(@class,'jp-CodeCell')]")
    return cell.locator(".jp-OutputArea-output img").last


def _exercise_sliders(browser, base: str, token: str, notebook: str) -> int:
    """Open, run all, move every slider; raise AssertionError naming the first that does not redraw."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    stem = notebook.removesuffix(".ipynb")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(120_000)
    try:
        page.goto(f"{base}/lab/tree/{notebook}?token={token}&reset")
        _run_all(page)
        sliders = page.locator(".jupyter-widgets.widget-slider")
        sliders.first.wait_for(timeout=90_000)
        # wait for the whole notebook to finish (no prompt shows [*])
        _wait_until(lambda: all("*" not in t for t in page.locator(".jp-InputArea-prompt").all_inner_texts()),
                    300, f"{notebook}: cells still running after 300 s")
        page.screenshot(path=str(SHOTS / f"{stem}-before.png"))
        n = sliders.count()
        for i in range(n):
            slider = sliders.nth(i)
            slider.scroll_into_view_if_needed()
            img = _figure_after(slider)
            img.wait_for()
            before = img.get_attribute("src")
            readout = slider.locator(".widget-readout")
            value_before = readout.inner_text()
            handle = slider.locator(".noUi-handle").first
            handle.focus()
            for _ in range(5):
                handle.press("ArrowRight")
            _wait_until(lambda: readout.inner_text() != value_before, 30, f"{notebook}: slider {i} did not move"
                        f" (readout stayed {value_before})")
            # JupyterLab replaces the <img> node on update, so re-query the locator each time.
            _wait_until(lambda: img.get_attribute("src") != before, 60,
                        f"{notebook}: slider {i} moved but its figure did not change")
        page.screenshot(path=str(SHOTS / f"{stem}-after.png"))
        return n
    except Exception:
        page.screenshot(path=str(SHOTS / f"{stem}-failed.png"))
        raise
    finally:
        page.close()


@pytest.mark.parametrize("notebook", slider_notebooks())
def test_sliders_redraw_their_figure(lab, browser, notebook):
    base, token = lab
    assert _exercise_sliders(browser, base, token, notebook) > 0


def test_a_broken_slider_callback_fails_the_test(lab, browser):
    """A test of the test: a draw function that ignores its slider must be caught."""
    base, token = lab
    with pytest.raises(AssertionError, match="moved but its figure did not change"):
        _exercise_sliders(browser, base, token, BROKEN)
