"""Batch normalisation, written out, and the tools for inspecting and freezing BN layers.

Why a from-scratch :func:`batch_norm` when PyTorch has one? Because every later notebook
(train vs eval, momentum, ``track_running_stats``, freezing, DSBN, recalibration) is about
*what BN does to its buffers*, and that is easiest to reason about when the whole mechanism
is twenty lines of tensor code whose result is tested to equal ``nn.BatchNorm1d/2d``
(``tests/test_bn.py``).

The helpers answer the practical questions of domain-adaptive re-ID code:

- :func:`bn_summary` - which BN layers are in train mode, tracking stats, trainable?
- :func:`freeze_bn` / :func:`unfreeze_bn` - pin BN layers to eval mode so that a later
  ``model.train()`` does not silently unfreeze them; freeze gamma/beta.
- :func:`set_bn_eval` - ECN's "BN of conv1..layer2 in eval" (re-applied after every
  ``model.train()``, as the reference code does).
- :func:`recalibrate_bn` - re-estimate the running statistics on new data.

Notebooks: 01 (:func:`batch_norm`), 03 (:func:`recalibrate_bn`), 05 (:func:`bn_summary`,
:func:`freeze_bn`, :func:`set_bn_eval`).
"""
from __future__ import annotations

import functools
import html
import numbers
from typing import Any, Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.ops.misc import FrozenBatchNorm2d
from tqdm.auto import tqdm

from .runtime import module_device

__all__ = [
    "batch_norm",
    "is_bn",
    "bn_summary",
    "BNSummary",
    "freeze_bn",
    "unfreeze_bn",
    "set_bn_eval",
    "recalibrate_bn",
]


# --- the forward pass -----------------------------------------------------------------------


def _check_channel_vector(t: torch.Tensor | None, name: str, channels: int) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or None, got {type(t).__name__}")
    if tuple(t.shape) != (channels,):
        raise ValueError(
            f"{name} has shape {tuple(t.shape)} but the input has {channels} channels (dim 1): "
            f"expected shape ({channels},)"
        )


def batch_norm(
    x: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = True,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    num_batches_tracked: torch.Tensor | None = None,
) -> torch.Tensor:
    """Batch normalisation from tensor operations, with the running-stat updates of ``nn.BatchNorm``.

    Taught in notebook 01, which derives it step by step; this is the same mechanism, kept
    here so that later notebooks (02-05) can call it and ``tests/test_bn.py`` can prove it
    equals ``torch.nn.functional.batch_norm`` plus the module's ``num_batches_tracked`` logic.

    Statistics are per channel (dim 1) over every other dim, so ``(N, C)``, ``(N, C, L)``
    and ``(N, C, H, W)`` inputs all work: for images a channel's mean is taken over the
    batch *and* all pixels.

    Parameters
    ----------
    x:
        Input of shape ``(N, C, *)``.
    running_mean, running_var:
        Buffers of shape ``(C,)``, updated **in place** in training mode; both ``None`` when
        the layer does not track running statistics (then batch statistics are used in
        both modes, like ``nn.BatchNorm2d(track_running_stats=False)``).
    weight, bias:
        gamma and beta, shape ``(C,)``; ``None`` means 1 and 0 (``affine=False``).
    training:
        Normalise with the batch's statistics and update the buffers (``True``), or
        normalise with the running statistics (``False``).
    momentum:
        PyTorch's convention: ``running <- (1 - momentum) * running + momentum * batch``
        (the *opposite* of Keras' ``decay``; notebook 03). ``None`` means a cumulative
        average, factor ``1 / num_batches_tracked``, which needs ``num_batches_tracked``.
    eps:
        Added to the variance before the square root, so a constant channel does not
        divide by zero; it must be positive where batch statistics are used (as in
        PyTorch >= 2.x's ``F.batch_norm``) and non-negative otherwise.
    num_batches_tracked:
        0-dim integer buffer, incremented in place in training mode when running stats
        are tracked (as the module does).

    Returns
    -------
    torch.Tensor
        The normalised (and scaled/shifted) input, same shape as ``x``; differentiable.

    Raises
    ------
    ValueError
        For an input of fewer than 2 dims, a non-positive ``eps`` with batch statistics,
        buffers/parameters whose shape is not ``(C,)``,
        only one of the two running buffers given, ``momentum=None`` without
        ``num_batches_tracked``, or a batch with one value per channel where batch
        statistics are needed (its variance is undefined; PyTorch raises too).

    Notes
    -----
    Normalisation divides by the *biased* batch variance (``/ n``), the quantity that
    makes the batch exactly zero-mean, unit-variance; ``running_var`` stores the *unbiased*
    estimate (``/ (n - 1)``), because it estimates the population variance used at test
    time. ``n`` is the number of values per channel, ``N * H * W`` for images.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x must have shape (N, C, *) with at least 2 dims, got shape {tuple(x.shape)}")
    if (running_mean is None) != (running_var is None):
        raise ValueError("give both running_mean and running_var, or neither (no running statistics tracked)")
    if momentum is not None and not isinstance(momentum, numbers.Real):
        raise TypeError(f"momentum must be a float or None, got {type(momentum).__name__}")
    if eps < 0:
        raise ValueError(f"eps must be non-negative, got {eps}")
    channels = x.shape[1]
    for t, name in ((running_mean, "running_mean"), (running_var, "running_var"), (weight, "weight"), (bias, "bias")):
        _check_channel_vector(t, name, channels)

    dims = [0, *range(2, x.dim())]  # every dim except the channel dim
    shape = [1, channels] + [1] * (x.dim() - 2)  # broadcast a (C,) vector against x
    use_batch_stats = training or running_mean is None
    update = training and running_mean is not None

    if use_batch_stats:
        if eps <= 0:
            # 0/0 = NaN for any channel that is constant in the batch (recent PyTorch refuses it too)
            raise ValueError(f"eps must be positive when batch statistics are used, got {eps}")
        n = x.numel() // channels if channels else 0
        if n <= 1:
            raise ValueError(
                f"batch norm needs more than 1 value per channel to compute a batch variance, "
                f"got input of shape {tuple(x.shape)} ({n} value(s) per channel); use a larger "
                f"batch, or eval mode with running statistics"
            )
        mean = x.mean(dim=dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)  # biased: divides by n
        if update:
            # update implies running_mean is given, and with it running_var (both or neither, checked above)
            assert running_mean is not None and running_var is not None
            if momentum is None:
                if num_batches_tracked is None:
                    raise ValueError("momentum=None (cumulative average) needs the num_batches_tracked counter")
            with torch.no_grad():
                if num_batches_tracked is not None:
                    num_batches_tracked.add_(1)
                factor = 1.0 / float(num_batches_tracked.item()) if momentum is None else float(momentum)
                batch_mean = mean.detach().reshape(channels).to(running_mean.dtype)
                unbiased = (var.detach().reshape(channels) * (n / (n - 1))).to(running_var.dtype)
                running_mean.mul_(1.0 - factor).add_(batch_mean, alpha=factor)
                running_var.mul_(1.0 - factor).add_(unbiased, alpha=factor)
    else:
        # eval mode with running statistics: use_batch_stats is False only when they are given
        assert running_mean is not None and running_var is not None
        mean = running_mean.to(x.dtype).reshape(shape)
        var = running_var.to(x.dtype).reshape(shape)

    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight.to(x.dtype).reshape(shape)
    if bias is not None:
        y = y + bias.to(x.dtype).reshape(shape)
    return y


# --- finding and describing BN layers -------------------------------------------------------


def is_bn(module: nn.Module) -> bool:
    """True for BatchNorm1d/2d/3d, SyncBatchNorm (any ``_BatchNorm``) and torchvision's ``FrozenBatchNorm2d``.

    Instance norm is *not* BN here (it keeps no batch statistics in its default setting).
    Notebook 05.
    """
    return isinstance(module, (_BatchNorm, FrozenBatchNorm2d))


def _requires_grad(module: nn.Module) -> bool | str | None:
    params = [p for p in (getattr(module, "weight", None), getattr(module, "bias", None)) if isinstance(p, torch.Tensor)]
    if not params:
        return None
    flags = {bool(isinstance(p, nn.Parameter) and p.requires_grad) for p in params}
    return flags.pop() if len(flags) == 1 else "mixed"


def _mean_or_none(t: Any) -> float | None:
    if isinstance(t, torch.Tensor) and t.numel() > 0:
        return float(t.detach().float().mean())
    return None


class BNSummary(list):
    """A list of dicts, one per BN layer, that prints as a table (text and HTML).

    Made by :func:`bn_summary`; being a plain list, it can be filtered or fed to
    ``pandas.DataFrame`` directly.
    """

    columns = (
        "name",
        "type",
        "training",
        "track_running_stats",
        "frozen_stats",
        "momentum",
        "requires_grad",
        "num_batches_tracked",
        "running_mean",
        "running_var",
    )

    @staticmethod
    def _fmt(value: Any, digits: int = 4) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.{digits}g}"
        return str(value)

    def to_text(self, digits: int = 4) -> str:
        """Aligned plain-text table (floats to ``digits`` significant digits).

        ``running_mean``/``running_var`` are channel averages of the buffers.
        """
        if not self:
            return "(no BN layers)"
        rows = [list(self.columns)] + [[self._fmt(r.get(c), digits) for c in self.columns] for r in self]
        widths = [max(len(row[i]) for row in rows) for i in range(len(self.columns))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython's text/plain
        p.text(self.to_text())

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(self._fmt(r.get(c)))}</td>" for c in self.columns) + "</tr>" for r in self
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def bn_summary(model: nn.Module) -> BNSummary:
    """One row per BN layer of ``model``: mode, tracking, momentum, trainability, stats.

    Taught in notebook 05: freezing BN means two different things (gamma/beta not trained;
    running statistics not updated) and this table shows both at a glance, so a bug such as
    ``m.requires_grad_ = False`` (an assignment that does nothing) or a ``model.train()``
    that silently un-froze the stats is visible.

    Returns
    -------
    BNSummary
        A list of dicts with keys ``name``, ``type``, ``training``, ``track_running_stats``,
        ``frozen_stats`` (pinned to eval by :func:`freeze_bn`), ``momentum``,
        ``requires_grad`` (of weight/bias: ``True``, ``False``, ``"mixed"``, or ``None`` when
        ``affine=False``), ``num_batches_tracked``, and ``running_mean`` / ``running_var``
        (the channel *averages* of the buffers, ``None`` when not tracked). It prints as a
        table.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"bn_summary expects an nn.Module, got {type(model).__name__}")
    rows = BNSummary()
    for name, m in model.named_modules():
        if not is_bn(m):
            continue
        nbt = getattr(m, "num_batches_tracked", None)
        rows.append(
            {
                "name": name or "(root)",
                "type": type(m).__name__,
                "training": m.training,
                # FrozenBatchNorm2d always uses its stored statistics and never updates them.
                "track_running_stats": getattr(m, "track_running_stats", True),
                "frozen_stats": _is_stats_frozen(m) or not isinstance(m, _BatchNorm),
                "momentum": getattr(m, "momentum", None),
                "requires_grad": _requires_grad(m),
                "num_batches_tracked": int(nbt) if isinstance(nbt, torch.Tensor) else None,
                "running_mean": _mean_or_none(getattr(m, "running_mean", None)),
                "running_var": _mean_or_none(getattr(m, "running_var", None)),
            }
        )
    return rows


# --- freezing -------------------------------------------------------------------------------


def _frozen_train(module: nn.Module, mode: bool = True) -> nn.Module:
    """Replacement ``train()`` of a layer frozen by :func:`freeze_bn`: always eval."""
    nn.Module.train(module, False)
    return module


def _is_stats_frozen(module: nn.Module) -> bool:
    t = module.__dict__.get("train")
    return isinstance(t, functools.partial) and t.func is _frozen_train


def freeze_bn(model_or_module: nn.Module, stats: bool = True, affine: bool = True) -> list[str]:
    """Freeze BN layers: running statistics (``stats``) and/or gamma/beta (``affine``).

    Taught in notebook 05, which shows the two usual half-measures failing:
    ``requires_grad=False`` freezes gamma/beta but the running statistics keep moving, and
    ``bn.eval()`` freezes the statistics only until the next ``model.train()``, which every
    training loop calls at the start of each epoch.

    ``stats=True`` puts each BN layer in eval mode *and replaces that instance's* ``train``
    *method* with one that always sets eval, so a later ``model.train()`` leaves the layer
    in eval. The replacement is a ``functools.partial`` of a module-level function stored in
    the instance's ``__dict__``: ``copy.deepcopy`` and pickling keep it, ``state_dict()`` is
    unchanged (no new buffers or parameters, so checkpoints round-trip with
    ``strict=True``), and :func:`unfreeze_bn` undoes it. ``affine=True`` sets
    ``requires_grad=False`` on weight and bias (build the optimizer after freezing, or
    filter parameters by ``requires_grad``).

    torchvision's ``FrozenBatchNorm2d`` is already frozen in both senses and is skipped.

    Parameters
    ----------
    model_or_module:
        A model (every BN layer inside is frozen) or a single BN layer.
    stats, affine:
        What to freeze; at least one must be ``True``.

    Returns
    -------
    list of str
        Names (as in ``named_modules()``) of the layers frozen; ``""`` is the module itself.
    """
    if not isinstance(model_or_module, nn.Module):
        raise TypeError(f"freeze_bn expects an nn.Module, got {type(model_or_module).__name__}")
    if not (stats or affine):
        raise ValueError("freeze_bn(stats=False, affine=False) would freeze nothing; set stats and/or affine")
    names = []
    for name, m in model_or_module.named_modules():
        if not isinstance(m, _BatchNorm):
            continue
        if stats:
            m.train = functools.partial(_frozen_train, m)  # type: ignore[method-assign, assignment]  # on purpose: see docstring
            nn.Module.train(m, False)
        if affine:
            for p in (m.weight, m.bias):
                if p is not None:
                    p.requires_grad_(False)
        names.append(name)
    return names


def unfreeze_bn(model_or_module: nn.Module, stats: bool = True, affine: bool = True) -> list[str]:
    """Undo :func:`freeze_bn`: restore the class's ``train()`` and/or make gamma/beta trainable.

    The layers' mode is then set to follow their parent again at the next ``model.train()``
    / ``model.eval()``; this function itself does not change the mode. Notebook 05.

    Returns
    -------
    list of str
        Names of the layers changed.
    """
    if not isinstance(model_or_module, nn.Module):
        raise TypeError(f"unfreeze_bn expects an nn.Module, got {type(model_or_module).__name__}")
    names = []
    for name, m in model_or_module.named_modules():
        if not isinstance(m, _BatchNorm):
            continue
        if stats and _is_stats_frozen(m):
            del m.__dict__["train"]
        if affine:
            for p in (m.weight, m.bias):
                if p is not None:
                    p.requires_grad_(True)
        names.append(name)
    return names


def set_bn_eval(model: nn.Module, until: str = "layer3") -> list[str]:
    """Put the BN layers that come before the module ``until`` in eval mode (ECN's recipe).

    Taught in notebook 05. ECN (Zhong et al., CVPR 2019) keeps the BN layers of
    conv1..layer2 of its ResNet-50 in eval mode while training. Its reference code walks
    ``named_modules()`` until the first name containing ``"layer3"`` and calls ``.eval()``
    on modules whose *name* contains ``"bn"``: that catches 22 layers and misses the two
    downsample BNs (named ``layer1.0.downsample.1`` and ``layer2.0.downsample.1``), which keep
    updating. This function selects by *type*, so it finds all 24.

    Like the reference code, this is **not sticky**: ``model.train()`` puts the layers back
    in train mode, so call it after every ``model.train()`` (at the start of each epoch).
    That is the difference from :func:`freeze_bn`, which survives ``model.train()``.

    Parameters
    ----------
    model:
        The network; ``until`` is looked up in ``named_modules()`` order, so it may be a
        top-level child (``"layer3"`` of a torchvision ResNet) or a nested one (a name ending
        in ``".layer3"``, e.g. ``"base.layer3"``, matches ``until="layer3"``).
    until:
        Name of the first module whose BN layers stay as they are.

    Returns
    -------
    list of str
        Names of the BN layers put in eval mode.

    Raises
    ------
    ValueError
        If no module is named ``until``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"set_bn_eval expects an nn.Module, got {type(model).__name__}")
    names: list[str] = []
    for name, m in model.named_modules():
        if name and (name == until or name.endswith("." + until)):
            return names
        if is_bn(m):
            m.eval()
            names.append(name)
    children = [n for n, _ in model.named_children()]
    raise ValueError(f"no module named {until!r} in the model; its top-level children are {children}")


# --- recalibration --------------------------------------------------------------------------


def _first_tensor(batch: Any) -> torch.Tensor:
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(
        f"recalibrate_bn: each loader item must be a tensor or a (tensor, ...) tuple/list, got {type(batch).__name__}"
    )


def _running_buffers(m: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(running_mean, running_var, num_batches_tracked)`` of a layer whose flag says it tracks them."""
    if m.running_mean is None or m.running_var is None or m.num_batches_tracked is None:
        raise ValueError(
            "a BN layer has track_running_stats=True but no running statistics (a buffer is None): it was built "
            "untracked and only its flag was set (notebook 04); give it running_mean, running_var and num_batches_tracked"
        )
    return m.running_mean, m.running_var, m.num_batches_tracked


def recalibrate_bn(
    model: nn.Module,
    loader: Iterable[Any],
    num_batches: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> int:
    """Re-estimate every BN layer's running statistics from ``loader`` (BN recalibration).

    Taught in notebook 03. The running statistics are an exponential average over the last
    training batches (with PyTorch's default ``momentum=0.1``, the last 29 batches carry 95 %
    of the weight: a few tens of batches, not hundreds), taken while the weights were still
    changing, and on the *source* domain; re-estimating them with the final weights, on the
    data the model will see, is a cheap fix (also called "precise BN", or AdaBN when the data
    are from the target domain).

    Every BN layer that tracks running statistics is reset (mean 0, var 1, counter 0) and
    given ``momentum=None``, so after ``k`` batches its ``running_mean`` is the plain average
    of the ``k`` batch means and its ``running_var`` the average of the ``k`` per-batch
    unbiased variances. With equal batch sizes the mean is the exact data mean; the variance
    average omits the spread *between* batch means, so it equals the variance over all
    data only for a single batch (or batches with equal means) - which is also what the
    model sees in training. The forward passes run with the whole model in train mode
    (dropout included, as ``torch.optim.swa_utils.update_bn`` does) under ``no_grad``, with
    BN layers pinned by :func:`freeze_bn` temporarily updated too. Afterwards the momenta
    and the ``training`` flag of *every* module are restored exactly; if anything fails,
    the previous running statistics are restored as well.

    Parameters
    ----------
    model:
        The network.
    loader:
        Iterable of input tensors or of tuples/lists whose first item is the input
        (``(images, labels, ...)``).
    num_batches:
        Use at most this many batches (``None``: the whole loader).
    device:
        Where to send the inputs; defaults to the device of the model's first parameter.
    progress:
        Show a tqdm progress bar.

    Returns
    -------
    int
        The number of samples (rows of the inputs) forwarded.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"recalibrate_bn expects an nn.Module, got {type(model).__name__}")
    if num_batches is not None and (not isinstance(num_batches, numbers.Integral) or num_batches < 1):
        raise ValueError(f"num_batches must be a positive integer or None, got {num_batches!r}")
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not bns:
        raise ValueError("the model has no BN layer with track_running_stats=True: there is nothing to recalibrate")
    device = torch.device(device) if device is not None else module_device(model)

    modes = [(m, m.training) for m in model.modules()]
    momenta = [(m, m.momentum) for m in bns]
    saved = []
    for m in bns:
        mean, var, nbt = _running_buffers(m)
        saved.append((m, mean.clone(), var.clone(), nbt.clone()))
    seen = batches = 0
    ok = False
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        for m in bns:  # including layers pinned to eval by freeze_bn
            m.training = True
        iterator: Iterable[Any] = loader
        if progress:
            iterator = tqdm(loader, total=num_batches, desc="recalibrate BN", leave=False)
        with torch.no_grad():
            for batch in iterator:
                if num_batches is not None and batches >= num_batches:
                    break
                x = _first_tensor(batch).to(device)
                model(x)
                seen += x.shape[0]
                batches += 1
        if batches == 0:
            raise ValueError("recalibrate_bn: the loader yielded no batches")
        ok = True
    finally:
        for m, momentum in momenta:
            m.momentum = momentum
        for module, training in modes:
            module.training = training
        if not ok:
            with torch.no_grad():
                for m, mean, var, nbt in saved:
                    running_mean, running_var, num_batches_tracked = _running_buffers(m)
                    running_mean.copy_(mean)
                    running_var.copy_(var)
                    num_batches_tracked.copy_(nbt)
    return seen
