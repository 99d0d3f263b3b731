"""``setup()``: the first cell of every notebook (notebook 00 explains it).

One call that seeds every random generator, picks the device and the profile, sets the
figure style and prints the versions, so that a bug report or a classroom question arrives
with all of them.

This is the one place in the package that sets global torch flags (deterministic algorithms
and a fixed number of threads on the CPU; cuDNN autotuning and TF32 on CUDA). They are meant for the whole life of a
notebook's kernel; the library itself sets none, and ``reidlab.ecn.train_ecn`` restores
the ones it changes.
"""
from __future__ import annotations

import os
import platform
import warnings

import numpy as np
import torch
import torchvision

from reidlab import __version__
from reidlab.profiles import Profile, resolve_profile, with_runtime
from reidlab.runtime import seed_everything
from .viz import use_style

__all__ = ["setup", "THREADS_ENV", "DEFAULT_THREADS"]

#: Environment variable that sets the number of CPU threads torch uses in a notebook.
THREADS_ENV = "REIDLAB_THREADS"
#: The committed CPU outputs were produced with 2 threads. The thread count changes the order of
#: floating-point reductions, and that alone moves a CPU training run by a few points of mAP, so
#: it is fixed rather than left to the machine; set ``$REIDLAB_THREADS`` to use more cores.
DEFAULT_THREADS = 2


def _threads() -> int:
    text = os.environ.get(THREADS_ENV, "").strip()
    try:
        n = int(text) if text else DEFAULT_THREADS
    except ValueError:
        raise ValueError(f"${THREADS_ENV}={text!r} is not a number of threads") from None
    if n < 1:
        raise ValueError(f"${THREADS_ENV} must be >= 1, got {n}")
    return n


def _set_backend_flags(cuda: bool) -> None:
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.set_num_threads(_threads())


def setup(seed: int = 0, profile: str | None = None, *, verbose: bool = True) -> Profile:
    """Seed everything, pick the device and the profile, set the figure style, print what was chosen.

    Parameters
    ----------
    seed:
        Seed for ``random``, NumPy and PyTorch (:func:`reidlab.runtime.seed_everything`).
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
    On the CPU, ``torch.use_deterministic_algorithms(True)`` and a fixed thread count
    (:data:`DEFAULT_THREADS`, or ``$REIDLAB_THREADS``) make repeated runs give the same bits,
    which is what lets nbval compare printed numbers. On CUDA we prefer speed
    (``cudnn.benchmark``, TF32), so GPU numbers differ slightly from run to run. A broken
    plotting stack (e.g. a seaborn that cannot import) raises here, in the first cell,
    rather than at the first figure.
    """
    prof = resolve_profile(profile)
    cuda = torch.cuda.is_available()
    if prof.name == "gpu" and not cuda:
        # Honest but not fatal: the code runs, just slowly.
        warnings.warn("profile 'gpu' chosen but no CUDA device is available; running on the CPU", stacklevel=2)
    seed_everything(seed)
    _set_backend_flags(cuda)
    use_style()
    cfg = with_runtime(prof, device="cuda" if cuda else "cpu", seed=seed)
    if verbose:
        print(
            f"versions: reidlab {__version__} | python {platform.python_version()} | torch {torch.__version__}"
            f" | torchvision {torchvision.__version__} | numpy {np.__version__}"
        )
        if cuda:
            dev = f"cuda ({torch.cuda.get_device_name(0)})"
        else:
            dev = f"cpu ({torch.get_num_threads()} threads, fixed by ${THREADS_ENV}; {os.cpu_count()} cores)"
        print(f"device:   {dev}")
        print(f"profile:  {prof.name} - {prof.description}")
        print(f"seed:     {seed}")
    return cfg
