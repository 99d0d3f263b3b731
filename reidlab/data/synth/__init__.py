"""A procedural person re-ID world, written to disk as Market-1501-style trees (notebook 00).

Nothing can be downloaded at run time, yet DSBN, IBN-a and ECN (notebooks 06-10) need a
labelled source domain, an unlabelled target domain seen by several cameras, and CamStyle
images. This package draws that world, in three modules whose imports flow one way
(``world`` <- ``render`` <- ``write``):

* :mod:`~reidlab.data.synth.world` -- what the world is: scales, domains and their cameras,
  identity and pose sampling;
* :mod:`~reidlab.data.synth.render` -- how it is drawn: signed-distance shapes evaluated
  with PyTorch over a batch, people on a transparent layer, backgrounds, occluders and the
  camera's style;
* :mod:`~reidlab.data.synth.write` -- how it is written: the plan of who appears where,
  Market-1501 file names and the atomic, cached tree (:func:`make_synthetic_reid`).

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

All random draws come from generators seeded by ``(domain, seed)``; the same arguments give
the same pixels (:data:`GENERATOR_VERSION` changes when they do not). Images are written at
128x64 pixels for every scale (:data:`~reidlab.data.synth.write.DEFAULT_IMAGE_SIZE`).
The package imports :mod:`reidlab.data.layout` for the folder and file names, and never
the parser (:mod:`reidlab.data.datasets` imports this package, not the other way round).
"""
from .render import render_batch, render_identities
from .world import DOMAINS, SCALES, CameraStyle, Domain, Scale, camera_styles
from .write import GENERATOR_VERSION, MANIFEST, make_synthetic_reid

__all__ = [
    "DOMAINS",
    "SCALES",
    "Scale",
    "CameraStyle",
    "Domain",
    "camera_styles",
    "make_synthetic_reid",
    "render_identities",
    "render_batch",
    "GENERATOR_VERSION",
    "MANIFEST",
]
