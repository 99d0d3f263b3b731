"""A colour-statistics stand-in for CamStyle images (ECN's camera invariance, notebooks 09-10).

ECN (Zhong et al., CVPR 2019) learns *camera invariance* from CamStyle images: every target
training image re-rendered in the style of each other camera by a CycleGAN (Zhong et al.,
CVPR 2018), shipped as ``bounding_box_train_camstyle/``. The synthetic worlds of this series
write such a folder themselves (each image's style transferred to another camera, with the
artifacts a GAN leaves, :mod:`reidlab.data.synth.restyle`; plus the oracle re-renders as an
ablation). For a real dataset without one, training a CycleGAN per camera
pair is out of reach here, so this module provides a cheap, documented substitute:

**colour-statistics transfer** (Reinhard et al., "Color Transfer between Images", IEEE
CG&A 2001). An image is converted to a perceptual colour space, each channel is shifted and
scaled so that its mean and standard deviation become those of the target, and it is
converted back. Reinhard et al. match one image's statistics to another image's; we match
*cameras*: the statistics are pooled over the training images of each camera (computed once
by :func:`camera_color_stats`), and an image of camera ``a`` is mapped by the per-channel
affine map that sends camera ``a``'s pooled mean/std to camera ``b``'s::

    lab' = (lab - mean[a]) / std[a] * std[b] + mean[b]        (per channel)

Why per camera and not per image: the mean colour of a single pedestrian crop is largely
the person's clothing, i.e. identity information; forcing every image to camera ``b``'s
average colour would erase it. A camera-level map changes what the camera changes (white
balance, brightness, contrast, colour cast) and keeps differences between people: it is a
monotone per-channel map, so it is invertible (``b -> a`` undoes ``a -> b`` up to clipping
and 8-bit rounding), and over camera ``a``'s images the result has exactly camera ``b``'s
pooled statistics before clipping. What it cannot do, unlike CycleGAN CamStyle, is change
backgrounds, blur or resolution; notebook 10 measures how much of ECN's camera term it
recovers on the synthetic world, where the real CamStyle images are available for comparison.

Colour spaces: ``'lab'`` (CIE L*a*b*, D65, the standard perceptual space; Reinhard used the
closely related l-alpha-beta space) or ``'rgb'`` (plain sRGB values).

Notebook 09 introduces camera invariance; :class:`reidlab.data.loaders.ColorStyleTargetDataset`
applies this transfer on the fly. This module only needs :mod:`reidlab.data.layout` (to read
images), never the loaders, so the loaders can import it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from .layout import Item, read_image

__all__ = [
    "COLOR_SPACES",
    "CameraColorStats",
    "camera_color_stats",
    "transfer_camera_style",
    "rgb_to_lab",
    "lab_to_rgb",
]

COLOR_SPACES: tuple[str, ...] = ("lab", "rgb")

# sRGB (D65) <-> CIE XYZ, IEC 61966-2-1
_RGB2XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]],
    dtype=np.float64,
)
_XYZ2RGB = np.linalg.inv(_RGB2XYZ)
_WHITE = np.array([0.95047, 1.0, 1.08883])  # D65 reference white
_DELTA = 6.0 / 29.0


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] (``(..., 3)``) to CIE L*a*b* (L in [0, 100]); float64."""
    c = np.asarray(rgb, dtype=np.float64)
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = lin @ _RGB2XYZ.T / _WHITE
    f = np.where(xyz > _DELTA**3, np.cbrt(xyz), xyz / (3 * _DELTA**2) + 4.0 / 29.0)
    L = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIE L*a*b* (``(..., 3)``) to sRGB, *not* clipped (out-of-gamut values leave [0, 1])."""
    lab = np.asarray(lab, dtype=np.float64)
    fy = (lab[..., 0] + 16.0) / 116.0
    f = np.stack([fy + lab[..., 1] / 500.0, fy, fy - lab[..., 2] / 200.0], axis=-1)
    xyz = np.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0)) * _WHITE
    lin = xyz @ _XYZ2RGB.T
    lin_pos = np.clip(lin, 0.0, None)
    return np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * lin_pos ** (1 / 2.4) - 0.055)


def _to_space(rgb01: np.ndarray, space: str) -> np.ndarray:
    return rgb_to_lab(rgb01) if space == "lab" else rgb01.astype(np.float64)


def _from_space(x: np.ndarray, space: str) -> np.ndarray:
    return lab_to_rgb(x) if space == "lab" else x


def _check_space(space: str) -> str:
    if space not in COLOR_SPACES:
        raise ValueError(f"unknown colour space {space!r}; choose one of {', '.join(COLOR_SPACES)}")
    return space


def _pixels(img: Image.Image | np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` float64 in [0, 1] from a PIL image or a uint8 / [0, 1] float array."""
    if isinstance(img, Image.Image):
        return np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"expected an RGB image of shape (H, W, 3), got {arr.shape}")
    return arr.astype(np.float64) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float64)


@dataclass(frozen=True)
class CameraColorStats:
    """Per-camera colour statistics of a training set (see :func:`camera_color_stats`).

    Attributes
    ----------
    mean, std:
        ``(num_cams, 3)`` per-channel mean and standard deviation over all pixels of the
        camera's sampled training images, in ``space``; NaN for a camera without images.
    count:
        Number of images each camera's statistics were computed from.
    space:
        ``'lab'`` or ``'rgb'``.
    """

    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray
    space: str

    @property
    def num_cams(self) -> int:
        return int(self.mean.shape[0])

    def available(self, camid: int) -> bool:
        """Whether camera ``camid`` had training images (only those can be styled into)."""
        return 0 <= camid < self.num_cams and bool(self.count[camid] > 0)


def camera_color_stats(
    items: Sequence[Item],
    num_cams: int,
    *,
    space: str = "lab",
    max_per_camera: int | None = 200,
    seed: int = 0,
    images: Sequence[Image.Image | np.ndarray] | None = None,
) -> CameraColorStats:
    """Pool per-channel colour mean and std over each camera's training images.

    Parameters
    ----------
    items:
        ``(path, pid, camid)`` training items (``ReIDDataset.train``); pids are ignored.
    num_cams:
        Number of cameras of the dataset (rows of the result).
    space:
        ``'lab'`` (default) or ``'rgb'``.
    max_per_camera:
        Read at most this many images per camera, a random subset drawn with ``seed``
        (statistics of a few hundred crops are stable; reading all 12,936 Market images
        would only cost time). ``None`` reads all.
    images:
        Already decoded images in the order of ``items`` (skips reading the files).

    Returns
    -------
    CameraColorStats
    """
    _check_space(space)
    if num_cams < 1:
        raise ValueError(f"num_cams must be >= 1, got {num_cams}")
    if len(items) == 0:
        raise ValueError("no training items to compute camera colour statistics from")
    if images is not None and len(images) != len(items):
        raise ValueError(f"{len(images)} images for {len(items)} items")
    cams = np.array([c for _, _, c in items])
    if cams.min() < 0 or cams.max() >= num_cams:
        raise ValueError(f"camera ids must lie in [0, {num_cams}); got {cams.min()}..{cams.max()}")
    rng = np.random.default_rng(seed)
    mean = np.full((num_cams, 3), np.nan)
    std = np.full((num_cams, 3), np.nan)
    count = np.zeros(num_cams, dtype=np.int64)
    for c in range(num_cams):
        idx = np.flatnonzero(cams == c)
        if idx.size == 0:
            continue
        if max_per_camera is not None and idx.size > max_per_camera:
            idx = np.sort(rng.choice(idx, size=max_per_camera, replace=False))
        s = np.zeros(3)
        s2 = np.zeros(3)
        n = 0
        for i in idx.tolist():  # Python ints: a sequence is indexed by int
            img = images[i] if images is not None else read_image(items[i][0])
            x = _to_space(_pixels(img), space).reshape(-1, 3)
            s += x.sum(0)
            s2 += (x * x).sum(0)
            n += x.shape[0]
        m = s / n
        mean[c] = m
        std[c] = np.sqrt(np.maximum(s2 / n - m * m, 0.0))
        count[c] = idx.size
    return CameraColorStats(mean=mean, std=std, count=count, space=space)


def transfer_camera_style(
    img: Image.Image | np.ndarray,
    src_cam: int,
    dst_cam: int,
    stats: CameraColorStats,
    *,
    min_std: float = 1e-3,
) -> Image.Image:
    """Render ``img`` (taken by camera ``src_cam``) in camera ``dst_cam``'s colour style.

    Applies the per-channel affine map that sends ``src_cam``'s pooled mean/std to
    ``dst_cam``'s in ``stats.space`` (module docstring), clips to the displayable range and
    returns an RGB PIL image of the same size. Deterministic: no randomness is involved
    (which camera to render is the data loader's draw). ``src_cam == dst_cam`` returns the
    image unchanged.
    """
    for name, c in (("src_cam", src_cam), ("dst_cam", dst_cam)):
        if not stats.available(c):
            raise ValueError(f"{name}={c}: no colour statistics for that camera (it has no training images)")
    if src_cam == dst_cam:
        return img.convert("RGB") if isinstance(img, Image.Image) else Image.fromarray(
            np.clip(np.rint(_pixels(img) * 255.0), 0, 255).astype(np.uint8)
        )
    x = _to_space(_pixels(img), stats.space)
    scale = stats.std[dst_cam] / np.maximum(stats.std[src_cam], min_std)
    y = (x - stats.mean[src_cam]) * scale + stats.mean[dst_cam]
    rgb = np.clip(_from_space(y, stats.space), 0.0, 1.0)
    return Image.fromarray(np.rint(rgb * 255.0).astype(np.uint8))

