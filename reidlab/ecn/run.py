"""An ECN run: build it, train it epoch by epoch with a checkpoint after each, resume it, log it.

:func:`train_ecn` is what the notebooks and ``python -m reidlab.ecn`` call. Around the epoch of
:mod:`reidlab.ecn.loop` it adds what a run on a shared machine needs: every epoch ends with one
atomic checkpoint (model, optimizer, LR schedule, memory, history; read back with
``weights_only=True``), written before the epoch is evaluated, then ``log.csv`` / ``history.json``
rows (and ``metrics.json`` after the last), all in the run folder of :mod:`reidlab.ecn.rundir`; and
an exact resume (on the CPU a run killed after epoch k and resumed ends with the same bits as an
uninterrupted one). The test protocol is :mod:`reidlab.ecn.evaluate`'s.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.datasets import ReIDDataset
from ..distributed import DistInfo, barrier, init_from_env, main_first
from ..memory import InvarianceLoss
from ..runtime import resolve_device, seed_everything
from .build import build_ecn, build_model, load_domains
from .config import ECNConfig, knn_warning
from .evaluate import evaluate_model, evaluate_test
from .loop import ECNParts, ecn_epoch
from .pretrain import pretrained_weights
from .rundir import (
    CHECKPOINT,
    check_out_dir,
    load_state,
    logged_evaluation,
    open_run,
    record_start,
    restore,
    save_checkpoint,
    write_logs,
)

__all__ = ["ECNResult", "train_ecn"]

log = logging.getLogger(__name__)


@dataclass
class ECNResult:
    """What :func:`train_ecn` returns.

    ``history`` has one dict per epoch (the columns of ``log.csv``); ``metrics`` the final
    target-domain test metrics (``rank1``, ``rank5``, ``rank10``, ``mAP``, ``mAP_trapezoid``, ``mINP``,
    fractions; :func:`reidlab.ecn.evaluate.evaluate_model`)
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
    criterion: InvarianceLoss | None
    out_dir: Path | None = None
    distmat: np.ndarray | None = None
    backbone_digest: str | None = None  # the start's weights (ECNParts.backbone_digest); None for an old checkpoint
    already_finished: bool = False  # the run folder held it finished: loaded, nothing trained or evaluated


EpochCallback = Callable[[int, nn.Module, "InvarianceLoss | None", dict[str, Any]], None]  # (epoch, model, memory, row)


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


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _epoch_line(config: ECNConfig, row: Mapping[str, Any]) -> str:
    """One epoch's row as one line: logged after the epoch's evaluation (the command line shows it)."""
    parts = [
        f"epoch {row['epoch'] + 1}/{config.epochs}", f"loss_src {row['loss_src']:.3f}",
        "" if row["loss_tgt"] is None else f"loss_tgt {row['loss_tgt']:.3f}",
        f"acc_src {_pct(row['acc_src'])}",
        "" if row["knn_precision"] is None else f"knn_prec {_pct(row['knn_precision'])}",
        "" if row["rank1"] is None else f"rank-1 {_pct(row['rank1'])} mAP {_pct(row['mAP'])}",
        f"{row['seconds']:.1f}s",
    ]
    return "  ".join(p for p in parts if p)


def _evaluation_due(config: ECNConfig, epoch: int) -> bool:
    return epoch == config.epochs - 1 or (config.eval_every > 0 and (epoch + 1) % config.eval_every == 0)


def _evaluate(parts: ECNParts, config: ECNConfig, epoch: int, row: dict[str, Any]) -> tuple[dict[str, float], np.ndarray]:
    """Evaluate after ``epoch``: fill ``row``'s rank-1 and mAP; return the target distance matrix with
    the final metrics after the last epoch (and ``{}`` after another)."""
    res, dist = evaluate_test(parts.model, parts.query, parts.gallery, parts.device, parts.amp)
    row["rank1"], row["mAP"] = res["rank1"], res["mAP"]
    if epoch < config.epochs - 1:
        return {}, dist
    if parts.source_query is not None and parts.source_gallery is not None:
        src = evaluate_model(parts.model, parts.source_query, parts.source_gallery, device=parts.device, amp=parts.amp)
        res.update({f"source_{k}": v for k, v in src.items()})
    return res, dist


def _finished(ckpt: Mapping[str, Any], config: ECNConfig, out: Path, history: list[dict[str, Any]],
              metrics: dict[str, float]) -> ECNResult:
    """The result of a run whose last epoch is checkpointed and its evaluation logged: no data is loaded."""
    model, criterion = build_model(config, ckpt["num_classes"], ckpt["num_samples"], resolve_device(config.device),
                                   weights=None)
    load_state(model, ckpt["model"], "model", out / CHECKPOINT)
    if criterion is not None:
        load_state(criterion, ckpt["criterion"], "memory", out / CHECKPOINT)
    model.eval()
    write_logs(out, history, metrics)
    return ECNResult(config=config, history=history, metrics=metrics, model=model, criterion=criterion, out_dir=out,
                     backbone_digest=ckpt.get("backbone_digest"), already_finished=True)


def _start_run(config: ECNConfig, device: torch.device, main: bool) -> tuple[tuple[ReIDDataset, ReIDDataset], str | None]:
    """Load (or generate) the data and resolve the pretrained weights (rank 0 first, so that one process
    trains them on first use); announce a kNN term that never starts."""
    domains = load_domains(config)
    weights = pretrained_weights(config, device)
    if main and (reason := knn_warning(config)) is not None:
        warnings.warn(reason, UserWarning, stacklevel=3)
    return domains, weights


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
        Otherwise the folder gets ``checkpoint.pt`` (written atomically once per epoch, before the
        epoch is evaluated; read with ``weights_only=True``), ``log.csv`` and ``history.json`` (one
        row per epoch: ``epoch`` (0-based, as the memory counts), ``loss_src``, ``loss_tgt``,
        ``acc_src``, ``lr`` (new layers), ``knn_precision`` (of the memory against the target's true
        ids, which training never sees), ``seconds`` (training time), ``rank1`` and ``mAP`` when
        evaluated), ``metrics.json`` (final test metrics) and ``config.json`` (the settings, the
        values derived from them and ``backbone_digest``, the start's weights). A second run on the
        same folder is refused while one runs.
    resume:
        Continue from ``out_dir/checkpoint.pt`` when it exists (a finished run is returned
        without loading any data or training). Its settings must equal ``config`` except
        those in :data:`reidlab.ecn.config.RESUME_FREE_KEYS`; otherwise ``ValueError`` names
        the differing ones. ``False`` starts over: once the settings and the data have been
        checked, the previous run's files are moved into ``out_dir/replaced-<time>/``.
    progress:
        A tqdm bar per epoch.
    callback:
        ``callback(epoch, model, criterion, row)`` after each epoch's checkpoint and evaluation
        (e.g. to plot in a notebook). An exception raised there stops training; the checkpoint of
        that epoch is already written, so a later call resumes after it. Each epoch's row is also
        logged as one line, at level INFO, on the ``reidlab.ecn.run`` logger (the command line
        shows those lines).

    Notes
    -----
    Each epoch: train (:func:`reidlab.ecn.loop.ecn_epoch`), step the LR schedule, write the one
    checkpoint and the logs, evaluate when due (every ``eval_every`` epochs, and after the last)
    and log the evaluation, then log the epoch's line and call ``callback``. An evaluation that
    fails (an unreadable gallery image) so costs no training: a rerun resumes and only evaluates.
    With several processes only rank 0 writes, evaluates, logs and calls ``callback``.

    Exact resume: each epoch starts by reseeding every generator from (seed, epoch)
    (:func:`reidlab.ecn.loop.epoch_seed`) and restarts the target loader, so an epoch depends
    only on the state the checkpoint holds. On CUDA, cuDNN autotuning and atomics make runs
    differ slightly. A non-finite loss raises ``FloatingPointError`` before the epoch's
    checkpoint is written (so the last checkpoint stays clean); a full disk raises
    :class:`reidlab.files.DiskFullError` and keeps the last good checkpoint. The global torch
    flags it sets (deterministic algorithms on the CPU, cuDNN autotuning on CUDA) are restored
    on return. A configuration whose kNN target would never start warns (:func:`knn_warning`).
    ``config`` is used as it is (an :class:`ECNConfig` is frozen, so it was validated when made);
    only the number of processes is set from torchrun's environment.
    """
    if isinstance(config, Mapping):
        config = ECNConfig.from_dict(config)
    with init_from_env(resolve_device(config.device).type) as info, contextlib.ExitStack() as stack:
        if config.world_size != info.world_size:  # under torchrun; checks that the batch can be shared out
            config = config.replace(world_size=info.world_size)
        out: Path | None = None if out_dir is None else main_first(partial(check_out_dir, out_dir))
        ckpt = None if out is None else main_first(
            partial(open_run, out, config, resume=resume, lock=stack if info.is_main else None))
        history: list[dict[str, Any]] = []
        metrics: dict[str, float] = {}
        if out is not None and ckpt is not None:
            history, metrics = logged_evaluation(out, ckpt)
            if len(history) == config.epochs and metrics:
                return _finished(ckpt, config, out, history, metrics)
        device = _process_device(config, info)
        (source, target), weights = main_first(partial(_start_run, config, device, info.is_main))
        shapes = {"num_classes": source.num_train_pids, "num_samples": len(target.train)}
        stack.enter_context(_backend_flags(device))
        seed_everything(config.seed)
        parts = build_ecn(config, source, target, device, rank=info.rank, weights=weights)
        if out is not None and ckpt is not None:
            restore(parts, ckpt, out / CHECKPOINT, shapes)
        folder = out if info.is_main else None  # only rank 0 writes, evaluates, logs and calls back
        if folder is not None:
            record_start(folder, config, resume=resume, digest=parts.backbone_digest)
        dist = None
        for epoch in range(len(history), config.epochs):
            row = ecn_epoch(parts, config, epoch, progress=progress and info.is_main)
            parts.scheduler.step()
            history.append(row)
            if folder is not None:  # saved before it is evaluated: an evaluation that fails costs no training
                save_checkpoint(folder / CHECKPOINT, parts, config, epoch, history, shapes)
                write_logs(folder, history)
            if info.is_main and _evaluation_due(config, epoch):
                metrics, dist = _evaluate(parts, config, epoch, row)
                if folder is not None:  # the epoch's rank-1 and mAP; metrics.json after the last
                    write_logs(folder, history, metrics)
            if info.is_main:
                log.info(_epoch_line(config, row))
                if callback is not None:
                    callback(epoch, parts.model, parts.criterion, dict(row))
            barrier()
        if info.is_main and not metrics:  # resumed after the last epoch's checkpoint, before its evaluation was logged
            metrics, dist = _evaluate(parts, config, config.epochs - 1, history[-1])
            if folder is not None:
                write_logs(folder, history, metrics)
    parts.model.eval()
    return ECNResult(
        config=config, history=history, metrics=metrics, model=parts.model, criterion=parts.criterion, out_dir=out,
        distmat=dist, backbone_digest=parts.backbone_digest,
    )
