"""Training loops: the supervised source baseline (notebook 08), later ECN's trainer (09-10).

:func:`train_source` is plain supervised re-ID training as ECN does it for its source
branch: identity classification with cross-entropy, SGD with Nesterov momentum 0.9 and
weight decay 5e-4, two learning rates (ECN: 0.01 for pretrained backbone layers, 0.1
for the new ones, see :func:`reidlab.models.param_groups`) and one step decay by 10x
(ECN: at epoch 40 of 60). It is a plain function, not a trainer class: everything it
depends on is in its signature, and it returns what happened as a dict of lists.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .models import param_groups

__all__ = ["train_source", "split_batch", "make_optimizer"]


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
    Deterministic on the CPU for a fixed seed and loader order (``reidlab.setup`` turns
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
