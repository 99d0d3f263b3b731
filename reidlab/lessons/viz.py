"""Plotting helpers shared by the notebooks (matplotlib + seaborn).

Figures are drawn with plain matplotlib so a learner can read and change them. The one
piece of plumbing here is :func:`savefig`: a notebook marks its key figure with it, and
``make figures`` copies that cell's committed output into ``figures/`` for the README and
the site (``tools/nbtool.py figures``). The call itself writes a file only when
``$REIDLAB_FIGURES_DIR`` is set (e.g. to export a figure of your own run), so running a
notebook (or the tests) never touches the tracked tree.
"""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
import torch
from PIL import Image

from reidlab.evaluation import check_rank_inputs, rank_gallery

FIGURES_ENV = "REIDLAB_FIGURES_DIR"


def use_style() -> None:
    """One look for every figure of the series (called by :func:`reidlab.lessons.setup`)."""
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


# --- ranked lists and CMC curves (notebooks 08 and 10) ----------------------------------------
#
# A ranked list shows a query and the top-k gallery images the model returns for it, each
# framed green (the same person: a true match), red (someone else, distractors included) or
# grey (an item the Market protocol removes: the same person seen by the query's own camera,
# or junk; drawn only when asked, to show what the protocol drops).

RANK_COLOURS = {1: "#2ca02c", 0: "#d62728", -1: "#9a9a9a"}
"""Frame colour per match flag: 1 true match (green), 0 false match (red), -1 excluded (grey)."""
QUERY_COLOUR = "#1f77b4"
"""Frame colour of the query image (blue)."""


def _as_display_image(img):
    """An image for ``imshow``: a path, a PIL image, an ``HxW(xC)`` array or a ``CxHxW`` tensor.

    Float images outside ``[0, 1]`` (e.g. after ImageNet normalisation) are min-max scaled so
    they stay visible; that changes their colours, so pass un-normalised images where colours
    matter.
    """
    if isinstance(img, (str, os.PathLike)):
        with Image.open(img) as im:
            return np.asarray(im.convert("RGB"))
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu()
        if img.dim() == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
            img = img.permute(1, 2, 0)
        img = img.numpy()
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = np.transpose(arr, (1, 2, 0))
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"an image must be HxW, HxWxC or CxHxW, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 1:
            arr = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
    return arr


def _framed(ax, img, colour: str, title: str | None, linewidth: float = 4.0) -> None:
    arr = _as_display_image(img)
    ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(True)
        spine.set_edgecolor(colour)
        spine.set_linewidth(linewidth)
    if title:
        ax.set_title(title, fontsize=8)


def _image_source(load_image):
    """Normalise ``load_image`` to a function ``(split, index) -> image``."""
    if isinstance(load_image, (tuple, list)) and len(load_image) == 2:
        sources = dict(zip(("query", "gallery"), load_image))

        def get(split, index):
            src = sources[split]
            return src(index) if callable(src) else src[index]

        return get
    if callable(load_image):
        return load_image
    raise TypeError(
        "load_image must be a function (split, index) -> image, split being 'query' or 'gallery', "
        "or a pair (query_images, gallery_images) of sequences or functions index -> image"
    )


def ranked_lists(
    distmat,
    q_pids,
    g_pids,
    q_camids,
    g_camids,
    load_image,
    query_indices,
    k: int = 10,
    *,
    show_excluded: bool = False,
    cell_size: tuple[float, float] = (1.1, 2.3),
) -> matplotlib.figure.Figure:
    """Ranked lists of several queries, one row each, under the Market protocol (notebooks 08, 10).

    The gallery of each query is ranked and filtered exactly as
    :func:`reidlab.evaluation.evaluate_rank` does (same-id-same-camera and junk items
    removed, ties in gallery order), so the picture shows the list whose CMC and AP the
    numbers report.

    Parameters
    ----------
    distmat, q_pids, g_pids, q_camids, g_camids:
        As for :func:`reidlab.evaluation.evaluate_rank`.
    load_image:
        Either a function ``load_image(split, index)`` with ``split`` ``'query'`` or
        ``'gallery'``, or a pair ``(query_images, gallery_images)`` whose items are
        sequences (lists of paths, arrays, a dataset) or functions ``index -> image``.
    query_indices:
        Which queries to draw, one row each.
    k:
        Gallery images per row.
    show_excluded:
        Also draw the excluded items, in grey frames, where they would have ranked.

    Returns
    -------
    matplotlib.figure.Figure
        Titles give the query's id and camera, and each gallery image's rank, id (or
        "distractor" for id 0, "junk" for id -1) and camera.
    """
    d, qp, gp, qc, gc, _ = check_rank_inputs(distmat, q_pids, g_pids, q_camids, g_camids, 1)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    get = _image_source(load_image)
    rows = [int(i) for i in np.atleast_1d(np.asarray(query_indices))]
    if not rows:
        raise ValueError("query_indices is empty: give at least one query to draw")
    for i in rows:
        if not 0 <= i < d.shape[0]:
            raise ValueError(f"query index {i} is out of range for {d.shape[0]} queries")
    fig, axes = plt.subplots(len(rows), k + 1, figsize=(cell_size[0] * (k + 1), cell_size[1] * len(rows)), squeeze=False)
    for row, i in enumerate(rows):
        order, flags = rank_gallery(d[i], qp[i], qc[i], gp, gc, k=k, keep_excluded=show_excluded)
        _framed(axes[row, 0], get("query", i), QUERY_COLOUR, f"query {i}\nid {qp[i]} cam {qc[i]}")
        for j in range(k):
            ax = axes[row, j + 1]
            if j >= len(order):  # gallery shorter than k after the exclusion
                ax.axis("off")
                continue
            g = int(order[j])
            who = {0: "distractor", -1: "junk"}.get(int(gp[g]), f"id {gp[g]}")
            _framed(ax, get("gallery", g), RANK_COLOURS[int(flags[j])], f"{j + 1}: {who}\ncam {gc[g]}")
    return fig


def cmc_curve(results: dict, *, max_rank: int | None = None, ax=None) -> matplotlib.figure.Figure:
    """CMC curves of several evaluations on one plot (notebooks 08, 10).

    Parameters
    ----------
    results:
        ``{label: RankResult}``, e.g. ``{"source only": r0, "ECN": r1}``; each curve's legend
        adds its rank-1 and mAP.
    max_rank:
        Plot ranks 1..max_rank (default: the longest curve).
    ax:
        Draw into this axes instead of a new figure.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not results:
        raise ValueError("results is empty: pass {label: RankResult}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
    else:
        fig = ax.figure
    longest = max(len(r.cmc) for r in results.values())
    n = longest if max_rank is None else min(int(max_rank), longest)
    for label, res in results.items():
        cmc = np.asarray(res.cmc)[:n]
        ax.plot(np.arange(1, len(cmc) + 1), 100 * cmc, marker="o" if n <= 20 else None, ms=3,
                label=f"{label} (R1 {100 * cmc[0]:.1f}%, mAP {100 * res.mAP:.1f}%)")
    ax.set_xlabel("rank k")
    ax.set_ylabel("matching rate at rank k (%)")
    ax.set_title("CMC")
    ax.set_xlim(1, max(n, 2))
    ax.set_ylim(0, 100.5)
    ax.legend(fontsize=8, loc="lower right")
    return fig


# --- image grids (notebook 00: the synthetic re-ID world) --------------------------------------


def image_grid(
    images,
    *,
    row_titles=None,
    col_titles=None,
    title: str | None = None,
    cell_size: tuple[float, float] = (0.9, 1.8),
    fontsize: float = 8,
) -> matplotlib.figure.Figure:
    """Draw images in a rows x columns grid, e.g. identities x cameras.

    Parameters
    ----------
    images:
        A nested sequence ``images[row][col]`` or an array ``(rows, cols, H, W[, C])``; each
        image is anything ``imshow`` can take after conversion (path, PIL image, uint8 or float
        array, ``CxHxW`` tensor). ``None`` leaves a cell empty (an identity a camera never saw).
    row_titles, col_titles:
        Labels on the left of each row and above each column.
    title:
        Figure title.
    cell_size:
        Inches per cell (width, height); the default suits 2:1 pedestrian boxes.

    Returns
    -------
    matplotlib.figure.Figure
    """
    rows = [list(r) for r in images]
    if not rows or not rows[0]:
        raise ValueError("images is empty: pass images[row][col] or an array (rows, cols, H, W, C)")
    n_cols = max(len(r) for r in rows)
    n_rows = len(rows)
    if row_titles is not None and len(row_titles) != n_rows:
        raise ValueError(f"{len(row_titles)} row titles for {n_rows} rows")
    if col_titles is not None and len(col_titles) != n_cols:
        raise ValueError(f"{len(col_titles)} column titles for {n_cols} columns")
    extra_w = 0.9 if row_titles is not None else 0.1
    extra_h = (0.35 if col_titles is not None else 0.1) + (0.35 if title else 0.0)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(cell_size[0] * n_cols + extra_w, cell_size[1] * n_rows + extra_h), squeeze=False
    )
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            for spine in ax.spines.values():
                spine.set_visible(False)
            img = row[j] if j < len(row) else None
            if img is not None:
                arr = _as_display_image(img)
                ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None)
            if i == 0 and col_titles is not None:
                ax.set_title(str(col_titles[j]), fontsize=fontsize)
            if j == 0 and row_titles is not None:
                ax.set_ylabel(str(row_titles[i]), fontsize=fontsize, rotation=0, ha="right", va="center")
    # images sit edge to edge with room for the labels (tight_layout would spread them out)
    fig.set_layout_engine("none")
    w_in, h_in = fig.get_size_inches()
    left = (0.9 if row_titles is not None else 0.1) / w_in
    top = 1 - ((0.35 if col_titles is not None else 0.1) + (0.35 if title else 0.0)) / h_in
    fig.subplots_adjust(left=left, right=1 - 0.05 / w_in, bottom=0.05 / h_in, top=top, wspace=0.06, hspace=0.06)
    if title:
        fig.suptitle(title)
    return fig
