"""The training loop: ECN's step, one epoch, and the supervised source baseline that shares it.

One ECN step, as in the published ``trainers.py`` (notebook 10 writes it out)::

    source batch (images, ids)   -> logits   -> L_src = cross-entropy
    target batch (images, index) -> tgt_feat -> L_tgt = InvarianceLoss(tgt_feat, index, epoch)
    loss = (1 - lam) * L_src + lam * L_tgt          (lam = 0.3)

Which weighting: the paper's final loss is a convex combination, ``(1 - lam) * L_src + lam *
L_tgt`` with ``lam`` in (0, 1] (its Sec. 3.5; reading notes on the paper remark on exactly this,
a linear combination rather than the usual sum), and the published code computes the same
(``loss = (1 - self.lmd) * source_pid_loss + self.lmd * loss_un``). Without a target loss (the
``'source-only'`` switch, and :func:`train_source`) ``L_src`` is trained alone with weight 1.

:func:`run_epoch` is the one loop: :func:`train_source` (notebooks 06-08) calls it without a
target, :func:`ecn_epoch` (used by :func:`reidlab.ecn.run.train_ecn`) with one, on the
:class:`ECNParts` of a run. It never asks the GPU for a number inside the loop except every
``check_every`` steps, to catch a non-finite loss: per-step losses stay on the device until the
epoch ends.
"""
from __future__ import annotations

import itertools
import math
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

from ..memory import InvarianceLoss, knn_precision
from ..models import param_groups
from .config import ECNConfig, scaled_schedule

__all__ = [
    "ECNParts",
    "split_batch",
    "make_optimizer",
    "ecn_loss",
    "ECNForward",
    "run_epoch",
    "train_source",
    "epoch_seed",
    "seed_epoch",
    "ecn_epoch",
]

#: Steps between finiteness checks of the loss on CUDA (each check waits for the GPU). On the
#: CPU every step is checked, so a non-finite loss stops training before its step is taken.
CUDA_CHECK_EVERY = 50


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
    """ECN's optimizer: SGD, Nesterov momentum 0.9, weight decay 5e-4, two learning rates
    (:func:`reidlab.models.param_groups`: the pretrained backbone and the new layers).

    ``foreach=True`` updates all tensors of a group in a few batched calls instead of a Python
    loop over them: the same arithmetic, bit for bit, and on the CPU (where PyTorch's default is
    the loop) about 1.8x faster for ResNet-18's 12.8 M trained parameters (34 vs 19 ms per step,
    2 threads). On CUDA it is PyTorch's default anyway.
    """
    return torch.optim.SGD(
        param_groups(model, lr_backbone, lr_new), lr=lr_new, momentum=momentum,
        weight_decay=weight_decay, nesterov=nesterov, foreach=True,
    )


def ecn_loss(loss_src: torch.Tensor, loss_tgt: torch.Tensor | None, lam: float) -> torch.Tensor:
    """ECN's total loss: ``(1 - lam) * loss_src + lam * loss_tgt``; ``loss_src`` alone without a target loss."""
    if loss_tgt is None:
        return loss_src
    return (1.0 - lam) * loss_src + lam * loss_tgt


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, Mapping):
        if "logits" not in out:
            raise KeyError("the model returned a dict without 'logits'")
        return out["logits"]
    return out


class ECNForward(nn.Module):
    """One step's forward passes: the source batch, then the target batch, as two separate calls.

    ECN feeds the two domains through the network separately (so in training every BN layer
    normalises each domain with its own batch statistics, notebook 10). Wrapping both calls in one
    module gives DistributedDataParallel the one forward per step it expects. The target batch is
    fetched by calling ``next_target`` *after* the source forward, the order of ECN's trainer (it
    matters for the random draws of dropout and data augmentation).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, img: torch.Tensor, next_target: Callable[[], Any] | None = None):
        """``(source output, target features 'tgt_feat' or None, target indices or None)``."""
        out = self.model(img)
        if next_target is None:
            return out, None, None
        t_img, t_idx = next_target()[:2]
        return out, self.model(t_img.to(img.device, non_blocking=True))["tgt_feat"], t_idx


class _Tally:
    """An epoch's per-step losses and correct predictions, kept on the device until the epoch ends.

    Every ``check_every`` steps one device synchronisation checks the losses added since the last
    check, and a non-finite one raises ``FloatingPointError`` naming its step.
    """

    def __init__(self, desc: str, epoch: int, check_every: int, bar: Any = None) -> None:
        self.desc, self.epoch, self.check_every, self.bar = desc, epoch, check_every, bar
        self.src: list[torch.Tensor] = []
        self.tgt: list[torch.Tensor] = []
        self.total: list[torch.Tensor] = []
        self.correct: list[torch.Tensor] = []
        self.sizes: list[int] = []
        self.checked = 0  # steps whose loss is known to be finite

    def add(self, loss: torch.Tensor, loss_src: torch.Tensor, loss_tgt: torch.Tensor | None,
            logits: torch.Tensor, pid: torch.Tensor) -> None:
        """Record one step (before it is taken: a non-finite loss stops training first)."""
        self.src.append(loss_src.detach())
        if loss_tgt is not None:
            self.tgt.append(loss_tgt.detach())
        self.total.append(loss.detach())
        if len(self.total) - self.checked >= self.check_every:
            last = self.check()
            if self.bar is not None:
                self.bar.set_postfix(loss=f"{last:.3f}", refresh=False)
        self.correct.append((logits.detach().argmax(1) == pid).sum())
        self.sizes.append(pid.numel())
        if self.bar is not None:
            self.bar.update(1)

    def check(self) -> float:
        """The last total loss; ``FloatingPointError`` naming the first non-finite one not checked yet."""
        start, self.checked = self.checked, len(self.total)
        recent = torch.stack(self.total[start:]).cpu()
        bad = (~torch.isfinite(recent)).nonzero()
        if len(bad):
            step = start + int(bad[0, 0])
            parts = f"source {float(self.src[step]):.4g}" + (f", target {float(self.tgt[step]):.4g}" if self.tgt else "")
            raise FloatingPointError(
                f"{self.desc} loss is {float(self.total[step])} at epoch {self.epoch}, step {step} ({parts}); "
                "lower the learning rates or check the data"
            )
        return float(recent[-1])

    def summary(self, seconds: float) -> dict[str, Any]:
        """:func:`run_epoch`'s result: the last steps checked, then means weighted by the batch sizes."""
        if not self.sizes:
            raise ValueError("the loader yielded no batch (with drop_last=True it needs at least one full batch)")
        if self.checked < len(self.total):
            self.check()
        n = torch.tensor(self.sizes, dtype=torch.float64)
        mean = lambda xs: float((torch.stack(xs).double().cpu() * n).sum() / n.sum())  # noqa: E731
        return {
            "loss_src": mean(self.src),
            "loss_tgt": mean(self.tgt) if self.tgt else None,
            "acc_src": float(torch.stack(self.correct).sum().cpu()) / sum(self.sizes),
            "step_loss": torch.stack(self.total).cpu().tolist(),
            "steps": len(self.sizes),
            "seconds": seconds,
        }


def run_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable,
    *,
    device: torch.device,
    criterion: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None,
    next_target: Callable[[], Any] | None = None,
    epoch: int = 0,
    lam: float = 0.0,
    amp: bool = False,
    label_smoothing: float = 0.0,
    bar: Any = None,
    desc: str = "training",
    check_every: int | None = None,
    forward: nn.Module | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``batches`` for one pass; return the epoch's losses and accuracy.

    Each step: cross-entropy on the source batch; with a ``criterion``, also its loss on the
    target batch ``next_target()`` returns (``(images, indices)``) at ``epoch``, combined by
    :func:`ecn_loss`; then ``zero_grad``, ``backward`` (which also updates the memory of an
    :class:`reidlab.memory.InvarianceLoss`) and ``step``. With ``next_target`` but no
    ``criterion`` the target batch only passes through the network (its BN layers see it; no
    loss): notebook 10's ``'target-bn'`` control.

    The forward pass goes through ``forward`` (default: :class:`ECNForward` around ``model``),
    one call per step for both batches, which is what DistributedDataParallel needs: the
    distributed trainer passes its DDP-wrapped ``ECNForward``. ``bar`` (a tqdm bar) advances by
    one per step and shows the last checked loss; ``desc`` names the loop in warnings and errors.

    A batch of a single sample (a loader's last, incomplete batch) is skipped with a warning when
    the model trains BatchNorm layers, which cannot normalise one sample.

    Returns ``loss_src``, ``loss_tgt`` (``None`` without a criterion) and ``acc_src`` (means
    over the epoch's samples), ``step_loss`` (every step's total loss), ``steps`` and
    ``seconds``. Raises ``FloatingPointError`` naming the first step with a non-finite loss,
    checked every ``check_every`` steps (default: every step on the CPU, where it costs
    nothing, so training stops before that step is taken; every :data:`CUDA_CHECK_EVERY` steps
    on CUDA, where each check waits for the GPU), and ``ValueError`` when ``batches`` yields
    nothing.
    """
    if check_every is None:
        check_every = 1 if device.type == "cpu" else CUDA_CHECK_EVERY
    tally = _Tally(desc, epoch, check_every, bar)
    t0 = time.perf_counter()
    net = forward if forward is not None else ECNForward(model)
    net.train()
    trains_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())
    for step, batch in enumerate(batches):
        img, pid = split_batch(batch)
        if trains_bn and pid.numel() < 2:
            warnings.warn(
                f"{desc}: skipped a batch of {pid.numel()} sample at epoch {epoch}, step {step}: BatchNorm cannot "
                "train on a single sample; build the loader with drop_last=True to drop such a last batch",
                UserWarning, stacklevel=2,
            )
            continue
        img, pid = img.to(device, non_blocking=True), pid.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out, tgt_feat, t_idx = net(img, next_target)  # without a criterion the target batch only passes through
        logits = _logits(out)
        loss_src = F.cross_entropy(logits.float(), pid, label_smoothing=label_smoothing)
        loss_tgt = None if criterion is None else criterion(tgt_feat.float(), t_idx.to(device, non_blocking=True), epoch)
        loss = ecn_loss(loss_src, loss_tgt, lam)
        tally.add(loss, loss_src, loss_tgt, logits, pid)  # may raise FloatingPointError: the step is not taken
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # with an InvarianceLoss: also updates the memory rows of this target batch
        optimizer.step()
    return tally.summary(time.perf_counter() - t0)


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
    """Train ``model`` to classify the source identities (ECN's source branch alone); return the history.

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
        Multiply both learning rates by ``gamma`` every ``step_size`` epochs; ``None`` uses
        ECN's step scaled to ``epochs`` (:func:`reidlab.ecn.config.scaled_schedule`: epoch 40 of 60),
        the same rule as :func:`reidlab.ecn.train_ecn`.
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
    Deterministic on the CPU for a fixed seed and loader order; a non-finite loss stops
    training with a ``FloatingPointError`` instead of silently wrecking the weights.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if step_size is None:
        step_size = scaled_schedule(epochs)[1]
    if step_size < 1:
        raise ValueError(f"step_size must be >= 1, got {step_size}")
    device = torch.device(device)
    model.to(device)
    optimizer = make_optimizer(model, lr_backbone=lr_backbone, lr_new=lr_new, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)
    history: dict[str, list[float]] = {"loss": [], "acc": [], "lr": [], "step_loss": []}
    for epoch in range(epochs):
        total = len(loader) if isinstance(loader, Sized) else None
        with tqdm(total=total, desc=f"{desc} {epoch + 1}/{epochs}", disable=not progress, leave=False) as bar:
            row = run_epoch(
                model, optimizer, loader, device=device, epoch=epoch, amp=amp and device.type == "cuda",
                label_smoothing=label_smoothing, bar=bar, desc=desc,
            )
        history["loss"].append(row["loss_src"])
        history["acc"].append(row["acc_src"])
        history["lr"].append(optimizer.param_groups[-1]["lr"])
        history["step_loss"].extend(row["step_loss"])
        scheduler.step()
    return history


#: The :func:`epoch_seed` stream of the ``'shuffled-slots'`` control's permutation (0 seeds the
#: global generators, 1 and 2 the two loaders).
_SLOT_STREAM = 99


def epoch_seed(seed: int, epoch: int, stream: int = 0, rank: int = 0) -> int:
    """A 32-bit seed for (run seed, epoch, stream[, process rank]), well mixed (NumPy's ``SeedSequence``).

    Every random draw of an epoch derives from it, so an epoch is a function of the run's
    seed, its number and the state the previous epoch left (weights, optimizer, memory): a
    run resumed from a checkpoint repeats exactly what the uninterrupted run would have done.
    With several processes, each draws its own augmentations and dropout masks (``rank``);
    rank 0 draws what a single process draws.
    """
    entropy = [int(seed), int(epoch), int(stream)] + ([int(rank)] if rank else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def seed_epoch(seed: int, epoch: int, loaders: Sequence[DataLoader | None], rank: int = 0) -> None:
    """Reseed Python's, NumPy's and PyTorch's generators and each loader's own generators for ``epoch``.

    A loader that shares its data between processes (a ``DistributedSampler``, from
    :func:`reidlab.data.loaders.make_loader`'s ``shard=``) gets the same permutation seed on
    every process, so the shares stay disjoint; everything else is seeded per process.
    """
    s = epoch_seed(seed, epoch, 0, rank)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    for i, loader in enumerate(loaders, start=1):
        if loader is None:
            continue
        loader.generator.manual_seed(epoch_seed(seed, epoch, i, rank))
        if isinstance(loader.sampler, DistributedSampler):  # it permutes with seed + epoch: counted in passes
            loader.sampler.seed = epoch_seed(seed, epoch, i)
            loader.sampler.set_epoch(0)


@dataclass
class ECNParts:
    """Everything an ECN run trains with: what :func:`reidlab.ecn.run.build_ecn` builds and
    :func:`ecn_epoch` trains, one epoch at a time."""

    model: nn.Module
    criterion: InvarianceLoss | None  # None for 'source-only'
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    source_train: DataLoader  # batches of (img, pid, camid, index)
    target_train: DataLoader | None  # batches of (img, index); None without a target batch ('source-only')
    query: DataLoader  # the target's test query and gallery
    gallery: DataLoader
    source_query: DataLoader | None  # the source's test query and gallery (None unless eval_source)
    source_gallery: DataLoader | None
    device: torch.device
    amp: bool  # bf16 autocast in effect (CUDA and config.amp)
    true_ids: torch.Tensor  # hidden true identity of each target training image (measuring only)
    forward: nn.Module | None = None  # several processes: the DDP-wrapped ECNForward; None: one process
    rank: int = 0  # this process's rank (0 in a single process)
    #: :func:`reidlab.ecn.pretrain.state_digest` of the backbone the run started from (before any step);
    #: a resumed run keeps its checkpoint's, so the record names the start even if the cache was rebuilt
    backbone_digest: str | None = None


def _cycle(loader: DataLoader) -> Callable[[], Any]:
    """``next_target`` for :func:`run_epoch`: the loader's next batch, restarting it when exhausted
    (ECN cycles the target set, whose size differs from the source's). A restarted loader that
    shares its data between processes draws a new permutation, alike on every process (its
    ``DistributedSampler`` would otherwise repeat the last one), as a single process's does."""
    it: Iterator | None = None

    def next_batch() -> Any:
        nonlocal it
        for _ in range(2):
            if it is not None:
                try:
                    return next(it)
                except StopIteration:
                    if isinstance(loader.sampler, DistributedSampler):
                        loader.sampler.set_epoch(loader.sampler.epoch + 1)
            it = iter(loader)
        raise ValueError(
            "the target loader yields no batch: fewer target training images than batch_size (with drop_last)"
        )

    return next_batch


def ecn_epoch(parts: ECNParts, config: ECNConfig, epoch: int, *, progress: bool = True) -> dict[str, Any]:
    """One ECN epoch of :func:`reidlab.ecn.train_ecn`: one pass over the source loader (or
    ``config.max_steps``), the target cycled; returns the row ``log.csv`` gets.

    Every generator is reseeded from ``(config.seed, epoch)`` first (:func:`seed_epoch`), so the
    epoch depends only on the state a checkpoint holds. ``knn_precision`` measures the memory
    against the target's hidden true identities (never used for training).
    """
    seed_epoch(config.seed, epoch, [parts.source_train, parts.target_train], rank=parts.rank)
    crit = parts.criterion
    if crit is not None and config.control == "shuffled-slots":  # the control for E: a new image -> slot map
        crit.shuffle_slots(torch.Generator().manual_seed(epoch_seed(config.seed, epoch, _SLOT_STREAM)))
    steps = len(parts.source_train) if config.max_steps is None else min(len(parts.source_train), config.max_steps)
    if steps == 0:
        raise ValueError(
            f"the source loader yields no batch: fewer source training images than batch_size={config.batch_size}"
        )
    lr = parts.optimizer.param_groups[-1]["lr"]
    desc = f"ECN {config.invariance} epoch {epoch + 1}/{config.epochs}"
    with tqdm(total=steps, desc=desc, disable=not progress, leave=False) as bar:
        row = run_epoch(
            parts.model, parts.optimizer, itertools.islice(parts.source_train, steps), device=parts.device,
            criterion=crit, next_target=_cycle(parts.target_train) if parts.target_train is not None else None,
            epoch=epoch, lam=config.lam, amp=parts.amp, bar=bar, desc="ECN", forward=parts.forward,
        )
    chance = math.log(getattr(parts.model, "num_classes", 0) or 1)
    if epoch >= 1 and chance > 0 and row["loss_src"] >= chance:
        warnings.warn(
            f"ECN epoch {epoch}: the source loss {row['loss_src']:.3f} is at or above chance, ln(#source ids) = "
            f"{chance:.3f}, after the first epoch: a broken run, not a baseline (lower the learning rates; with "
            "ecn_exact=False they scale with the batch)", UserWarning, stacklevel=2,
        )
    return {
        "epoch": epoch, "steps": row["steps"], "loss_src": row["loss_src"], "loss_tgt": row["loss_tgt"], "acc_src": row["acc_src"],
        "lr": lr, "knn_precision": _memory_knn_precision(parts, config.knn), "seconds": row["seconds"],
        "rank1": None, "mAP": None,
    }


def _memory_knn_precision(parts: ECNParts, k: int) -> float | None:
    """How many of each memory slot's ``k`` nearest slots hold the same (hidden) person; None without a memory."""
    crit = parts.criterion
    if crit is None or not 1 <= k < len(parts.true_ids):
        return None
    ids = parts.true_ids.to(crit.memory.device)
    by_slot = torch.empty_like(ids)
    by_slot[crit.slot_map] = ids  # the slot each image wrote to holds that image's id
    return float(knn_precision(crit.memory, by_slot, k))
