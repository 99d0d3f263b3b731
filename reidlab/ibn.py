"""IBN-Net: Instance-Batch Normalization ResNets (Pan et al., ECCV 2018), laid out like the published models.

Why: instance normalisation (IN) normalises each image's channels by that image's own
mean and standard deviation, so a per-channel affine change of the input's "style"
(brightness, contrast, colour cast, i.e. camera and domain appearance) cancels out, while
BN keeps the content information that makes features discriminative. IBN-a puts IN on
half of the channels of the first normalisation of every block in layer1-3 (the shallow
layers, where style lives); IBN-b adds IN *after* the residual addition of a few blocks and
in the stem. Notebook 07 shows IN's exact invariance, the IBN-a split inside a Bottleneck,
the parameter counts, and measures BN vs IBN-a backbones across domains and cameras.

Compatibility: module names, registration order and shapes follow the published code
(XingangPan/IBN-Net, ``ibnnet/modules.py`` and ``ibnnet/resnet_ibn.py``): the IBN layer's
children are ``IN`` (``InstanceNorm2d(half, affine=True)``, no running stats) and ``BN``
(``BatchNorm2d(planes - half)``), IBN-b's extra layer is ``IN``, so the released
``resnet*_ibn_*.pth`` files load with ``strict=True`` (:func:`load_pretrained`).
``tests/test_ibn.py`` derives the expected key list from torchvision's ResNets.

Two deliberate differences from the published code, neither touching the state_dict:

* ``nn.AdaptiveAvgPool2d(1)`` instead of ``nn.AvgPool2d(7)``: the fixed 7x7 pool only fits
  224x224 images; a 256x128 re-ID crop leaves an 8x4 map after layer4, on which a 7x7 pool
  fails (and on larger maps it silently averages only the top-left 7x7 window).
* the IN/BN split is done with explicit sizes ``(half, planes - half)``, so a ratio other
  than 0.5 works (the published ``torch.split(x, half, 1)`` makes more than two chunks when
  ``half < planes / 2``).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union

import torch
from torch import nn

__all__ = [
    "IBN",
    "BasicBlock",
    "Bottleneck",
    "ResNetIBN",
    "resnet18_ibn_a",
    "resnet34_ibn_a",
    "resnet50_ibn_a",
    "resnet101_ibn_a",
    "resnet50_ibn_b",
    "load_pretrained",
]

IBNType = Literal["a", "b", None]


class IBN(nn.Module):
    """Instance norm on the first ``int(planes * ratio)`` channels, batch norm on the rest.

    Taught in notebook 07 (written out there, proved equal to this module by
    ``tests/test_ibn.py``). Channel order is kept: output channels ``[:half]`` are the IN'd
    input channels ``[:half]``, channels ``[half:]`` the BN'd rest.

    Parameters
    ----------
    planes:
        Number of input channels.
    ratio:
        Fraction of channels given to IN (0.5 in IBN-Net).

    Attributes
    ----------
    half : int
        ``int(planes * ratio)``, the number of IN channels.
    IN : nn.InstanceNorm2d
        ``affine=True``, no running statistics: it uses each image's own statistics in
        training and eval alike.
    BN : nn.BatchNorm2d
        On the remaining ``planes - half`` channels.
    """

    def __init__(self, planes: int, ratio: float = 0.5) -> None:
        super().__init__()
        half = int(planes * ratio)
        if not 0 < half < planes:
            raise ValueError(
                f"IBN(planes={planes}, ratio={ratio}) gives {half} IN channels; both parts need at least one "
                f"channel (0 < int(planes * ratio) < planes)"
            )
        self.planes = planes
        self.half = half
        self.IN = nn.InstanceNorm2d(half, affine=True)
        self.BN = nn.BatchNorm2d(planes - half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.planes:
            raise ValueError(f"IBN({self.planes}) expects input (N, {self.planes}, H, W), got {tuple(x.shape)}")
        a, b = torch.split(x, (self.half, self.planes - self.half), dim=1)
        return torch.cat((self.IN(a.contiguous()), self.BN(b.contiguous())), dim=1)

    def extra_repr(self) -> str:
        return f"planes={self.planes}, half={self.half}"


def _check_ibn(ibn: object) -> None:
    if ibn not in ("a", "b", None):
        raise ValueError(f"ibn must be 'a', 'b' or None, got {ibn!r}")


class BasicBlock(nn.Module):
    """ResNet-18/34 block. ``ibn='a'``: ``bn1`` is an :class:`IBN`; ``ibn='b'``: IN after the residual sum.

    Registration order (conv1, bn1, relu, conv2, bn2, IN, downsample) is the published one,
    so state_dict keys come out in the published order.
    """

    expansion: int = 1

    def __init__(
        self, inplanes: int, planes: int, ibn: IBNType = None, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        _check_ibn(ibn)
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = IBN(planes) if ibn == "a" else nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.IN = nn.InstanceNorm2d(planes, affine=True) if ibn == "b" else None
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity
        if self.IN is not None:
            out = self.IN(out)
        return self.relu(out)


class Bottleneck(nn.Module):
    """ResNet-50/101 block (stride on the 3x3 conv, as torchvision and IBN-Net).

    ``ibn='a'``: ``bn1`` (after the first 1x1 conv) is an :class:`IBN`; ``ibn='b'``: an
    ``InstanceNorm2d(planes * 4, affine=True)`` named ``IN`` after the residual sum.
    Registration order: conv1, bn1, conv2, bn2, conv3, bn3, IN, relu, downsample.
    """

    expansion: int = 4

    def __init__(
        self, inplanes: int, planes: int, ibn: IBNType = None, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        _check_ibn(ibn)
        width = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = IBN(planes) if ibn == "a" else nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, width, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.IN = nn.InstanceNorm2d(width, affine=True) if ibn == "b" else None
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = out + identity
        if self.IN is not None:
            out = self.IN(out)
        return self.relu(out)


Block = Union[type[BasicBlock], type[Bottleneck]]


class ResNetIBN(nn.Module):
    """A ResNet whose stages use IBN blocks; the layout of torchvision's ``ResNet`` and of IBN-Net.

    Parameters
    ----------
    block:
        :class:`BasicBlock` or :class:`Bottleneck`.
    layers:
        Blocks per stage, e.g. ``(3, 4, 6, 3)`` for ResNet-50.
    ibn_cfg:
        IBN type per stage. IBN-a: ``('a', 'a', 'a', None)`` (every block of layer1-3, none
        in layer4, which holds the semantic features). IBN-b: ``('b', 'b', None, None)``:
        the stem's ``bn1`` becomes ``InstanceNorm2d(64, affine=True)`` and, in layer1 and
        layer2, only the *last* block gets an IN after its residual sum (the published rule).
    num_classes:
        Outputs of ``fc`` (1000 for ImageNet weights).
    last_stride:
        Stride of layer4; 1 is the re-ID "last stride" trick (twice the final map size). It
        changes no parameter shape, so pretrained weights still load.
    """

    def __init__(
        self,
        block: Block,
        layers: Sequence[int],
        ibn_cfg: Sequence[IBNType] = ("a", "a", "a", None),
        num_classes: int = 1000,
        last_stride: int = 2,
    ) -> None:
        super().__init__()
        if len(layers) != 4 or len(ibn_cfg) != 4:
            raise ValueError(f"layers and ibn_cfg need one entry per stage (4), got {list(layers)} and {list(ibn_cfg)}")
        for cfg in ibn_cfg:
            _check_ibn(cfg)
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1: nn.Module = nn.InstanceNorm2d(64, affine=True) if ibn_cfg[0] == "b" else nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1, ibn=ibn_cfg[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, ibn=ibn_cfg[1])
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, ibn=ibn_cfg[2])
        self.layer4 = self._make_layer(block, 512, layers[3], stride=last_stride, ibn=ibn_cfg[3])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        self.feature_dim = 512 * block.expansion

        for m in self.modules():  # the published (and torchvision's) initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int, ibn: IBNType) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        # IBN-a: every block of the stage. IBN-b: only the last block (never the first).
        def block_ibn(i: int) -> IBNType:
            if ibn == "b":
                return "b" if (i == blocks - 1 and i > 0) else None
            return ibn

        layers = [block(self.inplanes, planes, block_ibn(0), stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, block_ibn(i)) for i in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled feature vector ``(N, feature_dim)`` before ``fc`` (the re-ID embedding's input)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def resnet18_ibn_a(**kwargs: Any) -> ResNetIBN:
    """ResNet-18-IBN-a (BasicBlock, (2, 2, 2, 2)); keys of the published ``resnet18_ibn_a``."""
    return ResNetIBN(BasicBlock, (2, 2, 2, 2), ("a", "a", "a", None), **kwargs)


def resnet34_ibn_a(**kwargs: Any) -> ResNetIBN:
    """ResNet-34-IBN-a (BasicBlock, (3, 4, 6, 3)); keys of the published ``resnet34_ibn_a``."""
    return ResNetIBN(BasicBlock, (3, 4, 6, 3), ("a", "a", "a", None), **kwargs)


def resnet50_ibn_a(**kwargs: Any) -> ResNetIBN:
    """ResNet-50-IBN-a (Bottleneck, (3, 4, 6, 3)): the re-ID backbone of notebook 07.

    Exactly as many parameters as torchvision's ``resnet50`` (an IBN layer has one gamma and
    one beta per channel, like the BN it replaces); only the running-stat buffers shrink.
    """
    return ResNetIBN(Bottleneck, (3, 4, 6, 3), ("a", "a", "a", None), **kwargs)


def resnet101_ibn_a(**kwargs: Any) -> ResNetIBN:
    """ResNet-101-IBN-a (Bottleneck, (3, 4, 23, 3)); keys of the published ``resnet101_ibn_a``."""
    return ResNetIBN(Bottleneck, (3, 4, 23, 3), ("a", "a", "a", None), **kwargs)


def resnet50_ibn_b(**kwargs: Any) -> ResNetIBN:
    """ResNet-50-IBN-b: IN in the stem and after the last block of layer1 and of layer2."""
    return ResNetIBN(Bottleneck, (3, 4, 6, 3), ("b", "b", None, None), **kwargs)


def _unwrap_state_dict(obj: Any, path: str) -> Mapping[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        keys = list(obj)[:5] if isinstance(obj, Mapping) else type(obj).__name__
        raise TypeError(
            f"{path} holds neither a state_dict (names -> tensors) nor {{'state_dict': ...}}; found {keys}"
        )
    return obj


def _strip_prefix(sd: Mapping[str, torch.Tensor], prefix: str = "module.") -> "OrderedDict[str, torch.Tensor]":
    """Drop ``module.`` (left by ``nn.DataParallel``) from every key that has it, keeping BN version metadata."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict(
        (k[len(prefix):] if k.startswith(prefix) else k, v) for k, v in sd.items()
    )
    meta = getattr(sd, "_metadata", None)
    if meta is not None:
        out._metadata = OrderedDict(  # type: ignore[attr-defined]
            (k[len(prefix):] if k.startswith(prefix) else ("" if k == prefix.rstrip(".") else k), v)
            for k, v in meta.items()
        )
    return out


def _listing(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def load_pretrained(
    model: nn.Module, path: Union[str, os.PathLike], *, strict: bool = True
) -> "torch.nn.modules.module._IncompatibleKeys":
    """Load a local weight file (e.g. a released ``resnet50_ibn_a-d9d0bb7b.pth``) into ``model``.

    Used by notebook 07 and tested in ``tests/test_ibn.py`` with a file written to a temporary
    folder (no download happens here: fetch the file yourself and pass its path).

    The file is read with ``torch.load(..., weights_only=True)``, which refuses to run code
    stored in a pickle. It may hold a raw state_dict or a checkpoint ``{'state_dict': ...}``
    (the original IBN-Net release); a ``module.`` prefix left by ``nn.DataParallel`` is removed.

    Parameters
    ----------
    model:
        Loaded in place.
    path:
        The weight file.
    strict:
        Require exactly the model's keys and shapes (default). With ``strict=False`` keys
        that are missing or unexpected are skipped, but a shape mismatch is still an error.

    Returns
    -------
    torch.nn.modules.module._IncompatibleKeys
        ``missing_keys`` and ``unexpected_keys`` (both empty when ``strict=True``).

    Raises
    ------
    FileNotFoundError
        No such file.
    TypeError
        The file holds no state_dict.
    ValueError
        Missing or unexpected keys (``strict=True``), or a shape mismatch; the message
        lists them, before the model is touched.

    Notes
    -----
    Files saved before PyTorch 0.4.1 lack BN's ``num_batches_tracked``; PyTorch fills it
    with 0 when loading, so such a key is not reported as missing.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no weight file at {path!r}")
    sd = _strip_prefix(_unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True), path))
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    wrong_shape = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and sd[k].shape != own[k].shape
    ]
    problems = []
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatches: {_listing(wrong_shape)}")
    if strict and missing:
        problems.append(f"{len(missing)} keys missing from the file: {_listing(missing)}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected keys in the file: {_listing(unexpected)}")
    if problems:
        raise ValueError(
            f"{path} does not match {type(model).__name__} ({'strict' if strict else 'non-strict'} load): "
            + "; ".join(problems)
            + " -- is it the weight file of this architecture (e.g. resnet50_ibn_a vs resnet50_ibn_b)?"
        )
    return model.load_state_dict(sd, strict=strict)
