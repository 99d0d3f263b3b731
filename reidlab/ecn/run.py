"""An ECN run: build it, train it epoch by epoch with a checkpoint after each, resume it, log it.

:func:`train_ecn` is what the notebooks and ``python -m reidlab.ecn`` call. Around the loop of
:mod:`reidlab.ecn.loop` it adds what a run on a shared machine needs: every epoch ends with an
atomic checkpoint (model, optimizer, LR schedule, memory, history; read back with
``weights_only=True``), ``log.csv`` / ``history.json`` rows, and an exact resume (on the CPU a
run killed after epoch k and resumed ends with the same bits as an uninterrupted one).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.datasets import ReIDDataset, load_reid_dataset
from ..data.loaders import ImageDataset, make_loader, make_reid_loaders
from ..data.transforms import build_test_transform
from ..evaluation import evaluate_rank, extract_features, pairwise_distance
from ..files import atomic_save, atomic_write_text
from ..memory import InvarianceLoss
from ..models import ReIDNet
from ..runtime import resolve_device, seed_everything
from .config import RESUME_FREE_KEYS, ECNConfig
from .loop import ecn_epoch, make_optimizer

__all__ = [
    "CHECKPOINT_VERSION",
    "LOG_COLUMNS",
    "ECNParts",
    "ECNResult",
    "load_domains",
    "build_ecn",
    "evaluate_model",
    "load_checkpoint",
    "train_ecn",
]

CHECKPOINT_VERSION = 2  # 2: knn_start replaces knn_epoch among the settings
LOG_COLUMNS: tuple[str, ...] = (
    "epoch", "loss_src", "loss_tgt", "acc_src", "lr", "knn_precision", "seconds", "rank1", "mAP",
)


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


def _build_model(config: ECNConfig, num_classes: int, num_samples: int, device: torch.device):
    """ReIDNet and (unless source-only) its InvarianceLoss with one slot per target training image."""
    cuda = device.type == "cuda"
    model = ReIDNet(
        num_classes, config.arch, pretrained=config.pretrained, num_features=config.num_features,
        dropout=config.dropout, neck=config.neck, freeze=config.freeze, channels_last=config.channels_last and cuda,
    ).to(device)
    criterion = None
    if config.uses_target:
        criterion = InvarianceLoss(
            num_samples, model.num_features, beta=config.beta, knn=config.knn if config.uses_knn else 0,
            alpha=config.alpha, knn_epoch=config.knn_epoch,
        ).to(device)
    return model, criterion


def build_ecn(
    config: ECNConfig, source: ReIDDataset, target: ReIDDataset, device: str | torch.device | None = None
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

    The model's initial weights come from the global RNG: seed it first (``train_ecn`` does).
    """
    dev = resolve_device(config.device) if device is None else torch.device(device)
    if config.pretrained is None and config.freeze is not None:
        warnings.warn(
            f"freeze={config.freeze!r} with pretrained=None freezes randomly initialised layers (ECN freezes "
            "ImageNet-trained ones): pass pretrained (e.g. 'IMAGENET1K_V1' or a weights file) or freeze=None",
            UserWarning,
            stacklevel=2,
        )
    model, criterion = _build_model(config, source.num_train_pids, len(target.train), dev)
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
        device=dev, amp=bool(config.amp and dev.type == "cuda"),
        true_ids=torch.as_tensor(list(target.train_original_pids), dtype=torch.long),
    )


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
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp and dev.type == "cuda"):
        q = extract_features(model, query_loader, dev, labels=True)
        g = extract_features(model, gallery_loader, dev, labels=True)
    res = evaluate_rank(pairwise_distance(q.features, g.features), q.pids, g.pids, q.camids, g.camids, max_rank=10)
    return {
        "rank1": float(res.cmc[0]), "rank5": float(res.cmc[4]), "rank10": float(res.cmc[9]),
        "mAP": float(res.mAP), "mINP": float(res.mINP),
    }


# --- checkpoints and logs ---------------------------------------------------------------------


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


def config_differences(saved: Mapping[str, Any], config: ECNConfig) -> list[str]:
    """The settings (outside :data:`reidlab.ecn.config.RESUME_FREE_KEYS`) in which ``saved`` and ``config`` differ."""
    now = config.to_dict()
    keys = sorted((set(saved) | set(now)) - RESUME_FREE_KEYS)
    return [k for k in keys if saved.get(k, "<missing>") != now.get(k, "<missing>")]


def _check_resumable(ckpt: Mapping[str, Any], config: ECNConfig, path: Path) -> None:
    diff = config_differences(ckpt["config"], config)
    if diff:
        shown = ", ".join(
            f"{k} ({ckpt['config'].get(k, '<missing>')!r} in the checkpoint, {getattr(config, k, '<missing>')!r} now)"
            for k in diff
        )
        raise ValueError(
            f"checkpoint {path} was written with different settings: {shown}; "
            "use the same settings to resume, another output folder, or --no-resume (resume=False) to start over"
        )


def _load_state(module: Any, state: Any, what: str, path: Path) -> None:
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"checkpoint {path} does not fit this run's {what} (a different model shape or data?): {first}"
        ) from None


def _restore(parts: ECNParts, ckpt: Mapping[str, Any], path: Path, shapes: Mapping[str, int]) -> None:
    for key, now in shapes.items():
        if key in ckpt and ckpt[key] != now:
            raise ValueError(
                f"checkpoint {path} does not fit this data: {key} {ckpt[key]} in the checkpoint, {now} now "
                "(a different model shape: was the dataset changed?)"
            )
    _load_state(parts.model, ckpt["model"], "model", path)
    if parts.criterion is not None:
        _load_state(parts.criterion, ckpt["criterion"], "memory", path)
    _load_state(parts.optimizer, ckpt["optimizer"], "optimizer", path)
    _load_state(parts.scheduler, ckpt["scheduler"], "LR schedule", path)


def _save_checkpoint(path: Path, parts: ECNParts, config: ECNConfig, epoch: int, history: list, metrics: dict,
                     shapes: Mapping[str, int]) -> None:
    atomic_save(
        {
            "version": CHECKPOINT_VERSION, "epoch": epoch, "config": config.to_dict(), **shapes,
            "model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "criterion": parts.criterion.state_dict() if parts.criterion is not None else {},
            "history": history, "metrics": metrics,
        },
        path,
    )


def _write_logs(out: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LOG_COLUMNS)
    for row in history:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in LOG_COLUMNS])
    atomic_write_text(out / "log.csv", buf.getvalue())
    atomic_write_text(out / "history.json", json.dumps(history, indent=1) + "\n")


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


# --- the trainer ------------------------------------------------------------------------------


def _evaluate_epoch(parts: ECNParts, config: ECNConfig, epoch: int, row: dict) -> dict[str, float]:
    """Fill ``row``'s rank-1/mAP when this epoch is evaluated; return the final metrics after the last."""
    last = epoch == config.epochs - 1
    if not (last or (config.eval_every > 0 and (epoch + 1) % config.eval_every == 0)):
        return {}
    res = evaluate_model(parts.model, parts.query, parts.gallery, device=parts.device, amp=parts.amp)
    row["rank1"], row["mAP"] = res["rank1"], res["mAP"]
    if not last:
        return {}
    if parts.source_query is not None:
        src = evaluate_model(parts.model, parts.source_query, parts.source_gallery, device=parts.device, amp=parts.amp)
        res.update({f"source_{k}": v for k, v in src.items()})
    return res


def _finished(ckpt: Mapping[str, Any], config: ECNConfig, out: Path) -> ECNResult:
    """The result of a run whose checkpoint already holds its last epoch: no data is loaded."""
    device = resolve_device(config.device)
    model, criterion = _build_model(
        config.replace(pretrained=None), ckpt["num_classes"], ckpt["num_samples"], device
    )
    _load_state(model, ckpt["model"], "model", out / "checkpoint.pt")
    if criterion is not None:
        _load_state(criterion, ckpt["criterion"], "memory", out / "checkpoint.pt")
    model.eval()
    history, metrics = [dict(r) for r in ckpt["history"]], dict(ckpt["metrics"])
    _write_logs(out, history)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    return ECNResult(config=config, history=history, metrics=metrics, model=model, criterion=criterion, out_dir=out)


def _prepare_out(out: Path, config: ECNConfig, resume: bool) -> dict[str, Any] | None:
    """Create ``out``; return the checkpoint to resume from (checked against ``config``), if any."""
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        _check_resumable(ckpt, config, ckpt_path)
        return ckpt
    if not resume:
        for name in ("checkpoint.pt", "metrics.json", "log.csv", "history.json"):
            (out / name).unlink(missing_ok=True)
    return None


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
        Gets ``checkpoint.pt`` (written atomically after every epoch, read with
        ``weights_only=True``), ``log.csv`` and ``history.json`` (one row per epoch:
        ``epoch`` (0-based, as the memory counts), ``loss_src``, ``loss_tgt``, ``acc_src``,
        ``lr`` (new layers), ``knn_precision`` (of the memory against the target's true ids,
        which training never sees), ``seconds`` (training time), ``rank1`` and ``mAP`` when
        evaluated), ``metrics.json`` (final test metrics) and ``config.json``.
    resume:
        Continue from ``out_dir/checkpoint.pt`` when it exists (a finished run is returned
        without loading any data or training). Its settings must equal ``config`` except
        those in :data:`reidlab.ecn.config.RESUME_FREE_KEYS`; otherwise ``ValueError`` names
        the differing ones. ``False`` starts over and replaces what ``out_dir`` holds.
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
    checkpoint is written (so the last checkpoint stays clean). The global torch flags it
    sets (deterministic algorithms on the CPU, cuDNN autotuning on CUDA) are restored on return.
    """
    # a copy, validated again: an ECNConfig is a plain dataclass whose fields can be edited after creation
    config = ECNConfig.from_dict(config if isinstance(config, Mapping) else config.to_dict())
    out = Path(out_dir).expanduser()
    ckpt = _prepare_out(out, config, resume)
    if ckpt is not None and int(ckpt["epoch"]) == config.epochs - 1 and ckpt.get("metrics"):
        return _finished(ckpt, config, out)
    device = resolve_device(config.device)
    source, target = load_domains(config)
    atomic_write_text(out / "config.json", json.dumps(config.to_dict(), indent=1) + "\n")
    shapes = {"num_classes": source.num_train_pids, "num_samples": len(target.train)}
    with _backend_flags(device):
        seed_everything(config.seed)
        parts = build_ecn(config, source, target, device)
        history: list[dict[str, Any]] = []
        metrics: dict[str, float] = {}
        if ckpt is not None:
            _restore(parts, ckpt, out / "checkpoint.pt", shapes)
            history = [dict(r) for r in ckpt["history"]]
        for epoch in range(len(history), config.epochs):
            row = ecn_epoch(parts, config, epoch, progress=progress)
            parts.scheduler.step()
            metrics = _evaluate_epoch(parts, config, epoch, row)
            history.append(row)
            _save_checkpoint(out / "checkpoint.pt", parts, config, epoch, history, metrics, shapes)
            _write_logs(out, history)
            if callback is not None:
                callback(epoch, parts.model, parts.criterion, dict(row))
        if not metrics:  # resumed from the last epoch's checkpoint of a run stopped before its evaluation
            metrics = _evaluate_epoch(parts, config, config.epochs - 1, dict(history[-1]))
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1) + "\n")
    parts.model.eval()
    return ECNResult(
        config=config, history=history, metrics=metrics, model=parts.model, criterion=parts.criterion, out_dir=out
    )
