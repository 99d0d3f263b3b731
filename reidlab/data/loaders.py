"""Datasets and DataLoaders for re-ID training and testing (ECN's preprocessors).

Three map-style datasets over ``(path, pid, camid)`` lists from
:func:`reidlab.data.datasets.load_reid_dataset`:

* :class:`ImageDataset` -- ``(image, pid, camid, index)``: the labelled source domain and
  the query/gallery sets;
* :class:`TargetDataset` -- ``(image, index)``: the unlabelled target domain; ``index`` is
  the image's slot in ECN's exemplar memory (notebook 09), the only "label" ECN uses;
* :class:`CamStyleTargetDataset` -- ``(image, index)`` like ECN's
  ``UnsupervisedCamStylePreprocessor``: per sample, draw one of the ``num_cams`` cameras
  uniformly; its own camera gives the original image, any other camera the CamStyle image
  rendered in that camera's style. With 6 cameras, 1/6 of the samples are originals.

:func:`make_loader` builds a DataLoader with an explicit ``torch.Generator`` (so the
shuffle order and, through per-worker seeding, the augmentations repeat for a seed) and
``pin_memory`` only when the data is going to a CUDA device.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .datasets import ReIDDataset
from .transforms import build_test_transform, build_train_transform

__all__ = [
    "ImageDataset",
    "TargetDataset",
    "CamStyleTargetDataset",
    "make_loader",
    "ReIDLoaders",
    "make_reid_loaders",
    "read_image",
]

Item = tuple[str, int, int]
Transform = Callable[[Image.Image], object]


def read_image(path: str) -> Image.Image:
    """Open an image as RGB, with the path in the error if it cannot be read."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except OSError as err:
        raise OSError(f"cannot read image {path}: {err}") from None


class _Base(Dataset):
    def __init__(self, items: Sequence[Item], transform: Transform | None = None, *, cache: bool = False) -> None:
        if len(items) == 0:
            raise ValueError("empty item list: nothing to load")
        self.items = list(items)
        self.transform = transform
        self._cache: dict[str, Image.Image] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, path: str):
        if self._cache is not None:
            img = self._cache.get(path)
            if img is None:
                img = self._cache[path] = read_image(path)
        else:
            img = read_image(path)
        return self.transform(img) if self.transform is not None else img


class ImageDataset(_Base):
    """``(image, pid, camid, index)`` for each ``(path, pid, camid)`` item.

    ``cache=True`` keeps decoded images in memory (per worker process): worth it for the
    small synthetic sets that a CPU notebook reads for many epochs.
    """

    def __getitem__(self, index: int):
        path, pid, camid = self.items[index]
        return self._load(path), pid, camid, index


class TargetDataset(_Base):
    """``(image, index)``: an unlabelled target image and its exemplar-memory slot."""

    def __getitem__(self, index: int):
        return self._load(self.items[index][0]), index


class CamStyleTargetDataset(_Base):
    """``(image, index)`` with ECN's CamStyle sampling (camera-invariance term).

    Parameters
    ----------
    items:
        The target training items ``(path, pid, camid)``; pids are ignored.
    camstyle:
        ``{path: {target camid: camstyle path}}`` (``ReIDDataset.camstyle``).
    num_cams:
        Cameras of the target domain; each sample draws one of them uniformly.
    missing:
        ``'error'`` (default): every image must have a CamStyle image for every other
        camera, checked here so that a gap fails at once, not mid-epoch; ``'original'``:
        fall back to the original image when one is missing.
    """

    def __init__(
        self,
        items: Sequence[Item],
        camstyle: dict[str, dict[int, str]],
        num_cams: int,
        transform: Transform | None = None,
        *,
        missing: str = "error",
        cache: bool = False,
    ) -> None:
        super().__init__(items, transform, cache=cache)
        if num_cams < 1:
            raise ValueError(f"num_cams must be >= 1, got {num_cams}")
        if missing not in ("error", "original"):
            raise ValueError(f"missing must be 'error' or 'original', got {missing!r}")
        self.camstyle, self.num_cams, self.missing = camstyle, int(num_cams), missing
        if missing == "error":
            gaps = [
                (path, c)
                for path, _, cam in self.items
                for c in range(self.num_cams)
                if c != cam and c not in camstyle.get(path, {})
            ]
            if gaps:
                path, c = gaps[0]
                raise ValueError(
                    f"{len(gaps)} CamStyle images missing, e.g. camera {c + 1} for {path} "
                    "(expected bounding_box_train_camstyle/<name>_fake_<c>to<c2>.jpg; pass missing='original' to fall back)"
                )

    def choose(self, index: int, generator: torch.Generator | None = None) -> tuple[str, int]:
        """Pick the camera for one sample; returns ``(path to load, chosen camid)``."""
        path, _, cam = self.items[index]
        chosen = int(torch.randint(self.num_cams, (), generator=generator).item())
        if chosen == cam:
            return path, chosen
        fake = self.camstyle.get(path, {}).get(chosen)
        if fake is None:  # only reachable with missing='original'
            return path, cam
        return fake, chosen

    def __getitem__(self, index: int):
        path, _ = self.choose(index)
        return self._load(path), index


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    device: str | torch.device = "cpu",
) -> DataLoader:
    """A DataLoader with an explicit generator; ``pin_memory`` only for a CUDA ``device``.

    The generator drives the shuffle order and the base seed of every worker, so two
    loaders with the same ``seed`` yield the same batches, augmentations included.
    Pinned memory only helps host-to-GPU copies; on a CPU run it just costs time.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
        drop_last=drop_last,
        generator=gen,
        persistent_workers=num_workers > 0,
    )


class ReIDLoaders(NamedTuple):
    """The four loaders of a domain-adaptation run (ECN's ``get_data``)."""

    source_train: DataLoader
    target_train: DataLoader
    query: DataLoader
    gallery: DataLoader


def make_reid_loaders(
    source: ReIDDataset,
    target: ReIDDataset,
    *,
    height: int,
    width: int,
    batch_size: int,
    num_workers: int = 0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    camstyle: bool = True,
    random_erasing: float = 0.5,
    cache: bool = False,
) -> ReIDLoaders:
    """Source train (labelled), target train (index, CamStyle when available), target query/gallery.

    Training loaders shuffle and drop the last incomplete batch (as ECN does, so BN never
    sees a tiny batch); test loaders keep order.
    """
    train_tf = build_train_transform(height, width, random_erasing=random_erasing)
    test_tf = build_test_transform(height, width)
    src = ImageDataset(source.train, train_tf, cache=cache)
    if camstyle and target.has_camstyle:
        tgt: Dataset = CamStyleTargetDataset(target.train, target.camstyle, target.num_cams, train_tf, cache=cache)
    else:
        tgt = TargetDataset(target.train, train_tf, cache=cache)
    kw = dict(num_workers=num_workers, device=device)
    return ReIDLoaders(
        make_loader(src, batch_size, shuffle=True, drop_last=True, seed=seed, **kw),
        make_loader(tgt, batch_size, shuffle=True, drop_last=True, seed=seed + 1, **kw),
        make_loader(ImageDataset(target.query, test_tf, cache=cache), batch_size, seed=seed, **kw),
        make_loader(ImageDataset(target.gallery, test_tf, cache=cache), batch_size, seed=seed, **kw),
    )
