"""ECN's transforms: random-sized rectangle crop, random erasing, the train and test pipelines."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from reidlab.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomErasing,
    RandomSizedRectCrop,
    build_test_transform,
    build_train_transform,
)


def _img(h=128, w=64, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_test_transform_matches_manual_pipeline():
    img = _img()
    out = build_test_transform(64, 32)(img)
    ref = TF.normalize(TF.to_tensor(TF.resize(img, [64, 32], interpolation=TF.InterpolationMode.BICUBIC)),
                       IMAGENET_MEAN, IMAGENET_STD)
    assert out.shape == (3, 64, 32) and torch.equal(out, ref)


def test_rect_crop_area_and_aspect(monkeypatch):
    boxes = []
    orig = Image.Image.crop

    def spy(self, box):
        boxes.append(box)
        return orig(self, box)

    monkeypatch.setattr(Image.Image, "crop", spy)
    crop = RandomSizedRectCrop(64, 32)
    torch.manual_seed(0)
    for _ in range(200):
        assert crop(_img(128, 64)).size == (32, 64)
    assert len(boxes) > 150  # most draws fit a 128x64 image (the rest fall back to a plain resize)
    for x1, y1, x2, y2 in boxes:
        w, h = x2 - x1, y2 - y1
        assert 0 <= x1 and x2 <= 64 and 0 <= y1 and y2 <= 128
        assert 0.6 <= w * h / (128 * 64) <= 1.0 + 1e-9
        assert 1.8 <= h / w <= 3.2  # aspect 2..3 up to rounding


def test_random_erasing():
    x = torch.zeros(3, 64, 32)
    assert torch.equal(RandomErasing(p=0.0)(x), x)
    torch.manual_seed(1)
    fracs = []
    for _ in range(100):
        y = RandomErasing(p=1.0)(x)
        erased = (y != 0).all(0)
        fracs.append(erased.float().mean().item())
        # the patch holds the ImageNet mean in pixel units, channel by channel
        assert torch.allclose(y[:, erased], torch.tensor(IMAGENET_MEAN).view(3, 1).expand(3, int(erased.sum())))
    assert min(fracs) > 0.01 and max(fracs) < 0.21
    assert x.abs().sum() == 0  # input untouched
    with pytest.raises(ValueError, match="probability"):
        RandomErasing(p=1.5)


def test_train_transform_shapes_and_seed():
    tf = build_train_transform(64, 32)
    img = _img()
    torch.manual_seed(3)
    a = torch.stack([tf(img) for _ in range(4)])
    torch.manual_seed(3)
    b = torch.stack([tf(img) for _ in range(4)])
    assert a.shape == (4, 3, 64, 32) and torch.equal(a, b)
    assert not torch.equal(a[0], a[1])  # random: crops/flips differ between draws
    assert build_train_transform(64, 32, crop="pad")(img).shape == (3, 64, 32)
    with pytest.raises(ValueError, match="crop must be"):
        build_train_transform(64, 32, crop="zoom")
