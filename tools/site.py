#!/usr/bin/env python
"""Build the series' static site from the committed notebooks (``make site``).

    python tools/site.py                 # build/site/index.html, one page per notebook
    python tools/site.py --out DIR       # elsewhere (the site test builds into a temporary folder)

Nothing is re-executed: the pages show the notebooks' committed outputs, the honest runs
whose profile each setup cell prints. The build has two steps:

1. *stage* the sources into ``build/site-src/``: README.md becomes the index page (its links to
   notebooks and docs rewritten to the pages), docs/INSTRUCTORS.md, docs/ARCHITECTURE.md and
   CONTRIBUTING.md become pages, one API page per library module (``reidlab``, never
   ``reidlab.lessons``), and each notebook is copied with its interactive widget outputs
   replaced by a note (a static page cannot run a kernel; the figure the slider draws at its
   default value is already the cell's next output) and a link to download the original;
2. run Sphinx (myst-nb, sphinx-book-theme; configuration in docs/site/conf.py) on the staged
   sources. ``build/site/.inputs`` records a hash of every input, so a test can tell whether
   a built site is current.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pkgutil
import posixpath
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "docs" / "site"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# Markdown pages of the repository that become site pages, with their page name.
PAGES = {"docs/INSTRUCTORS.md": "INSTRUCTORS.md", "docs/ARCHITECTURE.md": "ARCHITECTURE.md",
         "CONTRIBUTING.md": "CONTRIBUTING.md"}
WIDGET_NOTE = ("*Interactive in JupyterLab (`make lab`): this cell shows sliders there. "
               "The figure below is what they draw at their starting values.*")


def notebooks() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def library_modules() -> list[str]:
    """Every module of the library, found by walking the package (the lessons left out)."""
    import reidlab

    names = ["reidlab"]
    for info in pkgutil.walk_packages(reidlab.__path__, prefix="reidlab."):
        if info.name == "reidlab.lessons" or info.name.startswith("reidlab.lessons."):
            continue
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue          # running it would start the CLI
        names.append(info.name)
    return sorted(names)


def inputs_hash() -> str:
    """A hash of everything the site is built from; recorded as build/site/.inputs."""
    files = [*notebooks(), ROOT / "README.md", *(ROOT / p for p in PAGES), Path(__file__),
             *sorted(CONF_DIR.glob("*")), *sorted((ROOT / "figures").glob("*.png")),
             *sorted((ROOT / "reidlab").rglob("*.py"))]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(ROOT)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def rewrite_links(text: str, source: str) -> str:
    """Point a repository page's relative links at the site's pages.

    ``notebooks/08_x.ipynb`` becomes the page ``08_x.ipynb`` (the site is flat), ``docs/X.md``
    and ``../CONTRIBUTING.md`` their pages; a relative link to a file the site does not hold
    becomes plain code text (never a dead link).
    """
    here = Path(source).parent

    def fix(m: re.Match) -> str:
        label, target = m.group(1), m.group(2)
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            return m.group(0)
        path, _, anchor = target.partition("#")
        resolved = posixpath.normpath((here / path).as_posix())
        if resolved.startswith("notebooks/") and resolved.endswith(".ipynb"):
            page = resolved.split("/", 1)[1]
        elif resolved in PAGES:
            page = PAGES[resolved]
        else:
            return f"{label} (`{resolved}` in the repository)"
        return f"[{label}]({page}{'#' + anchor if anchor else ''})"

    return re.sub(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)", fix, text)


def stage_notebook(src: Path, dst: Path) -> None:
    """Copy a notebook for the site: widget views out, a download link in."""
    nb = json.loads(src.read_text())
    nb["metadata"].pop("widgets", None)
    for cell in nb["cells"]:
        outputs = []
        for out in cell.get("outputs", []):
            if WIDGET_VIEW in out.get("data", {}):
                out = {"output_type": "display_data", "metadata": {},
                       "data": {"text/markdown": WIDGET_NOTE}}
            outputs.append(out)
        if "outputs" in cell:
            cell["outputs"] = outputs
    link = {"cell_type": "markdown", "id": "site-download", "metadata": {},
            "source": [f'<a class="reference download" href="notebooks/{src.name}" download>'
                       f"Download {src.name}</a> (outputs from the committed run; "
                       "`make lab` runs it)"]}
    # after the title cell, so the page's title stays the notebook's own
    nb["cells"].insert(1, link)
    dst.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def index_page() -> str:
    text = rewrite_links((ROOT / "README.md").read_text(), "README.md")
    names = [p.stem for p in notebooks()]
    toc = ["", "```{toctree}", ":hidden:", ":caption: Notebooks", "", *names, "```", "",
           "```{toctree}", ":hidden:", ":caption: For instructors and contributors", "",
           "INSTRUCTORS", "ARCHITECTURE", "CONTRIBUTING", "api/index", "```", ""]
    return text + "\n".join(toc)


def api_pages(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    modules = library_modules()
    index = ["# The `reidlab` library (API)", "",
             "Generated from the docstrings of the library's modules. The notebooks' own helpers "
             "(`reidlab.lessons`) are not part of the library and are left out.", "",
             "```{toctree}", ":maxdepth: 1", "", *modules, "```", ""]
    (out / "index.md").write_text("\n".join(index))
    for name in modules:
        (out / f"{name}.md").write_text(
            f"# `{name}`\n\n```{{eval-rst}}\n.. automodule:: {name}\n   :members:\n```\n")


def stage(src: Path) -> None:
    if src.exists():
        shutil.rmtree(src)
    (src / "_extra" / "notebooks").mkdir(parents=True)
    shutil.copytree(ROOT / "figures", src / "figures")
    (src / "index.md").write_text(index_page())
    for repo_path, page in PAGES.items():
        (src / page).write_text(rewrite_links((ROOT / repo_path).read_text(), repo_path))
    for nb in notebooks():
        shutil.copy2(nb, src / "_extra" / "notebooks" / nb.name)
        stage_notebook(nb, src / nb.name)
    api_pages(src / "api")


def build(out: Path, src: Path) -> int:
    stage(src)
    if out.exists():
        shutil.rmtree(out)
    shutil.copy2(CONF_DIR / "conf.py", src / "conf.py")
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-W", "--keep-going",   # a warning fails the build
           "-d", str(src / ".doctrees"), str(src), str(out)]
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc == 0:
        (out / ".inputs").write_text(inputs_hash() + "\n")
        print(f"site: {out / 'index.html'}")
    return rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "build" / "site"), help="where the HTML goes")
    ap.add_argument("--src", default=None, help="staging folder (default: OUT-src beside OUT)")
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    src = Path(args.src).resolve() if args.src else out.with_name(out.name + "-src")
    return build(out, src)


if __name__ == "__main__":
    sys.exit(main())
