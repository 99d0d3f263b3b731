"""The static site (``make site``, tools/site.py), tested as a reader uses it.

The first tests check the staging rules without building anything. The browser tests build
the site (or take ``build/site`` when its recorded input hash is current), serve it on
127.0.0.1 and open the index and every notebook page in headless Chromium with every request
to another host refused, so that what passes here also reads offline: every image loaded,
no traceback and no raw widget repr on any page, every internal link (and its #anchor)
resolves, MathJax typeset the maths, each notebook page links its .ipynb and its neighbours,
and the offline search finds ``track_running_stats``. Screenshots go to build/site-shots/.
"""
from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import re
import shutil
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("site_tool", ROOT / "tools" / "site.py")
site_tool = importlib.util.module_from_spec(spec)
spec.loader.exec_module(site_tool)

NOTEBOOKS = [p.stem for p in site_tool.notebooks()]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = ROOT / "build" / "site-shots"
WIDGET_REPR = re.compile(r"\b(VBox|HBox|FloatSlider|FloatLogSlider|IntSlider|Output)\((children|value|layout)=")


# ---- staging rules (no build) ----

def test_links_point_at_site_pages_or_become_text():
    text = ("[08](notebooks/08_reid_primer.ipynb) [guide](docs/INSTRUCTORS.md#grading) "
            "[web](https://example.org) [tool](tools/assign.py) ![fig](figures/x.png) [top](#the-series)")
    out = site_tool.rewrite_links(text, "README.md")
    assert "[08](08_reid_primer.ipynb)" in out
    assert "[guide](INSTRUCTORS.md#grading)" in out
    assert "[web](https://example.org)" in out and "[top](#the-series)" in out
    assert "[tool]" not in out and "tool (`tools/assign.py` in the repository)" in out
    assert "![fig](figures/x.png)" in out                      # images are not links
    # relative to the page's own folder: docs/INSTRUCTORS.md links ../CONTRIBUTING.md
    assert site_tool.rewrite_links("[c](../CONTRIBUTING.md#x)", "docs/INSTRUCTORS.md") == "[c](CONTRIBUTING.md#x)"


def test_a_staged_notebook_has_no_widget_view_and_links_its_original(tmp_path):
    src = ROOT / "notebooks" / "03_momentum_running_stats.ipynb"
    site_tool.stage_notebook(src, tmp_path / src.name)
    original, staged = json.loads(src.read_text()), json.loads((tmp_path / src.name).read_text())
    assert "widgets" in original["metadata"] and "widgets" not in staged["metadata"]
    kinds = [k for c in staged["cells"] for o in c.get("outputs", []) for k in o.get("data", {})]
    assert site_tool.WIDGET_VIEW not in kinds and "text/markdown" in kinds
    # every other output is kept as it was: the committed run's figures and prints
    pngs = [k for c in original["cells"] for o in c.get("outputs", []) for k in o.get("data", {}) if k == "image/png"]
    assert kinds.count("image/png") == len(pngs) > 0
    assert staged["cells"][0] == original["cells"][0]            # the title stays the page title
    assert f'href="notebooks/{src.name}"' in "".join(staged["cells"][1]["source"])


def test_the_api_covers_the_library_and_never_the_lessons():
    modules = site_tool.library_modules()
    assert {"reidlab", "reidlab.bn", "reidlab.dsbn", "reidlab.memory", "reidlab.ecn.pretrain"} <= set(modules)
    assert not [m for m in modules if m.startswith("reidlab.lessons")]


def test_the_readme_says_which_profile_each_notebook_was_committed_from():
    """The series table's last column must match what each notebook's setup cell printed."""
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        m = re.match(r"\| (\d\d) \| \[[^]]+\]\(notebooks/(\S+)\.ipynb\) \|.*\| ([^|]+) \|\s*$", line)
        if m:
            rows[m.group(2)] = m.group(3).strip()
    assert sorted(rows) == NOTEBOOKS
    for name, said in rows.items():
        nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
        setup = next(c for c in nb["cells"] if c["cell_type"] == "code" and "setup(" in "".join(c["source"]))
        printed = "".join("".join(o.get("text", "")) for o in setup["outputs"])
        profile = re.search(r"^profile:\s+(\w+)", printed, re.M).group(1)
        device = re.search(r"^device:\s+(\w+)", printed, re.M).group(1)
        assert said == f"{profile}, {device}", f"README says {name} is from {said!r}; its setup cell printed {profile}, {device}"


# ---- the built site, in a browser ----

@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    built = ROOT / "build" / "site"
    stamp = built / ".inputs"
    if stamp.exists() and stamp.read_text().strip() == site_tool.inputs_hash():
        return built
    out = tmp_path_factory.mktemp("site") / "site"
    assert site_tool.main(["--out", str(out)]) == 0, "the site did not build (Sphinx warnings are errors)"
    return out


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed")
    playwright = pytest.importorskip("playwright.sync_api")
    from test_browser import CHROME_FLAGS

    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_FLAGS)
        yield b
        b.close()


def _open(browser, base: str, path: str):
    """Open a page with every request to another host refused; return (page, refused URLs)."""
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    refused: list[str] = []

    def route(r):
        if r.request.url.startswith(base):
            r.continue_()
        else:
            refused.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(f"{base}/{path}", wait_until="load")
    return page, refused


def _check_page(page, base: str, path: str, refused: list[str]) -> dict:
    """Everything every page must satisfy; returns counts for the caller's own checks."""
    images = page.eval_on_selector_all(
        "img", "els => els.map(e => ({src: e.getAttribute('src'), w: e.naturalWidth, complete: e.complete}))")
    broken = [i["src"] for i in images if not i["complete"] or i["w"] == 0]
    assert not broken, f"{path}: images that did not load: {broken}"
    text = page.inner_text("body")
    assert "Traceback (most recent call last)" not in text, f"{path} shows a Python traceback"
    outputs = "\n".join(page.locator(".cell_output").all_inner_texts())   # prose may quote a repr
    assert not WIDGET_REPR.search(outputs), f"{path} shows a raw widget repr: {WIDGET_REPR.search(outputs).group(0)}"
    assert not refused, f"{path} asked another host for {refused[:3]} (the site must read offline)"
    hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
    for href in set(hrefs):
        if re.match(r"^[a-z]+:", href):
            continue
        url = urllib.parse.urljoin(f"{base}/{path}", href)
        target, _, anchor = url.partition("#")
        with urllib.request.urlopen(target, timeout=10) as r:           # raises on 404
            body = r.read()
        if anchor and target.endswith(".html"):
            ids = set(re.findall(rb'id="([^"]+)"', body))
            assert urllib.parse.unquote(anchor).encode() in ids, f"{path}: link {href} names a missing anchor"
    return {"images": len(images), "text": text}


def _pngs(name: str) -> int:
    nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    return sum("image/png" in o.get("data", {}) for c in nb["cells"] for o in c.get("outputs", []))


@pytest.mark.browser
def test_the_index_maps_the_series_and_shows_the_figures(site, server, browser):
    page, refused = _open(browser, server, "index.html")
    try:
        found = _check_page(page, server, "index.html", refused)
        assert found["images"] >= 6                                     # the README's figures
        linked = set(page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))"))
        assert {f"{n}.html" for n in NOTEBOOKS} <= linked, "the index links every notebook page"
        for page_name in ("INSTRUCTORS.html", "ARCHITECTURE.html", "api/index.html"):
            assert page_name in linked
        assert "make lab" in found["text"] and "conda" in found["text"]
    finally:
        page.close()


@pytest.mark.browser
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_each_notebook_page(site, server, browser, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page, refused = _open(browser, server, f"{name}.html")
    try:
        found = _check_page(page, server, f"{name}.html", refused)
        outputs = page.locator(".cell_output img").count()
        assert outputs == _pngs(name), f"{name}: {outputs} figures on the page, {_pngs(name)} in the notebook"
        assert "profile:" in found["text"], "the setup cell's output (profile, device) is on the page"
        # the download link gives back the committed notebook itself
        href = page.get_attribute("a[download]", "href")
        with urllib.request.urlopen(urllib.parse.urljoin(f"{server}/{name}.html", href), timeout=10) as r:
            assert r.read() == (ROOT / "notebooks" / f"{name}.ipynb").read_bytes()
        # prev / next follow the series' order
        i = NOTEBOOKS.index(name)
        nav = set(page.eval_on_selector_all(".prev-next-area a", "els => els.map(e => e.getAttribute('href'))"))
        if i > 0:
            assert f"{NOTEBOOKS[i - 1]}.html" in nav
        if i + 1 < len(NOTEBOOKS):
            assert f"{NOTEBOOKS[i + 1]}.html" in nav
        if page.locator(".math").count():                               # Sphinx marked maths on the page
            page.wait_for_selector("mjx-container", timeout=30_000)     # and MathJax typeset it
        if name == "01_batchnorm_from_scratch":                         # (so the check above is not idle)
            assert page.locator("mjx-container").count() >= 10
        page.screenshot(path=str(SHOTS / f"{name}.png"))
    finally:
        page.close()


@pytest.mark.browser
@pytest.mark.parametrize("path", ["INSTRUCTORS.html", "ARCHITECTURE.html", "api/index.html", "api/reidlab.bn.html"])
def test_docs_and_api_pages(site, server, browser, path):
    page, refused = _open(browser, server, path)
    try:
        found = _check_page(page, server, path, refused)
        if path == "api/reidlab.bn.html":
            assert "freeze_bn" in found["text"] and "recalibrate_bn" in found["text"]
    finally:
        page.close()


@pytest.mark.browser
def test_offline_search_finds_track_running_stats(site, server, browser):
    page, refused = _open(browser, server, "search.html?q=track_running_stats")
    try:
        page.wait_for_selector("#search-results ul.search li a", timeout=30_000)
        hits = page.eval_on_selector_all("#search-results ul.search li a",
                                         "els => els.map(e => e.getAttribute('href'))")
        assert any(h.startswith("04_track_running_stats.html") for h in hits), hits
        assert not refused, refused
    finally:
        page.close()
