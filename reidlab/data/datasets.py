"""Parsers for Market-1501-style re-ID trees: Market-1501, DukeMTMC-reID, MSMT17, synthetic.

Every person re-ID benchmark used by ECN is distributed (or, for MSMT17, re-packed by the
ECN authors) in the layout of Market-1501::

    <root>/bounding_box_train/            training images (labelled)
    <root>/bounding_box_test/             gallery images
    <root>/query/                         query images
    <root>/bounding_box_train_camstyle/   optional: CamStyle images of the training set

and the identity and the camera are read from each file name:

=================  ================================  ==========================================
dataset            example                           fields
=================  ================================  ==========================================
Market-1501        ``0002_c1s1_000451_03.jpg``       pid 2, camera 1, sequence 1, frame, box
Market-1501 junk   ``-1_c3s1_000301_02.jpg``         pid -1: a bad detection ("junk")
Market distractor  ``0000_c1s1_000151_01.jpg``       pid 0: a distractor (no real identity)
DukeMTMC-reID      ``0001_c2_f0046182.jpg``          pid 1, camera 2, frame 46182
MSMT17 (ECN)       ``0000_c14_0030.jpg``             pid 0, camera 14 (15 cameras)
synthetic          Market-1501 naming (``reidlab.data.synth``)
CamStyle           ``0002_c1s1_000451_03_fake_1to2.jpg``  the same image in camera 2's style
CamStyle (MSMT17)  ``0000_c14_0030_fake_3.jpg``      ECN's MSMT17 set names only the target
=================  ================================  ==========================================

The parse rule is ECN's and open-reid's: ``<pid>_c<cam>`` at the start of the name.

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

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

__all__ = [
    "ReIDDataset",
    "load_reid_dataset",
    "parse_reid_name",
    "parse_camstyle_name",
    "KNOWN_DATASETS",
    "IMAGE_EXTENSIONS",
]

Item = tuple[str, int, int]  # (absolute path, pid, 0-based camera id)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
TRAIN_DIR, GALLERY_DIR, QUERY_DIR, CAMSTYLE_DIR = (
    "bounding_box_train",
    "bounding_box_test",
    "query",
    "bounding_box_train_camstyle",
)

# name -> (folder names tried under `root`, number of cameras)
KNOWN_DATASETS: dict[str, tuple[tuple[str, ...], int]] = {
    "market1501": (("market1501", "Market-1501-v15.09.15", "Market-1501", "market"), 6),
    "dukemtmc-reid": (("dukemtmc-reid", "DukeMTMC-reID", "dukemtmcreid", "duke"), 8),
    "msmt17": (("msmt17", "MSMT17", "MSMT17_V1", "MSMT17_V2"), 15),
}
SYNTH_NAMES = ("synth_market", "synth_duke")

_NAME_RE = re.compile(r"^(-?\d+)_c(\d+)")
_CAMSTYLE_RE = re.compile(r"^(?P<stem>.+)_fake_(?:(?P<src>\d+)to)?(?P<dst>\d+)$")


def parse_reid_name(fname: str) -> tuple[int, int]:
    """Return ``(pid, camid)`` from a re-ID file name; ``camid`` is 0-based.

    ``'0002_c1s1_000451_03.jpg' -> (2, 0)``, ``'-1_c3s1_000301_02.jpg' -> (-1, 2)``,
    ``'0001_c2_f0046182.jpg' -> (1, 1)``, ``'0000_c14_0030.jpg' -> (0, 13)``.

    Raises
    ------
    ValueError
        If the name does not start with ``<pid>_c<camera>`` or the camera number is 0.
    """
    name = Path(fname).name
    m = _NAME_RE.match(name)
    if m is None:
        raise ValueError(
            f"cannot parse re-ID file name {fname!r}: expected '<pid>_c<camera>...', "
            "e.g. 0002_c1s1_000451_03.jpg (Market-1501) or 0001_c2_f0046182.jpg (DukeMTMC-reID)"
        )
    pid, cam = int(m.group(1)), int(m.group(2))
    if cam < 1:
        raise ValueError(f"cannot parse re-ID file name {fname!r}: camera numbers start at c1, got c{cam}")
    if pid < -1:
        raise ValueError(f"cannot parse re-ID file name {fname!r}: pid {pid} (only -1 marks junk)")
    return pid, cam - 1


def parse_camstyle_name(fname: str) -> tuple[str, int]:
    """Return ``(original stem, 0-based target camera)`` of a CamStyle file name.

    ``'0002_c1s1_000451_03_fake_1to2.jpg' -> ('0002_c1s1_000451_03', 1)`` (Market-1501 and
    DukeMTMC-reID CamStyle sets), ``'0000_c14_0030_fake_3.jpg' -> ('0000_c14_0030', 2)``
    (ECN's MSMT17 set).
    """
    stem = Path(fname).stem
    m = _CAMSTYLE_RE.match(stem)
    if m is None:
        raise ValueError(
            f"cannot parse CamStyle file name {fname!r}: expected '<original name>_fake_<c>to<c2>.jpg' "
            "(e.g. 0002_c1s1_000451_03_fake_1to2.jpg) or '<original name>_fake_<c2>.jpg' (MSMT17)"
        )
    dst = int(m.group("dst"))
    if dst < 1:
        raise ValueError(f"cannot parse CamStyle file name {fname!r}: camera numbers start at 1")
    return m.group("stem"), dst - 1


@dataclass
class ReIDDataset:
    """One parsed re-ID tree.

    Attributes
    ----------
    train, query, gallery:
        Lists of ``(path, pid, camid)``; paths are absolute strings, camids 0-based. Train
        pids are relabelled ``0..num_train_pids-1``; query/gallery pids are the original ones
        (distractors 0 kept, junk -1 dropped, as torchreid does).
    num_train_pids:
        Number of training identities (the classifier's output size).
    num_cams:
        Number of cameras of the dataset (ECN's CamStyle sampling draws from all of them).
    camstyle:
        For each training image path: ``{target camid: CamStyle image path}``; empty when
        the tree has no ``bounding_box_train_camstyle`` folder.
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
    train_original_pids: list[int] = field(default_factory=list)
    num_junk_dropped: dict[str, int] = field(default_factory=dict)

    @property
    def has_camstyle(self) -> bool:
        return bool(self.camstyle)

    def camstyle_for(self, path: str) -> dict[int, str]:
        """The CamStyle images of one training image, keyed by 0-based target camera."""
        return self.camstyle.get(str(path), {})

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


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _parse_split(folder: Path, *, relabel: bool) -> tuple[list[Item], dict[int, int], int]:
    """Parse one split folder; returns items, the pid map used and the number of junk images dropped."""
    files = _list_images(folder)
    if not files:
        raise ValueError(f"empty split: {folder} holds no {'/'.join(IMAGE_EXTENSIONS)} images")
    parsed = []
    junk = 0
    for f in files:
        try:
            pid, cam = parse_reid_name(f.name)
        except ValueError as err:
            raise ValueError(f"{err} (in {folder})") from None
        if pid == -1:
            junk += 1
            continue
        parsed.append((str(f.resolve()), pid, cam))
    if not parsed:
        raise ValueError(f"empty split: {folder} holds only junk images (pid -1)")
    pids = sorted({p for _, p, _ in parsed})
    pid_map = {p: i for i, p in enumerate(pids)} if relabel else {p: p for p in pids}
    return [(path, pid_map[p], c) for path, p, c in parsed], pid_map, junk


def _parse_camstyle(folder: Path, train: list[Item]) -> dict[str, dict[int, str]]:
    by_stem = {Path(path).stem: path for path, _, _ in train}
    out: dict[str, dict[int, str]] = {}
    for f in _list_images(folder):
        stem, dst = parse_camstyle_name(f.name)
        path = by_stem.get(stem)
        if path is None:
            continue  # CamStyle image of a junk or missing training image: ECN never asks for it
        out.setdefault(path, {})[dst] = str(f.resolve())
    return out


def _resolve_root(name_or_path: str | Path, root: str | Path | None) -> tuple[str, Path, int | None]:
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
    scale: str = "tiny",
    seed: int = 0,
    camstyle: bool = True,
) -> ReIDDataset:
    """Parse a Market-1501-style re-ID tree (see the module docstring for the layouts).

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
        Only for the synthetic domains.
    camstyle:
        Parse ``bounding_box_train_camstyle/`` when present.

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
        from .synth import DOMAINS, make_synthetic_reid

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

    if known_cams is None and (path / "manifest.json").is_file():  # a synthetic tree given by path
        import json

        try:
            known_cams = int(json.loads((path / "manifest.json").read_text()).get("num_cams", 0)) or None
        except (ValueError, OSError, AttributeError):
            known_cams = None
    cams_seen = 1 + max(c for items in (train, query, gallery) for _, _, c in items)
    num_cams = max(known_cams or 0, cams_seen)

    style: dict[str, dict[int, str]] = {}
    if camstyle and (path / CAMSTYLE_DIR).is_dir():
        style = _parse_camstyle(path / CAMSTYLE_DIR, train)
    return ReIDDataset(
        name=name,
        root=path,
        train=train,
        query=query,
        gallery=gallery,
        num_train_pids=len(pid_map),
        num_cams=num_cams,
        camstyle=style,
        train_original_pids=[inverse[p] for _, p, _ in train],
        num_junk_dropped={"train": junk_train, "query": junk_query, "gallery": junk_gallery},
    )
