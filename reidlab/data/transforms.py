"""ECN's image transforms: random-sized rectangle crop, flip, normalise, random erasing.

ECN (Zhong et al., CVPR 2019) trains with open-reid's pipeline::

    RandomSizedRectCrop(h, w) -> RandomHorizontalFlip -> ToTensor -> Normalize(ImageNet)
    -> RandomErasing(p=0.5)

and tests with ``Resize((h, w), bicubic) -> ToTensor -> Normalize``. The crop keeps 64-100 %
of the image area with a tall aspect ratio (height / width between 2 and 3, like a
pedestrian box), so the augmentation never cuts the person in half; random erasing
(Zhong et al., AAAI 2020) blanks a rectangle of 2-20 % of the image with the ImageNet mean,
which simulates occlusion. The common alternative (torchreid's default) is resize, pad
10 pixels, random crop back: ``build_train_transform(..., crop='pad')``.

Random draws use PyTorch's global generator, which DataLoader seeds per worker from the
loader's own generator: a loader built with :func:`reidlab.data.loaders.make_loader` and a
fixed seed gives the same augmentations run after run. Used from notebook 08 on.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RandomSizedRectCrop",
    "RandomErasing",
    "build_train_transform",
    "build_test_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand(()).item()


def _randint(lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] (inclusive, like ``random.randint``)."""
    return int(torch.randint(lo, hi + 1, ()).item())


class RandomSizedRectCrop:
    """Crop 64-100 % of the area at aspect ratio h/w in [2, 3], then resize to (height, width).

    open-reid's transform that ECN uses. Ten attempts; if no crop fits, the whole image is
    resized (open-reid's ``RectScale`` fallback).
    """

    def __init__(
        self,
        height: int,
        width: int,
        area: tuple[float, float] = (0.64, 1.0),
        aspect: tuple[float, float] = (2.0, 3.0),
        interpolation: InterpolationMode = InterpolationMode.BILINEAR,
    ) -> None:
        if height <= 0 or width <= 0:
            raise ValueError(f"height and width must be positive, got {height}x{width}")
        self.height, self.width = int(height), int(width)
        self.area, self.aspect = area, aspect
        self.resize = T.Resize((self.height, self.width), interpolation=interpolation)

    def __call__(self, img: Image.Image) -> Image.Image:
        W, H = img.size
        for _ in range(10):
            target = _uniform(*self.area) * W * H
            ratio = _uniform(*self.aspect)
            h = int(round(math.sqrt(target * ratio)))
            w = int(round(math.sqrt(target / ratio)))
            if w <= W and h <= H:
                x1 = _randint(0, W - w)
                y1 = _randint(0, H - h)
                return self.resize(img.crop((x1, y1, x1 + w, y1 + h)))
        return self.resize(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(height={self.height}, width={self.width}, area={self.area}, aspect={self.aspect})"


class RandomErasing:
    """Blank one random rectangle of a normalised CHW tensor with ``value`` (probability ``p``).

    ECN's version: area 2-20 % of the image, aspect ratio h/w in [0.3, 3], filled with the
    ImageNet mean given in *pixel* units (0.485, ...), 100 attempts. (After normalisation the
    pixel mean is not zero, so the erased patch is mid-grey-ish rather than black; we keep
    the reference behaviour.)
    """

    def __init__(
        self,
        p: float = 0.5,
        area: tuple[float, float] = (0.02, 0.2),
        aspect: tuple[float, float] = (0.3, 3.0),
        value: Sequence[float] = IMAGENET_MEAN,
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"random-erasing probability must be in [0, 1], got {p}")
        self.p, self.area, self.aspect = float(p), area, aspect
        self.value = torch.tensor(value, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or torch.rand(()).item() >= self.p:
            return img
        C, H, W = img.shape
        for _ in range(100):
            target = _uniform(*self.area) * H * W
            ratio = _uniform(*self.aspect)
            h = int(round(math.sqrt(target * ratio)))
            w = int(round(math.sqrt(target / ratio)))
            if 0 < w < W and 0 < h < H:
                y1 = _randint(0, H - h)
                x1 = _randint(0, W - w)
                img = img.clone()
                img[:, y1 : y1 + h, x1 : x1 + w] = self.value[:C].to(img.dtype)
                return img
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p}, area={self.area})"


def build_train_transform(
    height: int,
    width: int,
    *,
    crop: str = "rect",
    flip: float = 0.5,
    random_erasing: float = 0.5,
    padding: int = 10,
) -> T.Compose:
    """ECN's training transform (``crop='rect'``) or resize-pad-crop (``crop='pad'``).

    Returns a ``torchvision.transforms.Compose`` mapping a PIL image to a normalised
    ``3 x height x width`` float tensor.
    """
    if crop == "rect":
        geometric = [RandomSizedRectCrop(height, width)]
    elif crop == "pad":
        geometric = [
            T.Resize((height, width), interpolation=InterpolationMode.BILINEAR),
            T.Pad(padding),
            T.RandomCrop((height, width)),
        ]
    else:
        raise ValueError(f"crop must be 'rect' (ECN's random-sized rectangle crop) or 'pad', got {crop!r}")
    return T.Compose(
        [
            *geometric,
            T.RandomHorizontalFlip(flip),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            RandomErasing(random_erasing),
        ]
    )


def build_test_transform(height: int, width: int) -> T.Compose:
    """ECN's test transform: bicubic resize to (height, width), ToTensor, ImageNet normalise."""
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive, got {height}x{width}")
    return T.Compose(
        [
            T.Resize((height, width), interpolation=InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
