"""A procedural person re-ID world, written to disk as Market-1501-style trees.

Nothing can be downloaded at run time, yet DSBN, IBN-a and ECN (notebooks 06-10) need a
labelled source domain, an unlabelled target domain seen by several cameras, and
CamStyle images. This module draws that world.

* An **identity** is a persistent appearance: upper and lower clothing colours, an upper
  pattern (plain, horizontal or vertical stripes, checks, a chest logo seen only from the
  front, a two-tone yoke), sleeve length, trousers / shorts / skirt, shoes, skin, hair
  colour and length, an optional hat, a bag (none, backpack, shoulder bag on the left or
  right) and a build (height and width).
* An **image** renders that identity in a pose (walking phase: leg and arm swing; facing
  front, back or sideways, which changes what shows: a logo only from the front, a
  backpack as a block from the back and as straps from the front, a shoulder bag only
  from its side), with position and scale jitter and sometimes a partial occlusion (a box,
  a car, a pole, another pedestrian), in front of its camera's background, and then
  applies the camera's style: white balance, brightness, contrast, gamma, saturation,
  vignetting, resolution loss, blur and sensor noise.
* A **domain** is a set of cameras plus identity statistics. ``synth_market`` has 6 bright,
  warm, sharp cameras and summer clothing (bright colours, short sleeves, shorts);
  ``synth_duke`` has 8 darker, colder, blurrier and noisier cameras and winter clothing
  (dark colours, coats, hats, backpacks). The two domains have disjoint identities.

Cameras change the style, the background and the pose, never the person, so identities
stay recognisable across the cameras of one domain; the domains differ in both style and
identity statistics, so a model trained on one transfers worse to the other (notebook 08
measures that gap).

Rendering is vectorised: every shape is a signed-distance function evaluated with PyTorch
over a batch of images at once (anti-aliased by a one-pixel ramp), then composited
back to front. All random draws come from generators seeded by ``(domain, seed)``; the same
arguments give the same pixels. Images are written at 128x64 pixels for every scale (the
loaders resize to the profile's input size; 256x128 rendering is available with
``image_size=(256, 128)``, but it costs four to ten times the rendering time and adds no
information the shapes do not have). Market-scale generation: ``benchmarks/bench_synth.py``. Notebook 00 shows the world; notebook 08 the file layout.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "DOMAINS",
    "SCALES",
    "Scale",
    "CameraStyle",
    "Domain",
    "make_synthetic_reid",
    "render_identities",
    "GENERATOR_VERSION",
]

log = logging.getLogger(__name__)

GENERATOR_VERSION = 3  # bump when the pixels change: cached trees of older versions are redrawn
COMPLETE_MARKER = ".complete"
MANIFEST = "manifest.json"

# ---------------------------------------------------------------------------------------
# Scales. `market` copies Market-1501's published statistics (Zheng et al., ICCV 2015, as
# parsed by open-reid / torchreid): 751 training ids in 12,936 images; 750 test ids with
# 3,368 query images; bounding_box_test holds 19,732 files, of which 3,819 are junk (pid -1)
# and 2,793 distractors (pid 0000), so 15,913 gallery images remain after dropping junk.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    train_ids: int
    train_images: int
    test_ids: int
    query: int | None  # None: one query per (id, camera) pair of a random camera subset
    gallery_real: int
    distractors: int
    junk: int

    def __post_init__(self) -> None:
        if self.train_ids < 1 or self.test_ids < 1:
            raise ValueError(f"a Scale needs at least one train and one test identity: {self}")
        if self.train_images < 2 * self.train_ids:
            raise ValueError(f"train_images={self.train_images} < 2 x train_ids: every id needs 2 cameras")
        if self.gallery_real < 2 * self.test_ids:
            raise ValueError(f"gallery_real={self.gallery_real} < 2 x test_ids: every test id needs 2 cameras")
        if self.query is not None and not 2 * self.test_ids <= self.query <= self.gallery_real:
            raise ValueError(f"query={self.query} must lie in [2 x test_ids, gallery_real]")
        if min(self.distractors, self.junk) < 0:
            raise ValueError("distractors and junk must be >= 0")


SCALES: dict[str, Scale] = {
    "tiny": Scale(train_ids=40, train_images=320, test_ids=40, query=None, gallery_real=240, distractors=30, junk=20),
    "small": Scale(train_ids=150, train_images=1800, test_ids=150, query=None, gallery_real=1500, distractors=150, junk=100),
    "market": Scale(
        train_ids=751, train_images=12936, test_ids=750, query=3368, gallery_real=13120, distractors=2793, junk=3819
    ),
}


# ---------------------------------------------------------------------------------------
# Domains and cameras
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraStyle:
    """How one camera sees: its background and its colour/optics (all drawn per domain)."""

    wall: tuple[float, float, float]
    floor: tuple[float, float, float]
    accent: tuple[float, float, float]  # colour of the background structures
    horizon: float  # wall/floor boundary, fraction of the image height
    structure: int  # 0 pillars, 1 windows, 2 bricks, 3 foliage
    period: float  # structure period, fraction of the image width
    wb: tuple[float, float, float]  # white-balance gains
    brightness: float
    contrast: float
    gamma: float
    saturation: float
    tint: tuple[float, float, float]  # additive colour cast
    vignette: float
    resolution: float  # down-sampling factor before up-sampling back (1 = sharp)
    blur: float  # Gaussian sigma in pixels at 128x64
    noise: float  # sensor noise std (0..1 scale) before JPEG
    scale: float  # mean person height, fraction of the image height
    facing: tuple[float, float, float]  # probabilities of front, back, side
    occlusion: float  # probability of a partial occluder


@dataclass(frozen=True)
class Domain:
    """A domain: number of cameras, how its cameras are drawn, and its people's statistics."""

    name: str
    num_cams: int
    style_seed: int
    bright: bool


DOMAINS: dict[str, Domain] = {
    "synth_market": Domain("synth_market", 6, style_seed=1501, bright=True),
    "synth_duke": Domain("synth_duke", 8, style_seed=1812, bright=False),
}

# Palettes: (rgb, probability). Market-like: summer on a campus, bright and saturated;
# Duke-like: winter, dark and muted. They overlap a little (black, navy), as real ones do.
_UPPER = {
    True: [
        ((0.92, 0.92, 0.90), 0.13), ((0.85, 0.15, 0.15), 0.10), ((0.95, 0.85, 0.20), 0.06),
        ((0.95, 0.55, 0.70), 0.07), ((0.50, 0.75, 0.95), 0.10), ((0.20, 0.70, 0.30), 0.07),
        ((0.95, 0.55, 0.15), 0.05), ((0.55, 0.30, 0.75), 0.06), ((0.10, 0.10, 0.10), 0.12),
        ((0.55, 0.55, 0.55), 0.08), ((0.15, 0.20, 0.55), 0.08), ((0.10, 0.60, 0.60), 0.08),
    ],
    False: [
        ((0.08, 0.08, 0.09), 0.12), ((0.32, 0.32, 0.34), 0.08), ((0.14, 0.18, 0.40), 0.08),
        ((0.15, 0.35, 0.20), 0.07), ((0.45, 0.28, 0.15), 0.08), ((0.55, 0.12, 0.15), 0.08),
        ((0.72, 0.62, 0.45), 0.07), ((0.40, 0.40, 0.18), 0.06), ((0.82, 0.82, 0.80), 0.06),
        ((0.38, 0.18, 0.42), 0.06), ((0.75, 0.55, 0.12), 0.06), ((0.10, 0.42, 0.45), 0.06),
        ((0.60, 0.25, 0.10), 0.06), ((0.40, 0.50, 0.65), 0.06),
    ],
}
_LOWER = {
    True: [
        ((0.25, 0.35, 0.60), 0.25), ((0.10, 0.10, 0.10), 0.20), ((0.90, 0.90, 0.88), 0.08),
        ((0.80, 0.72, 0.55), 0.12), ((0.55, 0.55, 0.55), 0.12), ((0.60, 0.55, 0.35), 0.08),
        ((0.50, 0.60, 0.80), 0.10), ((0.80, 0.20, 0.25), 0.05),
    ],
    False: [
        ((0.07, 0.07, 0.08), 0.25), ((0.14, 0.18, 0.36), 0.22), ((0.30, 0.30, 0.32), 0.13),
        ((0.38, 0.25, 0.15), 0.10), ((0.52, 0.47, 0.32), 0.10), ((0.58, 0.58, 0.60), 0.10),
        ((0.35, 0.12, 0.14), 0.05), ((0.20, 0.30, 0.20), 0.05),
    ],
}
_SECONDARY = [(0.95, 0.95, 0.95), (0.05, 0.05, 0.05), (0.85, 0.1, 0.1), (0.1, 0.3, 0.8), (0.95, 0.8, 0.1),
              (0.1, 0.6, 0.3), (0.6, 0.6, 0.6), (0.9, 0.5, 0.7)]
_HAIR = [(0.07, 0.06, 0.05), (0.25, 0.15, 0.08), (0.45, 0.30, 0.15), (0.85, 0.72, 0.40), (0.60, 0.60, 0.60),
         (0.55, 0.20, 0.08)]
_HAIR_P = {True: [0.62, 0.2, 0.08, 0.04, 0.04, 0.02], False: [0.3, 0.25, 0.18, 0.15, 0.08, 0.04]}
_SHOES = [(0.92, 0.92, 0.92), (0.06, 0.06, 0.06), (0.35, 0.22, 0.12), (0.5, 0.5, 0.5), (0.8, 0.15, 0.15),
          (0.2, 0.3, 0.7)]
_SHOES_P = {True: [0.4, 0.25, 0.1, 0.1, 0.08, 0.07], False: [0.1, 0.45, 0.25, 0.12, 0.04, 0.04]}
_BAGS = [(0.06, 0.06, 0.06), (0.40, 0.25, 0.12), (0.80, 0.15, 0.20), (0.15, 0.30, 0.75), (0.55, 0.55, 0.55),
         (0.90, 0.60, 0.70), (0.20, 0.55, 0.30), (0.85, 0.75, 0.30)]


def _domain_rng(domain: Domain, seed: int, stream: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{domain.name}|{seed}|{stream}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def camera_styles(domain: Domain) -> list[CameraStyle]:
    """The cameras of a domain. Fixed per domain (not per seed): a domain *is* its cameras."""
    rng = np.random.default_rng(domain.style_seed)
    u = rng.uniform
    cams = []
    for c in range(domain.num_cams):
        if domain.bright:  # sunny campus: light pavements, warm light, sharp
            wall = tuple(np.clip(np.array([0.80, 0.76, 0.66]) * u(0.8, 1.12, 3), 0, 1))
            floor = tuple(np.clip(np.array([0.72, 0.70, 0.64]) * u(0.85, 1.1, 3), 0, 1))
            accent = tuple(np.clip(rng.choice([[0.6, 0.35, 0.25], [0.35, 0.6, 0.3], [0.95, 0.95, 0.9], [0.5, 0.5, 0.55]])
                                   * u(0.85, 1.1, 3), 0, 1))
            wb = (u(1.02, 1.15), u(0.98, 1.06), u(0.80, 0.95))
            style = dict(brightness=u(0.04, 0.12), contrast=u(1.0, 1.2), gamma=u(0.8, 0.95), saturation=u(1.05, 1.3),
                         tint=(u(0.0, 0.04), u(0.0, 0.03), 0.0), vignette=u(0.0, 0.1), resolution=u(0.8, 1.0),
                         blur=u(0.0, 0.5), noise=u(0.004, 0.015), scale=u(0.80, 0.92), occlusion=u(0.08, 0.2))
        else:  # winter campus at dusk: dark asphalt and glass, cold light, soft and noisy
            wall = tuple(np.clip(np.array([0.30, 0.34, 0.40]) * u(0.7, 1.3, 3), 0, 1))
            floor = tuple(np.clip(rng.choice([[0.28, 0.28, 0.30], [0.75, 0.78, 0.82]]) * u(0.85, 1.1, 3), 0, 1))
            accent = tuple(np.clip(rng.choice([[0.15, 0.2, 0.3], [0.45, 0.25, 0.2], [0.6, 0.65, 0.7], [0.1, 0.25, 0.15]])
                                   * u(0.85, 1.15, 3), 0, 1))
            wb = (u(0.78, 0.92), u(0.92, 1.02), u(1.05, 1.25))
            style = dict(brightness=u(-0.12, -0.04), contrast=u(0.75, 0.9), gamma=u(1.05, 1.25), saturation=u(0.65, 0.85),
                         tint=(0.0, u(0.0, 0.02), u(0.02, 0.05)), vignette=u(0.1, 0.3), resolution=u(0.55, 0.8),
                         blur=u(0.3, 0.8), noise=u(0.012, 0.025), scale=u(0.74, 0.88), occlusion=u(0.15, 0.3))
        facing = rng.dirichlet([2.0, 2.0, 1.5])
        cams.append(
            CameraStyle(
                wall=tuple(float(x) for x in wall), floor=tuple(float(x) for x in floor),
                accent=tuple(float(x) for x in accent), horizon=float(u(0.45, 0.7)), structure=int(c % 4),
                period=float(u(0.25, 0.6)), wb=tuple(float(x) for x in wb),
                facing=tuple(float(x) for x in facing),
                **{k: (tuple(float(y) for y in v) if isinstance(v, tuple) else float(v)) for k, v in style.items()},
            )
        )
    return cams


# ---------------------------------------------------------------------------------------
# Identities
# ---------------------------------------------------------------------------------------

_ID_FIELDS = (
    "upper", "lower", "second", "skin", "hair", "shoes", "bag_color", "hat_color",  # colours (3 each)
)


def _pick(rng: np.random.Generator, palette, n: int, p=None) -> np.ndarray:
    cols = np.array([c for c, _ in palette] if p is None and isinstance(palette[0][1], float) else palette, float)
    if p is None and isinstance(palette[0][1], float):
        p = np.array([q for _, q in palette], float)
    p = np.asarray(p, float) / np.sum(p) if p is not None else None
    idx = rng.choice(len(cols), size=n, p=p)
    return cols[idx]


def _jitter(rng: np.random.Generator, cols: np.ndarray, amount: float = 0.15) -> np.ndarray:
    return np.clip(cols * rng.uniform(1 - amount, 1 + amount, cols.shape) + rng.normal(0, 0.03, cols.shape), 0, 1)


def sample_identities(domain: Domain, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw ``n`` appearances from the domain's identity distribution (arrays of length n)."""
    b = domain.bright
    ids: dict[str, np.ndarray] = {}
    ids["upper"] = _jitter(rng, _pick(rng, _UPPER[b], n))
    ids["lower"] = _jitter(rng, _pick(rng, _LOWER[b], n))
    ids["second"] = _jitter(rng, _pick(rng, _SECONDARY, n, p=np.ones(len(_SECONDARY))))
    ids["skin"] = np.clip(np.array([0.85, 0.66, 0.52]) * rng.uniform(0.55, 1.1, (n, 1)), 0, 1)
    ids["hair"] = _jitter(rng, _pick(rng, _HAIR, n, p=_HAIR_P[b]), 0.1)
    ids["shoes"] = _jitter(rng, _pick(rng, _SHOES, n, p=_SHOES_P[b]), 0.1)
    ids["bag_color"] = _jitter(rng, _pick(rng, _BAGS, n, p=np.ones(len(_BAGS))))
    ids["hat_color"] = _jitter(rng, _pick(rng, _BAGS, n, p=np.ones(len(_BAGS))))
    # pattern: 0 plain, 1 horizontal stripes, 2 vertical stripes, 3 checks, 4 chest logo, 5 two-tone
    ids["pattern"] = rng.choice(6, n, p=[0.4, 0.16, 0.1, 0.1, 0.14, 0.1] if b else [0.45, 0.12, 0.08, 0.15, 0.05, 0.15])
    ids["freq"] = rng.uniform(10, 20, n)
    ids["sleeves"] = (rng.random(n) < (0.7 if b else 0.05)).astype(float)  # 1 = short sleeves
    ids["lower_type"] = rng.choice(3, n, p=[0.5, 0.35, 0.15] if b else [0.9, 0.0, 0.1])  # trousers, shorts, skirt
    ids["long_hair"] = (rng.random(n) < 0.3).astype(float)
    ids["hat"] = (rng.random(n) < (0.05 if b else 0.3)).astype(float)
    ids["bag"] = rng.choice(3, n, p=[0.45, 0.3, 0.25] if b else [0.35, 0.45, 0.2])  # none, backpack, shoulder
    ids["bag_side"] = rng.choice([-1.0, 1.0], n)
    ids["coat"] = (rng.random(n) < (0.05 if b else 0.5)).astype(float)
    ids["width"] = rng.uniform(0.85, 1.2, n) * (1.0 if b else 1.08)
    ids["height"] = rng.uniform(0.9, 1.04, n)
    return ids


# ---------------------------------------------------------------------------------------
# Rendering (vectorised over a batch)
# ---------------------------------------------------------------------------------------



def sample_poses(cams: np.ndarray, styles: list[CameraStyle], rng: np.random.Generator, kind: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image pose, placement, background and occlusion draws (arrays of length n).

    ``kind``: 0 a person, 1 junk (a badly cropped detection), 2 distractor (a background box
    or a fragment of someone else).
    """
    n = len(cams)
    facing_p = np.array([styles[c].facing for c in cams])
    occ_p = np.array([styles[c].occlusion for c in cams])
    r = rng.random
    pose = {
        "facing": (r(n)[:, None] > np.cumsum(facing_p, 1)).sum(1).astype(float),  # 0 front, 1 back, 2 side
        "direction": rng.choice([-1.0, 1.0], n),
        "phase": rng.uniform(0, 2 * math.pi, n),
        "dx": rng.normal(0, 0.05, n),
        "dy": rng.normal(0, 0.025, n),
        "dscale": rng.uniform(0.92, 1.08, n),
        "light": rng.uniform(-1, 1, n),
        "bg_shift": rng.uniform(0, 1, n),
        "bg_gain": rng.uniform(0.9, 1.1, n),
        "clutter": (r(n) < 0.5).astype(float),
        "clutter_x": rng.uniform(0, 1, n),
        "clutter_w": rng.uniform(0.1, 0.35, n),
        "clutter_r": r(n), "clutter_g": r(n), "clutter_b": r(n),
        "occ": np.where(r(n) < occ_p, rng.choice([1.0, 2.0], n), 0.0),  # 1 object from below, 2 from a side
        "occ_a": rng.uniform(0.18, 0.4, n),
        "occ_b": rng.choice([-1.0, 1.0], n),
        "occ_r": r(n), "occ_g": r(n), "occ_b2": r(n),
        "crop": np.zeros(n),
    }
    junk = kind == 1
    # junk: the box is off: too big and shifted, so only a part of the person shows
    pose["dscale"][junk] = rng.uniform(1.6, 2.4, junk.sum())
    pose["dy"][junk] = rng.choice([-0.45, 0.45], junk.sum()) * rng.uniform(0.6, 1.0, junk.sum())
    pose["dx"][junk] = rng.normal(0, 0.25, junk.sum())
    pose["crop"][kind == 2] = (r((kind == 2).sum()) < 0.5).astype(float)  # half the distractors: no person
    return pose


class _Canvas:
    """Pixel grids and compositing for one batch.

    ``layer=True`` paints onto a transparent layer: ``img`` then holds the colour
    premultiplied by coverage and ``trans`` the transmittance (1 - coverage), so the layer
    can later be laid over any background with ``bg * trans + img`` (that is how one
    rendered person is shown by every camera for the CamStyle images).
    """

    def __init__(self, B: int, H: int, W: int, *, layer: bool = False) -> None:
        self.B, self.H, self.W = B, H, W
        self.Y = (torch.arange(H, dtype=torch.float32) + 0.5).view(1, H, 1)
        self.X = (torch.arange(W, dtype=torch.float32) + 0.5).view(1, 1, W)
        self.img = torch.zeros(B, 3, H, W)
        self.trans = torch.ones(B, H, W) if layer else None

    def paint(self, alpha: torch.Tensor, color: torch.Tensor) -> None:
        """Composite ``color`` (B,3,1,1 or B,3,H,W) with coverage ``alpha`` (B,H,W)."""
        self.img.lerp_(color.expand_as(self.img), alpha.unsqueeze(1).expand_as(self.img))
        if self.trans is not None:
            self.trans.addcmul_(self.trans, alpha, value=-1.0)  # trans *= 1 - alpha, in one pass


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32)).view(-1, 1, 1)


def _col(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float32)).view(-1, 3, 1, 1)


def _cover(d_px: torch.Tensor) -> torch.Tensor:
    """Anti-aliased coverage from a signed distance in pixels (negative inside)."""
    return (0.5 - d_px).clamp_(0.0, 1.0)


def _ellipse(u, v, cu, cv, ru, rv):
    return (torch.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2) - 1.0) * torch.minimum(ru, rv)


def _box(u, v, u0, u1, v0, v1):
    return torch.maximum(torch.maximum(u0 - u, u - u1), torch.maximum(v0 - v, v - v1))


def _capsule(u, v, au, av, bu, bv, r):
    du, dv = bu - au, bv - av
    pu, pv = u - au, v - av
    t = ((pu * du + pv * dv) / (du * du + dv * dv + 1e-8)).clamp_(0.0, 1.0)
    d = torch.sqrt((pu - t * du) ** 2 + (pv - t * dv) ** 2) - r
    return d, t


_BG_CACHE: dict[tuple, torch.Tensor] = {}


def _background_template(style: CameraStyle, H: int, W: int) -> torch.Tensor:
    """The camera's background, twice as wide as an image, ``(3, H, 2W)``; cached."""
    key = (style, H, W)
    if key in _BG_CACHE:
        return _BG_CACHE[key]
    y = ((torch.arange(H, dtype=torch.float32) + 0.5) / H).view(H, 1)
    x = ((torch.arange(2 * W, dtype=torch.float32) + 0.5) / W).view(1, 2 * W)
    wall, floor, accent = (torch.tensor(c).view(3, 1, 1) for c in (style.wall, style.floor, style.accent))
    horizon = style.horizon
    xs = x / style.period
    upper = (y < horizon).float()
    if style.structure == 0:  # pillars
        m = ((xs % 1.0) < 0.22).float() * upper
    elif style.structure == 1:  # windows
        m = (((xs % 1.0) > 0.2) & ((xs % 1.0) < 0.75) & (((y * 6) % 1.0) > 0.35)).float() * (y < horizon - 0.04).float()
    elif style.structure == 2:  # bricks
        row = torch.floor(y * 22)
        m = ((((y * 22) % 1.0) < 0.18) | (((xs * 3 + 0.5 * (row % 2)) % 1.0) < 0.08)).float() * upper
    else:  # foliage
        m = (torch.sin(xs * 9.0 + torch.sin(y * 23.0) * 2.0) * torch.sin(y * 17.0 + xs * 4.0) > 0.15).float() * upper
    wall_img = wall * (1.0 - 0.25 * y)
    floor_img = floor * (0.85 + 0.3 * (y - horizon))
    bg = torch.where(upper.bool(), wall_img, floor_img).expand(3, H, 2 * W).clone()
    bg = torch.lerp(bg, accent.expand_as(bg), (0.85 * m).expand_as(bg))
    tiles = (((x * 5) % 1.0) < 0.04).float() * (1 - upper)  # floor tiles
    bg = bg * (1 - 0.15 * tiles)
    _BG_CACHE[key] = bg
    return bg


def _render_background(cv: _Canvas, style: CameraStyle, pose: dict[str, np.ndarray]) -> None:
    B, H, W = cv.B, cv.H, cv.W
    template = _background_template(style, H, W)
    shift = torch.as_tensor((pose["bg_shift"] * W).astype(np.int64))  # per-image pan of the camera
    idx = shift.view(B, 1) + torch.arange(W).view(1, W)
    bg = template[:, :, idx]  # (3, H, B, W)
    cv.img = bg.permute(2, 0, 1, 3).contiguous().mul_(_t(pose["bg_gain"]).unsqueeze(1))
    # clutter: a poster / parked thing / passer-by blob on the wall
    cx0 = _t(pose["clutter_x"]) * W
    cw = _t(pose["clutter_w"]) * W
    d = _box(cv.X, cv.Y, cx0 - cw / 2, cx0 + cw / 2, _t(np.full(B, 0.2)) * H, _t(np.full(B, style.horizon)) * H)
    col = _col(np.stack([pose["clutter_r"], pose["clutter_g"], pose["clutter_b"]], 1) * 0.8 + 0.1)
    cv.paint(_cover(d).mul_(_t(pose["clutter"]) * 0.9), col)


def _render_person(cv: _Canvas, ids: dict[str, np.ndarray], pose: dict[str, np.ndarray], scale: np.ndarray) -> None:
    B, H, W = cv.B, cv.H, cv.W
    present = _t(1.0 - pose["crop"])
    ph = _t(scale * ids["height"] * pose["dscale"] * H)  # person height in pixels
    cx = _t(W / 2 + pose["dx"] * W)
    top = (H - ph) / 2 + _t(pose["dy"] * H)
    u = (cv.X - cx) / ph  # (B,1,W) body coordinates, unit = person height
    v = (cv.Y - top) / ph  # (B,H,1)
    facing = pose["facing"]
    front, back, side = (_t((facing == k).astype(float)) for k in range(3))
    sidef = pose["facing"] == 2
    d = _t(pose["direction"])  # side view: +1 walks to the right
    bw = _t(ids["width"])
    phase = _t(pose["phase"])
    coat = _t(ids["coat"])
    torso_w = 0.1 * bw * torch.where(side > 0, torch.full_like(bw, 0.72), torch.ones_like(bw))
    waist = 0.52 + 0.08 * coat
    col = {k: _col(ids[k]) for k in _ID_FIELDS}

    half = torch.tensor(0.5)

    def paint(dist, color, mask=None, region=None):
        m = present if mask is None else present * mask  # (B,1,1): cheap
        if not bool(m.any()):
            return  # no image of this batch shows the part
        a = torch.addcmul(half, dist, ph, value=-1.0).clamp_(0.0, 1.0).mul_(m)
        if region is not None:  # a part of the shape only (full-size mask)
            a.mul_(region)
        cv.paint(a, color)

    # shadow on the ground
    paint(_ellipse(u, v, 0.0, 0.975, 0.16 * bw, 0.02 + 0 * bw), torch.zeros(B, 3, 1, 1))
    # long hair behind the body (seen at the sides from the front)
    long_hair = _t(ids["long_hair"])
    paint(_box(u, v, -0.055 * bw, 0.055 * bw, 0.07, 0.26 + 0 * bw), col["hair"], long_hair * (1 - side))
    # backpack seen from the side: behind the torso
    backpack = _t((ids["bag"] == 1).astype(float))
    shoulder = _t((ids["bag"] == 2).astype(float))
    pack_a, pack_b = -d * torso_w, -d * (torso_w + 0.075)
    paint(_box(u, v, torch.minimum(pack_a, pack_b), torch.maximum(pack_a, pack_b), 0.18 + 0 * bw, 0.43 + 0 * bw),
          col["bag_color"], backpack * side)
    bag_s = _t(ids["bag_side"])
    # legs
    hip_v = waist - 0.02
    ankle_v = 0.93
    lower_type = ids["lower_type"]
    shorts = _t((lower_type == 1).astype(float))
    skirt = _t((lower_type == 2).astype(float))
    for leg in (0, 1):
        s = 1.0 if leg == 0 else -1.0
        swing = torch.sin(phase + leg * math.pi)
        hip_u = s * 0.04 * bw * (1 - side)
        ankle_u = s * 0.045 * bw * (1 - side) + side * d * 0.13 * swing
        lift = 0.03 * swing.clamp(min=0)
        dist, t = _capsule(u, v, hip_u, hip_v, ankle_u, ankle_v - lift, 0.036 * bw)
        shade = (1.0 - 0.25 * side * (leg == 1)).unsqueeze(1)  # far leg darker in a side view
        paint(dist, col["lower"] * shade)
        if shorts.any():  # shorts: skin below the knee
            paint(dist, col["skin"] * shade, shorts, (t > 0.45).float())
        # shoe
        shoe_u = ankle_u + side * d * 0.02
        paint(_ellipse(u, v, shoe_u, ankle_v - lift + 0.02, 0.04 + 0.025 * side, 0.024 + 0 * bw), col["shoes"] * shade)
    # skirt over the legs
    sk_w = 0.09 * bw + (v - hip_v).clamp(min=0) * 0.35
    paint(torch.maximum(torch.abs(u) - sk_w, torch.maximum(hip_v - v, v - 0.74)), col["lower"], skirt)
    # torso with its pattern, seen differently from each side
    tw = torso_w * (1.0 - 0.15 * (v - 0.15).clamp(0, 0.5) / 0.4) * (1 + 0.1 * coat)
    torso_d = torch.maximum(torch.abs(u) - tw, torch.maximum(0.15 - v, v - waist))
    pattern = ids["pattern"]
    freq = _t(ids["freq"])
    pu, pv = u / (0.1 * bw), (v - 0.15) * freq
    stripes_h = ((pv % 1.0) < 0.5).float()
    stripes_v = (((pu * 2.5 + 10) % 1.0) < 0.5).float()
    checks = (stripes_h != (((pu * 2.0 + 10) % 1.0) < 0.5).float()).float()
    logo = ((torch.abs(u) < 0.04 * bw) & (v > 0.21) & (v < 0.29)).float() * front
    twotone = (v < 0.24).float()
    sel = [_t((pattern == k).astype(float)) for k in range(6)]
    second_mask = sel[1] * stripes_h + sel[2] * stripes_v + sel[3] * checks + sel[4] * logo + sel[5] * twotone
    light = _t(pose["light"])
    shading = (1.0 - 0.18 * light * (u / (0.1 * bw)).clamp(-1, 1) - 0.1 * (v - 0.3)).unsqueeze(1)
    torso_col = torch.lerp(col["upper"].expand(B, 3, 1, 1), col["second"], second_mask.unsqueeze(1)) * shading
    paint(torso_d, torso_col)
    # backpack from the back: a block on the torso; from the front: two straps
    paint(_box(u, v, -0.075 * bw, 0.075 * bw, 0.19 + 0 * bw, 0.44 + 0 * bw), col["bag_color"] * 0.9, backpack * back)
    strap = torch.minimum(torch.abs(u - 0.05 * bw), torch.abs(u + 0.05 * bw)) - 0.012
    paint(torch.maximum(strap, torch.maximum(0.15 - v, v - 0.36)), col["bag_color"], backpack * front)
    # shoulder bag: in front/back views on the image side of the bag; strap across the chest
    img_side = torch.where(back > 0, bag_s, -bag_s)
    strap_d, _ = _capsule(u, v, -img_side * 0.07 * bw, 0.16 + 0 * bw, img_side * 0.1 * bw, 0.45 + 0 * bw, 0.008 + 0 * bw)
    paint(strap_d, col["bag_color"], shoulder * (1 - side))
    bag_u = img_side * (torso_w + 0.03) * (1 - side)  # side view: at the hip, over the body
    on_near_side = _t(np.where(sidef, (ids["bag_side"] == -pose["direction"]).astype(float), 1.0))
    paint(_box(u, v, bag_u - 0.05, bag_u + 0.05, 0.42 + 0 * bw, 0.57 + 0 * bw), col["bag_color"], shoulder * on_near_side)
    # arms: upper arm in the sleeve colour, forearm skin for short sleeves
    sleeves = _t(ids["sleeves"])
    for arm in (0, 1):
        s = 1.0 if arm == 0 else -1.0
        swing = torch.sin(phase + arm * math.pi)
        sh_u = s * (torso_w + 0.018) * (1 - side)
        hand_u = s * (torso_w + 0.03) * (1 - side) - side * d * 0.1 * swing
        vis = (1 - side) + side * (arm == 0)  # one arm in a side view
        dist, t = _capsule(u, v, sh_u, 0.17 + 0 * bw, hand_u, 0.47 + 0.04 * coat, 0.026 * bw)
        paint(dist, col["upper"] * 0.92, vis)
        # forearm (short sleeves) or just the hand (long sleeves) in skin colour
        cut = 0.92 - (0.92 - 0.4) * sleeves
        paint(dist, col["skin"], vis, (t > cut).float())
    # head and hair
    head_u = side * d * 0.01
    head_d = _ellipse(u, v, head_u, 0.075 + 0 * bw, 0.05 + 0 * bw, 0.066 + 0 * bw)
    paint(head_d, col["skin"])
    hair_cut = torch.where(
        back > 0,
        torch.ones_like(v * u),
        ((v < 0.05) | ((side > 0) & ((u - head_u) * d < -0.005)) | ((side == 0) & (torch.abs(u) > 0.038))).float(),
    )
    paint(head_d, col["hair"], hair_cut)
    hat = _t(ids["hat"])
    paint(torch.maximum(head_d, v - 0.045), col["hat_color"], hat)
    paint(_box(u, v, -0.055 + 0 * bw, 0.055 + 0 * bw, 0.035 + 0 * bw, 0.05 + 0 * bw), col["hat_color"], hat)


def _render_occluder(cv: _Canvas, pose: dict[str, np.ndarray]) -> None:
    """A box, bench or car bonnet rising from below, or a pole / passer-by at one side."""
    occ = pose["occ"]
    if not occ.any():
        return
    H, W = cv.H, cv.W
    a = _t(pose["occ_a"])
    col = _col(np.stack([pose["occ_r"], pose["occ_g"], pose["occ_b2"]], 1) * 0.7 + 0.1)
    top = (1 - a) * H
    below = _cover(top - cv.Y).mul_(_t((occ == 1).astype(float)))  # (B,H,1): spans the width
    cv.paint(below, col)
    lid = _cover(torch.maximum(top - 2 - cv.Y, cv.Y - top - 1)).mul_(_t((occ == 1).astype(float)))
    cv.paint(lid, col * 0.6)
    left = _t(pose["occ_b"]) < 0
    edge = torch.where(left, a * 0.8 * W - cv.X, cv.X - (1 - a * 0.8) * W)  # (B,1,W)
    side = torch.maximum(-edge, 0.1 * H - cv.Y)
    cv.paint(_cover(side).mul_(_t((occ == 2).astype(float))), col)


_VIGNETTE: dict[tuple[int, int], torch.Tensor] = {}


def _apply_style(img: torch.Tensor, style: CameraStyle, gen: torch.Generator) -> torch.Tensor:
    """The camera: white balance, contrast/brightness, gamma, saturation, tint, vignette,
    resolution loss, blur, noise (in that order, on a batch seen by one camera)."""
    B, C, H, W = img.shape
    s = H / 128.0
    gain = torch.tensor(style.wb).view(1, 3, 1, 1) * style.contrast
    x = torch.addcmul(torch.tensor(0.5 - 0.5 * style.contrast + style.brightness), img, gain)
    x.clamp_(0.0, 1.0).pow_(style.gamma)
    gray = x.mean(1, keepdim=True)
    x.sub_(gray).mul_(style.saturation).add_(gray)
    if (H, W) not in _VIGNETTE:
        yy = (torch.arange(H, dtype=torch.float32) + 0.5) / H - 0.5
        xx = (torch.arange(W, dtype=torch.float32) + 0.5) / W - 0.5
        _VIGNETTE[(H, W)] = 2.0 * (yy.view(-1, 1) ** 2 + xx.view(1, -1) ** 2)
    x.mul_(1.0 - style.vignette * _VIGNETTE[(H, W)]).add_(torch.tensor(style.tint).view(1, 3, 1, 1))
    if style.resolution < 0.999:
        h2, w2 = max(4, round(H * style.resolution)), max(2, round(W * style.resolution))
        x = F.interpolate(x, size=(h2, w2), mode="area")
        x = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)
    passes = int(round(1.5 * (style.blur * s) ** 2))  # a 3x3 box filter has variance 2/3 per axis
    for _ in range(passes):
        x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    noise = torch.rand(x.shape, generator=gen).sub_(0.5).mul_(style.noise * math.sqrt(12.0))  # std = style.noise
    return x.add_(noise).clamp_(0.0, 1.0)


def render_person_layer(
    ids: dict[str, np.ndarray], pose: dict[str, np.ndarray], scale: np.ndarray, size: tuple[int, int]
) -> _Canvas:
    """The people of a batch on a transparent layer (see :class:`_Canvas`)."""
    B = len(pose["phase"])
    layer = _Canvas(B, *size, layer=True)
    _render_person(layer, ids, pose, np.broadcast_to(np.asarray(scale, float), (B,)))
    return layer


def render_view(layer: _Canvas, pose: dict[str, np.ndarray], style: CameraStyle, noise_seed: int) -> np.ndarray:
    """Lay a person layer over a camera's background, add occluders, apply the camera's style."""
    cv = _Canvas(layer.B, layer.H, layer.W)
    _render_background(cv, style, pose)
    cv.img.mul_(layer.trans.unsqueeze(1)).add_(layer.img)
    _render_occluder(cv, pose)
    gen = torch.Generator().manual_seed(int(noise_seed))
    out = _apply_style(cv.img, style, gen)
    return out.mul_(255.0).add_(0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def render_batch(
    ids: dict[str, np.ndarray],
    pose: dict[str, np.ndarray],
    style: CameraStyle,
    *,
    size: tuple[int, int] = (128, 64),
    noise_seed: int = 0,
) -> np.ndarray:
    """Render one batch seen by one camera; returns uint8 images ``(B, H, W, 3)``.

    ``ids`` and ``pose`` hold one row per image (an identity may repeat).
    """
    layer = render_person_layer(ids, pose, style.scale, size)
    return render_view(layer, pose, style, noise_seed)


@contextmanager
def _one_torch_thread():
    """Run torch ops single-threaded: parallelism comes from our own thread pool, and
    OpenMP's spinning threads cost more than they give on a loaded 2-core machine."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def render_identities(
    domain: str = "synth_market",
    *,
    num_ids: int = 4,
    cams: list[int] | None = None,
    seed: int = 0,
    size: tuple[int, int] = (128, 64),
) -> np.ndarray:
    """Render ``num_ids`` fresh identities, each seen once by every camera in ``cams``.

    Returns uint8 images ``(num_ids, len(cams), H, W, 3)``; notebook 00 draws them as a grid.
    Nothing is written to disk.
    """
    dom = DOMAINS[_check_domain(domain)]
    styles = camera_styles(dom)
    cams = list(range(dom.num_cams)) if cams is None else list(cams)
    rng = _domain_rng(dom, seed, "preview")
    ids = sample_identities(dom, num_ids, rng)
    out = np.zeros((num_ids, len(cams), *size, 3), np.uint8)
    with _one_torch_thread():
        for j, c in enumerate(cams):
            pose = sample_poses(np.full(num_ids, c), styles, rng, np.zeros(num_ids, int))
            out[:, j] = render_batch(ids, pose, styles[c], size=size, noise_seed=seed * 1000 + c)
    return out


# ---------------------------------------------------------------------------------------
# Building a dataset
# ---------------------------------------------------------------------------------------


def _check_domain(domain: str) -> str:
    if domain not in DOMAINS:
        raise ValueError(f"unknown synthetic domain {domain!r}; choose one of: {', '.join(DOMAINS)}")
    return domain


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
    split: np.ndarray  # 0 train, 1 query, 2 gallery
    pid: np.ndarray  # file-name pid (-1 junk, 0 distractor)
    ident: np.ndarray  # row in the identity table
    cam: np.ndarray
    kind: np.ndarray  # 0 person, 1 junk, 2 distractor


def _plan(dom: Domain, sc: Scale, seed: int) -> tuple[_Plan, dict[str, np.ndarray], np.ndarray]:
    rng = _domain_rng(dom, seed, "plan")
    C = dom.num_cams
    n_people = sc.train_ids + sc.test_ids
    extra = max(1, sc.distractors + sc.junk)  # identities of the passers-by in junk/distractor boxes
    ids = sample_identities(dom, n_people + extra, _domain_rng(dom, seed, "identities"))
    pids = rng.permutation(np.arange(1, n_people + 1))  # Market interleaves train and test pids
    split, pid, ident, cam, kind = [], [], [], [], []

    def add(s, p, i, c, k, n):
        split.extend([s] * n); pid.extend([p] * n); ident.extend([i] * n); cam.extend([c] * n); kind.extend([k] * n)

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


def _params_key(domain: str, scale: str, seed: int, size: tuple[int, int], camstyle: bool) -> dict:
    return {"domain": domain, "scale": scale, "seed": int(seed), "image_size": list(size), "camstyle": bool(camstyle),
            "version": GENERATOR_VERSION}


def default_image_size(scale: str) -> tuple[int, int]:
    """128x64 for every scale (see the module docstring)."""
    return (128, 64)


def make_synthetic_reid(
    root: str | os.PathLike | None = None,
    domain: str = "synth_market",
    scale: str | Scale = "tiny",
    seed: int = 0,
    *,
    image_size: tuple[int, int] | None = None,
    camstyle: bool = True,
    batch_size: int = 512,
    workers: int | None = None,
) -> Path:
    """Write (or reuse) a synthetic domain as a Market-1501 tree; return its folder.

    The tree ``<root>/<domain>-<scale>-seed<seed>/`` holds ``bounding_box_train/``,
    ``bounding_box_test/`` (with distractors ``0000_*`` and junk ``-1_*``), ``query/``,
    ``bounding_box_train_camstyle/`` (``<name>_fake_<c>to<c2>.jpg``: the same person, pose,
    placement and occluder re-rendered by camera ``c2``, i.e. its background and style, as
    CamStyle's CycleGAN images are meant to be) and ``manifest.json`` (generation
    parameters, camera styles, identity appearances and the true pid of every training image).

    Parameters
    ----------
    root:
        Parent folder; default ``reidlab.files.data_dir() / 'synth'``.
    domain:
        ``'synth_market'`` (6 bright cameras) or ``'synth_duke'`` (8 dark cameras).
    scale:
        ``'tiny'`` (CI: 40 train ids / 320 images), ``'small'`` (laptop: 150 / 1,800) or
        ``'market'`` (Market-1501's counts), or a :class:`Scale` of your own.
    seed:
        Identities, poses and noise; the camera styles belong to the domain.
    image_size:
        ``(H, W)`` written; default 128x64.
    camstyle:
        Also write the CamStyle images (5 or 7 per training image).
    workers:
        Threads that render and encode in parallel (default: all cores).

    Notes
    -----
    Cached: a finished tree carries a ``.complete`` marker (its settings and the generator
    version) written last, after the tree was built in a temporary sibling folder and renamed
    into place, so an interrupted run leaves no half tree behind and the next call starts
    over; a tree from an older generator version is redrawn.
    """
    from ..files import data_dir

    _check_domain(domain)
    if isinstance(scale, Scale):
        sc = scale
        scale = "custom" + hashlib.sha256(json.dumps(asdict(sc), sort_keys=True).encode()).hexdigest()[:8]
    elif scale in SCALES:
        sc = SCALES[scale]
    else:
        raise ValueError(f"unknown scale {scale!r}; choose one of: {', '.join(SCALES)} (or pass a Scale)")
    size = tuple(image_size) if image_size is not None else default_image_size(scale)
    if len(size) != 2 or size[0] < 32 or size[1] < 16:
        raise ValueError(f"image_size must be (H, W) with H >= 32 and W >= 16, got {image_size}")
    root = Path(root).expanduser() if root is not None else data_dir() / "synth"
    suffix = ("" if size == (128, 64) else f"-{size[0]}x{size[1]}") + ("" if camstyle else "-nocamstyle")
    out = root / f"{domain}-{scale}-seed{seed}{suffix}"
    key = _params_key(domain, scale, seed, size, camstyle)
    marker = out / COMPLETE_MARKER
    if _marker_matches(marker, key):
        return out

    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        _generate(tmp, DOMAINS[domain], sc, seed, size, camstyle, key, batch_size, workers)
        (tmp / COMPLETE_MARKER).write_text(json.dumps(key))
        try:
            os.rename(tmp, out)
        except OSError:  # `out` exists: unfinished, or from an older generator version
            if not _marker_matches(marker, key):  # (unless a concurrent call just finished it)
                old = root / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
                os.rename(out, old)
                os.rename(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _marker_matches(marker: Path, key: dict) -> bool:
    try:
        return json.loads(marker.read_text()) == key
    except (ValueError, OSError):
        return False


def _generate(
    out: Path, dom: Domain, sc: Scale, seed: int, size: tuple[int, int], camstyle: bool, key: dict,
    batch_size: int, workers: int | None,
) -> None:
    from ..data.datasets import CAMSTYLE_DIR, GALLERY_DIR, QUERY_DIR, TRAIN_DIR

    styles = camera_styles(dom)
    plan, ids, pids = _plan(dom, sc, seed)
    names = _names(plan, _domain_rng(dom, seed, "names"), dom.num_cams)
    poses = sample_poses(plan.cam, styles, _domain_rng(dom, seed, "poses"), plan.kind)
    dirs = {0: out / TRAIN_DIR, 1: out / QUERY_DIR, 2: out / GALLERY_DIR}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    if camstyle:
        (out / CAMSTYLE_DIR).mkdir(parents=True, exist_ok=True)

    # chunks of rows seen by one camera, train rows apart (they also get CamStyle views)
    chunks: list[tuple[int, np.ndarray, bool]] = []
    for c in range(dom.num_cams):
        for is_train in (True, False):
            rows = np.flatnonzero((plan.cam == c) & ((plan.split == 0) == is_train))
            chunks += [(c, rows[k : k + batch_size], is_train) for k in range(0, len(rows), batch_size)]

    def save(img: np.ndarray, path: Path) -> None:
        Image.fromarray(img).save(path, quality=92)

    def work(n: int) -> list:
        c, rows, is_train = chunks[n]
        sub_ids = {name: arr[plan.ident[rows]] for name, arr in ids.items()}
        sub_pose = {name: arr[rows] for name, arr in poses.items()}
        layer = render_person_layer(sub_ids, sub_pose, styles[c].scale, size)
        views = [c] + ([c2 for c2 in range(dom.num_cams) if c2 != c] if camstyle and is_train else [])
        pending = []
        for c2 in views:
            imgs = render_view(layer, sub_pose, styles[c2], noise_seed=(seed * 1_000_003 + n) * 64 + c2)
            for i, r in enumerate(rows):
                if c2 == c:
                    path = dirs[int(plan.split[r])] / names[r]
                else:  # CamStyle naming of ECN: <name>_fake_<c>to<c2>.jpg, cameras 1-based
                    path = out / CAMSTYLE_DIR / f"{names[r][:-4]}_fake_{c + 1}to{c2 + 1}.jpg"
                pending.append(io_pool.submit(save, imgs[i], path))
        for f in pending:  # bounded memory: a chunk's images are written before the next chunk starts
            f.result()
        return len(pending)

    # rendering is CPU-bound (one thread per core); writing many small files is I/O-bound
    # (a few ms per file on a busy disk), so JPEG encoding and writing get their own threads
    n_threads = max(1, workers or os.cpu_count() or 1)
    with _one_torch_thread(), ThreadPoolExecutor(n_threads) as pool, ThreadPoolExecutor(4 * n_threads) as io_pool:
        total = sum(pool.map(work, range(len(chunks))))
    n_fake = int((plan.split == 0).sum()) * (dom.num_cams - 1) if camstyle else 0
    log.info("%s: wrote %d images (%d CamStyle)", out.name, total, n_fake)

    train_rows = np.flatnonzero(plan.split == 0)
    manifest = {
        **key,
        "num_cams": dom.num_cams,
        "counts": {
            "train_ids": sc.train_ids, "train_images": int((plan.split == 0).sum()),
            "test_ids": sc.test_ids, "query": int((plan.split == 1).sum()),
            "gallery_files": int((plan.split == 2).sum()), "gallery_real": sc.gallery_real,
            "distractors": sc.distractors, "junk": sc.junk,
            "camstyle": n_fake,
        },
        "cameras": [asdict(s) for s in styles],
        "identities": {
            str(int(pids[i])): {k: np.asarray(v[i]).round(4).tolist() for k, v in ids.items()}
            for i in range(sc.train_ids + sc.test_ids)
        },
        "train_true_pids": {names[r]: int(plan.pid[r]) for r in train_rows},
        "test_pids": sorted(int(p) for p in pids[sc.train_ids :]),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
