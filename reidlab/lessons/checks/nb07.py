"""Checkers of notebook 07 (``notebooks/07_ibn_a.ipynb``): instance norm and IBN-a.

Imported by the notebook as ``from reidlab.lessons.checks import nb07 as checks``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
import torchvision
from torch.nn.modules.batchnorm import _NormBase

import reidlab.bn
from reidlab.ibn import resnet18_ibn_a
from reidlab.lessons.checks import ExerciseError, as_number, as_tensor, checker, fail, forbid, passed, refuse_loops

__all__ = ["ExerciseError", "check_count_norm_params", "check_ibn_split", "check_instance_norm"]


#: The library's normalisations, each of which gives instance norm in one call (layer norm over (H, W),
#: group norm with one group per channel, batch norm of the (1, N*C, H, W) view): exercise 7.1 is by hand.
_NORMS = (*((owner, name) for owner in (F, torch) for name in ("instance_norm", "layer_norm", "group_norm", "batch_norm")),
          (reidlab.bn, "batch_norm"))


@checker
def check_instance_norm(fn: Callable[..., Any]) -> None:
    """Notebook 07: ``fn(x, eps)`` must return instance norm of an (N, C, H, W) tensor, no affine.

    Each image's channel is normalised by *its own* mean and biased variance over (H, W),
    as ``torch.nn.functional.instance_norm`` does; the answer is compared with it on
    several batches, including a batch of one image and a per-image colour change.
    """
    g = torch.Generator().manual_seed(7)
    cases = [
        torch.randn(4, 3, 5, 6, generator=g, dtype=torch.float64) * 2.0 + 1.0,
        torch.rand(1, 2, 4, 4, generator=g, dtype=torch.float64),
        torch.randn(3, 5, 2, 7, generator=g, dtype=torch.float64) * torch.tensor([0.1, 1.0, 3.0, 0.5, 2.0],
                                                                                  dtype=torch.float64).view(1, 5, 1, 1),
    ]
    for x in cases:
        eps = 1e-5
        want = F.instance_norm(x, eps=eps)
        with forbid(*_NORMS, why="take each image's per-channel mean and biased variance over (H, W) yourself (the "
                                 "checker compares your version with F.instance_norm)"):
            got = fn(x.clone(), eps)
        got = as_tensor(got, "instance_norm(x)").to(torch.float64)
        if tuple(got.shape) != tuple(x.shape):
            fail(f"instance norm keeps the input's shape {tuple(x.shape)}, got {tuple(got.shape)}: "
                 "use keepdim=True so the statistics broadcast")
        if torch.allclose(got, want, atol=1e-6):
            continue
        stat = {
            "(N, H, W) per channel: that is batch norm, whose statistics mix the images of the batch": (0, 2, 3),
            "(C, H, W) per image: that is layer norm, which mixes the channels (and so the colours)": (1, 2, 3),
            "the whole tensor: one mean and variance for every image and channel": (0, 1, 2, 3),
        }
        for msg, dims in stat.items():
            mu = x.mean(dims, keepdim=True)
            var = x.var(dims, keepdim=True, unbiased=False)
            if torch.allclose(got, (x - mu) / torch.sqrt(var + eps), atol=1e-6):
                fail(f"you took the statistics over {msg}; instance norm uses each image's channel alone, dims (2, 3)")
        mu = x.mean((2, 3), keepdim=True)
        var_u = x.var((2, 3), keepdim=True, unbiased=True)
        var_b = x.var((2, 3), keepdim=True, unbiased=False)
        if torch.allclose(got, (x - mu) / torch.sqrt(var_u + eps), atol=1e-6):
            fail("you normalised with the unbiased variance (divide by H*W - 1); normalisation uses the biased one "
                 "(unbiased=False), as BN does (notebook 01)")
        if torch.allclose(got, (x - mu) / torch.sqrt(var_b), atol=1e-6) or torch.allclose(
            got, (x - mu) / (torch.sqrt(var_b) + eps), atol=1e-6
        ):
            fail("eps goes inside the square root: (x - mean) / sqrt(var + eps)")
        if torch.allclose(got, (x - mu) / var_b, atol=1e-6) or torch.allclose(got, (x - mu) / (var_b + eps), atol=1e-6):
            fail("divide by the standard deviation sqrt(var + eps), not by the variance")
        fail(f"instance_norm(x) is off by up to {(got - want).abs().max().item():.3g} for a batch of shape "
             f"{tuple(x.shape)}")
    refuse_loops(fn, (torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64), 1e-5),
                 (torch.randn(8, 8, 6, 6, generator=g, dtype=torch.float64), 1e-5),
                 sizes=("a (2, 2, 3, 3) batch", "an (8, 8, 6, 6) one"),
                 hint="take each statistic over dims (2, 3) of the whole batch at once, with keepdim=True")
    passed("instance norm by hand matches F.instance_norm (each image's channels by their own statistics)")


def _ibn_split_reference(planes: int, ratio: float) -> tuple[int, int]:
    half = int(planes * ratio)
    return half, planes - half


@checker
def check_ibn_split(fn: Callable[[int, float], Any]) -> None:
    """Notebook 07: ``fn(planes, ratio)`` must return ``(IN channels, BN channels)`` of an IBN-a layer.

    IBN-Net (and :class:`reidlab.ibn.IBN`) gives IN ``int(planes * ratio)`` channels (rounded
    down) and BN the rest.
    """
    # 14 * 0.25 = 3.5 comes before 7 * 0.5 = 3.5: there rounding up, (4, 3), is also the swapped pair
    cases = [(64, 0.5), (128, 0.5), (256, 0.5), (10, 0.25), (14, 0.25), (7, 0.5), (100, 0.3)]
    for planes, ratio in cases:
        want = _ibn_split_reference(planes, ratio)
        got = fn(planes, ratio)
        if got is None:
            fail("your function returned None: return a pair (IN channels, BN channels)")
        try:
            got = tuple(int(v) for v in got)
        except (TypeError, ValueError):
            fail(f"return a pair of ints (IN channels, BN channels), got {got!r}")
        if len(got) != 2:
            fail(f"return exactly two numbers (IN channels, BN channels), got {len(got)}")
        if got == want:
            continue
        if got == want[::-1]:
            fail(f"for planes={planes}, ratio={ratio} the pair is swapped: IN takes the first int(planes * ratio) "
                 "channels, BN the rest")
        if sum(got) != planes:
            fail(f"for planes={planes} the two parts add up to {sum(got)}: every channel goes to exactly one of IN "
                 "and BN")
        if got[0] in (round(planes * ratio), math.ceil(planes * ratio)):
            fail(f"for planes={planes}, ratio={ratio} you rounded up; IBN-Net uses int(planes * ratio), which rounds down")
        fail(f"for planes={planes}, ratio={ratio} expected {want}, got {got}")
    passed("IBN-a channel split: int(planes * ratio) channels to IN, the rest to BN")


def _norm_affine_reference(model: torch.nn.Module) -> int:
    total = 0
    for m in model.modules():
        if isinstance(m, (_NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)):
            total += sum(p.numel() for p in m.parameters(recurse=False))
    return total


@checker
def check_count_norm_params(fn: Callable[[torch.nn.Module], Any]) -> None:
    """Notebook 07: ``fn(model)`` must count the learnable scalars (gamma and beta) of all normalisation layers.

    Checked on torchvision's ``resnet18``, on ``reidlab.ibn.resnet18_ibn_a`` (whose counts
    must agree: IN's gamma/beta replace the BN's on the same channels) and on a small model
    with an IN layer without affine parameters and a BatchNorm1d.
    """
    small = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.InstanceNorm2d(8), torch.nn.BatchNorm2d(8),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4),
    )
    models = {
        "torchvision resnet18": torchvision.models.resnet18(weights=None),
        "resnet18_ibn_a": resnet18_ibn_a(),
        "a small model (IN without affine, BN2d, BN1d)": small,
    }
    for what, model in models.items():
        want = _norm_affine_reference(model)
        got = as_number(fn(model), int, if_none="your function returned None: return the number of scalars",
                         if_wrong="return one integer, got {type}")
        if got == want:
            continue
        bn_only = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                      for p in m.parameters(recurse=False))
        with_buffers = want + sum(
            b.numel() for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)
            for b in m.buffers(recurse=False)
        )
        with_counter = want + sum(
            b.numel() for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)
            for n, b in m.named_buffers(recurse=False) if n != "num_batches_tracked"
        )
        recursive = sum(p.numel() for m in model.modules() if "norm" in type(m).__name__.lower() or
                        type(m).__name__ == "IBN" for p in m.parameters())
        if got == bn_only and bn_only != want:
            fail(f"{what}: you counted BatchNorm layers only; the InstanceNorm halves of the IBN layers have "
                 "gamma and beta too")
        if got in (with_buffers, with_counter) and got != want:
            fail(f"{what}: you counted the running_mean / running_var buffers; they are statistics, not "
                 "learnable parameters (use .parameters(), not .state_dict())")
        if got == recursive and recursive != want:
            fail(f"{what}: the IBN layers' gamma and beta are counted twice, once in the IBN module and once in "
                 "its IN/BN children; use m.parameters(recurse=False), or count only the norm layers themselves")
        if got == sum(p.numel() for p in model.parameters()):
            fail(f"{what}: that is every parameter of the network; count only the normalisation layers' gamma and beta")
        fail(f"{what}: expected {want} normalisation parameters, got {got}")
    passed("normalisation parameters counted; resnet18 and resnet18_ibn_a have the same number")
