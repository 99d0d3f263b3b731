"""Parsers for Market-1501-style re-ID trees: Market-1501, DukeMTMC-reID, MSMT17, synthetic.

:func:`load_reid_dataset` turns a tree in the Market-1501 layout (folder names and file-name
parsing: :mod:`reidlab.data.layout`) into a :class:`ReIDDataset` of ``(path, pid, camid)``
items. A synthetic domain named by ``'synth_market'`` / ``'synth_duke'`` is generated first
(:mod:`reidlab.data.synth`, cached), so a notebook or the ECN trainer names a dataset the
same way whether it is real or drawn; the import goes one way (this module imports the
writer, the writer never imports the parser).

Protocol choices (torchreid's convention, which notebook 08 teaches):

* junk images (pid -1) are **dropped from every split**: torchreid's ``Market1501``
  skips them while parsing, so the gallery you evaluate against has 15,913 images, not
  the 19,732 files in ``bounding_box_test``;
* distractors (pid 0) stay in the gallery with pid 0: they can never be a true match, and
  only make retrieval harder;
* camera ids are 0-based (``c1`` -> 0);
* training pids are relabelled to ``0..N-1`` in sorted order of the original pids (the
  classifier needs contiguous labels); query and gallery keep the original pids, because
  evaluation only compares them for equality.

Notebook 08 walks through these layouts and the evaluation protocol.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .layout import (
    CAMSTYLE_DIR,
    CAMSTYLE_ORACLE_DIR,
    GALLERY_DIR,
    IMAGE_EXTENSIONS,
    QUERY_DIR,
    TRAIN_DIR,
    Item,
    list_images,
    parse_camstyle_name,
    parse_reid_name,
)
from .synth import DOMAINS, MANIFEST, Scale, make_synthetic_reid

__all__ = [
    "ReIDDataset",
    "load_reid_dataset",
    "KNOWN_DATASETS",
    "SYNTH_NAMES",
]

# name -> (folder names tried under `root`, number of cameras)
KNOWN_DATASETS: dict[str, tuple[tuple[str, ...], int]] = {
    "market1501": (("market1501", "Market-1501-v15.09.15", "Market-1501", "market"), 6),
    "dukemtmc-reid": (("dukemtmc-reid", "DukeMTMC-reID", "dukemtmcreid", "duke"), 8),
    "msmt17": (("msmt17", "MSMT17", "MSMT17_V1", "MSMT17_V2"), 15),
}
#: The synthetic domains :func:`load_reid_dataset` generates by name.
SYNTH_NAMES: tuple[str, ...] = tuple(DOMAINS)


@dataclass
class ReIDDataset:
    """One parsed re-ID tree.

    Attributes
    ----------
    train, query, gallery:
        Lists of :class:`~reidlab.data.layout.Item` ``(path, pid, camid)``; paths are absolute strings, camids 0-based. Train
        pids are relabelled ``0..num_train_pids-1``; query/gallery pids are the original ones
        (distractors 0 kept, junk -1 dropped, as torchreid does).
    num_train_pids:
        Number of training identities (the classifier's output size).
    num_cams:
        Number of cameras of the dataset (ECN's CamStyle sampling draws from all of them).
    camstyle:
        For each training image path: ``{target camid: CamStyle image path}``; empty when
        the tree has no ``bounding_box_train_camstyle`` folder.
    camstyle_oracle:
        The same mapping for ``bounding_box_train_camstyle_oracle/`` (synthetic trees only:
        the person re-rendered by the other camera, an ablation, see
        :mod:`reidlab.data.synth.write`); empty for a real dataset.
    train_original_pids:
        The original pid of each training item (same order as ``train``), i.e. the hidden
        true identity that an unsupervised (target-domain) method must not use for training
        but may use to measure, e.g., kNN precision (notebook 09).
    """

    name: str
    root: Path
    train: list[Item]
    query: list[Item]
    gallery: list[Item]
    num_train_pids: int
    num_cams: int
    camstyle: dict[str, dict[int, str]] = field(default_factory=dict)
    camstyle_oracle: dict[str, dict[int, str]] = field(default_factory=dict)
    train_original_pids: list[int] = field(default_factory=list)
    num_junk_dropped: dict[str, int] = field(default_factory=dict)

    @property
    def has_camstyle(self) -> bool:
        """Whether the tree's CamStyle images were parsed (ECN's ``'auto'`` mode looks at this)."""
        return bool(self.camstyle)

    @property
    def has_camstyle_oracle(self) -> bool:
        """Whether the tree's oracle CamStyle images were parsed (``camstyle='oracle'`` needs them)."""
        return bool(self.camstyle_oracle)

    def camstyle_for(self, path: str, *, oracle: bool = False) -> dict[int, str]:
        """The CamStyle images of one training image, keyed by 0-based target camera (``oracle``: the re-renders)."""
        return (self.camstyle_oracle if oracle else self.camstyle).get(str(path), {})

    def summary(self) -> str:
        """A small table like the one ECN and torchreid print when a dataset is loaded."""

        def ids(items: Sequence[Item]) -> int:
            return len({p for _, p, _ in items})

        rows = [
            ("train", ids(self.train), len(self.train)),
            ("query", ids(self.query), len(self.query)),
            ("gallery", ids(self.gallery), len(self.gallery)),
        ]
        lines = [f"{self.name}: {self.num_cams} cameras" + (", with CamStyle images" if self.has_camstyle else "")]
        lines.append(f"  {'subset':8} {'# ids':>6} {'# images':>9}")
        lines += [f"  {n:8} {i:>6} {k:>9}" for n, i, k in rows]
        return "\n".join(lines)


def _parse_split(folder: Path, *, relabel: bool) -> tuple[list[Item], dict[int, int], int]:
    """Parse one split folder; returns items, the pid map used and the number of junk images dropped."""
    files = list_images(folder)
    if not files:
        raise ValueError(f"empty split: {folder} holds no {'/'.join(IMAGE_EXTENSIONS)} images")
    parsed = []
    junk = 0
    base = folder.resolve()      # once per folder: resolving each of Market's 12,936 files costs seconds
    for f in files:
        try:
            pid, cam = parse_reid_name(f.name)
        except ValueError as err:
            raise ValueError(f"{err} (in {folder})") from None
        if pid == -1:
            junk += 1
            continue
        parsed.append(Item(str(base / f.name), pid, cam))
    if not parsed:
        raise ValueError(f"empty split: {folder} holds only junk images (pid -1)")
    pids = sorted({p for _, p, _ in parsed})
    pid_map = {p: i for i, p in enumerate(pids)} if relabel else {p: p for p in pids}
    return [Item(path, pid_map[p], c) for path, p, c in parsed], pid_map, junk


def _parse_camstyle(folder: Path, train: list[Item]) -> dict[str, dict[int, str]]:
    """``{training image path: {target camid: CamStyle path}}``, linked by the file-name stem."""
    by_stem = {Path(path).stem: path for path, _, _ in train}
    out: dict[str, dict[int, str]] = {}
    base = folder.resolve()
    for f in list_images(folder):
        stem, dst = parse_camstyle_name(f.name)
        path = by_stem.get(stem)
        if path is None:
            continue  # CamStyle image of a junk or missing training image: ECN never asks for it
        out.setdefault(path, {})[dst] = str(base / f.name)
    return out


def _resolve_root(name_or_path: str | Path, root: str | Path | None) -> tuple[str, Path, int | None]:
    """``(name, folder, known number of cameras or None)`` of a named real dataset or a path.

    The usual folder names of each benchmark's archive are tried, so an unpacked download
    works as it is; the errors name what was looked for, since nothing is downloaded.
    """
    key = str(name_or_path).strip().lower()
    if key in KNOWN_DATASETS:
        if root is None:
            raise ValueError(
                f"dataset {name_or_path!r} needs root= (the folder that holds it, e.g. root/market1501/query); "
                "nothing is downloaded"
            )
        folders, num_cams = KNOWN_DATASETS[key]
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"dataset root not found: {root} (expected a folder holding {folders[0]}/)")
        if (root / QUERY_DIR).is_dir() or (root / TRAIN_DIR).is_dir():
            return key, root, num_cams  # root is the dataset folder itself
        for folder in folders:
            if (root / folder).is_dir():
                return key, root / folder, num_cams
        raise FileNotFoundError(
            f"{name_or_path} not found under {root}: expected one of {', '.join(f + '/' for f in folders)} "
            f"holding {TRAIN_DIR}/, {GALLERY_DIR}/ and {QUERY_DIR}/"
        )
    path = Path(name_or_path).expanduser()
    if root is not None and not path.is_absolute():
        path = Path(root).expanduser() / path
    if not path.is_dir():
        raise FileNotFoundError(
            f"dataset folder not found: {path} (expected a Market-1501-style folder with {TRAIN_DIR}/, "
            f"{GALLERY_DIR}/ and {QUERY_DIR}/, or one of: {', '.join([*KNOWN_DATASETS, *SYNTH_NAMES])})"
        )
    return path.name, path, None


def load_reid_dataset(
    name_or_path: str | Path,
    root: str | Path | None = None,
    *,
    scale: str | Scale = "tiny",
    seed: int = 0,
    with_camstyle: bool = True,
) -> ReIDDataset:
    """Parse a Market-1501-style re-ID tree (layout and file names: :mod:`reidlab.data.layout`).

    Parameters
    ----------
    name_or_path:
        ``'market1501'``, ``'dukemtmc-reid'`` or ``'msmt17'`` (looked up under ``root``);
        ``'synth_market'`` or ``'synth_duke'`` (generated by
        :func:`reidlab.data.synth.make_synthetic_reid` under ``root``, default
        ``reidlab.files.data_dir() / 'synth'``, at ``scale`` and ``seed``, cached); or a path to a
        folder with the Market-1501 layout.
    root:
        Folder holding the named dataset (a relative path is taken relative to it).
    scale, seed:
        Only for the synthetic domains: a scale name (``'tiny'``, ``'small'``, ``'market'``)
        or a :class:`~reidlab.data.synth.world.Scale`.
    with_camstyle:
        Parse ``bounding_box_train_camstyle/`` and ``bounding_box_train_camstyle_oracle/``
        when present (``False``: leave :attr:`ReIDDataset.camstyle` and
        :attr:`ReIDDataset.camstyle_oracle` empty, to treat a tree as a real dataset without
        CamStyle images, or to skip parsing thousands of names that will not be used).
        Which target dataset ECN then trains on is the loader's ``camstyle=`` mode
        (:func:`reidlab.data.loaders.target_train_dataset`).

    Raises
    ------
    FileNotFoundError
        The folder (or a split folder in it) does not exist.
    ValueError
        A wrong layout, an unparseable file name or an empty split; the message names the path.
    """
    key = str(name_or_path).strip().lower()
    known_cams: int | None
    if key in SYNTH_NAMES:
        base = Path(root).expanduser() if root is not None else None
        path = make_synthetic_reid(base, domain=key, scale=scale, seed=seed)
        name, known_cams = key, DOMAINS[key].num_cams
    else:
        name, path, known_cams = _resolve_root(name_or_path, root)

    missing = [d for d in (TRAIN_DIR, GALLERY_DIR, QUERY_DIR) if not (path / d).is_dir()]
    if missing:
        raise ValueError(
            f"not a Market-1501-style layout: {path} lacks {', '.join(d + '/' for d in missing)} "
            f"(expected {TRAIN_DIR}/, {GALLERY_DIR}/ and {QUERY_DIR}/)"
        )
    train, pid_map, junk_train = _parse_split(path / TRAIN_DIR, relabel=True)
    inverse = {v: k for k, v in pid_map.items()}
    query, _, junk_query = _parse_split(path / QUERY_DIR, relabel=False)
    gallery, _, junk_gallery = _parse_split(path / GALLERY_DIR, relabel=False)

    if known_cams is None and (path / MANIFEST).is_file():  # a synthetic tree given by path
        try:
            known_cams = int(json.loads((path / MANIFEST).read_text()).get("num_cams", 0)) or None
        except (ValueError, OSError, AttributeError):
            known_cams = None
    cams_seen = 1 + max(c for items in (train, query, gallery) for _, _, c in items)
    num_cams = max(known_cams or 0, cams_seen)

    style, oracle = (
        _parse_camstyle(path / d, train) if with_camstyle and (path / d).is_dir() else {}
        for d in (CAMSTYLE_DIR, CAMSTYLE_ORACLE_DIR)
    )
    return ReIDDataset(
        name=name,
        root=path,
        train=train,
        query=query,
        gallery=gallery,
        num_train_pids=len(pid_map),
        num_cams=num_cams,
        camstyle=style,
        camstyle_oracle=oracle,
        train_original_pids=[inverse[p] for _, p, _ in train],
        num_junk_dropped={"train": junk_train, "query": junk_query, "gallery": junk_gallery},
    )
