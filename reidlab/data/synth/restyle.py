"""CamStyle images as a GAN makes them: a style transfer of the finished image, not a re-render.

ECN's CamStyle images (Zhong et al., "Camera Style Adaptation for Person Re-identification",
CVPR 2018) come from a CycleGAN (StarGAN for MSMT17) trained per camera pair on unpaired
images. Such a generator sees only the finished image of camera ``c`` and learns to make it
*look like* camera ``c2``: it keeps the image's layout (the person, the pose, and the
background of camera ``c`` with its structures), shifts colour, contrast, brightness, blur
and noise towards ``c2``, tints the background towards ``c2``'s usual colours, and leaves its
own marks: faint checkerboards from transposed convolutions, colour blotches, haloes at
edges, lost fine detail and, now and then, a changed clothing colour. It never sees camera
``c2``'s view of the same moment, so it cannot draw ``c2``'s background behind the person.

:func:`transfer_style` does the same by hand, on a batch, with the camera styles of
:mod:`reidlab.data.synth.world` standing in for what the GAN learns from data:

1. **undo camera c's colour pipeline** (:func:`_undo_colour`): the inverse of the colour
   steps of :func:`reidlab.data.synth.render._apply_style`, with per-image errors in the
   estimated parameters, since a GAN learns the mapping only approximately; clipped
   highlights and shadows stay lost;
2. **tint the background** (:func:`_tint_background`) towards camera c2's average background
   colour at each height (its wall above, its floor below its horizon): weak and smooth,
   because where the person ends is unknown;
3. **apply camera c2's colour pipeline** (:func:`_apply_colour`);
4. **change a clothing colour** now and then (:func:`_hue_change`);
5. **optics** (:func:`_optics`): blur can only be added (more blur if c2 is softer; a mild
   unsharp mask with ringing, not real sharpness, if it is sharper) and the generator's
   bottleneck loses fine detail;
6. **GAN artifacts** (:func:`_artifacts`): a faint checkerboard and a few colour blotches;
7. **camera c2's sensor noise**.

How strong the artifacts are is drawn per image; every draw comes from the generator passed
in (:func:`_draw`), so the output is a function of the input and the generator's seed.
:mod:`reidlab.data.synth.write` writes these images to ``bounding_box_train_camstyle/``;
the pixel-aligned re-render by camera c2 (what a perfect GAN could never produce) goes to
``bounding_box_train_camstyle_oracle/`` as an ablation.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .render import background_template, blur_passes, vignette_map
from .world import CameraStyle

__all__ = [
    "INVERSE_ERROR",
    "BACKGROUND_TINT",
    "ARTIFACT_STRENGTH",
    "CHECKER_PERIODS",
    "CHECKER_AMPLITUDE",
    "BLOTCHES",
    "HUE_CHANGE_P",
    "transfer_style",
    "restyle_batch",
]

#: Standard deviations of the per-image errors of the estimated camera-c parameters (log-gain
#: per channel, offset, log-gamma, log-saturation): the GAN's imperfect inverse.
INVERSE_ERROR = {"gain": 0.04, "offset": 0.015, "gamma": 0.04, "saturation": 0.06}
#: Range of the weight of camera c2's background colour (at the image's left and right edges;
#: 0.55 of it on the central column, where the person usually stands).
BACKGROUND_TINT = (0.2, 0.35)
#: Range of the per-image artifact strength ``s``: checkerboard amplitude ``0.03 s``, blotch
#: colour std ``0.05 s``, detail loss ``0.5 s`` of a 3x3 blur.
ARTIFACT_STRENGTH = (1.0 / 3.0, 1.0)
#: Checkerboard periods in pixels (a transposed convolution of stride 2 leaves period 2, two in a row period 4).
CHECKER_PERIODS = (2, 3, 4)
#: Checkerboard amplitude at full strength (1-3 % of the range over the strength range).
CHECKER_AMPLITUDE = 0.03
#: Number of low-frequency colour blotches per image.
BLOTCHES = 3
#: Probability that the most saturated region (a garment) changes hue.
HUE_CHANGE_P = 0.1

_PROFILE: dict[tuple, torch.Tensor] = {}


def _draw(B: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Every random number of a batch, drawn first and in a fixed order (hence deterministic).

    Drawing all of them up front, also for steps an image skips (a hue change), makes each
    image's draws independent of the data, so the same generator state gives the same pixels.
    """

    def u(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen)

    def n(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    lo, hi = ARTIFACT_STRENGTH
    t0, t1 = BACKGROUND_TINT
    e = INVERSE_ERROR
    return {
        "strength": (lo + (hi - lo) * u(B)).view(B, 1, 1, 1),
        "gain_err": torch.exp(e["gain"] * n(B, 3)).view(B, 3, 1, 1),
        "offset_err": (e["offset"] * n(B)).view(B, 1, 1, 1),
        "gamma_err": torch.exp(e["gamma"] * n(B)).view(B, 1, 1, 1),
        "sat_err": torch.exp(e["saturation"] * n(B)).view(B, 1, 1, 1),
        "tint": (t0 + (t1 - t0) * u(B)).view(B, 1, 1, 1),
        "hue_on": u(B) < HUE_CHANGE_P,
        "hue_angle": math.radians(60.0) + math.radians(240.0) * u(B),
        "period": torch.tensor(CHECKER_PERIODS, dtype=torch.float32)[
            torch.randint(len(CHECKER_PERIODS), (B,), generator=gen)].view(B, 1, 1, 1),
        "phase": u(B, 2, 1, 1),
        "checker_rgb": (1.0 + 0.3 * n(B, 3)).view(B, 3, 1, 1),
        "blotch_xy": u(B, BLOTCHES, 2),
        "blotch_r": 0.12 + 0.18 * u(B, BLOTCHES),
        "blotch_rgb": n(B, BLOTCHES, 3),
    }


def _undo_colour(x: torch.Tensor, style: CameraStyle, d: dict[str, torch.Tensor]) -> torch.Tensor:
    """Camera ``style``'s image back to scene colours: its colour steps inverted, approximately.

    The render applies, per pixel, ``y = clip(offset + gain * scene) ** gamma``, then the
    saturation about the grey ``mean(y)``, the vignette and the tint; this undoes them in
    reverse order. The parameters are the camera's own times per-image errors
    (:data:`INVERSE_ERROR`): a CycleGAN learns the mapping from unpaired images and gets it
    roughly right, not exactly, and differently for each image (it depends on the content).
    What the camera clipped (blown highlights, crushed shadows) is not recovered; blur and
    noise are not undone either (no GAN un-blurs a blurry camera).
    """
    H, W = x.shape[-2:]
    gain = torch.tensor(style.wb).view(1, 3, 1, 1) * style.contrast * d["gain_err"]
    offset = 0.5 - 0.5 * style.contrast + style.brightness + d["offset_err"]
    unvignette = 1.0 / (1.0 - style.vignette * vignette_map(H, W))
    z = torch.addcmul(-torch.tensor(style.tint).view(1, 3, 1, 1) * unvignette, x, unvignette)
    z = torch.lerp(z.mean(1, keepdim=True), z, 1.0 / (style.saturation * d["sat_err"]))  # saturation keeps the grey
    z.clamp_(1e-6, 1.0).log_().div_(style.gamma * d["gamma_err"]).exp_()  # z ** (1 / gamma), per image
    return torch.addcmul(-offset / gain, z, 1.0 / gain).clamp_(0.0, 1.0)


def _apply_colour(scene: torch.Tensor, style: CameraStyle) -> torch.Tensor:
    """Camera ``style``'s colour steps (those of :func:`reidlab.data.synth.render._apply_style`,
    without the optics): white balance, contrast/brightness, gamma, saturation, vignette, tint.

    Written with fused operations (``exp(gamma * log(y))`` instead of ``pow``: a third of the
    time), so that a style transfer costs no more than rendering the image again.
    """
    H, W = scene.shape[-2:]
    gain = torch.tensor(style.wb).view(1, 3, 1, 1) * style.contrast
    y = torch.addcmul(torch.tensor(0.5 - 0.5 * style.contrast + style.brightness), scene, gain)
    y.clamp_(1e-6, 1.0).log_().mul_(style.gamma).exp_()
    y = torch.lerp(y.mean(1, keepdim=True), y, style.saturation)
    return torch.addcmul(torch.tensor(style.tint).view(1, 3, 1, 1), y, 1.0 - style.vignette * vignette_map(H, W))


def _background_profile(style: CameraStyle, H: int, W: int) -> torch.Tensor:
    """``(1, 3, H, 1)``: camera ``style``'s mean background colour at each height, smoothed; cached.

    The row means of the camera's background (:func:`~reidlab.data.synth.render.background_template`):
    its wall (with its structures) above its horizon, its floor below. That is what a GAN's
    discriminator teaches it about camera c2's backgrounds: their colours where they usually
    are, not their layout. Smoothed over about 5 % of the height, so the horizon is a soft band.
    """
    key = (style, H, W)
    if key not in _PROFILE:
        rows = background_template(style, H, W).mean(2).view(1, 3, H, 1)
        _PROFILE[key] = _blur(rows, blur_passes(0.05 * 128, H))
    return _PROFILE[key]


def _tint_background(scene: torch.Tensor, dst: CameraStyle, d: dict[str, torch.Tensor]) -> torch.Tensor:
    """Pull the scene towards camera ``dst``'s background colours, weakly (:data:`BACKGROUND_TINT`).

    A CycleGAN turns camera c's background into "something camera c2 would show": its colours
    change a lot, its structures (pillars, windows) stay. Which pixels are background is not
    known here, so the pull is global and smooth: by height (``dst``'s wall above its horizon,
    its floor below), and weaker in the central columns where a re-ID crop puts the person
    (0.55 of the edge weight there), which the GAN tints too, only less.
    """
    H, W = scene.shape[-2:]
    xs = (torch.arange(W, dtype=torch.float32) + 0.5) / W
    across = 0.55 + 0.45 * ((xs - 0.5).abs() / 0.35).clamp(max=1.0)
    return torch.lerp(scene, _background_profile(dst, H, W).expand_as(scene), d["tint"] * across.view(1, 1, 1, W))


def _hue_change(
    y: torch.Tensor, scene: torch.Tensor, src: CameraStyle, d: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Rotate the hue of the most saturated garment-like region of some images (:data:`HUE_CHANGE_P`).

    CycleGAN CamStyle images sometimes recolour a garment (a red shirt turns green): the
    generator maps colours it rarely saw in the other camera to colours it saw often. The
    region: pixels of the central columns whose scene colour (``scene``, before the background
    tint) differs from camera ``src``'s usual background at that height (what a GAN trained on
    camera ``src`` knows), ranked by smoothed saturation; those above 0.6 of the image's
    maximum are rotated about the grey axis by 60-300 degrees, brightness kept.
    """
    idx = torch.nonzero(d["hue_on"]).flatten()
    if len(idx) == 0:
        return y
    sub = y[idx]
    H, W = y.shape[-2:]
    xs = (torch.arange(W, dtype=torch.float32) + 0.5) / W
    central = ((0.3 - (xs - 0.5).abs()) / 0.1).clamp(0.0, 1.0).view(1, 1, 1, W)
    fg = (((scene[idx] - _background_profile(src, H, W)).norm(dim=1, keepdim=True) - 0.08) / 0.1).clamp(0.0, 1.0)
    sat = _blur((sub.amax(1, keepdim=True) - sub.amin(1, keepdim=True)) * fg * central, 2)
    top = sat.amax((2, 3), keepdim=True)
    mask = torch.sigmoid((sat - 0.6 * top) / 0.02) * (top > 0.05).float()
    theta = d["hue_angle"][idx]
    cos, sin = torch.cos(theta).view(-1, 1, 1), torch.sin(theta).view(-1, 1, 1)
    cross = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3.0)
    rot = cos * torch.eye(3) + sin * cross + (1.0 - cos) * torch.full((3, 3), 1.0 / 3.0)  # Rodrigues, axis (1,1,1)
    turned = torch.einsum("bij,bjhw->bihw", rot, sub)
    out = y.clone()
    out[idx] = torch.lerp(sub, turned, mask)
    return out


def _blur(x: torch.Tensor, passes: int) -> torch.Tensor:
    """``passes`` 3x3 box filters, edges replicated, as sums of shifted slices (one axis at a time).

    The same filter as the renderer's ``_box_blur`` (up to rounding), about
    five times faster on a CPU than padding and pooling.
    """
    for _ in range(passes):
        x = torch.cat((x[..., :1], x, x[..., -1:]), -1)
        x = (x[..., :-2] + x[..., 1:-1]).add_(x[..., 2:])
        x = torch.cat((x[..., :1, :], x, x[..., -1:, :]), -2)
        x = (x[..., :-2, :] + x[..., 1:-1, :]).add_(x[..., 2:, :]).div_(9.0)
    return x


def _softness(style: CameraStyle, H: int) -> float:
    """How soft a camera's images are: a blur variance in pixels per axis.

    Box-filter passes add 2/3 each; losing resolution by ``r`` (area down, bilinear up) acts
    like a blur of variance about ``(1/r**2 - 1) / 4``.
    """
    return 2.0 / 3.0 * blur_passes(style.blur, H) + 0.25 * (1.0 / style.resolution**2 - 1.0)


def _optics(y: torch.Tensor, src: CameraStyle, dst: CameraStyle, d: dict[str, torch.Tensor]) -> torch.Tensor:
    """Camera ``dst``'s sharpness, as far as a generator can reach it, and its loss of detail.

    Blur can only be added: if ``dst`` is softer than ``src`` (:func:`_softness`: blur and
    resolution loss), box-filter passes add the difference. If ``dst`` is sharper, lost detail
    stays lost; the generator only over-sharpens edges, which leaves haloes (the overshoot of
    an unsharp mask, of weight at most 0.6). The generator's encoder-decoder also smears fine
    detail (thin stripes, small logos), by ``0.5 s`` of a 3x3 blur per image. Both are one
    filter: ``y + (sharpen - 0.5 s) * (y - blur(y))``: haloes where sharpening wins, a softer
    image where detail loss does.
    """
    H = y.shape[-2]
    gap = _softness(dst, H) - _softness(src, H)
    passes = int(round(gap * 1.5))
    if passes > 0:
        y = _blur(y, passes)
    amount = min(0.6, -0.3 * gap) if gap < 0 else 0.0
    return torch.addcmul(y, y - _blur(y, 1), amount - 0.5 * d["strength"])


def _artifacts(y: torch.Tensor, d: dict[str, torch.Tensor]) -> torch.Tensor:
    """The generator's marks: a faint checkerboard and a few low-frequency colour blotches.

    Transposed convolutions with a stride that does not divide their kernel leave a periodic
    checkerboard (Odena et al., "Deconvolution and Checkerboard Artifacts", Distill 2016):
    period 2-4 pixels (:data:`CHECKER_PERIODS`), 1-3 % of the range
    (:data:`CHECKER_AMPLITUDE` times the image's strength), slightly coloured. GANs also leave
    blotches, smooth patches of the wrong colour: :data:`BLOTCHES` Gaussian blobs of 12-30 % of
    the height with colour offsets of std ``0.05 s``.
    """
    B, _, H, W = y.shape
    s = d["strength"]
    X = torch.arange(W, dtype=torch.float32).view(1, 1, W)
    Y = torch.arange(H, dtype=torch.float32).view(1, H, 1)
    p = d["period"].view(B, 1, 1)
    phase = torch.floor(d["phase"].view(B, 2, 1) * p)  # whole-pixel phases in [0, p)
    board = torch.cos(2 * math.pi * (Y + phase[:, 1:]) / p) * torch.cos(2 * math.pi * (X + phase[:, :1]) / p)
    y = y.addcmul_(CHECKER_AMPLITUDE * s * d["checker_rgb"], board.unsqueeze(1))  # (B,3,1,1) x (B,1,H,W)
    # separable blobs: sum_k colour[b,k,c] * gy[b,k,h] * gx[b,k,w], as one batched matrix product
    cx, cy = d["blotch_xy"][..., 0:1] * W, d["blotch_xy"][..., 1:2] * H  # (B, K, 1)
    r2 = 2.0 * (d["blotch_r"] * H).unsqueeze(-1) ** 2
    gx = torch.exp(-((X.view(1, 1, W) - cx) ** 2) / r2)  # (B, K, W)
    gy = torch.exp(-((Y.view(1, 1, H) - cy) ** 2) / r2)  # (B, K, H)
    col = d["blotch_rgb"] * (0.05 * s.view(B, 1, 1))  # (B, K, 3)
    left = (col.transpose(1, 2).unsqueeze(-1) * gy.unsqueeze(1)).permute(0, 1, 3, 2).reshape(B, 3 * H, BLOTCHES)
    return y.add_(torch.bmm(left, gx).view(B, 3, H, W))


def transfer_style(images: torch.Tensor, src: CameraStyle, dst: CameraStyle, gen: torch.Generator) -> torch.Tensor:
    """Camera ``src``'s images made to look as if camera ``dst`` had taken them, like a CamStyle GAN.

    Parameters
    ----------
    images:
        ``(B, 3, H, W)`` floats in [0, 1]: finished images of camera ``src`` (not modified).
    src, dst:
        The cameras (:func:`reidlab.data.synth.world.camera_styles`).
    gen:
        Every random draw (per-image errors, artifact strengths, noise) comes from it, so the
        same generator state gives the same output.

    Returns
    -------
    ``(B, 3, H, W)`` floats in [0, 1]. The steps and why each is there: the module docstring.
    """
    B, C, H, W = images.shape
    if C != 3:
        raise ValueError(f"expected (B, 3, H, W) images, got {tuple(images.shape)}")
    d = _draw(B, gen)
    scene = _undo_colour(images.float(), src, d)
    y = _apply_colour(_tint_background(scene, dst, d), dst)
    y = _optics(_hue_change(y, scene, src, d), src, dst, d)
    y = _artifacts(y, d)
    noise = torch.rand(y.shape, generator=gen).sub_(0.5).mul_(dst.noise * math.sqrt(12.0))  # std = dst.noise
    return y.add_(noise).clamp_(0.0, 1.0)


def restyle_batch(images: np.ndarray, src: CameraStyle, dst: CameraStyle, noise_seed: int) -> np.ndarray:
    """:func:`transfer_style` on uint8 images ``(B, H, W, 3)`` (as :func:`~reidlab.data.synth.render.render_view`
    returns them), with a generator seeded by ``noise_seed``; returns uint8 ``(B, H, W, 3)``.

    The input is the 8-bit image, as a GAN reads the saved image, not the renderer's floats.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    out = transfer_style(x, src, dst, torch.Generator().manual_seed(int(noise_seed)))
    return out.mul_(255.0).add_(0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
