"""ReIDNet: the re-ID network of ECN (Zhong et al., CVPR 2019), with a BNNeck option.

Notebook 08 trains it as a supervised baseline (``neck='no'`` vs ``neck='bnneck'``);
notebooks 09-10 train it with ECN's exemplar memory. The layout follows ECN's published
``reid/models/resnet.py``::

    image -> ResNet conv1..layer4 -> global average pool           -> 'pool5' (test feature)
          -> FC(num_features=4096) -> BN1d                          -> 'embed'
               |-> L2-normalise -> dropout(0.5)                     -> 'tgt_feat' (memory feature)
               '-> ReLU -> dropout(0.5) -> Linear(num_classes)      -> 'logits' (source ids)

Choices, and why (each checked against ECN's code):

* **Last stride 2** by default. ECN builds the backbone with ``torchvision.models.resnetXX``
  unchanged, so layer4 keeps stride 2 (a 256x128 image gives an 8x4 map). The "last stride
  1" trick of the strong re-ID baseline (Luo et al. 2019) and torchreid is available as
  ``last_stride=1`` (16x8 map, ~4x the layer4 compute).
* **conv1..layer2 frozen** (``freeze='layer2'``): ECN sets ``requires_grad=False`` on them
  *and* calls ``eval()`` on their BN layers at every epoch. We keep *all* their BN layers
  (24 in ResNet-50) in eval at every :meth:`ReIDNet.train` call; ECN's name filter
  (``'bn' in name``) only catches 22 of them and lets the two ``downsample.1`` BNs keep
  updating their running statistics, which notebook 05 measures. Freezing only makes sense
  for pretrained layers: ECN's are ImageNet's; where nothing can be downloaded, the series
  pretrains its own (:mod:`reidlab.ecn.pretrain`, ``pretrained='synthetic'``, notebook 08). A
  network trained from scratch uses ``freeze=None``.
* **Test feature**: ECN tests on ``pool5``, L2-normalised (its ``output_feature='pool5'``
  branch). In eval mode :meth:`ReIDNet.forward` returns the L2-normalised ``pool5`` for
  ``neck='no'`` and the L2-normalised BN'd feature for ``neck='bnneck'`` (the strong
  baseline's "after the neck" choice); ``test_feature`` overrides it. On unit vectors
  euclidean distance ranks exactly like cosine distance.
* **Initialisation** as in ECN: the FC gets Kaiming (fan_out), BN1d weight 1 / bias 0,
  the classifier N(0, 0.001); the backbone keeps torchvision's initialisation.

``neck='bnneck'`` (a blog post on ResNet-IBN-a re-ID baselines, and Luo et al.): ``pool5`` (or the FC
output when ``num_features > 0``) goes through a ``BatchNorm1d`` whose bias is frozen at 0,
and a bias-free classifier reads the BN'd feature. The feature *before* the BN ('feat')
is the one a triplet loss would use; the BN'd one ('embed') feeds the classifier and is
the default test feature.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from . import ibn as _ibn
from .bn import set_bn_eval

__all__ = [
    "ReIDNet", "LoadReport", "build_backbone", "load_matching", "param_groups", "count_parameters", "resolve_weights",
    "ARCHS", "TORCHVISION_ARCHS", "IBN_ARCHS", "FREEZE_POINTS",
]

log = logging.getLogger(__name__)

#: Backbones ReIDNet accepts with ImageNet weights from torchvision (builders in ``torchvision.models``).
TORCHVISION_ARCHS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50")
#: IBN-a backbones (builders in :mod:`reidlab.ibn`; notebook 07). Weights only from a local file.
IBN_ARCHS: tuple[str, ...] = ("resnet18_ibn_a", "resnet34_ibn_a", "resnet50_ibn_a")
#: Every backbone ReIDNet accepts.
ARCHS: tuple[str, ...] = TORCHVISION_ARCHS + IBN_ARCHS
#: ``freeze=`` choices: everything up to and including this stage is frozen.
FREEZE_POINTS: tuple[str, ...] = ("conv1", "layer1", "layer2", "layer3")
_STAGES: tuple[str, ...] = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
_NECKS: tuple[str, ...] = ("no", "bnneck")
_TEST_FEATURES: tuple[str, ...] = ("pool5", "feat", "embed", "tgt_feat")

PretrainedSpec = Union[None, str, os.PathLike, torchvision.models.WeightsEnum]


@dataclass
class LoadReport:
    """What :meth:`ReIDNet.load_param` did: keys copied, and keys skipped with the reason."""

    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"loaded {len(self.loaded)} tensors, skipped {len(self.skipped)}"


_NEXT_STAGE = {"conv1": "maxpool", "layer1": "layer2", "layer2": "layer3", "layer3": "layer4"}


def _keep_frozen_bn_eval(base: nn.Module, freeze: str) -> None:
    """Put the normalisation layers (BN and IN) of conv1..``freeze`` in ``base`` in eval mode.

    Uses :func:`reidlab.bn.set_bn_eval` (notebook 05), which selects BN layers by type and so
    catches all of them, including the ``downsample.1`` BNs that ECN's name filter misses and
    the BN half of IBN-a layers. ``set_bn_eval`` deliberately ignores instance norm (it keeps
    no batch statistics), so the IN half of IBN-a layers (notebook 07) is switched here. For
    an IN without running statistics the mode changes nothing in the output; putting it in
    eval keeps "a frozen stage is in eval" true as a whole, and correct for an IN that
    does track running statistics.
    """
    until = _NEXT_STAGE[freeze]
    set_bn_eval(base, until=until)
    for name, m in base.named_modules():
        if name == until:
            break
        if isinstance(m, nn.modules.instancenorm._InstanceNorm):
            m.eval()


def resolve_weights(arch: str, pretrained: PretrainedSpec) -> torchvision.models.WeightsEnum | str | None:
    """Turn ``pretrained`` into a torchvision weights enum, a local file path, or ``None``.

    Accepted: ``None``/``False`` (random init); a ``WeightsEnum`` member of ``arch``'s
    weights (e.g. ``ResNet50_Weights.IMAGENET1K_V1``); its name as a string
    (``"IMAGENET1K_V1"``, ``"DEFAULT"`` or ``"ResNet50_Weights.IMAGENET1K_V1"``); or the
    path of an existing local file (a ``state_dict`` of the torchvision ResNet or of a
    ReIDNet, read with ``weights_only=True``). Nothing is downloaded here; torchvision
    downloads an enum's file when the backbone is built (so never in the tests). An IBN-a
    ``arch`` accepts ``None`` or a local file only (torchvision ships no IBN weights).
    """
    if pretrained is None or pretrained is False:
        return None
    if arch in IBN_ARCHS:
        if isinstance(pretrained, (str, os.PathLike)) and os.path.isfile(os.fspath(pretrained)):
            return os.fspath(pretrained)
        raise ValueError(
            f"pretrained={pretrained!r} is not an existing file, and torchvision has no weights for {arch}; "
            f"pass None or the path of a local weight file (e.g. the released {arch}-*.pth of IBN-Net)"
        )
    enum_cls = torchvision.models.get_model_weights(arch)
    if isinstance(pretrained, torchvision.models.WeightsEnum):
        if not isinstance(pretrained, enum_cls):
            raise ValueError(f"pretrained={pretrained} are weights for another network; {arch} needs {enum_cls.__name__}")
        return pretrained
    if isinstance(pretrained, (str, os.PathLike)):
        text = os.fspath(pretrained)
        if os.path.isfile(text):
            return text
        name = text.split(".")[-1] if text.startswith(enum_cls.__name__ + ".") else text
        if name in enum_cls.__members__:
            return enum_cls[name]
        raise ValueError(
            f"pretrained={text!r} is neither an existing file nor a weights name of {arch} "
            f"(choose from {', '.join(enum_cls.__members__)})"
        )
    raise TypeError(f"pretrained must be None, a weights enum, a name or a file path, got {type(pretrained).__name__}")


def _check_args(num_classes, arch, num_features, dropout, neck, last_stride, freeze, test_feature) -> None:
    """``ValueError`` naming the first bad argument of :class:`ReIDNet`."""
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r} is not supported; choose one of {', '.join(ARCHS)}")
    if neck not in _NECKS:
        raise ValueError(f"neck={neck!r}: choose 'no' (ECN's head) or 'bnneck'")
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
    if freeze is not None and freeze not in FREEZE_POINTS:
        raise ValueError(f"freeze={freeze!r}: choose None or one of {', '.join(FREEZE_POINTS)}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if num_features < 0:
        raise ValueError(f"num_features must be >= 0, got {num_features}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if test_feature is not None and test_feature not in _TEST_FEATURES:
        raise ValueError(f"test_feature={test_feature!r}: choose one of {', '.join(_TEST_FEATURES)}")


def _is_backbone_key(key: str) -> bool:
    """A state_dict key of a ResNet backbone, bare (torchvision) or under ``base.`` (ReIDNet), ``module.`` stripped."""
    k = key.removeprefix("module.").removeprefix("base.")
    return k.split(".", 1)[0] in _STAGES


def build_backbone(
    arch: str, weights: torchvision.models.WeightsEnum | str | None = None, last_stride: int = 2
) -> tuple[nn.Module, int]:
    """The ResNet (or ResNet-IBN-a) of ``arch`` without its classifier, and its output width.

    ``weights`` (from :func:`resolve_weights`): a torchvision enum is loaded here (downloaded
    on first use); a file path is left to the caller (it may hold a whole ReIDNet).
    ``last_stride=1`` removes layer4's downsampling (16x8 maps for a 256x128 input).
    """
    if arch in IBN_ARCHS:
        base = getattr(_ibn, arch)()  # ResNetIBN is a torchvision ResNet, so the rest is shared
    else:
        builder = getattr(torchvision.models, arch)
        base = builder(weights=weights if isinstance(weights, torchvision.models.WeightsEnum) else None)
    in_planes = base.fc.in_features
    base.fc = nn.Identity()  # the classifier lives in the head; pool5 is what base returns
    if last_stride == 1:
        block = base.layer4[0]
        (block.conv2 if hasattr(block, "conv3") else block.conv1).stride = (1, 1)
        block.downsample[0].stride = (1, 1)
    return base, in_planes


class ReIDNet(nn.Module):
    """ECN's re-ID network on a torchvision ResNet (see the module docstring).

    Parameters
    ----------
    num_classes:
        Number of source identities (the classifier's outputs).
    arch:
        ``'resnet18'``, ``'resnet34'`` or ``'resnet50'`` (ECN: resnet50), or an IBN-a
        backbone ``'resnet18_ibn_a'``, ``'resnet34_ibn_a'``, ``'resnet50_ibn_a'``
        (:mod:`reidlab.ibn`, notebook 07).
    pretrained:
        ``None`` (random init, the default), a torchvision weights enum or its name, or a
        local file; see :func:`resolve_weights`. For an IBN-a backbone only ``None`` or a
        file, which must supply every backbone tensor (else ``ValueError`` naming the missing ones).
    num_features:
        Width of the FC embedding (ECN: 4096); 0 means no FC (the classifier reads pool5).
    dropout:
        Dropout rate of the source branch and of ``tgt_feat`` (ECN: 0.5).
    neck:
        ``'no'`` (ECN's head) or ``'bnneck'``.
    last_stride:
        Stride of layer4 (ECN: 2; the strong baseline: 1).
    freeze:
        Freeze conv1 up to and including this stage (``'layer2'`` in ECN); ``None``
        trains everything. Frozen parameters get ``requires_grad=False`` and their BN
        (and IBN-a's IN) layers stay in eval mode whenever the model is put in train mode.
    test_feature:
        What eval mode returns, L2-normalised: ``'pool5'``, ``'feat'``, ``'embed'`` or
        ``'tgt_feat'``; ``None`` picks ``'pool5'`` for ``neck='no'`` and ``'embed'`` for
        ``'bnneck'``.
    channels_last:
        Keep weights and inputs in channels_last memory format (faster convolutions on
        recent GPUs, especially with bf16 autocast).
    """

    def __init__(
        self,
        num_classes: int,
        arch: str = "resnet50",
        *,
        pretrained: PretrainedSpec = None,
        num_features: int = 4096,
        dropout: float = 0.5,
        neck: str = "no",
        last_stride: int = 2,
        freeze: str | None = "layer2",
        test_feature: str | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        _check_args(num_classes, arch, num_features, dropout, neck, last_stride, freeze, test_feature)
        self.arch, self.neck, self.num_classes = arch, neck, num_classes
        self.freeze, self.last_stride = freeze, last_stride
        self.test_feature = test_feature or ("pool5" if neck == "no" else "embed")
        self.channels_last = channels_last

        weights = resolve_weights(arch, pretrained)
        self.base, in_planes = build_backbone(arch, weights, last_stride)
        self._build_head(in_planes, num_features, num_classes, dropout)
        if isinstance(weights, str):
            self._load_pretrained_file(weights)
        self._apply_freeze()
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def _build_head(self, in_planes: int, num_features: int, num_classes: int, dropout: float) -> None:
        """FC-``num_features`` (Kaiming, fan_out) + BN1d, and the classifier (N(0, 0.001)), as ECN initialises them."""
        self.num_features = num_features or in_planes
        self.feat: nn.Linear | None
        self.feat_bn: nn.BatchNorm1d | None
        if num_features > 0:
            self.feat = nn.Linear(in_planes, num_features)
            nn.init.kaiming_normal_(self.feat.weight, mode="fan_out")
            nn.init.zeros_(self.feat.bias)
        else:
            self.feat = None
        if self.neck == "no":
            self.feat_bn = nn.BatchNorm1d(num_features) if num_features > 0 else None
            self.classifier = nn.Linear(self.num_features, num_classes)
            nn.init.zeros_(self.classifier.bias)
        else:
            self.feat_bn = nn.BatchNorm1d(self.num_features)
            self.feat_bn.bias.requires_grad_(False)  # "no shift": the bias stays 0
            self.classifier = nn.Linear(self.num_features, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)
        self.drop = nn.Dropout(dropout)

    def _load_pretrained_file(self, path: str) -> None:
        """Load a local weights file into the backbone, which must get every tensor.

        A file of another architecture (a ResNet-50 file for a ResNet-18, a plain ResNet for an
        IBN-a one) would fill the few tensors whose shapes happen to match and leave the rest
        random; that is refused, naming the tensors left unset.
        """
        report = self.load_param(path)
        if not report.loaded:
            raise ValueError(f"pretrained file {path} holds no tensor that fits {self.arch}: {report.skipped}")
        loaded = set(report.loaded)
        missing = [
            k for k in self.state_dict()
            if k.startswith("base.") and k not in loaded and not k.endswith("num_batches_tracked")
        ]
        surplus = [k for k, why in report.skipped.items() if why != "classifier" and _is_backbone_key(k)]
        # IBN-b: a released IBN-Net file reidlab does not build (notebook 07's checked output prints this)
        others = "a plain ResNet, IBN-b" if self.arch in IBN_ARCHS else "another depth, an IBN-a ResNet"
        for problem, keys in (("leaves {n} backbone tensors of {arch} unset", missing),
                              ("holds {n} backbone tensors {arch} has no place for", surplus)):
            if keys:
                shown = ", ".join(keys[:6]) + (f", ... ({len(keys) - 6} more)" if len(keys) > 6 else "")
                raise ValueError(
                    f"pretrained file {path} {problem.format(n=len(keys), arch=self.arch)}: {shown}. "
                    f"Is it the weight file of another network ({others})?"
                )

    # --- freezing ------------------------------------------------------------------------

    def frozen_modules(self) -> list[nn.Module]:
        """The backbone stages conv1..``freeze`` (empty when ``freeze`` is None)."""
        if self.freeze is None:
            return []
        last = "bn1" if self.freeze == "conv1" else self.freeze
        names = _STAGES[: _STAGES.index(last) + 1]
        return [getattr(self.base, n) for n in names]

    def _apply_freeze(self) -> None:
        for m in self.frozen_modules():
            m.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "ReIDNet":
        """Set train/eval mode; the frozen stages' BN (and IN) layers stay in eval either way.

        ``nn.Module.train()`` recurses into every child and would switch those BN layers
        back to batch statistics (and running-stat updates) at each epoch: the bug
        notebook 05 shows. Overriding ``train`` keeps them frozen however often a trainer
        calls it.
        """
        super().train(mode)
        if mode and self.freeze is not None:
            _keep_frozen_bn_eval(self.base, self.freeze)
        return self

    # --- forward -------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor] | torch.Tensor:
        """Train mode: a dict of features and logits. Eval mode: the L2-normalised test feature.

        The dict holds ``'pool5'`` (globally pooled backbone output), ``'feat'`` (before
        the BN: the FC output, or pool5 without an FC), ``'embed'`` (after the BN1d),
        ``'tgt_feat'`` (``embed`` L2-normalised then dropped out: what ECN stores in the
        exemplar memory) and ``'logits'``. The branch is on ``self.training``, never on
        whether gradients are enabled: ``torch.no_grad()`` is not ``eval()``.
        """
        if x.dim() != 4:
            raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(x.shape)}")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        pool5 = self.base(x)
        feat = self.feat(pool5) if self.feat is not None else pool5
        embed = self.feat_bn(feat) if self.feat_bn is not None else feat
        out = {"pool5": pool5, "feat": feat, "embed": embed}
        if not self.training:
            # tgt_feat without dropout (eval mode) is the normalised embed
            key = "embed" if self.test_feature == "tgt_feat" else self.test_feature
            return F.normalize(out[key], dim=1)
        out["tgt_feat"] = self.drop(F.normalize(embed, dim=1))
        if self.neck == "no":
            h = F.relu(embed) if self.feat is not None else embed
            out["logits"] = self.classifier(self.drop(h))
        else:
            out["logits"] = self.classifier(embed)
        return out

    # --- weights -------------------------------------------------------------------------

    def load_param(self, source: str | os.PathLike | Mapping[str, torch.Tensor], *, strict_shapes: bool = False) -> LoadReport:
        """Copy every tensor of ``source`` whose name and shape fit, except the classifier.

        ``source`` is a ``state_dict`` or a file holding one (read with
        ``weights_only=True``; a ``{'state_dict': ...}`` checkpoint is unwrapped). Keys may
        be ReIDNet keys (``base.layer1.0.conv1.weight``), plain torchvision ResNet keys
        (``layer1.0.conv1.weight``, mapped into ``base``) or carry DataParallel's
        ``module.`` prefix. The source's classifier (``classifier.*``, torchvision's
        ``fc.*``) is always skipped: its number of identities belongs to another dataset.
        Unlike a name filter like ``'fc' in key`` this cannot skip unrelated layers whose
        name happens to contain ``fc``.

        Returns a :class:`LoadReport`; skipped keys are also logged. With
        ``strict_shapes=True`` a shape mismatch raises ``ValueError`` instead.
        """
        return load_matching(self, source, strict_shapes=strict_shapes)


def load_matching(
    model: nn.Module, source: str | os.PathLike | Mapping[str, torch.Tensor], *, strict_shapes: bool = False
) -> LoadReport:
    """:meth:`ReIDNet.load_param` for any model whose backbone lives under ``base`` (see there)."""
    path = None
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no weights file at {path}")
        try:
            source = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ValueError(f"cannot read weights file {path} as a state_dict: {type(err).__name__}: {first}") from None
        if isinstance(source, Mapping) and "state_dict" in source and isinstance(source["state_dict"], Mapping):
            source = source["state_dict"]
    if not isinstance(source, Mapping):
        if path is not None:  # a file with the wrong content: its path and what it holds (one line in the CLI)
            raise ValueError(f"{path} holds a {type(source).__name__}, not a state_dict (a mapping of tensors)")
        raise TypeError(f"load_param expects a state_dict (a mapping of tensors), got {type(source).__name__}")
    own = model.state_dict()
    report = LoadReport()
    for key, value in source.items():
        k = key[len("module.") :] if key.startswith("module.") else key
        if k.startswith(("classifier.", "fc.", "base.fc.")):
            report.skipped[key] = "classifier"
            continue
        target = k if k in own else f"base.{k}" if f"base.{k}" in own else None
        if target is None:
            report.skipped[key] = "no such key"
            continue
        if not isinstance(value, torch.Tensor) or value.shape != own[target].shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            if strict_shapes:
                raise ValueError(f"{key}: shape {shape} does not fit {target} {tuple(own[target].shape)}")
            report.skipped[key] = f"shape {shape} != {tuple(own[target].shape)}"
            continue
        with torch.no_grad():
            own[target].copy_(value)
        report.loaded.append(target)
    if report.skipped:
        log.info("load_param: %s; skipped: %s", report, sorted(report.skipped))
    return report


def param_groups(model: nn.Module, lr_backbone: float, lr_new: float) -> list[dict[str, Any]]:
    """Two optimizer parameter groups: the (trainable) backbone and the new layers.

    ECN trains ImageNet-initialised backbone layers at a tenth of the new layers' rate
    (0.01 vs 0.1). Frozen parameters (``requires_grad=False``) are left out, so the
    optimizer neither decays nor stores momentum for them. A model without a ``base``
    attribute has everything in the ``new`` group. Each group carries a ``'name'`` for
    logging; a learning-rate scheduler scales each group's ``lr``, keeping the ratio.
    """
    base = getattr(model, "base", None)
    base_ids = {id(p) for p in base.parameters()} if isinstance(base, nn.Module) else set()
    backbone = [p for p in model.parameters() if id(p) in base_ids and p.requires_grad]
    new = [p for p in model.parameters() if id(p) not in base_ids and p.requires_grad]
    groups = [{"params": backbone, "lr": lr_backbone, "name": "backbone"}, {"params": new, "lr": lr_new, "name": "new"}]
    return [g for g in groups if g["params"]]


def count_parameters(params: Iterable[nn.Parameter]) -> int:
    """Number of scalars in ``params``."""
    return sum(p.numel() for p in params)
