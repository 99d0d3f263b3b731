"""Datasets and DataLoaders for re-ID training and testing (ECN's preprocessors).

Map-style datasets over :class:`~reidlab.data.layout.Item` ``(path, pid, camid)`` lists
from :func:`reidlab.data.datasets.load_reid_dataset` (notebook 08 introduces them, notebook
09 the target datasets):

* :class:`ImageDataset` -- ``(image, pid, camid, index)``: the labelled source domain and
  the query/gallery sets;
* :class:`TargetDataset` -- ``(image, index)``: the unlabelled target domain; ``index`` is
  the image's slot in ECN's exemplar memory (notebook 09), the only "label" ECN uses;
* :class:`CamStyleTargetDataset` -- ``(image, index)`` like ECN's
  ``UnsupervisedCamStylePreprocessor``: per sample, draw one of the ``num_cams`` cameras
  uniformly; its own camera gives the original image, any other camera the CamStyle image
  in that camera's style. With 6 cameras, 1/6 of the samples are originals;
* :class:`ColorStyleTargetDataset` -- the same sampling for a target set *without* CamStyle
  images: another camera's style is imitated on the fly by colour-statistics transfer
  (:mod:`reidlab.data.camstyle`, a documented stand-in).

:func:`make_loader` builds a DataLoader with an explicit ``torch.Generator`` (so the
shuffle order and, through per-worker seeding, the augmentations repeat for a seed) and
``pin_memory`` only when the data is going to a CUDA device. :func:`make_reid_loaders`
builds the four loaders of a domain-adaptation run; its ``camstyle`` mode (one of
:data:`CAMSTYLE_MODES`) picks the target dataset (ECN's trainer,
:func:`reidlab.ecn.train_ecn`, uses it for its E / E+C switches).

**Image cache.** ``cache=True`` keeps decoded images in memory so that each image is decoded
once per run. With ``num_workers=0`` images are decoded on first use. With workers, a cache
filled *inside* a worker would be lost: each worker holds its own copy of the dataset, and
without persistent workers (which an exactly resumable trainer cannot use) the workers and
their copies end with every epoch. So the loaders of :func:`make_loader`
(:class:`CacheFillingLoader`) decode every image the dataset can read in the main process,
in parallel, before the first epoch's workers start; the workers then inherit the filled
cache (``fork``) or receive it with the dataset (``spawn``), and decode nothing.
"""
from __future__ import annotations

import functools

import itertools
from typing import Callable, Iterator, NamedTuple, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from .camstyle import CameraColorStats, camera_color_stats, transfer_camera_style
from .datasets import ReIDDataset
from .layout import Item, read_image
from .transforms import build_test_transform, build_train_transform

__all__ = [
    "ImageDataset",
    "TargetDataset",
    "CamStyleTargetDataset",
    "ColorStyleTargetDataset",
    "CAMSTYLE_MODES",
    "target_train_dataset",
    "make_loader",
    "ReIDLoaders",
    "make_reid_loaders",
    "CacheFillingLoader",
]

Transform = Callable[[Image.Image], object]


class _Decode(Dataset):
    """Decodes a list of image files; the worker pool that fills a cache in parallel."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Image.Image:
        return read_image(self.paths[index])


class _Base(Dataset):
    """Items, an optional transform and the optional decoded-image cache shared by the datasets below."""

    def __init__(self, items: Sequence[Item], transform: Transform | None = None, *, cache: bool = False) -> None:
        if len(items) == 0:
            raise ValueError("empty item list: nothing to load")
        self.items = list(items)
        self.transform = transform
        self._cache: dict[str, Image.Image] | None = {} if cache else None
        self._cache_full = False

    def __len__(self) -> int:
        return len(self.items)

    @property
    def cached(self) -> bool:
        """Whether decoded images are kept in memory (``cache=True``)."""
        return self._cache is not None

    def cache_paths(self) -> list[str]:
        """Every image file this dataset may read: what :meth:`fill_cache` decodes."""
        return [item[0] for item in self.items]

    def fill_cache(self, num_workers: int = 0) -> int:
        """Decode every image not cached yet, ``num_workers`` processes in parallel; returns how many.

        Called by :class:`CacheFillingLoader` in the main process before its workers start,
        so that they inherit the cache (see the module docstring). Without ``cache=True``, or
        once filled, it does nothing. The images come back in order, so the cache holds the
        same pixels as decoding on first use would.
        """
        if self._cache is None or self._cache_full:
            return 0
        missing = list(dict.fromkeys(p for p in self.cache_paths() if p not in self._cache))
        decoded: Iterator[Image.Image]
        if num_workers > 0 and len(missing) > 1:
            pool = DataLoader(
                _Decode(missing), batch_size=64, num_workers=num_workers, collate_fn=list,
                generator=torch.Generator(),  # seeds the pool's workers without drawing from the global RNG
            )
            decoded = itertools.chain.from_iterable(pool)
        else:
            decoded = map(read_image, missing)
        for path, img in zip(missing, decoded):
            self._cache[path] = img
        self._cache_full = True
        return len(missing)

    def _read(self, path: str) -> Image.Image:
        """The decoded image, from the in-memory cache when ``cache=True``."""
        if self._cache is None:
            return read_image(path)
        img = self._cache.get(path)
        if img is None:
            img = self._cache[path] = read_image(path)
        return img

    def _load(self, path: str):
        img = self._read(path)
        return self.transform(img) if self.transform is not None else img


class ImageDataset(_Base):
    """``(image, pid, camid, index)`` for each ``(path, pid, camid)`` item.

    ``cache=True`` keeps decoded images in memory, so each image is decoded once per run
    (also with worker processes, when the dataset is read through :func:`make_loader`):
    worth it for the small synthetic sets that a CPU notebook reads for many epochs. It
    costs ``H x W x 3`` bytes per image (24 KiB at 128x64).
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
    camstyle_paths:
        ``{path: {target camid: CamStyle image path}}`` (``ReIDDataset.camstyle``).
    num_cams:
        Cameras of the target domain; each sample draws one of them uniformly.
    missing:
        ``'error'`` (default): every image must have a CamStyle image for every other
        camera, checked here so that a gap fails at once, not mid-epoch; ``'original'``:
        fall back to the original image when one is missing.
    donors:
        Notebook 10's negative control for C (``None`` for ECN): one item index per item, and
        sample ``i``'s views in another camera ``c`` are then item ``donors[i]``'s CamStyle
        image in camera ``c`` (its original if ``c`` is its own camera): another person's
        images in ``i``'s memory slot. Draws of ``i``'s own camera still give ``i``'s original.
    """

    def __init__(
        self,
        items: Sequence[Item],
        camstyle_paths: dict[str, dict[int, str]],
        num_cams: int,
        transform: Transform | None = None,
        *,
        missing: str = "error",
        cache: bool = False,
        donors: Sequence[int] | None = None,
    ) -> None:
        super().__init__(items, transform, cache=cache)
        if num_cams < 1:
            raise ValueError(f"num_cams must be >= 1, got {num_cams}")
        if donors is not None:
            donors = [int(d) for d in donors]
            if len(donors) != len(self.items) or not all(0 <= d < len(self.items) for d in donors):
                raise ValueError(f"donors must hold one item index in [0, {len(self.items)}) per item")
        self.donors = donors
        if missing not in ("error", "original"):
            raise ValueError(f"missing must be 'error' or 'original', got {missing!r}")
        self.camstyle_paths, self.num_cams, self.missing = camstyle_paths, int(num_cams), missing
        if missing == "error":
            gaps = [
                (path, c)
                for path, _, cam in self.items
                for c in range(self.num_cams)
                if c != cam and c not in camstyle_paths.get(path, {})
            ]
            if gaps:
                path, c = gaps[0]
                raise ValueError(
                    f"{len(gaps)} CamStyle images missing, e.g. camera {c + 1} for {path} "
                    "(expected <CamStyle folder>/<name>_fake_<c>to<c2>.jpg; pass missing='original' to fall back)"
                )

    def cache_paths(self) -> list[str]:
        """The originals and every CamStyle image a draw can pick (cameras below ``num_cams``)."""
        fakes = (
            fake
            for path, _, cam in self.items
            for c, fake in sorted(self.camstyle_paths.get(path, {}).items())
            if c != cam and c < self.num_cams
        )
        return [*super().cache_paths(), *fakes]

    def choose(self, index: int, generator: torch.Generator | None = None) -> tuple[str, int]:
        """Pick the camera for one sample; returns ``(path to load, chosen camid)``."""
        path, _, cam = self.items[index]
        chosen = int(torch.randint(self.num_cams, (), generator=generator).item())
        if chosen == cam:
            return path, chosen
        if self.donors is not None:  # the control: the donor's view in the chosen camera
            path, _, cam = self.items[self.donors[index]]
            if chosen == cam:
                return path, chosen
        fake = self.camstyle_paths.get(path, {}).get(chosen)
        if fake is None:  # only reachable with missing='original'
            return path, cam
        return fake, chosen

    def __getitem__(self, index: int):
        path, _ = self.choose(index)
        return self._load(path), index


class ColorStyleTargetDataset(_Base):
    """``(image, index)`` with CamStyle sampling, other cameras imitated by colour transfer.

    The stand-in for :class:`CamStyleTargetDataset` when the target set has no
    ``bounding_box_train_camstyle`` folder (a real dataset whose CamStyle images were not
    downloaded). Per sample one of the ``num_cams`` cameras is drawn uniformly, as ECN's
    loader does; the image's own camera gives the original, another camera the original
    mapped to that camera's colour statistics (:func:`reidlab.data.camstyle.transfer_camera_style`),
    computed on the fly before the training transform.

    Parameters
    ----------
    items:
        Target training items ``(path, pid, camid)``; pids are ignored.
    stats:
        Per-camera colour statistics of the target training set
        (:func:`reidlab.data.camstyle.camera_color_stats`); cameras without images are never
        styled into (the original is used instead).
    num_cams:
        Cameras to draw from; default ``stats.num_cams``.
    """

    def __init__(
        self,
        items: Sequence[Item],
        stats: CameraColorStats,
        num_cams: int | None = None,
        transform: Transform | None = None,
        *,
        cache: bool = False,
    ) -> None:
        super().__init__(items, transform, cache=cache)
        self.stats = stats
        self.num_cams = int(num_cams if num_cams is not None else stats.num_cams)
        if self.num_cams < 1:
            raise ValueError(f"num_cams must be >= 1, got {self.num_cams}")
        if self.num_cams > stats.num_cams:
            raise ValueError(f"num_cams={self.num_cams} but colour statistics cover only {stats.num_cams} cameras")
        unknown = sorted({c for _, _, c in self.items if not stats.available(c)})
        if unknown:
            raise ValueError(f"cameras {unknown} of the items have no colour statistics (compute them on these items)")

    def choose(self, index: int, generator: torch.Generator | None = None) -> int:
        """Draw the camera whose style sample ``index`` gets; its own camera means the original."""
        cam = self.items[index][2]
        chosen = int(torch.randint(self.num_cams, (), generator=generator).item())
        return chosen if self.stats.available(chosen) else cam

    def styled(self, index: int, camid: int) -> Image.Image:
        """Sample ``index`` rendered by camera ``camid`` (before the transform)."""
        path, _, cam = self.items[index]
        img = self._read(path)
        return img if camid == cam else transfer_camera_style(img, cam, camid, self.stats)

    def __getitem__(self, index: int):
        img = self.styled(index, self.choose(index))
        return (self.transform(img) if self.transform is not None else img), index


#: The ``camstyle=`` modes of :func:`make_reid_loaders` / :func:`target_train_dataset`: where
#: the other cameras' views of a target image come from (see :func:`target_train_dataset`).
CAMSTYLE_MODES: tuple[str, ...] = ("none", "folder", "oracle", "color", "auto")


def _check_camstyle_mode(camstyle: str) -> str:
    """``camstyle`` if it is one of :data:`CAMSTYLE_MODES`, else a ``ValueError`` that says what to pass."""
    if isinstance(camstyle, str) and camstyle in CAMSTYLE_MODES:
        return camstyle
    hint = ""
    if isinstance(camstyle, bool):  # the old vocabulary
        hint = " (True used to mean 'folder' when the tree has CamStyle images, else 'none'; False means 'none')"
    raise ValueError(f"camstyle={camstyle!r}: choose one of {', '.join(map(repr, CAMSTYLE_MODES))}{hint}")


def target_train_dataset(
    target: ReIDDataset,
    transform: Transform | None,
    *,
    camstyle: str = "auto",
    cache: bool = False,
    color_space: str = "lab",
    seed: int = 0,
    donors: Sequence[int] | None = None,
) -> Dataset:
    """The target-domain training set for ECN: plain, CamStyle folder, oracle re-renders, or colour stand-in.

    ``camstyle`` (one of :data:`CAMSTYLE_MODES`):

    * ``'none'`` -- :class:`TargetDataset` (no camera invariance: ECN's E, E+N);
    * ``'folder'`` -- :class:`CamStyleTargetDataset` on the tree's
      ``bounding_box_train_camstyle`` images (ECN's CamStyle images: style transfers, in a
      synthetic tree made like a GAN's, :mod:`reidlab.data.synth.restyle`); a ``ValueError``
      if it has none (asked for explicitly, a missing folder is an error, not a silent fallback);
    * ``'oracle'`` -- :class:`CamStyleTargetDataset` on ``bounding_box_train_camstyle_oracle``:
      the person re-rendered by the other camera, pixel-aligned, which only a synthetic tree
      has. An ablation (how much do the GAN's imperfections cost?); a ``ValueError`` without it;
    * ``'color'`` -- :class:`ColorStyleTargetDataset` (the colour-statistics stand-in);
    * ``'auto'`` (default) -- the folder when the tree has one, else the colour stand-in, so
      camera invariance is always trained when asked for. Never the oracle: the default
      must be what a real dataset could give.

    ``color_space`` and ``seed`` only matter for the colour stand-in: the space of the
    transfer and the draw of the images its camera statistics are computed from. ``donors``
    (``'folder'`` and ``'oracle'`` only) is notebook 10's negative control for C, see
    :class:`CamStyleTargetDataset`.
    """
    mode = _check_camstyle_mode(camstyle)
    if mode == "auto":
        mode = "folder" if target.has_camstyle else "color"
    if donors is not None and mode not in ("folder", "oracle"):
        raise ValueError(f"donors (the other-person control) need CamStyle images: camstyle {mode!r}")
    if mode == "none":
        return TargetDataset(target.train, transform, cache=cache)
    if mode == "folder":
        if not target.has_camstyle:
            raise ValueError(
                f"camstyle='folder' but {target.root} has no bounding_box_train_camstyle/ images; "
                "use camstyle='color' for the colour-statistics stand-in"
            )
        return CamStyleTargetDataset(target.train, target.camstyle, target.num_cams, transform, cache=cache,
                                     donors=donors)
    if mode == "oracle":
        if not target.has_camstyle_oracle:
            raise ValueError(
                f"camstyle='oracle' but {target.root} has no bounding_box_train_camstyle_oracle/ images "
                "(only synthetic trees written with CamStyle images have them); "
                "use camstyle='folder' for the CamStyle images or 'color' for the colour-statistics stand-in"
            )
        return CamStyleTargetDataset(target.train, target.camstyle_oracle, target.num_cams, transform, cache=cache,
                                     donors=donors)
    stats = camera_color_stats(target.train, target.num_cams, space=color_space, seed=seed)
    return ColorStyleTargetDataset(target.train, stats, target.num_cams, transform, cache=cache)


class CacheFillingLoader(DataLoader):
    """A DataLoader that fills its dataset's image cache once, in the main process, before its workers start.

    Why: every worker process works on its own copy of the dataset, so images cached inside
    a worker are lost when the worker ends, which without persistent workers is after every
    epoch. Filling the cache first (decoding in parallel with ``num_workers`` processes, see
    :meth:`ImageDataset.fill_cache`) means the workers start with every image decoded. With
    ``num_workers=0`` nothing is done here: the dataset lives in this process and caches on
    first use. A dataset without ``cache=True`` is read as by a plain DataLoader.
    """

    def __iter__(self):
        if self.num_workers > 0 and isinstance(self.dataset, _Base):
            self.dataset.fill_cache(self.num_workers)
        return super().__iter__()


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    device: str | torch.device = "cpu",
    persistent_workers: bool | None = None,
    shard: tuple[int, int] | None = None,
) -> DataLoader:
    """A :class:`CacheFillingLoader` with an explicit generator; ``pin_memory`` only for a CUDA ``device``.

    The generator (``loader.generator``) drives the shuffle order and the base seed of every
    worker, so two loaders with the same ``seed`` yield the same batches, augmentations
    included. Pinned memory only helps host-to-GPU copies; on a CPU run it just costs time.
    ``persistent_workers`` (default: whenever there are workers) keeps worker processes
    alive between epochs; they are then seeded only once, so a trainer that reseeds
    ``loader.generator`` every epoch to make each epoch reproducible on its own (exact
    resume) passes ``False``. A dataset built with ``cache=True`` is decoded once, before the
    first epoch's workers start (:class:`CacheFillingLoader`).

    ``shard=(rank, world_size)`` makes a shuffled loader yield only this process's share
    (notebook 11), through ``torch.utils.data.distributed.DistributedSampler`` with
    ``drop_last=True``: every process draws the same permutation and keeps every
    ``world_size``-th index from position ``rank``, so the shares are disjoint, equally long
    (``len(dataset) // world_size``) and an epoch is still one pass over the data. The
    permutation comes from the sampler's own seed (``loader.sampler.seed``, ``seed`` at first;
    the trainer sets it each epoch, alike on every process: :func:`reidlab.ecn.loop.seed_epoch`);
    the loader's generator, different on each process, then only seeds the workers, so each
    process augments its images with its own random draws.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    gen = torch.Generator()
    gen.manual_seed(int(seed))
    sampler: DistributedSampler | None = None
    if shard is not None and shard[1] > 1:
        if not shuffle:
            raise ValueError("shard= is for shuffled training loaders; test loaders are read whole by one process")
        rank, world_size = shard
        size = len(dataset)  # type: ignore[arg-type]  # a map-style dataset, as DistributedSampler needs
        if size < world_size:  # DistributedSampler would give every process an empty share
            raise ValueError(f"{size} samples cannot be shared by {world_size} processes")
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
        shuffle = False
    return CacheFillingLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.device(device).type == "cuda",
        drop_last=drop_last,
        generator=gen,
        persistent_workers=num_workers > 0 and (persistent_workers is None or bool(persistent_workers)),
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
    camstyle: str = "auto",
    random_erasing: float = 0.5,
    cache: bool = False,
    persistent_workers: bool | None = None,
    test_batch_size: int | None = None,
    shard: tuple[int, int] | None = None,
    donors: Sequence[int] | None = None,
) -> ReIDLoaders:
    """Source train (labelled), target train (index, CamStyle per ``camstyle``), target query/gallery.

    Training loaders shuffle and drop the last incomplete batch (as ECN does, so BN never
    sees a tiny batch); test loaders keep order. ``camstyle`` (one of :data:`CAMSTYLE_MODES`,
    default ``'auto'`` like :func:`target_train_dataset` and ECN's trainer) picks the target
    training set. The target loader's seed is ``seed + 1``, so the two domains are not
    shuffled alike. ``cache=True`` caches decoded images in every dataset (each image decoded
    once per run, see the module docstring). ``shard=(rank, world_size)`` gives each of several
    processes its share of the two training sets (a ``DistributedSampler``, see
    :func:`make_loader`); ``batch_size`` is then the per-process batch. ``donors``: notebook
    10's negative control for C (:class:`CamStyleTargetDataset`).
    """
    train_tf = build_train_transform(height, width, random_erasing=random_erasing)
    test_tf = build_test_transform(height, width)
    src = ImageDataset(source.train, train_tf, cache=cache)
    tgt = target_train_dataset(target, train_tf, camstyle=camstyle, cache=cache, seed=seed, donors=donors)
    loader = functools.partial(make_loader, num_workers=num_workers, device=device, persistent_workers=persistent_workers)
    test_bs = test_batch_size or batch_size
    return ReIDLoaders(
        loader(src, batch_size, shuffle=True, drop_last=True, seed=seed, shard=shard),
        loader(tgt, batch_size, shuffle=True, drop_last=True, seed=seed + 1, shard=shard),
        loader(ImageDataset(target.query, test_tf, cache=cache), test_bs, seed=seed),
        loader(ImageDataset(target.gallery, test_tf, cache=cache), test_bs, seed=seed),
    )
