"""Plotting helpers shared by the notebooks (matplotlib + seaborn).

Figures are drawn with plain matplotlib so a learner can read and change them. The one
piece of plumbing here is :func:`savefig`: a notebook marks its key figure with it, and
``make figures`` collects those figures into ``figures/`` for the README. Nothing is
written unless ``$REIDLAB_FIGURES_DIR`` is set, so running a notebook (or the tests)
never touches the tracked tree.
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

FIGURES_ENV = "REIDLAB_FIGURES_DIR"


def use_style() -> None:
    """One look for every figure of the series (called by :func:`reidlab.setup`)."""
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette="deep")
    matplotlib.rcParams.update({"figure.dpi": 90, "savefig.dpi": 120, "figure.autolayout": True})


def savefig(fig, name: str) -> Path | None:
    """Save ``fig`` as ``<$REIDLAB_FIGURES_DIR>/<name>.png`` when that variable is set.

    Returns the path written, or ``None`` when figure export is off (the default).
    """
    out = os.environ.get(FIGURES_ENV)
    if not out:
        return None
    path = Path(out) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path
