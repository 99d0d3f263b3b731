"""Seeds and devices: the two things every run decides before it computes anything.

One definition each, used by the trainer, the BN utilities, the evaluation and the lessons:

* :func:`seed_everything` -- seed Python's, NumPy's and PyTorch's global generators;
* :func:`resolve_device` -- ``'auto'`` / ``'cpu'`` / ``'cuda:1'`` to a ``torch.device``, with a
  clear error when CUDA is asked for but absent;
* :func:`module_device` -- where a model lives (its first parameter or buffer);
* :func:`torch_threads` -- a block run with a fixed number of torch threads (on the CPU the
  count decides how sums are split, so it is part of a result's bits).

Nothing here changes global state on import; :func:`seed_everything` changes the
generators because that is what it is called for.
"""
from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

__all__ = ["seed_everything", "resolve_device", "module_device", "torch_threads"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators (CPU and every GPU).

    Where a notebook teaches exact numbers it also passes an explicit
    ``torch.Generator``; the global seed is for everything else.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``'auto'`` (or ``None``): CUDA when available, else the CPU; otherwise ``torch.device(name)``.

    Raises ``ValueError`` for a string that is not a device, or for a CUDA device on a
    machine without one (rather than failing later, deep inside the first ``.to()``).
    """
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"device={name!r} is not a torch device (use 'auto', 'cpu', 'cuda', 'cuda:0')") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(name)!r} but no CUDA device is available (use device='auto' or 'cpu')")
    return dev


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter or buffer (the CPU when it holds none)."""
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` torch threads, then restore the count it had.

    On the CPU the thread count decides how a convolution splits its sums, so a training run
    rounds differently with another count and, over many steps, ends elsewhere: a result that
    must repeat to the bit (the pretrained backbone, a cached run re-evaluated) fixes it.
    """
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
