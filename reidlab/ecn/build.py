"""What an ECN run trains with: the two datasets, then model, memory, optimizer, schedule and loaders.

:func:`load_domains` parses (or generates) the source and the target; :func:`build_ecn` builds the
:class:`reidlab.ecn.loop.ECNParts` that :func:`reidlab.ecn.train_ecn` trains epoch by epoch (and
that notebook 11 trains by hand, one :func:`reidlab.ecn.loop.ecn_epoch` at a time). Under
torchrun the parts are one process's share (:func:`_distribute`).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.datasets import ReIDDataset, load_reid_dataset
from ..data.loaders import ImageDataset, make_loader, make_reid_loaders
from ..data.transforms import build_test_transform
from ..distributed import all_gather_cat
from ..memory import InvarianceLoss
from ..models import ReIDNet
from ..runtime import resolve_device
from ..syncbn import convert_sync_bn
from .config import ECNConfig
from .loop import ECNForward, ECNParts, make_optimizer
from .pretrain import pretrained_weights, state_digest

__all__ = ["load_domains", "build_ecn", "build_model", "other_person_donors"]


def load_domains(config: ECNConfig) -> tuple[ReIDDataset, ReIDDataset]:
    """Parse (generating a synthetic world if needed) the source and the target dataset.

    Raises ``FileNotFoundError`` when ``config.data_dir`` is given but is not a folder, or a
    dataset cannot be found, and ``ValueError`` for a wrong layout (messages name the path).
    """
    root = None
    if config.data_dir is not None:
        root = Path(config.data_dir).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(
                f"data dir not found: {root} (create it; real datasets are read from it and "
                "synthetic worlds are generated in it)"
            )
    source = load_reid_dataset(config.source, root, scale=config.synth_scale, seed=config.synth_seed)
    target = load_reid_dataset(config.target, root, scale=config.synth_scale, seed=config.synth_seed)
    return source, target


def build_model(config: ECNConfig, num_classes: int, num_samples: int, device: torch.device,
                weights: str | None) -> tuple[ReIDNet, InvarianceLoss | None]:
    """ReIDNet starting from ``weights`` (what ``ReIDNet(pretrained=...)`` gets) and, unless
    source-only, its InvarianceLoss with one slot per target training image."""
    model = ReIDNet(
        num_classes, config.arch, pretrained=weights, num_features=config.num_features, dropout=config.dropout,
        neck=config.neck, freeze=config.freeze, channels_last=config.channels_last and device.type == "cuda",
    ).to(device)
    criterion = None
    if config.uses_target:
        criterion = InvarianceLoss(
            num_samples, model.num_features, beta=config.beta, knn=config.knn if config.uses_knn else 0,
            alpha=config.alpha, knn_epoch=config.knn_epoch, random_neighbours=config.control == "random-neighbours",
        ).to(device)
    return model, criterion


def build_ecn(
    config: ECNConfig, source: ReIDDataset, target: ReIDDataset, device: str | torch.device | None = None,
    rank: int = 0, *, weights: str | None = None,
) -> ECNParts:
    """Model, memory loss, optimizer, LR schedule and loaders of an ECN run.

    * :class:`reidlab.models.ReIDNet` with ``num_classes = source.num_train_pids``;
      bf16 autocast and channels_last only on CUDA;
    * :class:`reidlab.memory.InvarianceLoss` with one slot per target training image and
      ``knn = config.knn`` when the invariance has N, else 0 (none for ``'source-only'``);
    * :func:`reidlab.ecn.loop.make_optimizer` (two lr groups) and a ``MultiStepLR`` at
      ``config.decay_epoch``;
    * the target training loader per :attr:`ECNConfig.target_camstyle` (plain images, the
      CamStyle folder or the colour stand-in), with no persistent workers so that reseeding
      the loaders' generators every epoch makes each epoch reproducible on its own.

    With ``config.world_size > 1`` (inside a process group, as :func:`train_ecn` sets it up under
    torchrun) the parts are this process's: ``config.batch_per_process`` images per step from
    its share of each training set (``make_loader(shard=...)``: a ``DistributedSampler``), a memory that
    gathers every process's batch before it updates (:func:`reidlab.distributed.all_gather_cat`),
    the trainable BN layers synchronised with ``config.sync_bn``, and the step's forward pass
    wrapped in DistributedDataParallel.

    The model's initial weights come from the global RNG: seed it first (``train_ecn`` does).
    ``weights`` is what ``ReIDNet(pretrained=...)`` gets when the caller has already resolved
    ``config.pretrained`` with :func:`reidlab.ecn.pretrain.pretrained_weights` (``train_ecn`` does,
    once per run); by default it is resolved here.
    """
    dev = resolve_device(config.device) if device is None else torch.device(device)
    if config.pretrained is None and config.freeze is not None:
        warnings.warn(
            f"freeze={config.freeze!r} with pretrained=None freezes randomly initialised layers (ECN freezes "
            "ImageNet-trained ones): pass pretrained ('synthetic', made here, 'IMAGENET1K_V1' or a weights file) "
            "or freeze=None",
            UserWarning,
            stacklevel=2,
        )
    weights = pretrained_weights(config, dev) if weights is None else weights
    model, criterion = build_model(config, source.num_train_pids, len(target.train), dev, weights)
    digest = state_digest(model.base.state_dict())  # before any step: what the run starts from
    forward = _distribute(model, criterion, config, dev) if config.world_size > 1 else None
    optimizer = make_optimizer(
        model, lr_backbone=config.lr_backbone, lr_new=config.lr_new, momentum=config.momentum,
        weight_decay=config.weight_decay, nesterov=config.nesterov,
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[config.decay_epoch], gamma=config.gamma)
    loaders = make_reid_loaders(
        source, target, height=config.height, width=config.width, batch_size=config.batch_per_process,
        num_workers=config.num_workers, seed=config.seed, device=dev, camstyle=config.target_camstyle,
        random_erasing=config.random_erasing, cache=config.cache_images, persistent_workers=False,
        test_batch_size=2 * config.batch_size, shard=(rank, config.world_size) if config.world_size > 1 else None,
        donors=other_person_donors(target, config.seed) if config.control == "camstyle-other-person" else None,
    )
    src_q = src_g = None
    if config.eval_source:
        tf = build_test_transform(config.height, config.width)
        src_q, src_g = (make_loader(ImageDataset(items, tf, cache=config.cache_images), 2 * config.batch_size,
                                    num_workers=config.num_workers, device=dev, persistent_workers=False)
                        for items in (source.query, source.gallery))
    return ECNParts(
        model=model, criterion=criterion, optimizer=optimizer, scheduler=scheduler,
        source_train=loaders.source_train, target_train=loaders.target_train if config.uses_target_batch else None,
        query=loaders.query, gallery=loaders.gallery, source_query=src_q, source_gallery=src_g,
        device=dev, amp=bool(config.amp and dev.type == "cuda"),
        true_ids=torch.as_tensor(list(target.train_original_pids), dtype=torch.long), forward=forward, rank=rank,
        backbone_digest=digest,
    )


def other_person_donors(target: ReIDDataset, seed: int) -> list[int]:
    """For each target training image, another person's image (notebook 10's negative control for C).

    Drawn once per run from ``seed``, using the hidden true identities, which the control may use
    and ECN never does: each image's CamStyle views are replaced by the views of a fixed image of
    someone else (:class:`reidlab.data.loaders.CamStyleTargetDataset`'s ``donors``).
    """
    ids = np.asarray(list(target.train_original_pids))
    rng = np.random.default_rng([int(seed), 7])
    donors = []
    for i, pid in enumerate(ids):
        others = np.flatnonzero(ids != pid)
        if len(others) == 0:
            raise ValueError("the other-person control needs a target training set with at least two people")
        donors.append(int(rng.choice(others)))
    return donors


def _distribute(model: nn.Module, criterion: InvarianceLoss | None, config: ECNConfig, dev: torch.device) -> nn.Module:
    """Make ``model`` and ``criterion`` this process's share of a multi-process run; return the DDP forward.

    SyncBN replaces only the BN layers that train: ``model.train()`` first pins the frozen
    stages' BNs to eval, and those stay plain (they use running statistics, nothing to sync).
    ECN's separate source and target passes stay separate under SyncBN: each synchronises over
    every process's batch *of its own domain*, so each BN still normalises a domain with that
    domain's (now global) batch statistics.
    """
    if config.sync_bn:
        model.train()
        convert_sync_bn(model, trainable_only=True)
    if criterion is not None:
        criterion.gather = all_gather_cat
    return DistributedDataParallel(ECNForward(model), device_ids=[dev.index] if dev.type == "cuda" else None)
