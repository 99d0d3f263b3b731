"""Profiles: one set of code, three sizes of run.

The notebooks never hard-code how big a run is. They ask the active profile:

* ``ci``     -- CPU, every notebook in well under two minutes (what nbval runs);
* ``laptop`` -- CPU, at most ten minutes per notebook, numbers worth looking at;
* ``long``   -- CPU, the sizes of ``laptop`` with the seeds a power analysis asks for
  (docs/EVIDENCE.md): the profile notebook 10's committed outputs come from, an hour or more;
* ``gpu``    -- paper scale (ResNet-50, 256x128 inputs, batch 128, 60 epochs,
  AMP bf16, channels_last).

The profile is chosen by the ``REIDLAB_PROFILE`` environment variable; without it,
``gpu`` when CUDA is available and ``laptop`` otherwise. It is the only global
state ``reidlab`` reads. The table lives in the library, not in the lessons, because the
ECN command line (``python -m reidlab.ecn --profile ci``) takes its sizes from it too;
:func:`reidlab.lessons.setup` (notebook 00) resolves it for the notebooks.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")

PROFILE_ENV = "REIDLAB_PROFILE"


@dataclass(frozen=True)
class Profile:
    """Sizes a notebook or a training run reads; frozen so nothing edits them by accident.

    Fields shared by several notebooks live here. A size only one notebook needs is
    picked in that notebook with :meth:`pick`, so this class does not grow a field
    per cell.
    """

    name: str
    description: str
    synth_scale: str  # size of the synthetic re-ID world: 'tiny' | 'small' | 'market'
    height: int  # re-ID input height (the paper: 256)
    width: int  # re-ID input width (the paper: 128)
    arch: str  # re-ID backbone
    batch_size: int
    epochs: int
    num_workers: int
    amp: bool  # bf16 autocast (CUDA only)
    channels_last: bool
    pretrained: str | None  # initial weights of re-ID backbones: 'synthetic' = reidlab.ecn.pretrain's
    ecn_exact: bool  # ECN's published lr, k and alpha (True) or scaled to the run (reidlab.ecn.config.scaled_recipe)
    device: str = "cpu"  # filled in by reidlab.lessons.setup()
    seed: int = 0  # filled in by reidlab.lessons.setup()

    def pick(self, *, ci: T, laptop: T, gpu: T, long: T | None = None) -> T:
        """Return the value for this profile, e.g. ``steps = cfg.pick(ci=50, laptop=500, gpu=2000)``.

        ``long`` takes ``laptop``'s value unless given: it only differs where a notebook needs
        more seeds than ten minutes allow.
        """
        return {"ci": ci, "laptop": laptop, "long": laptop if long is None else long, "gpu": gpu}[self.name]


_LAPTOP = Profile(
    name="laptop",
    description="CPU teaching size: at most 10 minutes per notebook",
    synth_scale="lab",
    height=64,
    width=32,
    arch="resnet18",
    batch_size=32,
    epochs=12,
    num_workers=2,
    amp=False,
    channels_last=False,
    pretrained="synthetic",
    ecn_exact=False,
)

PROFILES: dict[str, Profile] = {
    "ci": Profile(
        name="ci",
        description="CPU smoke size: every notebook in well under 2 minutes",
        synth_scale="tiny",
        height=64,
        width=32,
        arch="resnet18",
        batch_size=32,
        epochs=2,
        num_workers=0,
        amp=False,
        channels_last=False,
        pretrained="synthetic",
        ecn_exact=False,
    ),
    "laptop": _LAPTOP,
    # laptop's sizes, run with the seeds the power analysis asks for (docs/EVIDENCE.md): the same
    # settings, so its runs and laptop's share their cache entries
    "long": dataclasses.replace(
        _LAPTOP, name="long",
        description="CPU evidence size: laptop's sizes, the seeds the power analysis asks for (an hour or more)",
    ),
    "gpu": Profile(
        name="gpu",
        description="paper scale: ResNet-50, 256x128, batch 128, 60 epochs, AMP bf16",
        synth_scale="market",
        height=256,
        width=128,
        arch="resnet50",
        batch_size=128,
        epochs=60,
        num_workers=8,
        amp=True,
        channels_last=True,
        pretrained="synthetic",
        ecn_exact=True,
    ),
}


def resolve_profile(name: str | None = None, *, cuda_available: bool | None = None) -> Profile:
    """Return the profile called ``name``, else ``$REIDLAB_PROFILE``, else the default.

    The default is ``gpu`` when CUDA is available and ``laptop`` otherwise. An unknown
    name raises ``ValueError`` listing the valid ones (a typo in an environment variable
    should not silently run the wrong size).
    """
    chosen = name or os.environ.get(PROFILE_ENV) or None
    if chosen is None:
        if cuda_available is None:
            cuda_available = torch.cuda.is_available()
        chosen = "gpu" if cuda_available else "laptop"
    key = chosen.strip().lower()
    if key not in PROFILES:
        raise ValueError(
            f"unknown profile {chosen!r} (from {'argument' if name else PROFILE_ENV}); "
            f"choose one of: {', '.join(PROFILES)}"
        )
    return PROFILES[key]


def with_runtime(profile: Profile, *, device: str, seed: int) -> Profile:
    """A copy of ``profile`` that also records the device and seed of this run."""
    return dataclasses.replace(profile, device=device, seed=seed)
