"""How the synthetic re-ID world is drawn: shapes, people, backgrounds, occluders, cameras.

Rendering is vectorised: every shape is a signed-distance function evaluated with PyTorch
over a batch of images at once (anti-aliased by a one-pixel ramp), then composited back to
front on a :class:`Canvas`. A batch is drawn in two steps, because the *oracle* CamStyle
images (an ablation, ``bounding_box_train_camstyle_oracle/``) need the same person seen by
every camera:

1. :func:`render_person_layer` paints the people on a transparent layer (colour premultiplied
   by coverage, plus transmittance);
2. :func:`render_view` lays that layer over one camera's background, adds occluders and
   applies the camera's style (white balance, brightness, contrast, gamma, saturation, tint,
   vignetting, resolution loss, blur, sensor noise).

What is drawn (identities, poses, cameras) comes from :mod:`reidlab.data.synth.world`;
:mod:`reidlab.data.synth.write` calls these functions to write a tree, and
:func:`render_identities` draws a preview without touching the disk (notebook 00). The
CamStyle images proper are not rendered here: :mod:`reidlab.data.synth.restyle` makes them
from the finished image, as a GAN does, with the camera helpers below
(:func:`background_template`, :func:`vignette_map`, :func:`blur_passes`).
The same inputs give the same pixels: the only randomness here is the sensor noise, drawn
from a generator seeded by the caller.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .world import (
    COLOR_FIELDS,
    DOMAINS,
    CameraStyle,
    camera_styles,
    check_domain,
    domain_rng,
    sample_identities,
    sample_poses,
)

__all__ = [
    "Canvas",
    "render_person_layer",
    "render_view",
    "render_batch",
    "render_identities",
    "one_torch_thread",
    "background_template",
    "vignette_map",
    "blur_passes",
]


class Canvas:
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
    """One number per image as a ``(B,1,1)`` float32 tensor, to broadcast over the pixel grid."""
    return torch.as_tensor(np.asarray(x, dtype=np.float32)).view(-1, 1, 1)


def _col(x: np.ndarray) -> torch.Tensor:
    """One RGB colour per image as a ``(B,3,1,1)`` float32 tensor."""
    return torch.as_tensor(np.asarray(x, dtype=np.float32)).view(-1, 3, 1, 1)


def _cover(d_px: torch.Tensor) -> torch.Tensor:
    """Anti-aliased coverage from a signed distance in pixels (negative inside)."""
    return (0.5 - d_px).clamp_(0.0, 1.0)


# Signed distances (negative inside) of the shapes a person is made of, in the units of
# (u, v); all arguments broadcast, so one call draws a shape in every image of the batch.


def _ellipse(u, v, cu, cv, ru, rv):
    """Approximate distance to the ellipse of centre (cu, cv) and radii (ru, rv)."""
    return (torch.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2) - 1.0) * torch.minimum(ru, rv)


def _box(u, v, u0, u1, v0, v1):
    """Distance to the axis-aligned box [u0, u1] x [v0, v1]."""
    return torch.maximum(torch.maximum(u0 - u, u - u1), torch.maximum(v0 - v, v - v1))


def _capsule(u, v, au, av, bu, bv, r):
    """Distance to the segment a-b thickened by ``r`` (a limb), and the position ``t`` along it.

    ``t`` (0 at ``a``, 1 at ``b``) lets a part colour only a stretch of the limb: skin below
    the knee for shorts, a forearm below a short sleeve.
    """
    du, dv = bu - au, bv - av
    pu, pv = u - au, v - av
    t = ((pu * du + pv * dv) / (du * du + dv * dv + 1e-8)).clamp_(0.0, 1.0)
    d = torch.sqrt((pu - t * du) ** 2 + (pv - t * dv) ** 2) - r
    return d, t


_BG_CACHE: dict[tuple, torch.Tensor] = {}


def background_template(style: CameraStyle, H: int, W: int) -> torch.Tensor:
    """The camera's background, twice as wide as an image, ``(3, H, 2W)``; cached.

    Each image shows a window of it (:func:`_render_background`); its mean over the width, the
    camera's average background colour at each height, is what the style transfer of
    :mod:`reidlab.data.synth.restyle` tints backgrounds towards.
    """
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


def _render_background(
    cv: Canvas, style: CameraStyle, pose: dict[str, np.ndarray], scenes: list[CameraStyle] | None = None
) -> None:
    """Fill ``cv`` with each image's scene, panned and lit per image, plus a clutter blob.

    The scene is the viewing camera's own (``style``) for an image with ``pose['bg_own']``, and
    ``scenes[pose['bg_cam']]`` (a scene from the domain's pool) otherwise; without ``scenes``
    every image shows ``style``'s scene. The pan and gain vary per image so that a model
    cannot recognise a camera (or worse, an identity) by a fixed background patch.
    """
    B, H, W = cv.B, cv.H, cv.W
    candidates = [style] + (list(scenes) if scenes is not None else [])
    if scenes is not None and "bg_own" in pose:
        which = np.where(pose["bg_own"] > 0, 0, 1 + np.asarray(pose["bg_cam"], dtype=np.int64))
    else:
        which = np.zeros(B, dtype=np.int64)
    used = sorted(set(which.tolist()))
    templates = torch.stack([background_template(candidates[i], H, W) for i in used])  # (S, 3, H, 2W)
    sel = torch.as_tensor(np.searchsorted(used, which))
    shift = torch.as_tensor((pose["bg_shift"] * W).astype(np.int64))  # per-image pan of the camera
    idx = (shift.view(B, 1) + torch.arange(W).view(1, W)).view(B, 1, 1, W).expand(B, 3, H, W)
    cv.img = torch.gather(templates[sel], 3, idx).mul_(_t(pose["bg_gain"]).unsqueeze(1))
    # clutter: a poster / parked thing / passer-by blob on the wall
    cx0 = _t(pose["clutter_x"]) * W
    cw = _t(pose["clutter_w"]) * W
    horizon = np.array([candidates[i].horizon for i in which])
    d = _box(cv.X, cv.Y, cx0 - cw / 2, cx0 + cw / 2, _t(np.full(B, 0.2)) * H, _t(horizon) * H)
    col = _col(np.stack([pose["clutter_r"], pose["clutter_g"], pose["clutter_b"]], 1) * 0.8 + 0.1)
    cv.paint(_cover(d).mul_(_t(pose["clutter"]) * 0.9), col)


@dataclass
class _Body:
    """A batch of people in body coordinates, and the one way to paint a part of them.

    ``u`` and ``v`` are the pixel grid in units of each person's height (``u`` across, 0 on
    the body's axis; ``v`` down, 0 at the top of the head), so every part below is written
    once, for any image size, placement and build. The part painters run back to front.
    """

    cv: Canvas
    ids: dict[str, np.ndarray]
    pose: dict[str, np.ndarray]
    u: torch.Tensor  # (B,1,W)
    v: torch.Tensor  # (B,H,1)
    ph: torch.Tensor  # person height in pixels, (B,1,1)
    present: torch.Tensor  # 0 where a distractor box shows no person
    front: torch.Tensor
    back: torch.Tensor
    side: torch.Tensor
    d: torch.Tensor  # side view: +1 walks to the right
    bw: torch.Tensor  # build (width)
    phase: torch.Tensor  # walking phase
    coat: torch.Tensor
    torso_w: torch.Tensor
    waist: torch.Tensor
    col: dict[str, torch.Tensor]
    half: torch.Tensor

    def paint(self, dist, color, mask=None, region=None) -> None:
        """Paint a part with signed distance ``dist`` (in person heights) in ``color``.

        ``mask`` (B,1,1) says which images show the part, ``region`` (full size) which pixels
        of the shape it covers; a part no image of the batch shows costs nothing.
        """
        m = self.present if mask is None else self.present * mask  # (B,1,1): cheap
        if not bool(m.any()):
            return  # no image of this batch shows the part
        a = torch.addcmul(self.half, dist, self.ph, value=-1.0).clamp_(0.0, 1.0).mul_(m)
        if region is not None:  # a part of the shape only (full-size mask)
            a.mul_(region)
        self.cv.paint(a, color)


def _body(cv: Canvas, ids: dict[str, np.ndarray], pose: dict[str, np.ndarray], scale: np.ndarray) -> _Body:
    """Place each person of the batch: height, centre, facing, build, and colours as tensors."""
    H, W = cv.H, cv.W
    ph = _t(scale * ids["height"] * pose["dscale"] * H)  # person height in pixels
    cx = _t(W / 2 + pose["dx"] * W)
    top = (H - ph) / 2 + _t(pose["dy"] * H)
    facing = pose["facing"]
    front, back, side = (_t((facing == k).astype(float)) for k in range(3))
    bw = _t(ids["width"])
    coat = _t(ids["coat"])
    return _Body(
        cv=cv, ids=ids, pose=pose,
        u=(cv.X - cx) / ph, v=(cv.Y - top) / ph, ph=ph, present=_t(1.0 - pose["crop"]),
        front=front, back=back, side=side, d=_t(pose["direction"]), bw=bw, phase=_t(pose["phase"]), coat=coat,
        torso_w=0.1 * bw * torch.where(side > 0, torch.full_like(bw, 0.72), torch.ones_like(bw)),
        waist=0.52 + 0.08 * coat,
        col={k: _col(ids[k]) for k in COLOR_FIELDS},
        half=torch.tensor(0.5),
    )


def _paint_behind(b: _Body) -> None:
    """What lies behind the body: the shadow, long hair, a backpack seen from the side."""
    u, v, bw, side, d, col, paint = b.u, b.v, b.bw, b.side, b.d, b.col, b.paint
    # shadow on the ground
    paint(_ellipse(u, v, 0.0, 0.975, 0.16 * bw, 0.02 + 0 * bw), torch.zeros(b.cv.B, 3, 1, 1))
    # long hair behind the body (seen at the sides from the front)
    long_hair = _t(b.ids["long_hair"])
    paint(_box(u, v, -0.055 * bw, 0.055 * bw, 0.07, 0.26 + 0 * bw), col["hair"], long_hair * (1 - side))
    # backpack seen from the side: behind the torso
    backpack = _t((b.ids["bag"] == 1).astype(float))
    pack_a, pack_b = -d * b.torso_w, -d * (b.torso_w + 0.075)
    paint(_box(u, v, torch.minimum(pack_a, pack_b), torch.maximum(pack_a, pack_b), 0.18 + 0 * bw, 0.43 + 0 * bw),
          col["bag_color"], backpack * side)


def _paint_legs(b: _Body) -> None:
    """Legs (trousers, or skin below the knee for shorts), shoes, and a skirt over the legs."""
    u, v, bw, side, d, col, paint = b.u, b.v, b.bw, b.side, b.d, b.col, b.paint
    hip_v = b.waist - 0.02
    ankle_v = 0.93
    lower_type = b.ids["lower_type"]
    shorts = _t((lower_type == 1).astype(float))
    skirt = _t((lower_type == 2).astype(float))
    for leg in (0, 1):
        s = 1.0 if leg == 0 else -1.0
        swing = torch.sin(b.phase + leg * math.pi)
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


def _paint_torso(b: _Body) -> None:
    """The torso with its pattern (stripes, checks, a logo seen only from the front, two-tone), lit from a side."""
    u, v, bw, coat, col = b.u, b.v, b.bw, b.coat, b.col
    tw = b.torso_w * (1.0 - 0.15 * (v - 0.15).clamp(0, 0.5) / 0.4) * (1 + 0.1 * coat)
    torso_d = torch.maximum(torch.abs(u) - tw, torch.maximum(0.15 - v, v - b.waist))
    pattern = b.ids["pattern"]
    freq = _t(b.ids["freq"])
    pu, pv = u / (0.1 * bw), (v - 0.15) * freq
    stripes_h = ((pv % 1.0) < 0.5).float()
    stripes_v = (((pu * 2.5 + 10) % 1.0) < 0.5).float()
    checks = (stripes_h != (((pu * 2.0 + 10) % 1.0) < 0.5).float()).float()
    logo = ((torch.abs(u) < 0.04 * bw) & (v > 0.21) & (v < 0.29)).float() * b.front
    twotone = (v < 0.24).float()
    sel = [_t((pattern == k).astype(float)) for k in range(6)]
    second_mask = sel[1] * stripes_h + sel[2] * stripes_v + sel[3] * checks + sel[4] * logo + sel[5] * twotone
    light = _t(b.pose["light"])
    shading = (1.0 - 0.18 * light * (u / (0.1 * bw)).clamp(-1, 1) - 0.1 * (v - 0.3)).unsqueeze(1)
    torso_col = torch.lerp(col["upper"].expand(b.cv.B, 3, 1, 1), col["second"], second_mask.unsqueeze(1)) * shading
    b.paint(torso_d, torso_col)


def _paint_bags(b: _Body) -> None:
    """A backpack (a block from the back, two straps from the front) or a shoulder bag and its strap."""
    u, v, bw, side, col, paint = b.u, b.v, b.bw, b.side, b.col, b.paint
    ids, pose = b.ids, b.pose
    backpack = _t((ids["bag"] == 1).astype(float))
    shoulder = _t((ids["bag"] == 2).astype(float))
    bag_s = _t(ids["bag_side"])
    # backpack from the back: a block on the torso; from the front: two straps
    paint(_box(u, v, -0.075 * bw, 0.075 * bw, 0.19 + 0 * bw, 0.44 + 0 * bw), col["bag_color"] * 0.9, backpack * b.back)
    strap = torch.minimum(torch.abs(u - 0.05 * bw), torch.abs(u + 0.05 * bw)) - 0.012
    paint(torch.maximum(strap, torch.maximum(0.15 - v, v - 0.36)), col["bag_color"], backpack * b.front)
    # shoulder bag: in front/back views on the image side of the bag; strap across the chest
    img_side = torch.where(b.back > 0, bag_s, -bag_s)
    strap_d, _ = _capsule(u, v, -img_side * 0.07 * bw, 0.16 + 0 * bw, img_side * 0.1 * bw, 0.45 + 0 * bw, 0.008 + 0 * bw)
    paint(strap_d, col["bag_color"], shoulder * (1 - side))
    bag_u = img_side * (b.torso_w + 0.03) * (1 - side)  # side view: at the hip, over the body
    sidef = pose["facing"] == 2
    on_near_side = _t(np.where(sidef, (ids["bag_side"] == -pose["direction"]).astype(float), 1.0))
    paint(_box(u, v, bag_u - 0.05, bag_u + 0.05, 0.42 + 0 * bw, 0.57 + 0 * bw), col["bag_color"], shoulder * on_near_side)


def _paint_scarf(b: _Body) -> None:
    """A scarf round the neck, hanging down the chest from the front (winter's own identity cue)."""
    u, v, bw, paint = b.u, b.v, b.bw, b.paint
    scarf = _t(b.ids["scarf"])
    paint(_box(u, v, -0.075 * bw, 0.075 * bw, 0.125 + 0 * bw, 0.2 + 0 * bw), b.col["scarf_color"], scarf)
    paint(_box(u, v, -0.01 * bw, 0.06 * bw, 0.18 + 0 * bw, 0.36 + 0 * bw), b.col["scarf_color"] * 0.9, scarf * b.front)


def _paint_arms(b: _Body) -> None:
    """Arms: the upper arm in the sleeve colour, the forearm in skin for short sleeves (one arm from the side)."""
    u, v, bw, side, d, col, paint = b.u, b.v, b.bw, b.side, b.d, b.col, b.paint
    sleeves = _t(b.ids["sleeves"])
    for arm in (0, 1):
        s = 1.0 if arm == 0 else -1.0
        swing = torch.sin(b.phase + arm * math.pi)
        sh_u = s * (b.torso_w + 0.018) * (1 - side)
        hand_u = s * (b.torso_w + 0.03) * (1 - side) - side * d * 0.1 * swing
        vis = (1 - side) + side * (arm == 0)  # one arm in a side view
        dist, t = _capsule(u, v, sh_u, 0.17 + 0 * bw, hand_u, 0.47 + 0.04 * b.coat, 0.026 * bw)
        paint(dist, col["upper"] * 0.92, vis)
        # forearm (short sleeves) or just the hand (long sleeves) in skin colour
        cut = 0.92 - (0.92 - 0.4) * sleeves
        paint(dist, col["skin"], vis, (t > cut).float())


def _paint_head(b: _Body) -> None:
    """The head, the hair (all of it from the back, a cap and sides from the front) and a hat."""
    u, v, bw, side, d, col, paint = b.u, b.v, b.bw, b.side, b.d, b.col, b.paint
    head_u = side * d * 0.01
    head_d = _ellipse(u, v, head_u, 0.075 + 0 * bw, 0.05 + 0 * bw, 0.066 + 0 * bw)
    paint(head_d, col["skin"])
    hair_cut = torch.where(
        b.back > 0,
        torch.ones_like(v * u),
        ((v < 0.05) | ((side > 0) & ((u - head_u) * d < -0.005)) | ((side == 0) & (torch.abs(u) > 0.038))).float(),
    )
    paint(head_d, col["hair"], hair_cut)
    hat = _t(b.ids["hat"])
    paint(torch.maximum(head_d, v - 0.045), col["hat_color"], hat)
    paint(_box(u, v, -0.055 + 0 * bw, 0.055 + 0 * bw, 0.035 + 0 * bw, 0.05 + 0 * bw), col["hat_color"], hat)


#: The part painters of a person, back to front (a later part covers an earlier one).
_PARTS = (_paint_behind, _paint_legs, _paint_torso, _paint_bags, _paint_scarf, _paint_arms, _paint_head)


def _render_person(cv: Canvas, ids: dict[str, np.ndarray], pose: dict[str, np.ndarray], scale: np.ndarray) -> None:
    """Paint one person per image of the batch onto ``cv``, part by part, back to front."""
    body = _body(cv, ids, pose, scale)
    for part in _PARTS:
        part(body)


def _render_occluder(cv: Canvas, pose: dict[str, np.ndarray]) -> None:
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


def _light(cv: Canvas, pose: dict[str, np.ndarray]) -> None:
    """The light of the moment on the whole scene: exposure, a colour cast and a left-right gradient.

    Drawn per image (:func:`~reidlab.data.synth.world.sample_poses`), before the camera's own
    style: it is what makes one person's colours differ from image to image within a camera.
    """
    if "exposure" not in pose:
        return
    x = (cv.X / cv.W - 0.5)  # (1, 1, W) in [-0.5, 0.5]
    gain = (1.0 + _t(pose["gradient"]) * x) * _t(pose["exposure"])  # (B, 1, W)
    cv.img.mul_(gain.unsqueeze(1)).mul_(_col(pose["cast"])).clamp_(0.0, 1.0)


_VIGNETTE: dict[tuple[int, int], torch.Tensor] = {}


def vignette_map(H: int, W: int) -> torch.Tensor:
    """``(H, W)``: twice the squared distance from the image centre (0 there, 1 in a corner); cached.

    A camera darkens pixel ``p`` by ``1 - style.vignette * vignette_map[p]``.
    """
    if (H, W) not in _VIGNETTE:
        yy = (torch.arange(H, dtype=torch.float32) + 0.5) / H - 0.5
        xx = (torch.arange(W, dtype=torch.float32) + 0.5) / W - 0.5
        _VIGNETTE[(H, W)] = 2.0 * (yy.view(-1, 1) ** 2 + xx.view(1, -1) ** 2)
    return _VIGNETTE[(H, W)]


def blur_passes(blur: float, H: int) -> int:
    """How many 3x3 box-filter passes make a Gaussian blur of ``blur`` pixels (at 128x64) at height ``H``."""
    return int(round(1.5 * (blur * (H / 128.0)) ** 2))  # a 3x3 box filter has variance 2/3 per axis


def _box_blur(x: torch.Tensor, passes: int) -> torch.Tensor:
    """``passes`` 3x3 box filters over ``x`` (B,C,H,W), edges replicated: about a Gaussian blur."""
    for _ in range(passes):
        x = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return x


def _lose_resolution(x: torch.Tensor, resolution: float) -> torch.Tensor:
    """Down-sample ``x`` (B,C,H,W) by ``resolution`` (area) and up again (bilinear): a low-resolution sensor."""
    if resolution >= 0.999:
        return x
    H, W = x.shape[-2:]
    h2, w2 = max(4, round(H * resolution)), max(2, round(W * resolution))
    x = F.interpolate(x, size=(h2, w2), mode="area")
    return F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False)


def _apply_style(img: torch.Tensor, style: CameraStyle, gen: torch.Generator) -> torch.Tensor:
    """The camera: white balance, contrast/brightness, gamma, saturation, tint, vignette,
    resolution loss, blur, noise (in that order, on a batch seen by one camera).

    :mod:`reidlab.data.synth.restyle` inverts the colour steps (approximately) to move an
    image from one camera to another, as a CamStyle GAN does.
    """
    H, W = img.shape[-2:]
    gain = torch.tensor(style.wb).view(1, 3, 1, 1) * style.contrast
    x = torch.addcmul(torch.tensor(0.5 - 0.5 * style.contrast + style.brightness), img, gain)
    x.clamp_(0.0, 1.0).pow_(style.gamma)
    gray = x.mean(1, keepdim=True)
    x.sub_(gray).mul_(style.saturation).add_(gray)
    x.mul_(1.0 - style.vignette * vignette_map(H, W)).add_(torch.tensor(style.tint).view(1, 3, 1, 1))
    x = _box_blur(_lose_resolution(x, style.resolution), blur_passes(style.blur, H))
    noise = torch.rand(x.shape, generator=gen).sub_(0.5).mul_(style.noise * math.sqrt(12.0))  # std = style.noise
    return x.add_(noise).clamp_(0.0, 1.0)


def render_person_layer(
    ids: dict[str, np.ndarray], pose: dict[str, np.ndarray], scale: float | np.ndarray, size: tuple[int, int]
) -> Canvas:
    """The people of a batch on a transparent layer (see :class:`Canvas`).

    Drawn once and laid over several cameras' backgrounds by :func:`render_view`: that is
    what makes a CamStyle image show the same person, pose and placement as its original.
    ``scale`` is the mean person height as a fraction of the image height (the camera's
    :attr:`~reidlab.data.synth.world.CameraStyle.scale`), one value or one per image.
    """
    B = len(pose["phase"])
    layer = Canvas(B, *size, layer=True)
    _render_person(layer, ids, pose, np.broadcast_to(np.asarray(scale, float), (B,)))
    return layer


def render_view(
    layer: Canvas,
    pose: dict[str, np.ndarray],
    style: CameraStyle,
    noise_seed: int,
    scenes: list[CameraStyle] | None = None,
) -> np.ndarray:
    """Lay a person layer over its scene, add occluders, apply the camera's style.

    Returns uint8 images ``(B, H, W, 3)``. ``scenes`` is the domain's pool of scenes (its
    cameras): an image whose pose says it shows a pooled scene gets that scene, the others
    ``style``'s own (see :func:`_render_background`). ``noise_seed`` seeds the sensor noise, the
    only draw made here, so that the writer's images are the same run after run and whatever
    the number of threads.
    """
    if layer.trans is None:
        raise ValueError("render_view needs a transparent layer: render_person_layer's, or a Canvas(..., layer=True)")
    cv = Canvas(layer.B, layer.H, layer.W)
    _render_background(cv, style, pose, scenes)
    cv.img.mul_(layer.trans.unsqueeze(1)).add_(layer.img)
    _render_occluder(cv, pose)
    _light(cv, pose)
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
    scenes: list[CameraStyle] | None = None,
) -> np.ndarray:
    """Render one batch seen by one camera; returns uint8 images ``(B, H, W, 3)``.

    ``ids`` and ``pose`` hold one row per image (an identity may repeat). The person is
    drawn at the camera's own scale; :func:`render_person_layer` plus :func:`render_view`
    is the same in two steps, for showing one layer to several cameras. ``scenes``: the
    domain's pool of scenes (:func:`render_view`).
    """
    layer = render_person_layer(ids, pose, style.scale, size)
    return render_view(layer, pose, style, noise_seed, scenes)


@contextmanager
def one_torch_thread():
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

    Returns uint8 images ``(num_ids, len(cams), H, W, 3)``; notebook 00 draws them as a grid
    to show that cameras change the style and the scene, never the person. Nothing is
    written to disk, and the ``"preview"`` stream is separate from the writer's, so a preview
    never changes a written world.

    Parameters
    ----------
    domain:
        ``'synth_market'`` or ``'synth_duke'``.
    num_ids:
        Identities (rows).
    cams:
        0-based cameras (columns); default all cameras of the domain.
    seed:
        Identities, poses and noise.
    size:
        ``(H, W)`` of each image.
    """
    dom = DOMAINS[check_domain(domain)]
    styles = camera_styles(dom)
    cams = list(range(dom.num_cams)) if cams is None else list(cams)
    rng = domain_rng(dom, seed, "preview")
    ids = sample_identities(dom, num_ids, rng)
    out = np.zeros((num_ids, len(cams), *size, 3), np.uint8)
    with one_torch_thread():
        for j, c in enumerate(cams):
            pose = sample_poses(np.full(num_ids, c), styles, rng, np.zeros(num_ids, int))
            out[:, j] = render_batch(ids, pose, styles[c], size=size, noise_seed=seed * 1000 + c, scenes=styles)
    return out

