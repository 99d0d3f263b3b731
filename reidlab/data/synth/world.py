"""What the synthetic re-ID world is: scales, domains, cameras, identities and poses.

Nothing can be downloaded at run time, yet DSBN, IBN-a and ECN (notebooks 06-10) need a
labelled source domain, an unlabelled target domain seen by several cameras, and CamStyle
images. This module holds the *description* of that world, as numbers drawn from seeded
generators; :mod:`reidlab.data.synth.render` draws it and :mod:`reidlab.data.synth.write`
writes it to disk. Notebook 00 shows the world.

* A **scale** (:class:`Scale`, :data:`SCALES`) is the number of identities and images per
  split; ``market`` copies Market-1501's published statistics.
* A **domain** (:class:`Domain`, :data:`DOMAINS`) is a set of cameras plus identity
  statistics. ``synth_market`` has 6 bright, warm, sharp cameras and summer clothing;
  ``synth_duke`` has 8 darker, colder, blurrier and noisier cameras and winter clothing;
  ``synth_pretrain`` (the pretraining corpus of :mod:`reidlab.ecn.pretrain`, the series'
  stand-in for ImageNet) has 16 cameras whose looks lie *off* the source-target range
  (green or magenta casts, washed-out or harsh colour) and a population of its own (its own
  palettes and clothing odds), so that pretraining never sees the target's people or looks.
* A **camera** (:class:`CameraStyle`, :func:`camera_styles`) is a scene (the background it
  films) and a colour / optics style; it is fixed per domain, not per seed, because a domain
  *is* its cameras. Within a domain the cameras differ **photometrically** (white balance,
  brightness, contrast, gamma, saturation, tint, vignetting, resolution, blur, noise) and by
  their scene; person scale, facing and occlusion odds belong to the domain, not to a camera.
  How much the scene gives a camera away is a knob, :data:`DEFAULT_CAMERA_BACKGROUND`: the
  share of images whose background is the camera's own scene, the rest showing a scene drawn
  from the pool of all the domain's scenes (docs/EVIDENCE.md logs how it was chosen).
* An **identity** (:func:`sample_identities`) is a persistent appearance: clothing colours
  and pattern, sleeves, trousers / shorts / skirt, shoes, skin, hair, hat, bag and build.
* A **pose** (:func:`sample_poses`) is what changes from image to image of one person:
  walking phase, facing, placement jitter, background pan, clutter and occluders.

Every draw comes from :func:`domain_rng`, a generator keyed by ``(domain, seed, stream)``,
so the same arguments give the same world, and adding a stream never shifts another one.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Scale",
    "SCALES",
    "CameraStyle",
    "Domain",
    "DOMAINS",
    "COLOR_FIELDS",
    "DEFAULT_CAMERA_BACKGROUND",
    "check_camera_background",
    "check_domain",
    "domain_rng",
    "camera_styles",
    "sample_identities",
    "sample_poses",
]

# ---------------------------------------------------------------------------------------
# Scales. `market` copies Market-1501's published statistics (Zheng et al., ICCV 2015, as
# parsed by open-reid / torchreid): 751 training ids in 12,936 images; 750 test ids with
# 3,368 query images; bounding_box_test holds 19,732 files, of which 3,819 are junk (pid -1)
# and 2,793 distractors (pid 0000), so 15,913 gallery images remain after dropping junk.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    """How many identities and images each split of a world holds.

    Checked at construction, because a scale that cannot hold a valid re-ID split (an
    identity seen by one camera only has no cross-camera match) would otherwise fail deep
    inside the planner.

    Attributes
    ----------
    train_ids, train_images:
        Training identities and their images (each identity in at least 2 cameras).
    test_ids:
        Test identities (disjoint from the training ones).
    query:
        Number of query images, or ``None`` for one query per (identity, camera) pair of a
        random camera subset.
    gallery_real:
        Gallery images of the test identities.
    distractors, junk:
        Gallery files with pid ``0000`` (never a true match) and ``-1`` (dropped by the parser).
    """

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
    # the CPU lab world (notebooks 06-10 under `laptop` and `long`): 150 training people, enough for a
    # target-supervised network to learn what a source-trained one cannot (40 were not: docs/EVIDENCE.md),
    # 8 images each, and a test split of 160 new people (about 480 queries), so that one run's mAP is
    # not decided by a handful of queries
    "lab": Scale(train_ids=150, train_images=1200, test_ids=160, query=None, gallery_real=960, distractors=60, junk=40),
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
    """How one camera sees: its background and its colour/optics (all drawn per domain).

    Frozen (hashable), so the renderer can cache each camera's background template by style.
    Colours are RGB in [0, 1]; lengths are fractions of the image height or width.
    """

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
    scale: float  # mean person height, fraction of the image height (the same for every camera of a domain)
    facing: tuple[float, float, float]  # probabilities of front, back, side (per domain)
    occlusion: float  # probability of a partial occluder (per domain)


@dataclass(frozen=True)
class Domain:
    """A domain: number of cameras, how its cameras are drawn, and its people's statistics.

    Attributes
    ----------
    name:
        ``'synth_market'`` or ``'synth_duke'``; also part of every random stream's key, so
        the two domains never share identities.
    num_cams:
        Cameras (6 like Market-1501, 8 like DukeMTMC-reID).
    style_seed:
        Seeds :func:`camera_styles`.
    bright:
        Summer campus (bright, warm, sharp; summer clothing) or winter dusk (dark, cold,
        blurry, noisy; winter clothing): the two ends of the domain gap notebook 08 measures.
        ``None``: neither (the pretraining corpus): cameras off the warm-cold axis that joins
        the two and a population with its own palettes and clothing odds.
    """

    name: str
    num_cams: int
    style_seed: int
    bright: bool | None


DOMAINS: dict[str, Domain] = {
    "synth_market": Domain("synth_market", 6, style_seed=1501, bright=True),
    "synth_duke": Domain("synth_duke", 8, style_seed=1812, bright=False),
    # The stand-in for ImageNet (reidlab.ecn.pretrain): other people (own palettes and clothing
    # odds), other places, 16 cameras whose looks lie off the source-target range. Neither domain.
    "synth_pretrain": Domain("synth_pretrain", 16, style_seed=2009, bright=None),
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
# The pretraining population's own palettes (domain ``bright=None``): fashion and sports colours
# that neither the summer nor the winter palette holds (no black, white, grey, navy or brown),
# so the stand-in for ImageNet never sees the target's clothing colours.
_OTHER_UPPER = [
    ((0.62, 0.86, 0.22), 0.1), ((0.96, 0.50, 0.40), 0.1), ((0.74, 0.64, 0.92), 0.1), ((0.58, 0.92, 0.76), 0.1),
    ((0.88, 0.18, 0.62), 0.1), ((0.28, 0.86, 0.92), 0.1), ((0.98, 0.80, 0.58), 0.1), ((0.34, 0.22, 0.66), 0.1),
    ((0.86, 0.90, 0.30), 0.1), ((0.98, 0.64, 0.84), 0.1),
]
_OTHER_LOWER = [
    ((0.36, 0.60, 0.52), 0.2), ((0.66, 0.40, 0.66), 0.15), ((0.92, 0.70, 0.46), 0.15), ((0.52, 0.70, 0.88), 0.15),
    ((0.78, 0.30, 0.42), 0.15), ((0.60, 0.62, 0.26), 0.2),
]
_SECONDARY = [(0.95, 0.95, 0.95), (0.05, 0.05, 0.05), (0.85, 0.1, 0.1), (0.1, 0.3, 0.8), (0.95, 0.8, 0.1),
              (0.1, 0.6, 0.3), (0.6, 0.6, 0.6), (0.9, 0.5, 0.7)]
_HAIR = [(0.07, 0.06, 0.05), (0.25, 0.15, 0.08), (0.45, 0.30, 0.15), (0.85, 0.72, 0.40), (0.60, 0.60, 0.60),
         (0.55, 0.20, 0.08)]
_HAIR_P = {True: [0.62, 0.2, 0.08, 0.04, 0.04, 0.02], False: [0.3, 0.25, 0.18, 0.15, 0.08, 0.04],
           None: [0.25, 0.2, 0.2, 0.2, 0.05, 0.1]}
_SHOES = [(0.92, 0.92, 0.92), (0.06, 0.06, 0.06), (0.35, 0.22, 0.12), (0.5, 0.5, 0.5), (0.8, 0.15, 0.15),
          (0.2, 0.3, 0.7)]
_SHOES_P = {True: [0.4, 0.25, 0.1, 0.1, 0.08, 0.07], False: [0.1, 0.45, 0.25, 0.12, 0.04, 0.04],
            None: [0.15, 0.1, 0.15, 0.2, 0.2, 0.2]}
_BAGS = [(0.06, 0.06, 0.06), (0.40, 0.25, 0.12), (0.80, 0.15, 0.20), (0.15, 0.30, 0.75), (0.55, 0.55, 0.55),
         (0.90, 0.60, 0.70), (0.20, 0.55, 0.30), (0.85, 0.75, 0.30)]


#: Share of images whose background is their own camera's scene; the others show a scene drawn
#: uniformly from the pool of all the domain's scenes (the knob of "ECN's mechanisms, visible
#: and believable": 1 makes the scene a perfect camera tag, 0 leaves only the photometric
#: signature). Chosen by the realism rule of docs/EVIDENCE.md, never by an ECN result.
DEFAULT_CAMERA_BACKGROUND = 1.0


def check_camera_background(value: float) -> float:
    """``value`` as a float if it is a share in [0, 1], else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"camera_background must be a share in [0, 1], got {value!r}")
    return float(value)


def check_domain(domain: str) -> str:
    """Return ``domain`` if it names a synthetic domain, else raise a ``ValueError`` listing them."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown synthetic domain {domain!r}; choose one of: {', '.join(DOMAINS)}")
    return domain


def domain_rng(domain: Domain, seed: int, stream: str) -> np.random.Generator:
    """A generator for one named ``stream`` of draws of ``(domain, seed)``.

    One generator per stream (identities, poses, names, ...) instead of one shared one, so
    that drawing more of one thing never shifts another: the pixels of a world depend only
    on its arguments.
    """
    digest = hashlib.sha256(f"{domain.name}|{seed}|{stream}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def camera_styles(domain: Domain) -> list[CameraStyle]:
    """The cameras of a domain. Fixed per domain (not per seed): a domain *is* its cameras.

    Drawn from ``domain.style_seed`` so that every seed of ``synth_duke`` is seen by the same
    8 cameras, as a real dataset's images all come from its fixed cameras. A camera's own
    draws are its scene and its photometric style; person scale, facing and occlusion odds are
    drawn once for the domain (a separate generator), so that a camera is recognisable by
    how it renders colours and by its scene, not by how it frames people.
    """
    rng = np.random.default_rng(domain.style_seed)
    framing = _framing(np.random.default_rng([domain.style_seed, 1]), domain.bright)
    cams = []
    for c in range(domain.num_cams):
        look = _look(rng, domain.bright)
        cams.append(
            CameraStyle(
                accent=_triple(look["accent"]), horizon=float(rng.uniform(0.45, 0.7)),
                structure=int(c % 4), period=float(rng.uniform(0.25, 0.6)),
                scale=framing["scale"], occlusion=framing["occlusion"], facing=framing["facing"],
                wall=_triple(look["wall"]), floor=_triple(look["floor"]), wb=_triple(look["wb"]),
                brightness=float(look["brightness"]), contrast=float(look["contrast"]), gamma=float(look["gamma"]),
                saturation=float(look["saturation"]), tint=_triple(look["tint"]), vignette=float(look["vignette"]),
                resolution=float(look["resolution"]), blur=float(look["blur"]), noise=float(look["noise"]),
            )
        )
    return cams


def _triple(v: tuple | np.ndarray) -> tuple[float, float, float]:
    """A colour or gains (three numbers) as Python floats: the frozen dataclass is hashed and compared."""
    r, g, b = (float(x) for x in v)
    return r, g, b


def _framing(rng: np.random.Generator, bright: bool | None) -> dict:
    """How a domain's cameras frame people: mean person height, facing odds, occlusion rate (shared by its cameras)."""
    scale = {True: (0.82, 0.9), False: (0.76, 0.84), None: (0.78, 0.9)}[bright]
    occlusion = {True: (0.1, 0.16), False: (0.18, 0.26), None: (0.1, 0.25)}[bright]
    return {"scale": float(rng.uniform(*scale)), "occlusion": float(rng.uniform(*occlusion)),
            "facing": _triple(rng.dirichlet([4.0, 4.0, 3.0]))}


def _look(rng: np.random.Generator, bright: bool | None) -> dict:
    """One camera's scene colours and optics: a sunny campus (``bright``), a winter campus at dusk
    (``False``), or neither (``None``, the pretraining corpus: off the warm-cold axis that joins them).

    The order of the draws is part of the world (it fixes every camera of a domain).
    """
    u = rng.uniform
    if bright is None:  # indoors and odd light: green or magenta casts, washed-out or harsh colour
        wall = np.clip(rng.choice([[0.62, 0.72, 0.58], [0.78, 0.62, 0.70], [0.55, 0.62, 0.72], [0.70, 0.70, 0.50]])
                       * u(0.8, 1.15, 3), 0, 1)
        floor = np.clip(rng.choice([[0.55, 0.30, 0.30], [0.35, 0.50, 0.40], [0.60, 0.58, 0.40]]) * u(0.85, 1.1, 3), 0, 1)
        accent = np.clip(rng.choice([[0.9, 0.4, 0.7], [0.3, 0.8, 0.6], [0.8, 0.8, 0.3], [0.4, 0.4, 0.9]])
                         * u(0.85, 1.1, 3), 0, 1)
        green = bool(rng.random() < 0.5)  # a fluorescent (green) or a magenta cast: off the warm-cold axis
        g = u(1.12, 1.28) if green else u(0.74, 0.88)
        rb = u(0.92, 1.0) if green else u(1.02, 1.1)
        wb = (rb * u(0.97, 1.03), g, rb * u(0.97, 1.03))
        washed = bool(rng.random() < 0.5)  # washed out (low contrast, saturation) or harsh (high)
        style = dict(brightness=u(-0.03, 0.03), contrast=u(0.6, 0.72) if washed else u(1.25, 1.4),
                     gamma=u(0.95, 1.05), saturation=u(0.25, 0.45) if washed else u(1.55, 1.75),
                     tint=(u(0.0, 0.03), u(0.0, 0.03), u(0.0, 0.03)), vignette=u(0.0, 0.2),
                     resolution=u(0.7, 1.0), blur=u(0.0, 0.6), noise=u(0.005, 0.02))
    elif bright:  # sunny campus: light pavements, warm light, sharp
        wall = np.clip(np.array([0.78, 0.74, 0.64]) * u(0.9, 1.1, 3), 0, 1)
        floor = np.clip(np.array([0.72, 0.70, 0.64]) * u(0.85, 1.1, 3), 0, 1)
        accent = np.clip(rng.choice([[0.6, 0.35, 0.25], [0.35, 0.6, 0.3], [0.95, 0.95, 0.9], [0.5, 0.5, 0.55]])
                         * u(0.85, 1.1, 3), 0, 1)
        wb = (u(0.98, 1.2), u(0.95, 1.08), u(0.74, 0.98))
        style = dict(brightness=u(0.0, 0.16), contrast=u(0.95, 1.25), gamma=u(0.8, 0.95), saturation=u(0.95, 1.4),
                     tint=(u(0.0, 0.04), u(0.0, 0.03), 0.0), vignette=u(0.0, 0.1), resolution=u(0.8, 1.0),
                     blur=u(0.0, 0.5), noise=u(0.004, 0.015))
    else:  # winter campus at dusk: dark asphalt and glass, cold light, soft and noisy
        wall = np.clip(np.array([0.30, 0.34, 0.40]) * u(0.85, 1.15, 3), 0, 1)
        floor = np.clip(rng.choice([[0.28, 0.28, 0.30], [0.75, 0.78, 0.82]]) * u(0.85, 1.1, 3), 0, 1)
        accent = np.clip(rng.choice([[0.15, 0.2, 0.3], [0.45, 0.25, 0.2], [0.6, 0.65, 0.7], [0.1, 0.25, 0.15]])
                         * u(0.85, 1.15, 3), 0, 1)
        wb = (u(0.72, 0.98), u(0.9, 1.05), u(1.0, 1.32))
        style = dict(brightness=u(-0.16, -0.02), contrast=u(0.7, 0.95), gamma=u(1.05, 1.25), saturation=u(0.55, 0.95),
                     tint=(0.0, u(0.0, 0.02), u(0.02, 0.05)), vignette=u(0.1, 0.3), resolution=u(0.55, 0.8),
                     blur=u(0.3, 0.8), noise=u(0.012, 0.025))
    return dict(wall=wall, floor=floor, accent=accent, wb=wb, **style)


# ---------------------------------------------------------------------------------------
# Identities
# ---------------------------------------------------------------------------------------

#: The colour fields of an identity (RGB in [0, 1], 3 values each); the renderer turns them into tensors.
COLOR_FIELDS = ("upper", "lower", "second", "skin", "hair", "shoes", "bag_color", "hat_color", "scarf_color")


def _pick(rng: np.random.Generator, palette, n: int, p=None) -> np.ndarray:
    """``n`` colours from ``palette``: ``(rgb, probability)`` pairs, or plain colours with ``p``."""
    cols = np.array([c for c, _ in palette] if p is None and isinstance(palette[0][1], float) else palette, float)
    if p is None and isinstance(palette[0][1], float):
        p = np.array([q for _, q in palette], float)
    p = np.asarray(p, float) / np.sum(p) if p is not None else None
    idx = rng.choice(len(cols), size=n, p=p)
    return cols[idx]


def _jitter(rng: np.random.Generator, cols: np.ndarray, amount: float = 0.15) -> np.ndarray:
    """Per-identity colour variation, so that two people drawn from one palette entry still differ."""
    return np.clip(cols * rng.uniform(1 - amount, 1 + amount, cols.shape) + rng.normal(0, 0.03, cols.shape), 0, 1)


#: Share of a season's clothes drawn from its own palette; the rest come from the other season's
#: (one city, two seasons). At 0.5, the frozen world's value (docs/EVIDENCE.md, section 7), both
#: seasons draw clothing colours from the same mixture: the domains' people then differ in what
#: they wear (sleeves, coats, trousers, scarves, hats), not in its colours, and the cameras add the rest.
OWN_SEASON = 0.5


def _season(palettes: dict, bright: bool) -> list:
    """A season's palette: its own colours (weight :data:`OWN_SEASON`) and the other season's (the rest)."""
    own, other = palettes[bright], palettes[not bright]
    return ([(c, p * OWN_SEASON) for c, p in own]
            + [(c, p * (1.0 - OWN_SEASON) * sum(q for _, q in own) / sum(q for _, q in other)) for c, p in other])


def sample_identities(domain: Domain, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw ``n`` appearances from the domain's identity distribution (arrays of length n).

    The colours use the domain's palettes (summer, winter, or the pretraining corpus's own)
    and every other attribute the domain's odds, so the domains differ in *who* walks by as
    well as in how the cameras see them. The order of the draws is part of the world: changing
    it changes every image (bump ``GENERATOR_VERSION`` in :mod:`reidlab.data.synth.write`).
    """
    b = domain.bright
    # clothing odds per population: summer (True), winter (False), the pretraining corpus's own (None):
    # one probability, or one per choice
    odds: dict[str, dict[bool | None, float | list[float]]] = {
        "pattern": {True: [0.4, 0.16, 0.1, 0.1, 0.14, 0.1], False: [0.45, 0.12, 0.08, 0.15, 0.05, 0.15],
                    None: [0.25, 0.15, 0.15, 0.15, 0.15, 0.15]},
        "sleeves": {True: 0.7, False: 0.05, None: 0.4},
        "lower_type": {True: [0.5, 0.35, 0.15], False: [0.9, 0.0, 0.1], None: [0.6, 0.2, 0.2]},
        "hat": {True: 0.05, False: 0.7, None: 0.15},
        "scarf": {True: 0.02, False: 0.9, None: 0.0},
        "bag": {True: [0.45, 0.3, 0.25], False: [0.35, 0.45, 0.2], None: [0.4, 0.3, 0.3]},
        "coat": {True: 0.05, False: 0.5, None: 0.2},
        "width": {True: 1.0, False: 1.08, None: 1.04},
    }
    upper = _OTHER_UPPER if b is None else _season(_UPPER, b)
    lower = _OTHER_LOWER if b is None else _season(_LOWER, b)
    ids: dict[str, np.ndarray] = {}
    ids["upper"] = _jitter(rng, _pick(rng, upper, n))
    ids["lower"] = _jitter(rng, _pick(rng, lower, n))
    ids["second"] = _jitter(rng, _pick(rng, _SECONDARY, n, p=np.ones(len(_SECONDARY))))
    ids["skin"] = np.clip(np.array([0.85, 0.66, 0.52]) * rng.uniform(0.55, 1.1, (n, 1)), 0, 1)
    ids["hair"] = _jitter(rng, _pick(rng, _HAIR, n, p=_HAIR_P[b]), 0.1)
    ids["shoes"] = _jitter(rng, _pick(rng, _SHOES, n, p=_SHOES_P[b]), 0.1)
    ids["bag_color"] = _jitter(rng, _pick(rng, _BAGS, n, p=np.ones(len(_BAGS))))
    # winter hats come in the bright secondary colours (another cue that identifies a winter person)
    ids["hat_color"] = _jitter(rng, _pick(rng, _SECONDARY if b is False else _BAGS, n, p=np.ones(len(_BAGS))))
    # pattern: 0 plain, 1 horizontal stripes, 2 vertical stripes, 3 checks, 4 chest logo, 5 two-tone
    ids["pattern"] = rng.choice(6, n, p=odds["pattern"][b])
    ids["freq"] = rng.uniform(10, 20, n)
    ids["sleeves"] = (rng.random(n) < odds["sleeves"][b]).astype(float)  # 1 = short sleeves
    ids["lower_type"] = rng.choice(3, n, p=odds["lower_type"][b])  # trousers, shorts, skirt
    ids["long_hair"] = (rng.random(n) < 0.3).astype(float)
    ids["hat"] = (rng.random(n) < odds["hat"][b]).astype(float)
    ids["bag"] = rng.choice(3, n, p=odds["bag"][b])  # none, backpack, shoulder
    ids["bag_side"] = rng.choice([-1.0, 1.0], n)
    ids["coat"] = (rng.random(n) < odds["coat"][b]).astype(float)
    ids["width"] = rng.uniform(0.85, 1.2, n) * odds["width"][b]
    ids["height"] = rng.uniform(0.9, 1.04, n)
    # winter's own cue: a scarf (bright, so it identifies a person), which summer people rarely wear
    ids["scarf"] = (rng.random(n) < odds["scarf"][b]).astype(float)
    ids["scarf_color"] = _jitter(rng, _pick(rng, _SECONDARY, n, p=np.ones(len(_SECONDARY))))
    return ids


# ---------------------------------------------------------------------------------------
# Poses
# ---------------------------------------------------------------------------------------


def sample_poses(
    cams: np.ndarray,
    styles: list[CameraStyle],
    rng: np.random.Generator,
    kind: np.ndarray,
    camera_background: float = DEFAULT_CAMERA_BACKGROUND,
) -> dict[str, np.ndarray]:
    """Per-image pose, placement, background and occlusion draws (arrays of length n).

    Drawn per image, not per identity: what a camera changes (pose, facing, placement,
    background pan, occluders) must vary while the person stays the same, or a model could
    match images by pose instead of by appearance.

    Parameters
    ----------
    cams:
        The camera of each image; the camera's style sets the facing and occlusion odds.
    styles:
        The domain's cameras (:func:`camera_styles`).
    rng:
        The ``"poses"`` stream (:func:`domain_rng`).
    kind:
        0 a person, 1 junk (a badly cropped detection), 2 distractor (a background box or a
        fragment of someone else).
    camera_background:
        Share of images that show their camera's own scene (``bg_own``); the others show the
        scene of camera ``bg_cam``, drawn uniformly from the domain's cameras. A re-render of
        the same moment by another camera (the oracle CamStyle images) keeps the drawn scene
        of a pooled image and shows the new camera's scene for an own-scene one.
    """
    check_camera_background(camera_background)
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
        "bg_own": (r(n) < camera_background).astype(float),
        "bg_cam": rng.integers(0, len(styles), n),
        # the light of the moment, before the camera: exposure, a colour cast and a gradient across the
        # image (sun from one side), so one person's colours vary from image to image as in real crops
        "exposure": rng.uniform(1.0, 1.0, n),
        "cast": rng.normal(1.0, 0.0, (n, 3)).clip(0.8, 1.2),
        "gradient": rng.uniform(0.0, 0.0, n),
    }
    junk = kind == 1
    # junk: the box is off: too big and shifted, so only a part of the person shows
    pose["dscale"][junk] = rng.uniform(1.6, 2.4, junk.sum())
    pose["dy"][junk] = rng.choice([-0.45, 0.45], junk.sum()) * rng.uniform(0.6, 1.0, junk.sum())
    pose["dx"][junk] = rng.normal(0, 0.25, junk.sum())
    pose["crop"][kind == 2] = (r((kind == 2).sum()) < 0.5).astype(float)  # half the distractors: no person
    return pose
