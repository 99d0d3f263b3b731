"""reidlab: the helper package of the BN-for-domain-adaptation notebook series.

Every notebook starts with ``cfg = reidlab.setup()`` (notebook 00 explains it): one call
that seeds every random generator, picks the device and the profile, and prints the
versions, so that a bug report or a classroom question arrives with all of them.
"""
from __future__ import annotations

import os
import platform
import random

from .config import PROFILES, Profile, data_dir, resolve_profile, with_runtime

__version__ = "0.1.0"
__all__ = ["setup", "seed_everything", "Profile", "PROFILES", "data_dir", "__version__"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators (CPU and every GPU).

    Where a notebook teaches exact numbers it also passes an explicit
    ``torch.Generator``; the global seed is for everything else.
    """
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def setup(seed: int = 0, profile: str | None = None, *, verbose: bool = True) -> Profile:
    """Seed everything, pick the device and the profile, print what was chosen.

    Parameters
    ----------
    seed:
        Seed for ``random``, NumPy and PyTorch.
    profile:
        ``'ci'``, ``'laptop'`` or ``'gpu'``; ``None`` reads ``$REIDLAB_PROFILE`` and falls
        back to ``gpu`` when CUDA is available, else ``laptop``.
    verbose:
        Print one line each for versions, device, profile and seed.

    Returns
    -------
    Profile
        The profile, with ``device`` and ``seed`` filled in; notebooks read their sizes
        from it (``cfg.batch_size``, ``cfg.pick(ci=..., laptop=..., gpu=...)``).

    Notes
    -----
    On the CPU, ``torch.use_deterministic_algorithms(True)`` makes repeated runs give the
    same bits, which is what lets nbval compare printed numbers. On CUDA we prefer speed
    (``cudnn.benchmark``), so GPU numbers differ slightly from run to run.
    """
    import numpy as np
    import torch

    prof = resolve_profile(profile)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if prof.name == "gpu" and not cuda:
        # Honest but not fatal: the code runs, just slowly.
        import warnings

        warnings.warn("profile 'gpu' chosen but no CUDA device is available; running on the CPU", stacklevel=2)
    seed_everything(seed)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:  # a consistent look for every figure of the series
        from .viz import use_style

        use_style()
    except ImportError:  # pragma: no cover - matplotlib is a dependency, but setup() should not die on it
        pass
    cfg = with_runtime(prof, device=device, seed=seed)
    if verbose:
        import torchvision

        print(
            f"versions: reidlab {__version__} | python {platform.python_version()} | torch {torch.__version__}"
            f" | torchvision {torchvision.__version__} | numpy {np.__version__}"
        )
        if cuda:
            dev = f"cuda ({torch.cuda.get_device_name(0)})"
        else:
            dev = f"cpu ({torch.get_num_threads()} threads, {os.cpu_count()} cores)"
        print(f"device:   {dev}")
        print(f"profile:  {prof.name} - {prof.description}")
        print(f"seed:     {seed}")
    return cfg
