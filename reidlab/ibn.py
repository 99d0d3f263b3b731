"""IBN-a ResNets (IBN-Net, Pan et al., ECCV 2018): torchvision's ResNet whose ``bn1`` in layer1-3 is an IBN layer.

Why: instance normalisation (IN) normalises each image's channels by the image's own statistics,
so a per-channel change of "style" (brightness, contrast, colour cast: camera and domain) cancels
out, while BN keeps the content that makes features discriminative. IBN-a gives IN half of the
channels of ``bn1`` in every block of layer1-3, where style lives. Notebook 07 builds the layer and
a Bottleneck by hand, checks them against this module, and measures BN vs IBN-a backbones.

The published code (XingangPan/IBN-Net) is laid out as torchvision's ResNet with that swap, the IBN
layer's children named ``IN`` and ``BN``; so the state_dict keys, order and shapes are those of the released
``resnet*_ibn_a*.pth`` files, which load strictly (:func:`load_pretrained`, ``tests/test_ibn.py``).
torchvision's ``AdaptiveAvgPool2d(1)`` replaces the published ``AvgPool2d(7)``, which only fits
224x224 inputs (a 256x128 re-ID crop leaves an 8x4 map after layer4).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present
from torchvision.models import resnet

__all__ = ["IBN", "Bottleneck", "ResNetIBN", "resnet18_ibn_a", "resnet34_ibn_a", "resnet50_ibn_a", "load_pretrained"]


class IBN(nn.Module):
    """Instance norm on the first ``int(planes * ratio)`` channels, batch norm on the rest (notebook 07).

    Channel order is kept: outputs ``[:half]`` are the IN'd inputs ``[:half]``. ``IN`` is
    ``InstanceNorm2d(half, affine=True)`` without running statistics, so it uses each image's own
    statistics in training and eval alike; ``BN`` is ``BatchNorm2d(planes - half)``. The split
    sizes are explicit, so any ratio works (the published ``torch.split(x, half, 1)`` makes more
    than two chunks when ``half < planes / 2``).
    """

    def __init__(self, planes: int, ratio: float = 0.5) -> None:
        super().__init__()
        half = int(planes * ratio)
        if not 0 < half < planes:
            raise ValueError(f"IBN(planes={planes}, ratio={ratio}) gives {half} IN channels; both parts need at "
                             f"least one channel (0 < int(planes * ratio) < planes)")
        self.planes, self.num_in = planes, half  # not `half`: that is nn.Module's fp16 cast
        self.IN = nn.InstanceNorm2d(half, affine=True)
        self.BN = nn.BatchNorm2d(planes - half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.planes:
            raise ValueError(f"IBN({self.planes}) expects input (N, {self.planes}, H, W), got {tuple(x.shape)}")
        a, b = torch.split(x, [self.num_in, self.planes - self.num_in], dim=1)
        return torch.cat((self.IN(a.contiguous()), self.BN(b.contiguous())), dim=1)

    def extra_repr(self) -> str:
        return f"planes={self.planes}, num_in={self.num_in}"


class Bottleneck(resnet.Bottleneck):
    """torchvision's ResNet-50 block; with ``ibn='a'`` its ``bn1`` (after the first 1x1 conv) is an :class:`IBN`.

    The block notebook 07 writes by hand. Assigning ``bn1`` anew keeps its place among the
    children, so the state_dict keys keep torchvision's (and the published) order.
    """

    def __init__(self, inplanes: int, planes: int, ibn: Literal["a"] | None = None, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        if ibn not in ("a", None):
            raise ValueError(f"ibn must be 'a' or None, got {ibn!r}")
        super().__init__(inplanes, planes, stride, downsample)
        if ibn == "a":
            self.bn1 = IBN(planes)


class ResNetIBN(resnet.ResNet):
    """torchvision's ``ResNet`` with an :class:`IBN` as ``bn1`` in every block of layer1-3 (IBN-a).

    The swap draws no random numbers and an IBN starts at gamma 1, beta 0 like torchvision's BN
    init, so a seed gives torchvision's convolutions and ``fc``. ``kwargs`` go to ``ResNet``.
    """

    def __init__(self, block: type[resnet.BasicBlock | resnet.Bottleneck], layers: list[int], **kwargs: Any) -> None:
        super().__init__(block, layers, **kwargs)
        for stage in (self.layer1, self.layer2, self.layer3):
            for blk in stage:
                blk.bn1 = IBN(blk.bn1.num_features)


def resnet18_ibn_a(**kwargs: Any) -> ResNetIBN:
    """ResNet-18-IBN-a: BasicBlocks (2, 2, 2, 2), ``bn1`` after each block's first 3x3 conv."""
    return ResNetIBN(resnet.BasicBlock, [2, 2, 2, 2], **kwargs)


def resnet34_ibn_a(**kwargs: Any) -> ResNetIBN:
    """ResNet-34-IBN-a: BasicBlocks (3, 4, 6, 3)."""
    return ResNetIBN(resnet.BasicBlock, [3, 4, 6, 3], **kwargs)


def resnet50_ibn_a(**kwargs: Any) -> ResNetIBN:
    """ResNet-50-IBN-a, notebook 07's backbone: Bottlenecks (3, 4, 6, 3). Exactly ``resnet50``'s parameter
    count (an IBN holds one gamma and one beta per channel, like the BN it replaces); fewer running stats."""
    return ResNetIBN(resnet.Bottleneck, [3, 4, 6, 3], **kwargs)


def load_pretrained(
    model: nn.Module, path: str | os.PathLike, *, strict: bool = True
) -> torch.nn.modules.module._IncompatibleKeys:
    """Load a local weight file (e.g. a released ``resnet50_ibn_a-d9d0bb7b.pth``) into ``model``; notebook 07.

    ``torch.load(..., weights_only=True)`` refuses to run code stored in a pickle. The file may hold
    a state_dict or a checkpoint ``{'state_dict': ...}`` (the original release), with or without
    ``nn.DataParallel``'s ``module.`` prefix. ``strict`` requires exactly the model's keys; a shape
    mismatch is an error either way (a lenient load skips names, it must not pass wrong tensors).
    Every problem is named in one ValueError before the model is touched. Files older than PyTorch
    0.4.1 lack BN's ``num_batches_tracked``; PyTorch fills it with 0, so it is not reported missing.

    Returns ``load_state_dict``'s ``missing_keys`` and ``unexpected_keys`` (empty when ``strict``).
    Raises FileNotFoundError, TypeError (no state_dict in the file) or ValueError (mismatches).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no weight file at {path!r}")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, Mapping) and isinstance(sd.get("state_dict"), Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        found = list(sd)[:5] if isinstance(sd, Mapping) else type(sd).__name__
        raise TypeError(f"{path} holds neither a state_dict (names -> tensors) nor {{'state_dict': ...}}; found {found}")
    sd = dict(sd)  # a copy: the prefix is removed in place
    consume_prefix_in_state_dict_if_present(sd, "module.")
    own = model.state_dict()
    problems = {"shape mismatches": [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
                                     for k, v in own.items() if k in sd and sd[k].shape != v.shape]}
    if strict:
        problems["keys missing from the file"] = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
        problems["unexpected keys in the file"] = [k for k in sd if k not in own]
    listed = [f"{len(keys)} {what}: {', '.join(keys[:8])}" + (f", ... ({len(keys) - 8} more)" if len(keys) > 8 else "")
              for what, keys in problems.items() if keys]
    if listed:
        raise ValueError(
            f"{path} does not match {type(model).__name__} ({'strict' if strict else 'non-strict'} load): "
            + "; ".join(listed) + " -- is it the weight file of this architecture (e.g. resnet50_ibn_a vs resnet18_ibn_a)?"
        )
    return model.load_state_dict(sd, strict=strict)
