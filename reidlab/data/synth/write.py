"""How the synthetic re-ID world is written: the plan, the file names, the atomic tree.

:func:`make_synthetic_reid` turns a domain, a scale and a seed into a Market-1501 tree that
:func:`reidlab.data.datasets.load_reid_dataset` parses like the real benchmark (notebook 08
shows the layout; notebook 00 the world):

1. **plan** (:func:`_plan`) -- which identity appears in which split, seen by which cameras,
   how many times, plus the distractor (pid ``0000``) and junk (pid ``-1``) boxes of the
   gallery, with Market-1501's counts at ``scale='market'``;
2. **names** (:func:`_names`) -- Market-1501 names ``<pid>_c<cam>s<seq>_<frame>_<box>.jpg``
   with unique frames per camera, and CamStyle names from :func:`reidlab.data.layout.camstyle_name`;
3. **pixels** -- chunks of rows seen by one camera are rendered by
   :mod:`reidlab.data.synth.render` on a thread pool; JPEG encoding and writing run on their
   own threads (writing many small files is I/O-bound). A training image of camera ``c``
   also gets, for every other camera ``c2``, two CamStyle versions:

   * ``bounding_box_train_camstyle/`` -- the finished image *style-transferred* to ``c2``
     by :func:`reidlab.data.synth.restyle.transfer_style`: the original's layout and
     background, ``c2``'s colours, blur and noise, a background tinted towards ``c2``'s, and
     GAN artifacts. That is what ECN's CamStyle images are (CycleGAN outputs), so it is
     what the trainer reads (``camstyle='folder'`` / ``'auto'``);
   * ``bounding_box_train_camstyle_oracle/`` -- the same names, but the person layer
     re-rendered by camera ``c2`` (its background, its style, pixel-aligned): what a perfect
     GAN could never make. An ablation only (``camstyle='oracle'``), to measure how much
     of ECN's camera term the imperfect images cost;
4. **manifest** -- the parameters, the cameras, every identity's appearance and the true pid
   of every training image (what an unsupervised method must not train on, but may measure with).

The tree is built in a temporary sibling folder, renamed into place, and marked complete
last, so a killed run never leaves a half tree that a later run would trust. Market-scale
timings: ``benchmarks/bench_synth.py``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ...files import data_dir
from ..layout import CAMSTYLE_DIR, CAMSTYLE_ORACLE_DIR, GALLERY_DIR, QUERY_DIR, TRAIN_DIR, camstyle_name
from .render import one_torch_thread, render_person_layer, render_view
from .restyle import restyle_batch
from .world import (
    DEFAULT_CAMERA_BACKGROUND,
    DOMAINS,
    SCALES,
    CameraStyle,
    Domain,
    Scale,
    camera_styles,
    check_camera_background,
    check_domain,
    domain_rng,
    sample_identities,
    sample_poses,
)

__all__ = [
    "GENERATOR_VERSION",
    "COMPLETE_MARKER",
    "MANIFEST",
    "DEFAULT_IMAGE_SIZE",
    "make_synthetic_reid",
]

log = logging.getLogger(__name__)

GENERATOR_VERSION = 5  # bump when the pixels change: cached trees of older versions are redrawn
COMPLETE_MARKER = ".complete"
MANIFEST = "manifest.json"
#: ``(H, W)`` written at every scale: the loaders resize to the profile's input size, and
#: 256x128 (``image_size=(256, 128)``) costs four to ten times the rendering time while
#: adding no information the shapes do not have.
DEFAULT_IMAGE_SIZE: tuple[int, int] = (128, 64)


# ---------------------------------------------------------------------------------------
# The plan: who is where
# ---------------------------------------------------------------------------------------


def _alloc(rng: np.random.Generator, total: int, slots: int, minimum: int = 1) -> np.ndarray:
    """Split ``total`` into ``slots`` counts of at least ``minimum`` (random, exact sum)."""
    if total < slots * minimum:
        raise ValueError(f"cannot place {total} images into {slots} slots of at least {minimum}")
    extra = rng.multinomial(total - slots * minimum, rng.dirichlet(np.full(slots, 2.0)))
    return extra + minimum


def _cams_per_id(
    rng: np.random.Generator, n_ids: int, num_cams: int, total_pairs: int | None, max_pairs: int
) -> list[np.ndarray]:
    """Camera subsets (each of >= 2 cameras), with a fixed total size or at most ``max_pairs``."""
    if total_pairs is None:
        k = rng.integers(2, min(num_cams, 4) + 1, n_ids)
        while k.sum() > max_pairs:  # too few images for that many (id, camera) pairs
            k[np.argmax(k)] -= 1
    else:
        if not 2 * n_ids <= total_pairs <= num_cams * n_ids:
            raise ValueError(f"{total_pairs} (id, camera) pairs impossible for {n_ids} ids and {num_cams} cameras")
        k = np.full(n_ids, 2)
        left = total_pairs - 2 * n_ids
        while left > 0:
            room = np.flatnonzero(k < num_cams)
            pick = rng.choice(room, size=min(left, len(room)), replace=False)
            k[pick] += 1
            left -= len(pick)
    return [np.sort(rng.choice(num_cams, size=int(m), replace=False)) for m in k]


@dataclass
class _Plan:
    """One row per image file of the tree (train, query and gallery; CamStyle views are
    derived from the train rows)."""

    split: np.ndarray  # 0 train, 1 query, 2 gallery
    pid: np.ndarray  # file-name pid (-1 junk, 0 distractor)
    ident: np.ndarray  # row in the identity table
    cam: np.ndarray
    kind: np.ndarray  # 0 person, 1 junk, 2 distractor


def _plan(dom: Domain, sc: Scale, seed: int) -> tuple[_Plan, dict[str, np.ndarray], np.ndarray]:
    """Who appears where: returns the plan, the identity table and the file-name pid of each identity.

    Training identities get exactly ``sc.train_images`` images; each test identity gets one
    query per (identity, camera) pair and the rest of the pair's images in the gallery, so
    every query has a true match in another camera (what the Market protocol needs).
    Junk and distractor boxes show extra passers-by, never a train or test identity.
    """
    rng = domain_rng(dom, seed, "plan")
    C = dom.num_cams
    n_people = sc.train_ids + sc.test_ids
    extra = max(1, sc.distractors + sc.junk)  # identities of the passers-by in junk/distractor boxes
    ids = sample_identities(dom, n_people + extra, domain_rng(dom, seed, "identities"))
    pids = rng.permutation(np.arange(1, n_people + 1))  # Market interleaves train and test pids
    split, pid, ident, cam, kind = [], [], [], [], []

    def add(s, p, i, c, k, n):
        split.extend([s] * n); pid.extend([p] * n); ident.extend([i] * n); cam.extend([c] * n); kind.extend([k] * n)  # noqa: E702

    # training identities: exact total image count
    subsets = _cams_per_id(rng, sc.train_ids, C, None, sc.train_images)
    pairs = [(i, c) for i, cs in enumerate(subsets) for c in cs]
    counts = _alloc(rng, sc.train_images, len(pairs))
    for (i, c), n in zip(pairs, counts):
        add(0, int(pids[i]), i, int(c), 0, int(n))
    # test identities: one query per (id, camera) pair, the rest of that pair's images in the gallery
    subsets = _cams_per_id(rng, sc.test_ids, C, sc.query, sc.gallery_real)
    pairs = [(sc.train_ids + i, c) for i, cs in enumerate(subsets) for c in cs]
    counts = _alloc(rng, sc.gallery_real, len(pairs))
    for (i, c), n in zip(pairs, counts):
        add(1, int(pids[i]), i, int(c), 0, 1)
        add(2, int(pids[i]), i, int(c), 0, int(n))
    for j in range(sc.distractors):
        add(2, 0, n_people + j % extra, int(rng.integers(C)), 2, 1)
    for j in range(sc.junk):
        add(2, -1, n_people + (sc.distractors + j) % extra, int(rng.integers(C)), 1, 1)
    plan = _Plan(*(np.array(a) for a in (split, pid, ident, cam, kind)))
    return plan, ids, pids


def _names(plan: _Plan, rng: np.random.Generator, num_cams: int) -> list[str]:
    """Market-1501 names ``<pid>_c<cam>s<seq>_<frame>_<box>.jpg``; unique frames per camera."""
    names = [""] * len(plan.pid)
    for c in range(num_cams):
        rows = np.flatnonzero(plan.cam == c)
        frames = np.sort(rng.choice(250_000, size=len(rows), replace=False))
        frames = rng.permutation(frames)
        for r, f in zip(rows, frames):
            seq = 1 + int(f) // 50_000
            box = 1 + int(rng.integers(8))
            p = int(plan.pid[r])
            ptxt = "-1" if p == -1 else f"{p:04d}"
            names[r] = f"{ptxt}_c{c + 1}s{seq}_{int(f):06d}_{box:02d}.jpg"
    return names


# ---------------------------------------------------------------------------------------
# The tree
# ---------------------------------------------------------------------------------------


def _params_key(
    domain: str, scale: str, seed: int, size: tuple[int, int], write_camstyle: bool, camera_background: float
) -> dict:
    """What identifies a tree: written to its ``.complete`` marker and its manifest.

    The ``"camstyle"`` entry records whether CamStyle images were written (the name is kept
    so that trees generated before are still recognised).
    """
    return {"domain": domain, "scale": scale, "seed": int(seed), "image_size": list(size),
            "camstyle": bool(write_camstyle), "camera_background": float(camera_background),
            "version": GENERATOR_VERSION}


def _resolve_scale(scale: str | Scale) -> tuple[str, Scale]:
    """``(name, Scale)``; a custom :class:`Scale` is named by a hash of its counts, so two
    different custom scales never share a cached tree."""
    if isinstance(scale, Scale):
        return "custom" + hashlib.sha256(json.dumps(asdict(scale), sort_keys=True).encode()).hexdigest()[:8], scale
    if scale in SCALES:
        return scale, SCALES[scale]
    raise ValueError(f"unknown scale {scale!r}; choose one of: {', '.join(SCALES)} (or pass a Scale)")


def make_synthetic_reid(
    root: str | os.PathLike | None = None,
    domain: str = "synth_market",
    scale: str | Scale = "tiny",
    seed: int = 0,
    *,
    image_size: tuple[int, int] | None = None,
    write_camstyle: bool = True,
    camera_background: float = DEFAULT_CAMERA_BACKGROUND,
    batch_size: int = 512,
    workers: int | None = None,
) -> Path:
    """Write (or reuse) a synthetic domain as a Market-1501 tree; return its folder.

    The tree ``<root>/<domain>-<scale>-seed<seed>/`` holds ``bounding_box_train/``,
    ``bounding_box_test/`` (with distractors ``0000_*`` and junk ``-1_*``), ``query/``,
    ``bounding_box_train_camstyle/``, ``bounding_box_train_camstyle_oracle/`` and
    ``manifest.json`` (generation parameters, camera styles, identity appearances and the
    true pid of every training image).

    Both CamStyle folders hold ``<name>_fake_<c>to<c2>.jpg`` for every training image and
    every other camera ``c2``. ``bounding_box_train_camstyle/`` holds what ECN's CamStyle
    images are: the camera-``c`` image *style-transferred* to camera ``c2``
    (:func:`reidlab.data.synth.restyle.transfer_style`), keeping its layout and background
    (a CycleGAN cannot know what camera ``c2`` saw behind the person) with ``c2``'s colours,
    blur and noise and a GAN's artifacts. ``bounding_box_train_camstyle_oracle/`` holds the
    same person, pose, placement and occluder *re-rendered* by camera ``c2`` (its background
    and style, pixel-aligned): better than any GAN, so it is only an ablation
    (``camstyle='oracle'`` in :func:`reidlab.data.loaders.target_train_dataset`), never what
    ``'folder'`` or ``'auto'`` read.

    Parameters
    ----------
    root:
        Parent folder; default ``reidlab.files.data_dir() / 'synth'``.
    domain:
        ``'synth_market'`` (6 bright cameras) or ``'synth_duke'`` (8 dark cameras).
    scale:
        ``'tiny'`` (CI: 40 train ids / 320 images), ``'small'`` (laptop: 150 / 1,800) or
        ``'market'`` (Market-1501's counts), or a :class:`~reidlab.data.synth.world.Scale` of your own.
    seed:
        Identities, poses and noise; the camera styles belong to the domain.
    image_size:
        ``(H, W)`` written; default :data:`DEFAULT_IMAGE_SIZE` (128x64). Another size gets
        its own folder (``-<H>x<W>`` suffix).
    write_camstyle:
        Also write the CamStyle images (5 or 7 per training image, in each of the two
        CamStyle folders). ``False`` saves most of the generation time for a source domain,
        whose CamStyle images ECN never reads; the folder then gets a ``-nocamstyle`` suffix.
    camera_background:
        Share of images that show their own camera's scene, the others a scene from the pool
        of the domain's scenes (:data:`~reidlab.data.synth.world.DEFAULT_CAMERA_BACKGROUND`);
        another value gets its own folder (``-bg<value>`` suffix).
    batch_size:
        Images rendered at once by one thread (memory against per-call overhead).
    workers:
        Threads that render and encode in parallel (default: all cores).

    Notes
    -----
    Cached: a finished tree carries a ``.complete`` marker (its settings and the generator
    version) written last, after the tree was built in a temporary sibling folder and renamed
    into place, so an interrupted run leaves no half tree behind and the next call starts
    over; a tree from an older generator version is redrawn.
    """
    check_domain(domain)
    scale_name, sc = _resolve_scale(scale)
    size = tuple(image_size) if image_size is not None else DEFAULT_IMAGE_SIZE
    if len(size) != 2 or size[0] < 32 or size[1] < 16:
        raise ValueError(f"image_size must be (H, W) with H >= 32 and W >= 16, got {image_size}")
    root = Path(root).expanduser() if root is not None else data_dir() / "synth"
    camera_background = check_camera_background(camera_background)
    suffix = ("" if size == DEFAULT_IMAGE_SIZE else f"-{size[0]}x{size[1]}") + ("" if write_camstyle else "-nocamstyle")
    if camera_background != DEFAULT_CAMERA_BACKGROUND:
        suffix += f"-bg{camera_background:.2f}"
    out = root / f"{domain}-{scale_name}-seed{seed}{suffix}"
    key = _params_key(domain, scale_name, seed, size, write_camstyle, camera_background)
    if _marker_matches(out / COMPLETE_MARKER, key):
        return out
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        _generate(tmp, DOMAINS[domain], sc, seed, size, write_camstyle, camera_background, key, batch_size, workers)
        (tmp / COMPLETE_MARKER).write_text(json.dumps(key))
        _move_into_place(tmp, out, key)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _move_into_place(tmp: Path, out: Path, key: dict) -> None:
    """Rename the finished ``tmp`` to ``out``, replacing a stale ``out`` (unfinished or older).

    A concurrent call may have finished the same tree meanwhile: then its tree is kept (and
    ``tmp`` is removed by the caller), since both are the same pixels.
    """
    try:
        os.rename(tmp, out)
    except OSError:  # `out` exists: unfinished, or from an older generator version
        if not _marker_matches(out / COMPLETE_MARKER, key):  # (unless a concurrent call just finished it)
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)


def _marker_matches(marker: Path, key: dict) -> bool:
    """Whether ``marker`` exists and records exactly ``key`` (same settings and generator version)."""
    try:
        return json.loads(marker.read_text()) == key
    except (ValueError, OSError):
        return False


_SPLIT_DIRS = {0: TRAIN_DIR, 1: QUERY_DIR, 2: GALLERY_DIR}  # _Plan.split -> folder


@dataclass
class _World:
    """Everything drawn for one tree, shared by the rendering threads (read-only)."""

    out: Path
    dom: Domain
    styles: list[CameraStyle]
    plan: _Plan
    ids: dict[str, np.ndarray]
    poses: dict[str, np.ndarray]
    names: list[str]
    seed: int
    size: tuple[int, int]
    write_camstyle: bool

    def path(self, row: int, cam: int, view: int, *, oracle: bool = False) -> Path:
        """Where image ``row`` (seen by ``cam``) in camera ``view``'s style goes (``oracle``: re-rendered)."""
        if view == cam:
            return self.out / _SPLIT_DIRS[int(self.plan.split[row])] / self.names[row]
        # CamStyle naming of ECN: <name>_fake_<c>to<c2>.jpg, cameras 1-based
        return self.out / (CAMSTYLE_ORACLE_DIR if oracle else CAMSTYLE_DIR) / camstyle_name(self.names[row], cam, view)

    def noise_seed(self, n: int, view: int, *, transfer: bool = False) -> int:
        """The noise seed of chunk ``n`` in camera ``view``'s style (``transfer``: the style transfer's).

        Rendered views keep the seeds of generator version 3 (so the oracle images are the
        CamStyle images of version 3); style transfers use ``32 + view``, which no rendered
        view uses while a domain has at most 32 cameras.
        """
        return (self.seed * 1_000_003 + n) * 64 + (32 if transfer else 0) + view


def _chunks(plan: _Plan, num_cams: int, batch_size: int) -> list[tuple[int, np.ndarray, bool]]:
    """Chunks ``(camera, rows, is_train)`` of rows seen by one camera, train rows apart.

    Train rows are kept apart because only they get CamStyle views; the chunk index seeds
    the chunk's noise, so this order is part of the pixels.
    """
    chunks: list[tuple[int, np.ndarray, bool]] = []
    for c in range(num_cams):
        for is_train in (True, False):
            rows = np.flatnonzero((plan.cam == c) & ((plan.split == 0) == is_train))
            chunks += [(c, rows[k : k + batch_size], is_train) for k in range(0, len(rows), batch_size)]
    return chunks


def _save(img: np.ndarray, path: Path) -> None:
    """Encode one image as JPEG (quality 92: compression artefacts as in the real crops, no worse)."""
    Image.fromarray(img).save(path, quality=92)


def _render_chunk(w: _World, n: int, chunk: tuple[int, np.ndarray, bool], io_pool: Executor) -> int:
    """Render chunk ``n`` (and, for training rows, its CamStyle views: style transfers of the
    rendered image, and oracle re-renders of its person layer) and write it; returns the number of files.

    The chunk's files are written before it returns, which bounds memory to a few chunks.
    """
    c, rows, is_train = chunk
    sub_ids = {name: arr[w.plan.ident[rows]] for name, arr in w.ids.items()}
    sub_pose = {name: arr[rows] for name, arr in w.poses.items()}
    layer = render_person_layer(sub_ids, sub_pose, w.styles[c].scale, w.size)
    imgs = render_view(layer, sub_pose, w.styles[c], noise_seed=w.noise_seed(n, c), scenes=w.styles)
    pending = [io_pool.submit(_save, imgs[i], w.path(r, c, c)) for i, r in enumerate(rows)]
    others = [c2 for c2 in range(w.dom.num_cams) if c2 != c] if w.write_camstyle and is_train else []
    for c2 in others:
        fake = restyle_batch(imgs, w.styles[c], w.styles[c2], noise_seed=w.noise_seed(n, c2, transfer=True))
        oracle = render_view(layer, sub_pose, w.styles[c2], noise_seed=w.noise_seed(n, c2), scenes=w.styles)
        pending += [io_pool.submit(_save, fake[i], w.path(r, c, c2)) for i, r in enumerate(rows)]
        pending += [io_pool.submit(_save, oracle[i], w.path(r, c, c2, oracle=True)) for i, r in enumerate(rows)]
    for f in pending:
        f.result()
    return len(pending)


def _write_images(w: _World, batch_size: int, workers: int | None) -> int:
    """Render and write every image of the plan; returns the number of files written.

    Rendering is CPU-bound (one thread per core; torch itself single-threaded, see
    :func:`reidlab.data.synth.render.one_torch_thread`); writing many small files is
    I/O-bound (a few ms per file on a busy disk), so JPEG encoding and writing get their own
    threads. The noise seeds depend on the chunk, not on the thread, so the pixels do not
    depend on ``workers``.
    """
    chunks = _chunks(w.plan, w.dom.num_cams, batch_size)
    n_threads = max(1, workers or os.cpu_count() or 1)
    with one_torch_thread(), ThreadPoolExecutor(n_threads) as pool, ThreadPoolExecutor(4 * n_threads) as io_pool:
        return sum(pool.map(lambda n: _render_chunk(w, n, chunks[n], io_pool), range(len(chunks))))


def _manifest(w: _World, sc: Scale, key: dict, pids: np.ndarray, n_fake: int) -> dict:
    """The manifest: parameters, counts, cameras, identities and the hidden true training pids."""
    plan = w.plan
    train_rows = np.flatnonzero(plan.split == 0)
    return {
        **key,
        "num_cams": w.dom.num_cams,
        "counts": {
            "train_ids": sc.train_ids, "train_images": int((plan.split == 0).sum()),
            "test_ids": sc.test_ids, "query": int((plan.split == 1).sum()),
            "gallery_files": int((plan.split == 2).sum()), "gallery_real": sc.gallery_real,
            "distractors": sc.distractors, "junk": sc.junk,
            "camstyle": n_fake, "camstyle_oracle": n_fake,
        },
        "cameras": [asdict(s) for s in w.styles],
        "identities": {
            str(int(pids[i])): {k: np.asarray(v[i]).round(4).tolist() for k, v in w.ids.items()}
            for i in range(sc.train_ids + sc.test_ids)
        },
        "train_true_pids": {w.names[r]: int(plan.pid[r]) for r in train_rows},
        "test_pids": sorted(int(p) for p in pids[sc.train_ids :]),
    }


def _generate(
    out: Path, dom: Domain, sc: Scale, seed: int, size: tuple[int, int], write_camstyle: bool,
    camera_background: float, key: dict, batch_size: int, workers: int | None,
) -> None:
    """Draw the world of ``(dom, sc, seed)`` and write its tree into ``out`` (not yet marked complete)."""
    if dom.num_cams > 32:  # the noise seeds of _World.noise_seed leave room for 32 cameras
        raise ValueError(f"{dom.name}: {dom.num_cams} cameras; the writer's noise seeds allow at most 32")
    styles = camera_styles(dom)
    plan, ids, pids = _plan(dom, sc, seed)
    names = _names(plan, domain_rng(dom, seed, "names"), dom.num_cams)
    poses = sample_poses(plan.cam, styles, domain_rng(dom, seed, "poses"), plan.kind, camera_background)
    for d in (*_SPLIT_DIRS.values(), *([CAMSTYLE_DIR, CAMSTYLE_ORACLE_DIR] if write_camstyle else [])):
        (out / d).mkdir(parents=True, exist_ok=True)
    w = _World(out, dom, styles, plan, ids, poses, names, seed, size, write_camstyle)
    total = _write_images(w, batch_size, workers)
    n_fake = int((plan.split == 0).sum()) * (dom.num_cams - 1) if write_camstyle else 0
    log.info("%s: wrote %d images (%d CamStyle, %d oracle CamStyle)", out.name, total, n_fake, n_fake)
    (out / MANIFEST).write_text(json.dumps(_manifest(w, sc, key, pids, n_fake), indent=1))
