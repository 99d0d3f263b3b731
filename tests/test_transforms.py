"""ECN's transforms, the (image, index) target datasets, CamStyle sampling and make_loader."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from reidlab.data.loaders import (
    CamStyleTargetDataset,
    ImageDataset,
    TargetDataset,
    make_loader,
)
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


@pytest.fixture
def items(tmp_path):
    """Six images in 3 cameras, each with CamStyle images for the 2 other cameras."""
    out, style = [], {}
    for i in range(6):
        cam = i % 3
        p = tmp_path / f"{i:04d}_c{cam + 1}s1_000001_01.jpg"
        _img(32, 16, seed=i).save(p)
        out.append((str(p), i // 2, cam))
        style[str(p)] = {}
        for c2 in range(3):
            if c2 != cam:
                f = tmp_path / f"{p.stem}_fake_{cam + 1}to{c2 + 1}.jpg"
                _img(32, 16, seed=100 + 10 * i + c2).save(f)
                style[str(p)][c2] = str(f)
    return out, style


def test_image_and_target_datasets(items):
    it, _ = items
    tf = build_test_transform(32, 16)
    img, pid, cam, idx = ImageDataset(it, tf)[4]
    assert img.shape == (3, 32, 16) and (pid, cam, idx) == (2, 1, 4)
    timg, tidx = TargetDataset(it, tf)[5]
    assert tidx == 5 and torch.equal(timg, tf(Image.open(it[5][0]).convert("RGB")))
    cached = ImageDataset(it, tf, cache=True)
    assert torch.equal(cached[0][0], cached[0][0])
    with pytest.raises(ValueError, match="empty"):
        ImageDataset([], tf)
    with pytest.raises(FileNotFoundError, match="image not found"):
        ImageDataset([("/nonexistent/x.jpg", 0, 0)], tf)[0]


def test_camstyle_selection_statistics(items):
    it, style = items
    ds = CamStyleTargetDataset(it, style, num_cams=3)
    gen = torch.Generator().manual_seed(0)
    n = 3000
    counts = np.zeros(3)
    original = 0
    for k in range(n):
        i = k % len(it)
        path, chosen = ds.choose(i, gen)
        counts[chosen] += 1
        if chosen == it[i][2]:
            assert path == it[i][0]
            original += 1
        else:
            assert path == style[it[i][0]][chosen] and f"to{chosen + 1}" in Path(path).name
    assert np.all(np.abs(counts / n - 1 / 3) < 0.04)  # uniform over cameras
    assert abs(original / n - 1 / 3) < 0.04  # own camera -> original image
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert [ds.choose(i % 6, g1) for i in range(30)] == [ds.choose(i % 6, g2) for i in range(30)]
    img, idx = CamStyleTargetDataset(it, style, 3, build_test_transform(32, 16))[2]
    assert img.shape == (3, 32, 16) and idx == 2


def test_camstyle_missing(items):
    it, style = items
    partial = {k: dict(list(v.items())[:1]) for k, v in style.items()}
    with pytest.raises(ValueError, match="CamStyle images missing"):
        CamStyleTargetDataset(it, partial, 3)
    ds = CamStyleTargetDataset(it, partial, 3, missing="original")
    gen = torch.Generator().manual_seed(0)
    for k in range(60):
        path, _ = ds.choose(k % 6, gen)
        assert path == it[k % 6][0] or path in partial[it[k % 6][0]].values()


def test_make_loader(items):
    it, _ = items
    ds = TargetDataset(it, build_test_transform(32, 16))
    a = make_loader(ds, 4, shuffle=True, seed=5)
    b = make_loader(ds, 4, shuffle=True, seed=5)
    assert not a.pin_memory
    ia = torch.cat([idx for _, idx in a])
    ib = torch.cat([idx for _, idx in b])
    assert torch.equal(ia, ib) and sorted(ia.tolist()) == list(range(6))
    imgs, idx = next(iter(make_loader(ds, 4, drop_last=True)))
    assert imgs.shape == (4, 3, 32, 16) and idx.tolist() == [0, 1, 2, 3]
    assert make_loader(ds, 4, device="cuda").pin_memory
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(ds, 0)
