"""The Market-1501 file layout: folder names, the item record, file-name parsing, image reading.

Every person re-ID benchmark used by ECN is distributed (or, for MSMT17, re-packed by the
ECN authors) in the layout of Market-1501::

    <root>/bounding_box_train/                  training images (labelled)
    <root>/bounding_box_test/                   gallery images
    <root>/query/                               query images
    <root>/bounding_box_train_camstyle/         optional: CamStyle images of the training set
    <root>/bounding_box_train_camstyle_oracle/  synthetic trees only: re-rendered CamStyle images

and the identity and the camera are read from each file name:

=================  ========================================  ==========================================
dataset            example                                   fields
=================  ========================================  ==========================================
Market-1501        ``0002_c1s1_000451_03.jpg``               pid 2, camera 1, sequence 1, frame, box
Market-1501 junk   ``-1_c3s1_000301_02.jpg``                 pid -1: a bad detection ("junk")
Market distractor  ``0000_c1s1_000151_01.jpg``               pid 0: a distractor (no real identity)
DukeMTMC-reID      ``0001_c2_f0046182.jpg``                  pid 1, camera 2, frame 46182
MSMT17 (ECN)       ``0000_c14_0030.jpg``                     pid 0, camera 14 (15 cameras)
synthetic          Market-1501 naming                        (:mod:`reidlab.data.synth`)
CamStyle           ``0002_c1s1_000451_03_fake_1to2.jpg``     the same image in camera 2's style
CamStyle (MSMT17)  ``0000_c14_0030_fake_3.jpg``              ECN's MSMT17 set names only the target
=================  ========================================  ==========================================

The parse rule is ECN's and open-reid's: ``<pid>_c<cam>`` at the start of the name.

The two CamStyle folders hold the same file names. ``bounding_box_train_camstyle/`` is what
ECN ships (CycleGAN outputs: the original image style-transferred to another camera; the
synthetic writer makes the same kind, :mod:`reidlab.data.synth.restyle`);
``bounding_box_train_camstyle_oracle/`` exists only in synthetic trees: the person re-rendered
by the other camera, pixel-aligned, which no GAN can produce, kept as an ablation.

This module is the bottom of :mod:`reidlab.data`: the synthetic writer
(:mod:`reidlab.data.synth`), the parser (:mod:`reidlab.data.datasets`), the colour stand-in
(:mod:`reidlab.data.camstyle`) and the loaders (:mod:`reidlab.data.loaders`) all import it
and it imports none of them, so the folder names and the name format are written down once
and the writer and the parser cannot drift apart. Notebook 08 introduces the layout.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import NamedTuple

from PIL import Image

__all__ = [
    "TRAIN_DIR",
    "GALLERY_DIR",
    "QUERY_DIR",
    "CAMSTYLE_DIR",
    "CAMSTYLE_ORACLE_DIR",
    "IMAGE_EXTENSIONS",
    "Item",
    "parse_reid_name",
    "parse_camstyle_name",
    "camstyle_name",
    "list_images",
    "read_image",
]

TRAIN_DIR = "bounding_box_train"
GALLERY_DIR = "bounding_box_test"
QUERY_DIR = "query"
CAMSTYLE_DIR = "bounding_box_train_camstyle"
#: Synthetic trees only: the oracle CamStyle images (re-rendered, not style-transferred), same names.
CAMSTYLE_ORACLE_DIR = "bounding_box_train_camstyle_oracle"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

_NAME_RE = re.compile(r"^(-?\d+)_c(\d+)")
_CAMSTYLE_RE = re.compile(r"^(?P<stem>.+)_fake_(?:(?P<src>\d+)to)?(?P<dst>\d+)$")


class Item(NamedTuple):
    """One image of a split: ``(path, pid, camid)``.

    A named tuple rather than a class so that it still unpacks as the 3-tuple that ECN,
    open-reid and torchreid pass around (``for path, pid, camid in items``) while code
    that wants a field by name can say ``item.camid``.

    Attributes
    ----------
    path:
        Absolute path of the image file, as a string (cheap to pickle into loader workers).
    pid:
        Identity: relabelled ``0..N-1`` in a training split, the original pid in query and
        gallery (0 for a distractor).
    camid:
        0-based camera id (``c1`` -> 0).
    """

    path: str
    pid: int
    camid: int


def parse_reid_name(fname: str) -> tuple[int, int]:
    """Return ``(pid, camid)`` from a re-ID file name; ``camid`` is 0-based.

    ``'0002_c1s1_000451_03.jpg' -> (2, 0)``, ``'-1_c3s1_000301_02.jpg' -> (-1, 2)``,
    ``'0001_c2_f0046182.jpg' -> (1, 1)``, ``'0000_c14_0030.jpg' -> (0, 13)``.

    Only the ``<pid>_c<camera>`` prefix is read, because that is what the Market-1501,
    DukeMTMC-reID and MSMT17 names share; the rest differs between datasets.

    Raises
    ------
    ValueError
        If the name does not start with ``<pid>_c<camera>``, the camera number is 0 or the
        pid is below -1 (the message shows the expected pattern, so a wrong folder is
        recognised at once).
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
    (ECN's MSMT17 set). The stem is what links a CamStyle image to its training image.

    Raises
    ------
    ValueError
        If the name has no ``_fake_<c>to<c2>`` / ``_fake_<c2>`` suffix or names camera 0.
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


def camstyle_name(fname: str, src_cam: int, dst_cam: int) -> str:
    """The CamStyle file name of image ``fname`` (camera ``src_cam``) rendered by ``dst_cam``.

    The inverse of :func:`parse_camstyle_name` for the Market-1501 form, with 0-based
    cameras in and 1-based cameras in the name, as ECN's CamStyle sets are named:
    ``camstyle_name('0002_c1s1_000451_03.jpg', 0, 1) -> '0002_c1s1_000451_03_fake_1to2.jpg'``.
    The synthetic writer uses it, so what it writes is what the parser reads.
    """
    return f"{Path(fname).stem}_fake_{src_cam + 1}to{dst_cam + 1}.jpg"


def list_images(folder: Path) -> list[Path]:
    """The image files of ``folder`` (by :data:`IMAGE_EXTENSIONS`), sorted by name.

    Sorted so that item order, and hence relabelled pids and exemplar-memory slots, do not
    depend on the file system; other files (the ``Thumbs.db`` of the Market archive) are skipped.
    """
    with os.scandir(folder) as entries:      # d_type from the directory listing: no stat per file
        names = [e.name for e in entries if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file()]
    return [folder / n for n in sorted(names)]


def _split_of(path: str) -> str:
    """Which split an image belongs to, from its folder (for error messages)."""
    folder = Path(path).parent.name
    names = {TRAIN_DIR: "train", QUERY_DIR: "query", GALLERY_DIR: "gallery", CAMSTYLE_DIR: "CamStyle",
             CAMSTYLE_ORACLE_DIR: "oracle CamStyle"}
    return f"{names[folder]} split, {folder}/" if folder in names else f"folder {folder}/"


def read_image(path: str) -> Image.Image:
    """Open an image as RGB, with the path and its split in the error if it cannot be read.

    The file is closed before returning (``convert`` loads the pixels), so a loader that
    reads thousands of images never runs out of file handles.

    Raises
    ------
    FileNotFoundError
        ``image not found: <path> (<split>)``.
    OSError
        ``cannot read image <path> (<split>): ...`` for a truncated, empty or non-image file.
    """
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path} ({_split_of(path)})") from None
    except OSError as err:
        reason = "the file is empty" if os.path.isfile(path) and os.path.getsize(path) == 0 else str(err)
        raise OSError(f"cannot read image {path} ({_split_of(path)}): {reason}") from None
