"""What only the notebooks need: ``setup()``, the toy task, plots, sliders, exercise checkers.

Nothing outside this sub-package imports from it (a test checks), so the library above it
runs without matplotlib, seaborn, ipywidgets or IPython. A notebook opens with::

    from reidlab.lessons import setup
    cfg = setup()
"""
from .setup import setup

__all__ = ["setup"]
