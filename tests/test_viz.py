"""Tests of the ranked-list pictures and CMC curves in reidlab.lessons.viz."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba
from PIL import Image

from reidlab.evaluation import evaluate_rank
from reidlab.lessons.viz import QUERY_COLOUR, RANK_COLOURS, cmc_curve, ranked_lists

GREEN, RED, GREY, BLUE = (to_rgba(RANK_COLOURS[1]), to_rgba(RANK_COLOURS[0]), to_rgba(RANK_COLOURS[-1]), to_rgba(QUERY_COLOUR))

# the hand-worked example of tests/test_evaluation.py
G_PIDS = np.array([1, 2, 1, 0, -1, 2, 1])
G_CAMS = np.array([1, 2, 2, 1, 2, 1, 3])
Q_PIDS = np.array([1, 2, 3, 2])
Q_CAMS = np.array([1, 2, 1, 1])
DIST = np.array(
    [
        [0.10, 0.20, 0.30, 0.40, 0.05, 0.60, 0.70],
        [0.50, 0.90, 0.20, 0.20, 0.10, 0.20, 0.80],
        [0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70],
        [0.30, 0.10, 0.40, 0.50, 0.60, 0.05, 0.20],
    ]
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def frame(ax):
    """The frame colour of an image axes (all four spines must agree)."""
    colours = {tuple(ax.spines[s].get_edgecolor()) for s in ("top", "bottom", "left", "right")}
    assert len(colours) == 1, colours
    return colours.pop()


def image(seed: int, kind: str = "uint8"):
    rng = np.random.default_rng(seed)
    if kind == "uint8":
        return rng.integers(0, 256, (16, 8, 3), dtype=np.uint8)
    if kind == "tensor":  # a normalised CxHxW tensor, values outside [0, 1]
        return torch.from_numpy(rng.normal(size=(3, 16, 8)).astype(np.float32))
    return rng.random((16, 8))  # grey


class Loader:
    """Records which images the picture asked for."""

    def __init__(self):
        self.calls = []

    def __call__(self, split, index):
        self.calls.append((split, index))
        return image(index + (100 if split == "query" else 0))



def test_ranked_lists_apply_the_market_exclusion():
    load = Loader()
    fig = ranked_lists(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, load, [0, 1], k=3)
    axes = np.array(fig.axes).reshape(2, 4)
    # qA (pid 1, cam 1): g4 (junk) and g0 (pid 1, cam 1) are excluded; then g1 (F) g2 (T) g3 (F, distractor)
    # qB (pid 2, cam 2): g4 excluded; tie g2, g3, g5 in gallery order: F, F, T
    assert [frame(ax) for ax in axes[0]] == [BLUE, RED, GREEN, RED]
    assert [frame(ax) for ax in axes[1]] == [BLUE, RED, RED, GREEN]
    gallery_loaded = [i for split, i in load.calls if split == "gallery"]
    assert gallery_loaded == [1, 2, 3, 2, 3, 5]
    assert 0 not in gallery_loaded and 4 not in gallery_loaded  # excluded items are not shown
    assert [i for split, i in load.calls if split == "query"] == [0, 1]
    assert axes[0, 0].get_title() == "query 0\nid 1 cam 1"
    assert axes[0, 3].get_title() == "3: distractor\ncam 1"


def test_ranked_lists_agree_with_evaluate_rank():
    # the first green frame of each row sits at the query's first-match rank
    res = evaluate_rank(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=5)
    fig = ranked_lists(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, Loader(), [0, 1, 3], k=5)
    axes = np.array(fig.axes).reshape(3, 6)
    first_green = [[frame(ax) for ax in row[1:]].index(GREEN) + 1 for row in axes]
    cmc_from_picture = [np.mean([r <= k for r in first_green]) for k in range(1, 6)]
    np.testing.assert_allclose(cmc_from_picture, res.cmc)


def test_ranked_lists_show_excluded_in_grey():
    load = Loader()
    fig = ranked_lists(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, load, 0, k=4, show_excluded=True)
    assert [frame(ax) for ax in fig.axes] == [BLUE, GREY, GREY, RED, GREEN]
    assert [i for split, i in load.calls if split == "gallery"] == [4, 0, 1, 2]


def test_ranked_lists_short_gallery_and_image_pairs():
    queries = [image(100 + i) for i in range(4)]
    gallery = [image(i) for i in range(7)]
    fig = ranked_lists(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, (queries, gallery.__getitem__), [0], k=7)
    axes = fig.axes
    # 5 items survive the exclusion: the last two cells stay empty
    assert [ax.axison for ax in axes] == [True] * 6 + [False] * 2
    np.testing.assert_array_equal(axes[1].get_images()[0].get_array(), gallery[1])


def test_ranked_lists_bad_inputs():
    with pytest.raises(ValueError, match="out of range"):
        ranked_lists(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, Loader(), [4])
    with pytest.raises(ValueError, match="query_indices is empty"):
        ranked_lists(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, Loader(), [])
    with pytest.raises(TypeError, match="load_image must be"):
        ranked_lists(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, "images/", [0])
    with pytest.raises(ValueError, match="g_pids has 6 entries"):
        ranked_lists(DIST, Q_PIDS, G_PIDS[:6], Q_CAMS, G_CAMS, Loader(), [0])


def test_ranked_lists_draw_every_kind_of_image(tmp_path):
    """A path, a PIL image, a normalised CxHxW tensor and a grey array all become visible images."""
    path = tmp_path / "q.png"
    Image.fromarray(image(0)).save(path)
    gallery = [Image.fromarray(image(1)), image(2, "tensor"), image(3, "grey"), image(4), image(5), image(6), image(7)]
    fig = ranked_lists(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, ([path] * 4, gallery), [0], k=3)
    shown = [ax.get_images()[0].get_array() for ax in fig.axes]
    np.testing.assert_array_equal(shown[0], image(0))  # read back from the file
    tensor_shown = [a for a in shown if a.dtype.kind == "f" and a.ndim == 3]
    assert all(0 <= a.min() and a.max() <= 1 for a in tensor_shown)  # min-max scaled into [0, 1]
    with pytest.raises(ValueError, match="an image must be"):
        ranked_lists(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, ([np.zeros((2, 2, 2, 2))] * 4, gallery), [0], k=1)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        ranked_lists(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, Loader(), [0], k=0)


def test_cmc_curve_plots_each_result():
    a = evaluate_rank(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=5)
    b = evaluate_rank(DIST[[0, 1, 3]][:, ::-1], Q_PIDS[[0, 1, 3]], G_PIDS[::-1], Q_CAMS[[0, 1, 3]], G_CAMS[::-1], max_rank=5)
    fig = cmc_curve({"model A": a, "model B": b})
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == 2
    np.testing.assert_allclose(lines[0].get_ydata(), 100 * a.cmc)
    np.testing.assert_allclose(lines[1].get_ydata(), 100 * b.cmc)
    np.testing.assert_array_equal(lines[0].get_xdata(), np.arange(1, 6))
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0] == "model A (R1 33.3%, mAP 59.4%)"
    fig2 = cmc_curve({"A": a}, max_rank=2)
    assert len(fig2.axes[0].get_lines()[0].get_xdata()) == 2
    with pytest.raises(ValueError, match="results is empty"):
        cmc_curve({})
