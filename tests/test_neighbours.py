"""neighbour_shares: who an image's nearest neighbours are, against hand-built feature spaces."""
from __future__ import annotations

import pytest
import torch

from reidlab.neighbours import neighbour_shares

# 2 cameras x 2 people x 2 images each = 8 rows
PIDS = [0, 0, 1, 1, 0, 0, 1, 1]
CAMS = [0, 0, 0, 0, 1, 1, 1, 1]


def _space(groups, noise=1e-3):
    """One random direction per group label, plus a little noise per row."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(max(groups) + 1, 16, generator=g)
    return centres[torch.tensor(groups)] + noise * torch.randn(len(groups), 16, generator=g)


def test_a_person_bound_space_finds_the_person():
    # grouped by person only: images of one person (both cameras) share a direction
    s = neighbour_shares(_space(PIDS), PIDS, CAMS, k=3)
    assert s.same_person == 1.0 and s.same_camera_other == 0.0
    # chance by hand: each image has 3 others of its person among 7, and 2 of the other person in its camera
    assert s.chance_same_person == pytest.approx(3 / 7) and s.chance_same_camera_other == pytest.approx(2 / 7)


def test_a_camera_bound_space_finds_the_camera():
    # grouped by camera only: all 4 images of a camera share a direction, people mixed
    s = neighbour_shares(_space(CAMS), PIDS, CAMS, k=3)
    # the 3 nearest are the camera's other 3 images: 1 of the same person, 2 others
    assert s.same_person == pytest.approx(1 / 3) and s.same_camera_other == pytest.approx(2 / 3)
    assert s.camera_lift == pytest.approx((2 / 3) / (2 / 7))
    assert "x2.3" in s.summary()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="k must be in"):
        neighbour_shares(torch.randn(8, 4), PIDS, CAMS, k=8)
    with pytest.raises(ValueError, match="one pid and one camid"):
        neighbour_shares(torch.randn(7, 4), PIDS, CAMS, k=2)
