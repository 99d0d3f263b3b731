"""Sphinx configuration of the series' static site (``make site``; staged by tools/site.py).

The notebooks are rendered from their committed outputs (``nb_execution_mode = "off"``):
those outputs are the honest runs the series stands on, and re-executing them here would
replace a laptop run by whatever machine builds the site. Everything a page needs (MathJax,
the theme's fonts and scripts, the search index) is copied into the site, so it reads offline.
"""
project = "BN for domain-adaptive re-ID"
author = "the bn-reid-notebooks authors"
copyright = "2026, the bn-reid-notebooks authors"

extensions = [
    "myst_nb",                  # .ipynb and .md pages
    "sphinx.ext.autodoc",       # the library's API from its docstrings
    "sphinx.ext.napoleon",
    "sphinx-mathjax-offline",   # MathJax 3 served from the site itself, not from a CDN (its module name has hyphens)
]

nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "html_image"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]     # notebooks' "### Exercise" headings under "# Title"

exclude_patterns = ["_extra", ".doctrees"]

napoleon_use_ivar = True               # a NamedTuple's "Attributes" as fields, not a second entry
autodoc_member_order = "bysource"
autodoc_inherit_docstrings = False     # torch's own docstrings (and their cross-references) stay out
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}

html_theme = "sphinx_book_theme"
html_title = "BatchNorm for domain-adaptive re-ID"
html_extra_path = ["_extra"]            # the original notebooks, for download
html_copy_source = False
html_show_sourcelink = False
html_theme_options = {
    "use_download_button": False,       # each notebook page links its original .ipynb instead
    "use_fullscreen_button": False,
    "show_prev_next": True,
    "navigation_with_keys": False,
}
