"""Training loops: the supervised source baseline (notebook 08) and ECN's trainer (notebooks 09-10).

:func:`train_source` is plain supervised re-ID training as ECN does it for its source
branch: identity classification with cross-entropy, SGD with Nesterov momentum 0.9 and
weight decay 5e-4, two learning rates (ECN: 0.01 for pretrained backbone layers, 0.1
for the new ones, see :func:`reidlab.models.param_groups`) and one step decay by 10x
(ECN: at epoch 40 of 60). It is a plain function, not a trainer class: everything it
depends on is in its signature, and it returns what happened as a dict of lists.

:func:`train_ecn` trains ECN (Zhong et al., "Invariance Matters: Exemplar Memory for Domain
Adaptive Person Re-identification", CVPR 2019) from an :class:`ECNConfig`, with checkpoints,
exact resume and CSV/JSON logs; ``python -m reidlab.ecn`` is its command line (:func:`main`).
One step, as in the paper's published ``trainers.py``::

    source batch (images, ids)  -> logits          -> L_src = cross-entropy
    target batch (images, index)-> tgt_feat        -> L_tgt = InvarianceLoss(tgt_feat, index, epoch)
    loss = (1 - lam) * L_src + lam * L_tgt          (lam = 0.3)

Which weighting: the paper's final loss is a convex combination, ``(1 - lam) * L_src +
lam * L_tgt`` with ``lam`` in (0, 1] (its Sec. 3.5, lam = 0.3; reading notes on the paper
remark on exactly this, a linear combination rather than the usual sum), and the published
code computes the same (``loss = (1 - self.lmd) * source_pid_loss + self.lmd * loss_un``).
This module implements that convex combination. The ``'source-only'`` switch trains
``L_src`` alone with weight 1 (ECN's baseline, ``lam = 0``) and loads no target batch.
Notebook 10 walks through the pipeline.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import random
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..files import atomic_save
from ..models import param_groups

if TYPE_CHECKING:
    from ..data.datasets import ReIDDataset

__all__ = [
    "train_source",
    "split_batch",
    "make_optimizer",
    "INVARIANCES",
    "ECNConfig",
    "ECNParts",
    "ECNResult",
    "load_domains",
    "build_ecn",
    "ecn_loss",
    "epoch_seed",
    "evaluate_model",
    "load_checkpoint",
    "train_ecn",
    "main",
]


def split_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, identity labels)`` from a loader's batch.

    Accepts the tuples of :class:`reidlab.data.loaders.ImageDataset` (``img, pid, camid,
    index``), plain ``(images, labels)`` pairs, or a mapping with ``'img'``/``'image'`` and
    ``'pid'``/``'label'`` keys.
    """
    if isinstance(batch, Mapping):
        img = batch.get("img", batch.get("image"))
        pid = batch.get("pid", batch.get("label"))
    elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
        img, pid = batch[0], batch[1]
    else:
        img = pid = None
    if not isinstance(img, torch.Tensor) or not isinstance(pid, torch.Tensor):
        raise TypeError(
            "a training batch must be (images, labels, ...) or a dict with 'img' and 'pid' tensors, "
            f"got {type(batch).__name__}"
        )
    return img, pid


def make_optimizer(
    model: nn.Module,
    *,
    lr_backbone: float,
    lr_new: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    nesterov: bool = True,
) -> torch.optim.SGD:
    """ECN's optimizer: SGD, Nesterov momentum 0.9, weight decay 5e-4, two learning rates."""
    return torch.optim.SGD(
        param_groups(model, lr_backbone, lr_new), lr=lr_new, momentum=momentum,
        weight_decay=weight_decay, nesterov=nesterov,
    )


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, Mapping):
        if "logits" not in out:
            raise KeyError("the model returned a dict without 'logits'")
        return out["logits"]
    return out


def train_source(
    model: nn.Module,
    loader: Iterable,
    *,
    epochs: int,
    lr_backbone: float,
    lr_new: float,
    device: str | torch.device = "cpu",
    step_size: int | None = None,
    gamma: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    label_smoothing: float = 0.0,
    amp: bool = False,
    progress: bool = True,
    desc: str = "source",
) -> dict[str, list[float]]:
    """Train ``model`` to classify the source identities; return the training history.

    Parameters
    ----------
    model:
        Returns logits, or a dict with ``'logits'`` in train mode (:class:`reidlab.models.ReIDNet`).
        Its ``train()`` is called at every epoch, so frozen BN layers must survive that
        (ReIDNet's do).
    loader:
        Yields batches accepted by :func:`split_batch`; one epoch is one pass.
    epochs, lr_backbone, lr_new:
        Length of training and the two learning rates (ECN: 60 epochs, 0.01, 0.1).
    step_size:
        Multiply both learning rates by ``gamma`` every ``step_size`` epochs; ``None``
        decays once, after two thirds of the epochs (ECN: epoch 40 of 60).
    label_smoothing:
        Passed to the cross-entropy (0: ECN's plain cross-entropy; 0.1: the strong baseline).
    amp:
        bf16 autocast, on CUDA only (ignored on the CPU so CPU runs stay exact).
    progress:
        Show a tqdm bar per epoch with the running loss.

    Returns
    -------
    dict
        ``'loss'`` and ``'acc'`` (mean training loss and accuracy per epoch), ``'lr'``
        (the new layers' rate per epoch) and ``'step_loss'`` (every step's loss).

    Notes
    -----
    Deterministic on the CPU for a fixed seed and loader order (``reidlab.lessons.setup`` turns
    on deterministic algorithms); a NaN loss stops training with a ``FloatingPointError``
    instead of silently wrecking the weights.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if step_size is None:
        step_size = max(1, math.ceil(epochs * 2 / 3))
    if step_size < 1:
        raise ValueError(f"step_size must be >= 1, got {step_size}")
    device = torch.device(device)
    model.to(device)
    optimizer = make_optimizer(model, lr_backbone=lr_backbone, lr_new=lr_new, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    use_amp = amp and device.type == "cuda"
    history: dict[str, list[float]] = {"loss": [], "acc": [], "lr": [], "step_loss": []}
    for epoch in range(epochs):
        model.train()
        total, correct, loss_sum = 0, 0, 0.0
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for batch in bar:
            img, pid = split_batch(batch)
            img, pid = img.to(device, non_blocking=True), pid.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits = _logits(model(img))
            loss = F.cross_entropy(logits.float(), pid, label_smoothing=label_smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n = pid.numel()
            total += n
            loss_sum += loss.item() * n
            correct += (logits.argmax(1) == pid).sum().item()
            history["step_loss"].append(loss.item())
            bar.set_postfix(loss=f"{loss_sum / total:.3f}")
        if total == 0:
            raise ValueError("the loader yielded no batch (with drop_last=True it needs at least one full batch)")
        history["loss"].append(loss_sum / total)
        history["acc"].append(correct / total)
        history["lr"].append(optimizer.param_groups[-1]["lr"])
        scheduler.step()
    return history


# =========================================================================================
# ECN: configuration
# =========================================================================================

#: The ablation switches of ECN's Table 1: E = exemplar invariance (the memory's
#: cross-entropy), C = camera invariance (camera-style target images), N = neighbourhood
#: invariance (the kNN soft target from ``knn_epoch`` on). ``'source-only'``: no target loss.
INVARIANCES: tuple[str, ...] = ("source-only", "E", "E+C", "E+N", "E+C+N")

#: Settings that may differ between a checkpoint and the run resuming it: they change how a
#: run is executed or reported, not what it computes on the CPU.
RESUME_FREE_KEYS: frozenset[str] = frozenset(
    {"eval_every", "eval_source", "device", "num_workers", "data_dir", "cache_images", "amp", "channels_last", "profile"}
)

CHECKPOINT_VERSION = 1
LOG_COLUMNS: tuple[str, ...] = (
    "epoch", "loss_src", "loss_tgt", "acc_src", "lr", "knn_precision", "seconds", "rank1", "mAP",
)
_CAMSTYLE_CHOICES = ("auto", "folder", "color")


def _normalise_invariance(value: str) -> str:
    key = str(value).strip().upper().replace(" ", "").replace("_", "-")
    for name in INVARIANCES:
        if key == name.upper():
            return name
    if key in ("SOURCE", "SOURCEONLY", "BASELINE"):
        return "source-only"
    raise ValueError(f"unknown invariance {value!r}; choose one of: {', '.join(INVARIANCES)}")


@dataclass
class ECNConfig:
    """Every setting of an ECN run, primitives only (it round-trips through JSON).

    Defaults are ECN's published settings (Zhong et al., CVPR 2019, and its code) at paper
    scale; :meth:`from_profile` takes the sizes (input size, backbone, batch, epochs, AMP,
    data-loader workers, synthetic world size) from a ``ci`` / ``laptop`` / ``gpu`` profile.

    Attributes
    ----------
    source, target:
        Dataset names (``'synth_market'``, ``'synth_duke'``, ``'market1501'``,
        ``'dukemtmc-reid'``, ``'msmt17'``) or paths of Market-1501-style folders.
    data_dir:
        Folder holding the named real datasets, and where synthetic worlds are generated
        (``None``: ``reidlab.files.data_dir() / 'synth'``). Must exist when given.
    synth_scale, synth_seed:
        Size (``'tiny'``, ``'small'``, ``'market'``) and seed of a synthetic world.
    arch, pretrained:
        Backbone and its initial weights: ``None`` (random: nothing can be downloaded in the
        tests), a torchvision weights name such as ``'IMAGENET1K_V1'`` or a local file.
    num_features, dropout, neck, freeze:
        ECN's head: FC-4096 + BN, dropout 0.5; conv1..layer2 frozen (``freeze='layer2'``;
        freezing only makes sense for ImageNet-initialised layers, use ``None`` otherwise).
    height, width, batch_size, random_erasing:
        Input size (ECN: 256x128), source batch size (the target batch has the same size,
        as in ECN: 128 + 128) and random-erasing probability (ECN: 0.5).
    epochs, lr_new, lr_backbone, momentum, nesterov, weight_decay, step_epoch, gamma:
        SGD with Nesterov momentum 0.9, weight decay 5e-4, lr 0.1 for new layers and 0.01
        for the backbone, both multiplied by ``gamma`` = 0.1 at ``step_epoch`` (``None``:
        ``round(40 / 60 * epochs)``, ECN's epoch 40 of 60).
    max_steps:
        Cap on the steps of an epoch (``None``: one full pass over the source loader, ECN's
        epoch). For quick experiments only.
    invariance:
        One of :data:`INVARIANCES`.
    lam, beta, alpha, knn, knn_epoch:
        ECN's loss weight (0.3), memory temperature (0.05), memory update rate per epoch
        (0.01), neighbours (6) and first kNN epoch (5, the code's ``epoch > 4``). ``knn`` is
        also the k of the kNN-precision measurement logged every epoch.
    camstyle:
        Where the camera-style target images come from when the invariance has C:
        ``'auto'`` (the ``bounding_box_train_camstyle`` folder if the target has one, else
        the colour-statistics stand-in of :mod:`reidlab.data.camstyle`), ``'folder'`` or
        ``'color'``.
    eval_every, eval_source:
        Evaluate on the target test set every N epochs (0: only at the end, which always
        happens); also evaluate on the source test set at the end.
    seed, device, amp, channels_last, num_workers, cache_images:
        Seed of everything; ``'auto'`` (CUDA when available), ``'cpu'``, ``'cuda'``, ...;
        bf16 autocast and channels_last (CUDA only, ignored on the CPU); data-loader worker
        processes; keep decoded images in memory.
    profile:
        Name of the profile the sizes came from (a label; ``None`` when set by hand).
    """

    # data
    source: str = "synth_market"
    target: str = "synth_duke"
    data_dir: str | None = None
    synth_scale: str = "market"
    synth_seed: int = 0
    # network
    arch: str = "resnet50"
    pretrained: str | None = None
    num_features: int = 4096
    dropout: float = 0.5
    neck: str = "no"
    freeze: str | None = "layer2"
    # input
    height: int = 256
    width: int = 128
    batch_size: int = 128
    random_erasing: float = 0.5
    # optimisation
    epochs: int = 60
    lr_new: float = 0.1
    lr_backbone: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    step_epoch: int | None = None
    gamma: float = 0.1
    max_steps: int | None = None
    # ECN
    invariance: str = "E+C+N"
    lam: float = 0.3
    beta: float = 0.05
    alpha: float = 0.01
    knn: int = 6
    knn_epoch: int = 5
    camstyle: str = "auto"
    # evaluation
    eval_every: int = 0
    eval_source: bool = True
    # run
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    num_workers: int = 8
    cache_images: bool = True
    profile: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    # --- construction ---------------------------------------------------------------

    @classmethod
    def from_profile(cls, profile: Any = None, **overrides: Any) -> "ECNConfig":
        """ECN's settings with the sizes of a profile, then ``overrides``.

        ``profile`` is a name (``'ci'``, ``'laptop'``, ``'gpu'``; ``None`` reads
        ``$REIDLAB_PROFILE``, see :func:`reidlab.profiles.resolve_profile`) or the
        :class:`reidlab.profiles.Profile` that ``reidlab.lessons.setup()`` returns (its seed is used).
        The profile gives ``height``, ``width``, ``arch``, ``batch_size``, ``epochs``,
        ``amp``, ``channels_last``, ``num_workers`` and ``synth_scale``.
        """
        from ..profiles import Profile, resolve_profile

        prof = profile if isinstance(profile, Profile) else resolve_profile(profile)
        values: dict[str, Any] = {
            "profile": prof.name,
            "height": prof.height,
            "width": prof.width,
            "arch": prof.arch,
            "batch_size": prof.batch_size,
            "epochs": prof.epochs,
            "amp": prof.amp,
            "channels_last": prof.channels_last,
            "num_workers": prof.num_workers,
            "synth_scale": prof.synth_scale,
        }
        if isinstance(profile, Profile):
            values["seed"] = prof.seed
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown ECNConfig setting(s): {', '.join(unknown)}")
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ECNConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown ECNConfig setting(s): {', '.join(unknown)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON-serialisable): what checkpoints and ``config.json`` hold."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "ECNConfig":
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    # --- derived settings ------------------------------------------------------------

    @property
    def decay_epoch(self) -> int:
        """The epoch (0-based) from which both learning rates are multiplied by ``gamma``."""
        return self.step_epoch if self.step_epoch is not None else max(1, round(40 / 60 * self.epochs))

    @property
    def uses_target(self) -> bool:
        """False for ``'source-only'``: no target batch, no memory."""
        return self.invariance != "source-only"

    @property
    def uses_camstyle(self) -> bool:
        return "C" in self.invariance.split("+")

    @property
    def uses_knn(self) -> bool:
        return "N" in self.invariance.split("+")

    @property
    def target_camstyle(self) -> str:
        """The ``camstyle=`` mode of the target loader (:func:`reidlab.data.loaders.target_train_dataset`)."""
        return self.camstyle if self.uses_camstyle else "none"

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad setting."""
        self.invariance = _normalise_invariance(self.invariance)

        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"ECNConfig: {msg}")

        for name in ("height", "width", "epochs", "num_features"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= (0 if name == "num_features" else 1),
                 f"{name} must be a positive int, got {getattr(self, name)!r}")
        need(isinstance(self.batch_size, int) and self.batch_size >= 2,
             f"batch_size must be an int >= 2 (BatchNorm needs more than one sample), got {self.batch_size!r}")
        need(0.0 <= self.lam <= 1.0, f"lam must lie in [0, 1] (weights (1 - lam) and lam), got {self.lam}")
        need(self.beta > 0, f"beta (a temperature) must be > 0, got {self.beta}")
        need(self.alpha >= 0, f"alpha must be >= 0, got {self.alpha}")
        need(self.alpha * (self.epochs - 1) <= 1.0,
             f"alpha * (epochs - 1) = {self.alpha * (self.epochs - 1):g} > 1: the memory update would stop being "
             "a moving average before the last epoch")
        need(isinstance(self.knn, int) and self.knn >= 0, f"knn must be an int >= 0, got {self.knn!r}")
        need(isinstance(self.knn_epoch, int) and self.knn_epoch >= 0,
             f"knn_epoch must be an int >= 0, got {self.knn_epoch!r}")
        need(not (self.uses_knn and self.knn == 0), f"invariance {self.invariance} needs knn >= 1")
        need(self.lr_new >= 0 and self.lr_backbone >= 0, "learning rates must be >= 0")
        need(0.0 <= self.dropout < 1.0, f"dropout must lie in [0, 1), got {self.dropout}")
        need(0.0 <= self.random_erasing <= 1.0, f"random_erasing must lie in [0, 1], got {self.random_erasing}")
        need(self.step_epoch is None or (isinstance(self.step_epoch, int) and self.step_epoch >= 1),
             f"step_epoch must be None or an int >= 1, got {self.step_epoch!r}")
        need(self.max_steps is None or (isinstance(self.max_steps, int) and self.max_steps >= 1),
             f"max_steps must be None or an int >= 1, got {self.max_steps!r}")
        need(isinstance(self.eval_every, int) and self.eval_every >= 0,
             f"eval_every must be an int >= 0, got {self.eval_every!r}")
        need(self.camstyle in _CAMSTYLE_CHOICES, f"camstyle={self.camstyle!r}: choose one of {', '.join(_CAMSTYLE_CHOICES)}")
        need(isinstance(self.seed, int) and self.seed >= 0, f"seed must be an int >= 0, got {self.seed!r}")
        need(isinstance(self.num_workers, int) and self.num_workers >= 0,
             f"num_workers must be >= 0, got {self.num_workers!r}")
        need(isinstance(self.device, str) and bool(self.device),
             f"device must be 'auto', 'cpu', 'cuda', ..., got {self.device!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                raise ValueError(
                    f"ECNConfig: device={self.device!r} is not a torch device (use 'auto', 'cpu', 'cuda', 'cuda:0')"
                ) from None


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but no CUDA device is available (use device='auto' or 'cpu')")
    return dev


# =========================================================================================
# ECN: building blocks
# =========================================================================================


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 32-bit seed for (run seed, epoch, stream), well mixed (NumPy's ``SeedSequence``).

    Every random draw of an epoch derives from it, so an epoch is a function of the run's
    seed, its number and the state the previous epoch left (weights, optimizer, memory): a
    run resumed from a checkpoint repeats exactly what the uninterrupted run would have done.
    """
    return int(np.random.SeedSequence([int(seed), int(epoch), int(stream)]).generate_state(1)[0])


def _seed_epoch(seed: int, epoch: int, loaders: Sequence[Any]) -> None:
    s = epoch_seed(seed, epoch, 0)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    for i, loader in enumerate(loaders, start=1):
        gen = getattr(loader, "generator", None)
        if gen is not None:
            gen.manual_seed(epoch_seed(seed, epoch, i))


def load_domains(config: ECNConfig) -> tuple[ReIDDataset, ReIDDataset]:
    """Parse (generating a synthetic world if needed) the source and the target dataset.

    Raises ``FileNotFoundError`` when ``config.data_dir`` is given but is not a folder, or a
    dataset cannot be found, and ``ValueError`` for a wrong layout (messages name the path).
    """
    from ..data.datasets import load_reid_dataset

    root = None
    if config.data_dir is not None:
        root = Path(config.data_dir).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(
                f"data dir not found: {root} (create it; real datasets are read from it and "
                "synthetic worlds are generated in it)"
            )
    kw = dict(scale=config.synth_scale, seed=config.synth_seed)
    source = load_reid_dataset(config.source, root, **kw)
    target = load_reid_dataset(config.target, root, **kw)
    return source, target


@dataclass
class ECNParts:
    """Everything :func:`train_ecn` trains with, built by :func:`build_ecn`."""

    model: nn.Module
    criterion: nn.Module | None  # reidlab.memory.InvarianceLoss; None for 'source-only'
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    source_train: Any  # DataLoader of (img, pid, camid, index)
    target_train: Any | None  # DataLoader of (img, index); None for 'source-only'
    query: Any  # target query / gallery loaders
    gallery: Any
    source_query: Any | None  # source query / gallery (None unless eval_source)
    source_gallery: Any | None
    device: torch.device
    amp: bool  # bf16 autocast in effect (CUDA and config.amp)
    true_ids: torch.Tensor  # hidden true identity of each target training image (measuring only)


def build_ecn(
    config: ECNConfig, source: ReIDDataset, target: ReIDDataset, device: str | torch.device | None = None
) -> ECNParts:
    """Model, memory loss, optimizer, LR schedule and loaders of an ECN run.

    * :class:`reidlab.models.ReIDNet` with ``num_classes = source.num_train_pids``;
      bf16 autocast and channels_last only on CUDA;
    * :class:`reidlab.memory.InvarianceLoss` with one slot per target training image and
      ``knn = config.knn`` when the invariance has N, else 0 (none for ``'source-only'``);
    * :func:`make_optimizer` (two lr groups) and a ``MultiStepLR`` at ``config.decay_epoch``;
    * the target training loader per :attr:`ECNConfig.target_camstyle` (plain images, the
      CamStyle folder or the colour stand-in), with no persistent workers so that reseeding
      the loaders' generators every epoch makes each epoch reproducible on its own.

    The model's initial weights come from the global RNG: seed it first (``train_ecn`` does).
    """
    from ..data.loaders import ImageDataset, make_loader, make_reid_loaders
    from ..data.transforms import build_test_transform
    from ..memory import InvarianceLoss
    from ..models import ReIDNet

    dev = _resolve_device(config.device) if device is None else torch.device(device)
    cuda = dev.type == "cuda"
    if config.pretrained is None and config.freeze is not None:
        warnings.warn(
            f"freeze={config.freeze!r} with pretrained=None freezes randomly initialised layers (ECN freezes "
            "ImageNet-trained ones): pass pretrained (e.g. 'IMAGENET1K_V1' or a weights file) or freeze=None",
            UserWarning,
            stacklevel=2,
        )
    model = ReIDNet(
        source.num_train_pids, config.arch, pretrained=config.pretrained, num_features=config.num_features,
        dropout=config.dropout, neck=config.neck, freeze=config.freeze, channels_last=config.channels_last and cuda,
    ).to(dev)
    criterion = None
    if config.uses_target:
        criterion = InvarianceLoss(
            len(target.train), model.num_features, beta=config.beta, knn=config.knn if config.uses_knn else 0,
            alpha=config.alpha, knn_epoch=config.knn_epoch,
        ).to(dev)
    optimizer = make_optimizer(
        model, lr_backbone=config.lr_backbone, lr_new=config.lr_new, momentum=config.momentum,
        weight_decay=config.weight_decay, nesterov=config.nesterov,
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[config.decay_epoch], gamma=config.gamma)
    loaders = make_reid_loaders(
        source, target, height=config.height, width=config.width, batch_size=config.batch_size,
        num_workers=config.num_workers, seed=config.seed, device=dev, camstyle=config.target_camstyle,
        random_erasing=config.random_erasing, cache=config.cache_images, persistent_workers=False,
        test_batch_size=2 * config.batch_size,
    )
    src_q = src_g = None
    if config.eval_source:
        tf = build_test_transform(config.height, config.width)
        kw = dict(num_workers=config.num_workers, device=dev, persistent_workers=False)
        src_q = make_loader(ImageDataset(source.query, tf, cache=config.cache_images), 2 * config.batch_size, **kw)
        src_g = make_loader(ImageDataset(source.gallery, tf, cache=config.cache_images), 2 * config.batch_size, **kw)
    return ECNParts(
        model=model, criterion=criterion, optimizer=optimizer, scheduler=scheduler,
        source_train=loaders.source_train, target_train=loaders.target_train if config.uses_target else None,
        query=loaders.query, gallery=loaders.gallery, source_query=src_q, source_gallery=src_g,
        device=dev, amp=bool(config.amp and cuda),
        true_ids=torch.as_tensor(list(target.train_original_pids), dtype=torch.long),
    )


def ecn_loss(loss_src: torch.Tensor, loss_tgt: torch.Tensor | None, lam: float) -> torch.Tensor:
    """ECN's total loss: ``(1 - lam) * loss_src + lam * loss_tgt``; ``loss_src`` alone without a target loss."""
    if loss_tgt is None:
        return loss_src
    return (1.0 - lam) * loss_src + lam * loss_tgt


def evaluate_model(
    model: nn.Module,
    query_loader: Iterable,
    gallery_loader: Iterable,
    *,
    device: str | torch.device | None = None,
    amp: bool = False,
) -> dict[str, float]:
    """Market-protocol rank-1/5/10, mAP and mINP (fractions) of ``model`` on a query/gallery pair.

    ``model`` returns its test feature in eval mode (ReIDNet: L2-normalised pool5, as ECN
    tests); distances are euclidean (:mod:`reidlab.evaluation`, notebook 08).
    """
    from ..evaluation import evaluate_rank, extract_features, pairwise_distance

    dev = torch.device(device) if device is not None else next(model.parameters()).device
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp and dev.type == "cuda"):
        q = extract_features(model, query_loader, dev, labels=True)
        g = extract_features(model, gallery_loader, dev, labels=True)
    res = evaluate_rank(pairwise_distance(q.features, g.features), q.pids, g.pids, q.camids, g.camids, max_rank=10)
    return {
        "rank1": float(res.cmc[0]), "rank5": float(res.cmc[4]), "rank10": float(res.cmc[9]),
        "mAP": float(res.mAP), "mINP": float(res.mINP),
    }


def _next_target(it: Iterator | None, loader: Any) -> tuple[Any, Iterator]:
    """Next target batch; restart the loader when it is exhausted (ECN cycles the target)."""
    if it is not None:
        try:
            return next(it), it
        except StopIteration:
            pass
    it = iter(loader)
    try:
        return next(it), it
    except StopIteration:
        raise ValueError(
            "the target loader yields no batch: fewer target training images than batch_size (with drop_last)"
        ) from None


def _train_epoch(parts: ECNParts, config: ECNConfig, epoch: int, progress: bool) -> dict[str, Any]:
    """One ECN epoch: one pass over the source loader (or ``max_steps``), the target cycled."""
    model, crit, opt = parts.model, parts.criterion, parts.optimizer
    dev = parts.device
    _seed_epoch(config.seed, epoch, [parts.source_train, parts.target_train])
    model.train()
    steps = len(parts.source_train)
    if config.max_steps is not None:
        steps = min(steps, config.max_steps)
    if steps == 0:
        raise ValueError(
            f"the source loader yields no batch: fewer source training images than batch_size={config.batch_size}"
        )
    lr = opt.param_groups[-1]["lr"]
    sums = {"src": torch.zeros((), device=dev), "tgt": torch.zeros((), device=dev), "correct": torch.zeros((), device=dev)}
    seen = 0
    t0 = time.perf_counter()
    src_iter = iter(parts.source_train)
    tgt_iter: Iterator | None = None
    desc = f"ECN {config.invariance} epoch {epoch + 1}/{config.epochs}"
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False)
    try:
        for step in range(steps):
            img, pid = split_batch(next(src_iter))
            img, pid = img.to(dev, non_blocking=True), pid.to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=parts.amp):
                logits = _logits(model(img))
            loss_src = F.cross_entropy(logits.float(), pid)
            loss_tgt = None
            if crit is not None:
                batch, tgt_iter = _next_target(tgt_iter, parts.target_train)
                t_img, t_idx = batch[0].to(dev, non_blocking=True), batch[1].to(dev, non_blocking=True)
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=parts.amp):
                    tgt_feat = model(t_img)["tgt_feat"]
                loss_tgt = crit(tgt_feat.float(), t_idx, epoch)
            loss = ecn_loss(loss_src, loss_tgt, config.lam)
            value = loss.item()
            if not math.isfinite(value):
                parts_txt = f"source {loss_src.item():.4g}" + ("" if loss_tgt is None else f", target {loss_tgt.item():.4g}")
                raise FloatingPointError(
                    f"ECN loss is {value} at epoch {epoch}, step {step} ({parts_txt}); lower the learning rates "
                    f"(lr_new={config.lr_new}, lr_backbone={config.lr_backbone}) or check the data"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()  # also updates the memory rows of this target batch
            opt.step()
            n = pid.numel()
            seen += n
            sums["src"] += loss_src.detach() * n
            if loss_tgt is not None:
                sums["tgt"] += loss_tgt.detach() * n
            sums["correct"] += (logits.detach().argmax(1) == pid).sum()
            bar.update(1)
            bar.set_postfix(loss=f"{value:.3f}")
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    knn = None
    if crit is not None and 1 <= config.knn < len(parts.true_ids):
        from ..memory import knn_precision

        knn = float(knn_precision(crit.memory, parts.true_ids.to(crit.memory.device), config.knn))
    return {
        "epoch": epoch,
        "loss_src": sums["src"].item() / seen,
        "loss_tgt": sums["tgt"].item() / seen if crit is not None else None,
        "acc_src": sums["correct"].item() / seen,
        "lr": lr,
        "knn_precision": knn,
        "seconds": seconds,
        "rank1": None,
        "mAP": None,
    }


# =========================================================================================
# ECN: checkpoints and logs
# =========================================================================================


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a :func:`train_ecn` checkpoint with ``weights_only=True`` (tensors and primitives only)."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}") from None
    except Exception as err:  # unpickling errors come in many types
        raise ValueError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from None
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION or "config" not in ckpt:
        raise ValueError(f"{path} is not a reidlab ECN checkpoint (version {CHECKPOINT_VERSION})")
    return ckpt


def _config_differences(saved: Mapping[str, Any], config: ECNConfig) -> list[str]:
    now = config.to_dict()
    keys = sorted((set(saved) | set(now)) - RESUME_FREE_KEYS)
    return [k for k in keys if saved.get(k, "<missing>") != now.get(k, "<missing>")]


def _check_resumable(ckpt: Mapping[str, Any], config: ECNConfig, path: Path) -> None:
    diff = _config_differences(ckpt["config"], config)
    if diff:
        shown = ", ".join(
            f"{k} ({ckpt['config'].get(k, '<missing>')!r} in the checkpoint, {getattr(config, k, '<missing>')!r} now)"
            for k in diff
        )
        raise ValueError(
            f"checkpoint {path} was written with different settings: {shown}; "
            "use the same settings to resume, another output folder, or --no-resume (resume=False) to start over"
        )


def _restore(parts: ECNParts, ckpt: Mapping[str, Any], path: Path) -> None:
    def load(module: Any, state: Any, what: str) -> None:
        try:
            module.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(
                f"checkpoint {path} does not fit this run's {what} (a different model shape or data?): {first}"
            ) from None

    load(parts.model, ckpt["model"], "model")
    if parts.criterion is not None:
        load(parts.criterion, ckpt["criterion"], "memory")
    load(parts.optimizer, ckpt["optimizer"], "optimizer")
    load(parts.scheduler, ckpt["scheduler"], "LR schedule")


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_logs(out: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LOG_COLUMNS)
    for row in history:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in LOG_COLUMNS])
    _atomic_write_text(out / "log.csv", buf.getvalue())
    _atomic_write_text(out / "history.json", json.dumps(history, indent=1) + "\n")


@contextlib.contextmanager
def _backend_flags(device: torch.device):
    """cudnn.benchmark on CUDA; deterministic algorithms on the CPU; restored afterwards."""
    if device.type == "cuda":
        prev = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            yield
        finally:
            torch.backends.cudnn.benchmark = prev
    else:
        prev_on = torch.are_deterministic_algorithms_enabled()
        prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(prev_on, warn_only=prev_warn)


# =========================================================================================
# ECN: the trainer
# =========================================================================================


@dataclass
class ECNResult:
    """What :func:`train_ecn` returns.

    ``history`` has one dict per epoch (the columns of ``log.csv``); ``metrics`` the final
    target-domain test metrics (``rank1``, ``rank5``, ``rank10``, ``mAP``, ``mINP``, fractions)
    and, with ``eval_source``, the same for the source domain prefixed ``source_``.
    """

    config: ECNConfig
    history: list[dict[str, Any]]
    metrics: dict[str, float]
    model: nn.Module
    criterion: nn.Module | None
    out_dir: Path = field(default_factory=Path)


EpochCallback = Callable[[int, nn.Module, "nn.Module | None", dict], None]


def train_ecn(
    config: ECNConfig | Mapping[str, Any],
    out_dir: str | os.PathLike,
    *,
    resume: bool = True,
    progress: bool = True,
    callback: EpochCallback | None = None,
) -> ECNResult:
    """Train ECN as configured, checkpointing every epoch into ``out_dir``; return the result.

    Parameters
    ----------
    config:
        An :class:`ECNConfig` (or its dict).
    out_dir:
        Gets ``checkpoint.pt`` (model, optimizer, LR schedule, memory, epoch, history and
        config; written atomically after every epoch, read with ``weights_only=True``),
        ``log.csv`` and ``history.json`` (one row per epoch: ``epoch`` (0-based, as the
        memory counts), ``loss_src``, ``loss_tgt``, ``acc_src``, ``lr`` (new layers),
        ``knn_precision`` (of the memory against the target's true ids, which training
        never sees), ``seconds`` (training time), ``rank1`` and ``mAP`` when evaluated),
        ``metrics.json`` (final test metrics) and ``config.json``.
    resume:
        Continue from ``out_dir/checkpoint.pt`` when it exists (a finished run is returned
        without training). Its settings must equal ``config`` except those in
        :data:`RESUME_FREE_KEYS`; otherwise ``ValueError`` names the differing ones.
        ``False`` starts over and replaces what ``out_dir`` holds.
    progress:
        A tqdm bar per epoch.
    callback:
        ``callback(epoch, model, criterion, row)`` after each epoch's checkpoint (e.g. to
        plot in a notebook). An exception raised there stops training; the checkpoint of
        that epoch is already written, so a later call resumes after it.

    Notes
    -----
    Exact resume: each epoch starts by reseeding Python's, NumPy's and PyTorch's generators
    and both training loaders' generators from (seed, epoch) (:func:`epoch_seed`), and the
    target loader is restarted every epoch, so an epoch depends only on the state the
    checkpoint holds. On the CPU a run killed after epoch k and resumed ends with the same
    bits as an uninterrupted one (tested). On CUDA, cuDNN autotuning and atomics make runs
    differ slightly. A non-finite loss raises ``FloatingPointError`` before the step is
    taken (so the last checkpoint stays clean).
    """
    if isinstance(config, Mapping):
        config = ECNConfig.from_dict(config)
    config.validate()
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    ckpt = None
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        _check_resumable(ckpt, config, ckpt_path)
    elif not resume:
        for name in ("checkpoint.pt", "metrics.json", "log.csv", "history.json"):
            (out / name).unlink(missing_ok=True)
    device = _resolve_device(config.device)
    source, target = load_domains(config)
    _atomic_write_text(out / "config.json", json.dumps(config.to_dict(), indent=1) + "\n")

    with _backend_flags(device):
        random.seed(config.seed)
        np.random.seed(config.seed)
        torch.manual_seed(config.seed)
        parts = build_ecn(config, source, target, device)
        history: list[dict[str, Any]] = []
        metrics: dict[str, float] = {}
        start = 0
        if ckpt is not None:
            shapes = {"num_classes": source.num_train_pids, "num_samples": len(target.train)}
            for key, now in shapes.items():
                if key in ckpt and ckpt[key] != now:
                    raise ValueError(
                        f"checkpoint {ckpt_path} does not fit this data: {key} {ckpt[key]} in the checkpoint, {now} now "
                        "(a different model shape: was the dataset changed?)"
                    )
            _restore(parts, ckpt, ckpt_path)
            history = [dict(r) for r in ckpt["history"]]
            metrics = dict(ckpt.get("metrics") or {})
            start = int(ckpt["epoch"]) + 1

        for epoch in range(start, config.epochs):
            row = _train_epoch(parts, config, epoch, progress)
            parts.scheduler.step()
            last = epoch == config.epochs - 1
            if last or (config.eval_every > 0 and (epoch + 1) % config.eval_every == 0):
                res = evaluate_model(parts.model, parts.query, parts.gallery, device=device, amp=parts.amp)
                row["rank1"], row["mAP"] = res["rank1"], res["mAP"]
                if last:
                    metrics = res
                    if parts.source_query is not None:
                        src = evaluate_model(
                            parts.model, parts.source_query, parts.source_gallery, device=device, amp=parts.amp
                        )
                        metrics.update({f"source_{k}": v for k, v in src.items()})
            history.append(row)
            atomic_save(
                {
                    "version": CHECKPOINT_VERSION,
                    "epoch": epoch,
                    "config": config.to_dict(),
                    "num_classes": source.num_train_pids,
                    "num_samples": len(target.train),
                    "model": parts.model.state_dict(),
                    "optimizer": parts.optimizer.state_dict(),
                    "scheduler": parts.scheduler.state_dict(),
                    "criterion": parts.criterion.state_dict() if parts.criterion is not None else {},
                    "history": history,
                    "metrics": metrics if last else {},
                },
                ckpt_path,
            )
            _write_logs(out, history)
            if callback is not None:
                callback(epoch, parts.model, parts.criterion, dict(row))

        if not metrics:  # a finished checkpoint without metrics (should not happen): evaluate now
            metrics = evaluate_model(parts.model, parts.query, parts.gallery, device=device, amp=parts.amp)
        _write_logs(out, history)
        _atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    parts.model.eval()
    return ECNResult(
        config=config, history=history, metrics=metrics, model=parts.model, criterion=parts.criterion, out_dir=out
    )


# =========================================================================================
# ECN: command line
# =========================================================================================


def _parse_setting(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ValueError(f"--set expects KEY=VALUE, got {text!r}")
    key, raw = (part.strip() for part in text.split("=", 1))
    fields = {f.name: f for f in dataclasses.fields(ECNConfig)}
    if key not in fields:
        raise ValueError(f"--set {key}: unknown setting; known: {', '.join(fields)}")
    default = fields[key].default
    low = raw.lower()
    if low in ("none", "null"):
        return key, None
    if isinstance(default, bool):
        if low in ("1", "true", "yes", "on"):
            return key, True
        if low in ("0", "false", "no", "off"):
            return key, False
        raise ValueError(f"--set {key}={raw}: expected true or false")
    try:
        if isinstance(default, int) or (default is None and key in ("step_epoch", "max_steps")):
            return key, int(raw)
        if isinstance(default, float):
            return key, float(raw)
    except ValueError:
        raise ValueError(f"--set {key}={raw}: expected a number") from None
    return key, raw


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m reidlab.ecn",
        description="Train ECN (Zhong et al., CVPR 2019) for domain-adaptive person re-ID: labelled source, "
        "unlabelled target. Writes checkpoint.pt, log.csv, history.json, metrics.json and config.json to --out "
        "and resumes from its checkpoint when rerun.",
    )
    p.add_argument("--source", default="synth_market", help="source dataset name or folder (default: synth_market)")
    p.add_argument("--target", default="synth_duke", help="target dataset name or folder (default: synth_duke)")
    p.add_argument("--data-dir", help="folder holding the datasets (synthetic worlds are generated in it)")
    p.add_argument("--profile", help="ci | laptop | gpu (sizes; default: $REIDLAB_PROFILE, else gpu with CUDA, else laptop)")
    p.add_argument("--out", required=True, help="output folder (checkpoint and logs)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--invariance", help=f"one of {', '.join(INVARIANCES)} (default E+C+N)")
    p.add_argument("--seed", type=int)
    p.add_argument("--eval-every", type=int, help="evaluate on the target test set every N epochs (0: at the end only)")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--pretrained", help="torchvision weights name (e.g. IMAGENET1K_V1) or a local weights file")
    p.add_argument("--arch")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--num-features", type=int)
    p.add_argument("--lr-new", type=float)
    p.add_argument("--lr-backbone", type=float)
    p.add_argument("--lam", type=float)
    p.add_argument("--max-steps", type=int, help="cap on steps per epoch (quick runs)")
    p.add_argument("--synth-scale", help="tiny | small | market (synthetic worlds)")
    p.add_argument("--num-workers", type=int)
    p.add_argument("--camstyle", help="auto | folder | color (where camera-style target images come from)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="any other ECNConfig setting (repeatable)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    return p


def _config_from_args(args: argparse.Namespace) -> ECNConfig:
    overrides: dict[str, Any] = {}
    for key in (
        "source", "target", "data_dir", "epochs", "invariance", "seed", "eval_every", "device", "pretrained", "arch",
        "batch_size", "height", "width", "num_features", "lr_new", "lr_backbone", "lam", "max_steps", "synth_scale",
        "num_workers", "camstyle",
    ):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    for text in args.set:
        key, value = _parse_setting(text)
        overrides[key] = value
    return ECNConfig.from_profile(args.profile, **overrides)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m reidlab.ecn ...``: train (or resume) ECN; returns the exit code.

    0 on success (a one-line summary on stdout); 2 for bad input (missing data dir or
    dataset, mismatched checkpoint, bad setting, non-finite loss) with a one-line
    ``error: ...`` on stderr; 130 when interrupted (rerun the same command to resume).
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage and the error
        return int(exc.code or 0)
    try:
        config = _config_from_args(args)
        if args.data_dir is not None and not Path(args.data_dir).expanduser().is_dir():
            raise FileNotFoundError(f"data dir not found: {args.data_dir}")

        def report(epoch: int, model: nn.Module, criterion: Any, row: dict) -> None:
            if args.quiet:
                return
            parts = [
                f"epoch {epoch + 1}/{config.epochs}", f"loss_src {row['loss_src']:.3f}",
                "" if row["loss_tgt"] is None else f"loss_tgt {row['loss_tgt']:.3f}",
                f"acc_src {_pct(row['acc_src'])}",
                "" if row["knn_precision"] is None else f"knn_prec {_pct(row['knn_precision'])}",
                "" if row["rank1"] is None else f"rank-1 {_pct(row['rank1'])} mAP {_pct(row['mAP'])}",
                f"{row['seconds']:.1f}s",
            ]
            print("  ".join(p for p in parts if p), file=sys.stderr, flush=True)

        result = train_ecn(config, args.out, resume=not args.no_resume, progress=not args.quiet, callback=report)
    except KeyboardInterrupt:
        print(f"interrupted; rerun the same command to resume from {args.out}/checkpoint.pt", file=sys.stderr)
        return 130
    except (FileNotFoundError, NotADirectoryError, ValueError, FloatingPointError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    m = result.metrics
    src = f"; source rank-1 {_pct(m['source_rank1'])} mAP {_pct(m['source_mAP'])}" if "source_rank1" in m else ""
    print(
        f"ECN {config.invariance} {config.source} -> {config.target}: target rank-1 {_pct(m['rank1'])} "
        f"mAP {_pct(m['mAP'])} after {len(result.history)} epochs{src} ({args.out})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
