"""An ECN run: build it, train it epoch by epoch with a checkpoint after each, resume it, log it.

:func:`train_ecn` is what the notebooks and ``python -m reidlab.ecn`` call. Around the loop of
:mod:`reidlab.ecn.loop` it adds what a run on a shared machine needs: every epoch ends with an
atomic checkpoint (model, optimizer, LR schedule, memory, history; read back with
``weights_only=True``), ``log.csv`` / ``history.json`` rows, and an exact resume (on the CPU a
run killed after epoch k and resumed ends with the same bits as an uninterrupted one).
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.datasets import ReIDDataset, load_reid_dataset
from ..data.loaders import ImageDataset, make_loader, make_reid_loaders
from ..data.transforms import build_test_transform
from ..distributed import DistInfo, all_gather_cat, barrier, init_from_env, main_first
from ..evaluation import evaluate_rank, extract_features, pairwise_distance
from ..files import atomic_write_text
from ..memory import InvarianceLoss
from ..models import ReIDNet
from ..profiles import resolve_profile
from ..runtime import resolve_device, seed_everything
from ..syncbn import convert_sync_bn
from .config import ECNConfig, knn_warning
from .loop import ECNForward, ecn_epoch, make_optimizer
from .pretrain import SYNTHETIC, state_digest, synthetic_weights
from .rundir import (
    check_out_dir,
    check_resumable,
    load_checkpoint,
    load_state,
    move_aside,
    prepare,
    run_lock,
    save_checkpoint,
    write_logs,
)

__all__ = [
    "ECNParts",
    "ECNResult",
    "load_domains",
    "build_ecn",
    "pretrained_weights",
    "other_person_donors",
    "evaluate_model",
    "train_ecn",
]



@dataclass
class ECNParts:
    """Everything :func:`train_ecn` trains with, built by :func:`build_ecn`."""

    model: nn.Module
    criterion: InvarianceLoss | None  # None for 'source-only'
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
    forward: nn.Module | None = None  # several processes: the DDP-wrapped ECNForward; None: one process
    rank: int = 0  # this process's rank (0 in a single process)
    #: :func:`reidlab.ecn.pretrain.state_digest` of the backbone the run started from (before any step);
    #: a resumed run keeps its checkpoint's, so the record names the start even if the cache was rebuilt
    backbone_digest: str | None = None


@dataclass
class ECNResult:
    """What :func:`train_ecn` returns.

    ``history`` has one dict per epoch (the columns of ``log.csv``); ``metrics`` the final
    target-domain test metrics (``rank1``, ``rank5``, ``rank10``, ``mAP``, ``mAP_trapezoid``, ``mINP``,
    fractions; :func:`evaluate_model`)
    and, with ``eval_source``, the same for the source domain prefixed ``source_``.
    ``distmat`` holds the target query x gallery distances those metrics were computed from
    (rows and columns in the order of the dataset's query and gallery lists), so that a caller
    can look at rank lists without extracting the features again; it is ``None`` for a run that
    was already finished and only loaded, and on every process but rank 0. ``out_dir`` is the run
    folder, ``None`` for a run trained in memory (``train_ecn(config, None)``).
    """

    config: ECNConfig
    history: list[dict[str, Any]]
    metrics: dict[str, float]
    model: nn.Module
    criterion: nn.Module | None
    out_dir: Path | None = None
    distmat: np.ndarray | None = None
    backbone_digest: str | None = None  # the start's weights (ECNParts.backbone_digest); None for an old checkpoint
    already_finished: bool = False  # the run folder held it finished: loaded, nothing trained or evaluated


EpochCallback = Callable[[int, nn.Module, "nn.Module | None", dict], None]


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
    kw = dict(scale=config.synth_scale, seed=config.synth_seed)
    return load_reid_dataset(config.source, root, **kw), load_reid_dataset(config.target, root, **kw)


def pretrained_weights(config: ECNConfig, device: str | torch.device = "cpu", *, progress: bool = True) -> str | None:
    """What ``ReIDNet(pretrained=...)`` gets for ``config.pretrained``.

    ``'synthetic'`` is the file of :func:`reidlab.ecn.pretrain.synthetic_weights` for this
    architecture, input size and profile (trained on ``device`` on first use, then cached in
    the data dir); anything else (``None``, a torchvision weights name, a file) is passed on.
    A config without a profile label takes the pretraining size of the profile
    :func:`reidlab.profiles.resolve_profile` picks.
    """
    if config.pretrained != SYNTHETIC:
        return config.pretrained
    profile = config.profile or resolve_profile().name
    return os.fspath(synthetic_weights(
        config.arch, height=config.height, width=config.width, profile=profile, device=device,
        root=config.data_dir, progress=progress,
    ))


def _build_model(config: ECNConfig, num_classes: int, num_samples: int, device: torch.device):
    """ReIDNet and (unless source-only) its InvarianceLoss with one slot per target training image."""
    cuda = device.type == "cuda"
    model = ReIDNet(
        num_classes, config.arch, pretrained=pretrained_weights(config, device), num_features=config.num_features,
        dropout=config.dropout, neck=config.neck, freeze=config.freeze, channels_last=config.channels_last and cuda,
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
    rank: int = 0,
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
    its share of each training set (:class:`reidlab.data.loaders.ShardSampler`), a memory that
    gathers every process's batch before it updates (:func:`reidlab.distributed.all_gather_cat`),
    the trainable BN layers synchronised with ``config.sync_bn``, and the step's forward pass
    wrapped in DistributedDataParallel.

    The model's initial weights come from the global RNG: seed it first (``train_ecn`` does).
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
    model, criterion = _build_model(config, source.num_train_pids, len(target.train), dev)
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
        kw = dict(num_workers=config.num_workers, device=dev, persistent_workers=False)
        src_q = make_loader(ImageDataset(source.query, tf, cache=config.cache_images), 2 * config.batch_size, **kw)
        src_g = make_loader(ImageDataset(source.gallery, tf, cache=config.cache_images), 2 * config.batch_size, **kw)
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
    tests); distances are euclidean (:mod:`reidlab.evaluation`, notebook 08). ``mAP`` is
    non-interpolated (torchreid's rule); ``mAP_trapezoid`` is Market-1501's official rule,
    which ECN's evaluator computes too: the paper's numbers compare with that one. For a
    :class:`~reidlab.models.ReIDNet` with an embedding (``num_features > 0``) the same pass also
    scores the L2-normalised embedding (after its BN), under ``embed_rank1``, ``embed_mAP`` and
    ``embed_mAP_trapezoid``: ECN's target losses act on the embedding first, pool5 moves only
    through layer3-4 (notebook 10).
    """
    return _evaluate(model, query_loader, gallery_loader, device, amp)[0]


class _TestFeatures(nn.Module):
    """A ReIDNet's L2-normalised pool5 and embedding side by side, from one forward pass."""

    def __init__(self, model: ReIDNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        pool5 = m.base(x.contiguous(memory_format=torch.channels_last) if m.channels_last else x)
        embed = m.feat_bn(m.feat(pool5))
        return torch.cat([F.normalize(pool5, dim=1), F.normalize(embed, dim=1)], dim=1)


def _ranks(dist: np.ndarray, q: Any, g: Any, prefix: str = "") -> dict[str, float]:
    res = evaluate_rank(dist, q.pids, g.pids, q.camids, g.camids, max_rank=10)
    trapezoid = evaluate_rank(dist, q.pids, g.pids, q.camids, g.camids, max_rank=10, ap="trapezoid")
    if prefix:
        return {f"{prefix}rank1": float(res.cmc[0]), f"{prefix}mAP": float(res.mAP),
                f"{prefix}mAP_trapezoid": float(trapezoid.mAP)}
    return {"rank1": float(res.cmc[0]), "rank5": float(res.cmc[4]), "rank10": float(res.cmc[9]),
            "mAP": float(res.mAP), "mAP_trapezoid": float(trapezoid.mAP), "mINP": float(res.mINP)}


def _evaluate(model: nn.Module, query_loader: Iterable, gallery_loader: Iterable,
              device: str | torch.device | None, amp: bool) -> tuple[dict[str, float], np.ndarray]:
    """:func:`evaluate_model`'s metrics and the distance matrix they come from (the test feature's)."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    both = isinstance(model, ReIDNet) and model.feat is not None and model.test_feature == "pool5"
    net = _TestFeatures(model) if both else model
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp and dev.type == "cuda"):
        q = extract_features(net, query_loader, dev, labels=True)
        g = extract_features(net, gallery_loader, dev, labels=True)
    if not both:
        dist = pairwise_distance(q.features, g.features)
        return _ranks(dist, q, g), dist
    d = q.features.shape[1] - model.num_features  # pool5's width
    dist = pairwise_distance(q.features[:, :d], g.features[:, :d])
    embed = pairwise_distance(q.features[:, d:], g.features[:, d:])
    return {**_ranks(dist, q, g), **_ranks(embed, q, g, prefix="embed_")}, dist


@contextlib.contextmanager
def _backend_flags(device: torch.device) -> Iterator[None]:
    """cudnn.benchmark on CUDA; deterministic algorithms on the CPU; both restored afterwards."""
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


def _restore(parts: ECNParts, ckpt: Mapping[str, Any], path: Path, shapes: Mapping[str, int]) -> None:
    for key, now in shapes.items():
        if ckpt[key] != now:
            raise ValueError(
                f"checkpoint {path} does not fit this data: {key} {ckpt[key]} in the checkpoint, {now} now "
                "(a different model shape: was the dataset changed?)"
            )
    load_state(parts.model, ckpt["model"], "model", path)
    if parts.criterion is not None:
        load_state(parts.criterion, ckpt["criterion"], "memory", path)
    load_state(parts.optimizer, ckpt["optimizer"], "optimizer", path)
    load_state(parts.scheduler, ckpt["scheduler"], "LR schedule", path)


# --- the trainer ------------------------------------------------------------------------------


def _evaluate_epoch(
    parts: ECNParts, config: ECNConfig, epoch: int, row: dict
) -> tuple[dict[str, float], np.ndarray] | None:
    """Evaluate after ``epoch`` when it is due: fill ``row``'s rank-1/mAP; return the final metrics
    after the last epoch, ``{}`` after another evaluated one (each with the target distance
    matrix), ``None`` when nothing was evaluated."""
    last = epoch == config.epochs - 1
    if not (last or (config.eval_every > 0 and (epoch + 1) % config.eval_every == 0)):
        return None
    res, dist = _evaluate(parts.model, parts.query, parts.gallery, parts.device, parts.amp)
    row["rank1"], row["mAP"] = res["rank1"], res["mAP"]
    if not last:
        return {}, dist
    if parts.source_query is not None:
        src = evaluate_model(parts.model, parts.source_query, parts.source_gallery, device=parts.device, amp=parts.amp)
        res.update({f"source_{k}": v for k, v in src.items()})
    return res, dist


def _finished(ckpt: Mapping[str, Any], config: ECNConfig, out: Path) -> ECNResult:
    """The result of a run whose checkpoint already holds its last epoch and metrics: no data is loaded."""
    device = resolve_device(config.device)
    model, criterion = _build_model(
        config.replace(pretrained=None), ckpt["num_classes"], ckpt["num_samples"], device
    )
    load_state(model, ckpt["model"], "model", out / "checkpoint.pt")
    if criterion is not None:
        load_state(criterion, ckpt["criterion"], "memory", out / "checkpoint.pt")
    model.eval()
    history, metrics = [dict(r) for r in ckpt["history"]], dict(ckpt["metrics"])
    write_logs(out, history, metrics)
    return ECNResult(config=config, history=history, metrics=metrics, model=model, criterion=criterion, out_dir=out,
                     backbone_digest=ckpt.get("backbone_digest"), already_finished=True)


def _train_epochs(
    parts: ECNParts, config: ECNConfig, out: Path | None, history: list, shapes: Mapping[str, int],
    progress: bool, callback: EpochCallback | None,
) -> tuple[dict[str, float], np.ndarray | None]:
    """Train the epochs ``history`` does not hold yet; return the final metrics and target distance
    matrix (rank 0's; ``{}`` and ``None`` elsewhere).

    Each epoch is checkpointed *before* it is evaluated, so an evaluation that fails (an
    unreadable gallery image) costs no training: a rerun resumes and only evaluates again.
    With several processes only rank 0 writes, evaluates and calls ``callback``; with ``out``
    ``None`` nothing is written.
    """
    main = parts.rank == 0
    save = main and out is not None
    metrics: dict[str, float] = {}
    dist = None
    for epoch in range(len(history), config.epochs):
        row = ecn_epoch(parts, config, epoch, progress=progress and main)
        parts.scheduler.step()
        history.append(row)
        if save:
            save_checkpoint(out / "checkpoint.pt", parts, config, epoch, history, {}, shapes)
            write_logs(out, history)
        if main:
            evaluated = _evaluate_epoch(parts, config, epoch, row)
            if evaluated is not None:
                metrics, dist = evaluated
                if save:
                    save_checkpoint(out / "checkpoint.pt", parts, config, epoch, history, metrics, shapes)
                    write_logs(out, history, metrics)
            if callback is not None:
                callback(epoch, parts.model, parts.criterion, dict(row))
        barrier()
    if save and not metrics:  # resumed after the last epoch's checkpoint, before its evaluation had been saved
        metrics, dist = _evaluate_epoch(parts, config, config.epochs - 1, history[-1])
        save_checkpoint(out / "checkpoint.pt", parts, config, config.epochs - 1, history, metrics, shapes)
        write_logs(out, history, metrics)
    return metrics, dist


def _open_run(out: Path, config: ECNConfig, resume: bool, info: DistInfo, stack: contextlib.ExitStack):
    """Lock the run folder and clean it (rank 0), then read the checkpoint to resume from, if any."""
    if info.is_main:
        stack.enter_context(run_lock(out))
        prepare(out)
    if not (resume and (out / "checkpoint.pt").exists()):
        return None
    ckpt = load_checkpoint(out / "checkpoint.pt")
    check_resumable(ckpt, config, out / "checkpoint.pt")
    return ckpt


def _start_run(out: Path | None, config: ECNConfig, resume: bool, info: DistInfo):
    """Load (or generate) the data and make sure the pretrained backbone exists (rank 0 first, so
    that one process trains it); announce a kNN term that never starts."""
    domains = load_domains(config)
    if out is None or not resume or not (out / "checkpoint.pt").exists():
        pretrained_weights(config, _process_device(config, info))  # trained once here, not by every process
    if info.is_main and (reason := knn_warning(config)) is not None:
        warnings.warn(reason, UserWarning, stacklevel=3)
    return domains


def _record_start(out: Path, config: ECNConfig, resume: bool, digest: str | None) -> None:
    """Move an old run aside (``resume=False``) and write ``config.json``: the settings, the values
    derived from them and the digest of the backbone the run started from. Called once the data has
    loaded and the model and memory are built (so the pretrained file and ``knn`` were checked):
    nothing is replaced before a run can start."""
    if not resume:
        move_aside(out)
    record = {**config.to_dict(derived=True), "backbone_digest": digest}
    atomic_write_text(out / "config.json", json.dumps(record, indent=1) + "\n")


def _process_device(config: ECNConfig, info: DistInfo) -> torch.device:
    device = resolve_device(config.device)
    if info.distributed and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank)  # one GPU per process
    return device


def train_ecn(
    config: ECNConfig | Mapping[str, Any],
    out_dir: str | os.PathLike | None,
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
        The run folder (:mod:`reidlab.ecn.rundir`), or ``None`` to train in memory and write
        nothing: no checkpoint (so nothing to resume), no logs, no lock; the result is only
        what this call returns. That suits a caller that caches results itself, as notebook 10
        does, and saves writing the checkpoint every epoch (about 0.3 s each for ResNet-18).
        Otherwise the folder gets ``checkpoint.pt`` (written
        atomically after every epoch, read with ``weights_only=True``), ``log.csv`` and
        ``history.json`` (one row per epoch: ``epoch`` (0-based, as the memory counts),
        ``loss_src``, ``loss_tgt``, ``acc_src``, ``lr`` (new layers), ``knn_precision`` (of the
        memory against the target's true ids, which training never sees), ``seconds``
        (training time), ``rank1`` and ``mAP`` when evaluated), ``metrics.json`` (final test
        metrics) and ``config.json`` (the settings, the values derived from them and
        ``backbone_digest``, the start's weights). A second run on the same folder is refused while one runs.
    resume:
        Continue from ``out_dir/checkpoint.pt`` when it exists (a finished run is returned
        without loading any data or training). Its settings must equal ``config`` except
        those in :data:`reidlab.ecn.config.RESUME_FREE_KEYS`; otherwise ``ValueError`` names
        the differing ones. ``False`` starts over: once the settings and the data have been
        checked, the previous run's files are moved into ``out_dir/replaced-<time>/``.
    progress:
        A tqdm bar per epoch.
    callback:
        ``callback(epoch, model, criterion, row)`` after each epoch's checkpoint (e.g. to
        plot in a notebook). An exception raised there stops training; the checkpoint of
        that epoch is already written, so a later call resumes after it.

    Notes
    -----
    Exact resume: each epoch starts by reseeding every generator from (seed, epoch)
    (:func:`reidlab.ecn.loop.epoch_seed`) and restarts the target loader, so an epoch depends
    only on the state the checkpoint holds. On CUDA, cuDNN autotuning and atomics make runs
    differ slightly. A non-finite loss raises ``FloatingPointError`` before the epoch's
    checkpoint is written (so the last checkpoint stays clean); a full disk raises
    :class:`reidlab.files.DiskFullError` and keeps the last good checkpoint. The global torch
    flags it sets (deterministic algorithms on the CPU, cuDNN autotuning on CUDA) are restored
    on return. A configuration whose kNN target would never start warns (:func:`knn_warning`).
    """
    # a copy, validated again: an ECNConfig is a plain dataclass whose fields can be edited after creation
    config = ECNConfig.from_dict(config if isinstance(config, Mapping) else config.to_dict())
    with init_from_env(resolve_device(config.device).type) as info, contextlib.ExitStack() as stack:
        config = config.replace(world_size=info.world_size)  # checks that the batch can be shared out
        out = None if out_dir is None else main_first(lambda: check_out_dir(out_dir))
        ckpt = None if out is None else main_first(lambda: _open_run(out, config, resume, info, stack))
        if ckpt is not None and int(ckpt["epoch"]) == config.epochs - 1 and ckpt["metrics"]:
            return _finished(ckpt, config, out)
        device = _process_device(config, info)
        source, target = main_first(lambda: _start_run(out, config, resume, info))
        shapes = {"num_classes": source.num_train_pids, "num_samples": len(target.train)}
        with _backend_flags(device):
            seed_everything(config.seed)
            parts = build_ecn(config, source, target, device, rank=info.rank)
            history: list[dict[str, Any]] = []
            if ckpt is not None:
                _restore(parts, ckpt, out / "checkpoint.pt", shapes)
                history = [dict(r) for r in ckpt["history"]]
                parts.backbone_digest = ckpt.get("backbone_digest")  # where the run started, not today's cache
            if out is not None and info.is_main:
                _record_start(out, config, resume, parts.backbone_digest)
            metrics, dist = _train_epochs(parts, config, out, history, shapes, progress, callback)
    parts.model.eval()
    return ECNResult(
        config=config, history=history, metrics=metrics, model=parts.model, criterion=parts.criterion, out_dir=out,
        distmat=dist, backbone_digest=parts.backbone_digest,
    )
