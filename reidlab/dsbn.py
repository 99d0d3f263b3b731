"""Domain-specific batch normalisation (DSBN): one BN branch per domain.

Why: a BN layer's running statistics are an estimate of the *feature distribution* it sees.
Source and target re-ID data differ in camera style, so one shared BN learns a mixture that
fits neither domain; DSBN (Chang et al., CVPR 2019) keeps a separate ``nn.BatchNorm`` per
domain, while every convolution stays shared. Notebook 06 measures the per-layer statistics
gap between two synthetic domains, writes the split-batch layer out by hand, and tests the
claim of a widely copied DSBN blog snippet that routing target test data through the target BN or
through one unified BN makes no difference.

What is here, and how it differs from the widely copied snippet (a Chinese blog post on
domain-specific BN for unsupervised re-ID, "训练过程source和target采用不同的BN参数…"):

* :class:`DSBN1d` / :class:`DSBN2d` hold ``num_domains`` plain ``nn.BatchNorm1d/2d``
  branches in an ``nn.ModuleList`` called ``bns``, so each branch *is* a normal BN (its
  buffers, ``num_batches_tracked`` and gradients are PyTorch's own; ``tests/test_dsbn.py``
  compares them with independent ``nn.BatchNorm`` copies).
* The domain is chosen **explicitly** with the ``domain`` attribute or the
  :func:`domain` context manager (``with domain(model, 1): loss = crit(model(x_t))``);
  ``domain = None`` (the default) is the snippet's **split-batch** mode: in training the
  batch is cut into ``num_domains`` equal consecutive chunks (two domains: first half
  source, second half target), each normalised by its own branch, the outputs concatenated
  back; in eval every sample goes through ``eval_domain`` (the last, i.e. target, branch by
  default, as in the snippet).
* A batch that cannot be split raises a ``ValueError`` that says why (the snippet uses
  ``assert``, which vanishes under ``python -O``).
* :func:`convert_dsbn` / :func:`convert_bn` work on a model on any device and dtype (the
  snippet asserts the model is on the CPU) and copy every setting (eps, momentum, affine,
  track_running_stats), the buffers, the train/eval flag and ``requires_grad``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from itertools import chain
from typing import ClassVar

import torch
from torch import nn

__all__ = ["DSBN1d", "DSBN2d", "convert_dsbn", "convert_bn", "domain", "dsbn_layers"]


def _check_index(value: object, num_domains: int, what: str) -> int:
    """Return ``value`` as a domain index in ``[0, num_domains)`` (negative counts from the end)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int (a domain index), got {type(value).__name__} {value!r}")
    if not -num_domains <= value < num_domains:
        raise ValueError(
            f"{what}={value} is out of range for a DSBN layer with {num_domains} domains "
            f"(valid: 0..{num_domains - 1}, or -{num_domains}..-1 counting from the last)"
        )
    return value % num_domains


class _DSBN(nn.Module):
    """Shared code of :class:`DSBN1d` and :class:`DSBN2d`; see their docstrings."""

    bn_class: ClassVar[type[nn.modules.batchnorm._BatchNorm]]

    def __init__(
        self,
        num_features: int,
        num_domains: int = 2,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        eval_domain: int = -1,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if isinstance(num_domains, bool) or not isinstance(num_domains, int) or num_domains < 1:
            raise ValueError(f"num_domains must be an int >= 1, got {num_domains!r}")
        self.num_features = num_features
        self.num_domains = num_domains
        self.eval_domain = _check_index(eval_domain, num_domains, "eval_domain")
        #: ``None``: split-batch mode in training, ``eval_domain`` in eval; an int: that branch always.
        self.domain: int | None = None
        extra = {} if bias else {"bias": False}  # BN's `bias` switch exists only in recent torch: pass it only when off
        self.bns = nn.ModuleList(
            self.bn_class(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype, **extra)
            for _ in range(num_domains)
        )

    def _split_forward(self, x: torch.Tensor) -> torch.Tensor:
        n, k = x.shape[0], self.num_domains
        if n % k != 0:
            what = "an odd batch" if k == 2 else "a batch"
            raise ValueError(
                f"{type(self).__name__} in split-batch training mode got {what} of {n} samples, which cannot be "
                f"cut into {k} equal per-domain parts (first part domain 0, ... last part domain {k - 1}); "
                f"use a batch size divisible by {k}, or choose the domain explicitly with `with domain(model, d):`"
            )
        if n // k < 2:
            raise ValueError(
                f"{type(self).__name__} in split-batch training mode got a batch of {n} samples, i.e. {n // k} per "
                f"domain; each domain needs at least 2 samples for batch statistics (use a batch of >= {2 * k})"
            )
        chunks = torch.split(x, n // k, dim=0)
        return torch.cat([bn(c.contiguous()) for bn, c in zip(self.bns, chunks)], dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.domain is not None:
            return self.bns[_check_index(self.domain, self.num_domains, "domain")](x)
        if not self.training:
            return self.bns[_check_index(self.eval_domain, self.num_domains, "eval_domain")](x)
        return self._split_forward(x)

    def extra_repr(self) -> str:
        mode = "split" if self.domain is None else str(self.domain)
        return f"{self.num_features}, num_domains={self.num_domains}, domain={mode}, eval_domain={self.eval_domain}"


class DSBN1d(_DSBN):
    """Domain-specific ``nn.BatchNorm1d``: ``num_domains`` independent BN branches, one per domain.

    Taught in notebook 06. Use it where a model has ``BatchNorm1d`` (an embedding's BN, a
    BNNeck); :func:`convert_dsbn` swaps them in. Input ``(N, C)`` or ``(N, C, L)``.

    Parameters
    ----------
    num_features, eps, momentum, affine, track_running_stats:
        As ``nn.BatchNorm1d``; every branch gets the same settings.
    num_domains:
        Number of branches (2: source = 0, target = 1).
    eval_domain:
        Branch used in eval mode when no domain is chosen; ``-1`` = the last (target), as
        in the classic snippet.
    bias:
        ``False`` for an affine BN without a shift (``nn.BatchNorm(..., bias=False)``, recent torch only).
    device, dtype:
        Where the branches' tensors are created.

    Attributes
    ----------
    bns : nn.ModuleList
        The branches, plain ``nn.BatchNorm1d``; state_dict keys ``bns.<d>.weight`` ....
    domain : int or None
        ``None`` (default): training splits the batch into ``num_domains`` equal consecutive
        parts (part ``d`` -> branch ``d``, outputs concatenated in the input order); eval
        uses ``eval_domain``. An int: every sample goes through that branch, in training
        *and* eval. Set it temporarily with the :func:`domain` context manager.

    Raises
    ------
    ValueError
        In split-batch training, for a batch not divisible into ``num_domains`` parts or
        with fewer than 2 samples per part; for a domain index out of range.
    """

    bn_class = nn.BatchNorm1d


class DSBN2d(_DSBN):
    """Domain-specific ``nn.BatchNorm2d``: ``num_domains`` independent BN branches, one per domain.

    Taught in notebook 06. The image-feature version of :class:`DSBN1d` (same parameters,
    attributes and errors); input ``(N, C, H, W)``.

    Examples
    --------
    >>> layer = DSBN2d(8)                   # 2 domains, split-batch mode
    >>> y = layer(torch.randn(4, 8, 5, 5))  # samples 0-1 -> source BN, 2-3 -> target BN
    >>> layer.domain = 0                     # or: with domain(model, 0): ...
    >>> y = layer(torch.randn(3, 8, 5, 5))  # every sample -> source BN
    """

    bn_class = nn.BatchNorm2d


_DSBN_FOR_BN: dict[type[nn.Module], type[_DSBN]] = {nn.BatchNorm1d: DSBN1d, nn.BatchNorm2d: DSBN2d}
_BN_FOR_DSBN: dict[type[nn.Module], type[nn.Module]] = {DSBN1d: nn.BatchNorm1d, DSBN2d: nn.BatchNorm2d}


def dsbn_layers(model: nn.Module) -> list[_DSBN]:
    """Every :class:`DSBN1d` / :class:`DSBN2d` in ``model`` (itself included), in module order."""
    return [m for m in model.modules() if isinstance(m, _DSBN)]


def _device_dtype(module: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    """Device and floating dtype of a module's tensors (``None`` when it holds none)."""
    tensors = list(chain(module.parameters(recurse=False), module.buffers(recurse=False)))
    device = tensors[0].device if tensors else None
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), None)
    return device, dtype


def _copy_flags(src: nn.Module, dst: nn.Module) -> None:
    """Carry over the train/eval flag and which parameters are frozen."""
    dst.train(src.training)
    src_params = dict(src.named_parameters(recurse=False))
    for name, p in dst.named_parameters(recurse=False):
        p.requires_grad_(src_params[name].requires_grad)


def _has_bias(bn: nn.Module) -> bool:
    """False only for an affine BN built with ``bias=False`` (a switch of recent torch versions)."""
    return not bn.affine or bn.bias is not None


def _to_dsbn(bn: nn.Module, num_domains: int, eval_domain: int) -> _DSBN:
    assert isinstance(bn, nn.modules.batchnorm._BatchNorm)  # convert_dsbn passes only the types in _DSBN_FOR_BN
    device, dtype = _device_dtype(bn)
    new = _DSBN_FOR_BN[type(bn)](
        bn.num_features, num_domains, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
        eval_domain=eval_domain, bias=_has_bias(bn), device=device, dtype=dtype,
    )
    new.train(bn.training)
    for branch in new.bns:
        branch.load_state_dict(bn.state_dict())
        _copy_flags(bn, branch)
    return new


def convert_dsbn(model: nn.Module, num_domains: int = 2, *, eval_domain: int = -1) -> nn.Module:
    """Replace every ``nn.BatchNorm1d/2d`` in ``model`` (recursively) by a DSBN copying it into each branch.

    Taught in notebook 06. Only layers whose type is exactly ``nn.BatchNorm1d`` or
    ``nn.BatchNorm2d`` are replaced (subclasses, ``SyncBatchNorm`` and torchvision's
    ``FrozenBatchNorm2d`` are left alone: a plain-BN branch would lose their behaviour).
    Every branch starts as an exact copy of the BN it replaces:
    weight, bias, running_mean, running_var, num_batches_tracked, eps, momentum, affine,
    track_running_stats, the train/eval flag and ``requires_grad``. So, right after the
    conversion, the model computes exactly what it computed before, in eval mode and (with
    an explicit domain) in training; the branches only drift apart when they see different
    data. The new layers are created on the device and dtype of the BN they replace, so a
    model already on a GPU converts in place (the blog snippet asserts CPU).

    Parameters
    ----------
    model:
        Converted **in place**; DSBN layers already in it are left alone (converting twice
        does not nest branches).
    num_domains:
        Branches per layer.
    eval_domain:
        Branch each new layer uses in eval mode when no domain is chosen (last by default).

    Returns
    -------
    nn.Module
        ``model`` itself, or the new DSBN when ``model`` is itself a BN layer.
    """
    if isinstance(num_domains, bool) or not isinstance(num_domains, int) or num_domains < 1:
        raise ValueError(f"num_domains must be an int >= 1, got {num_domains!r}")
    _check_index(eval_domain, num_domains, "eval_domain")
    if type(model) in _DSBN_FOR_BN:
        return _to_dsbn(model, num_domains, eval_domain)
    for name, child in model.named_children():
        if type(child) in _DSBN_FOR_BN:
            setattr(model, name, _to_dsbn(child, num_domains, eval_domain))
        elif not isinstance(child, _DSBN):
            convert_dsbn(child, num_domains, eval_domain=eval_domain)
    return model


def _to_bn(layer: _DSBN, index: int | None) -> nn.Module:
    d = layer.eval_domain if index is None else _check_index(index, layer.num_domains, "domain")
    branch = layer.bns[d]
    device, dtype = _device_dtype(branch)
    extra = {} if _has_bias(branch) else {"bias": False}
    bn = _BN_FOR_DSBN[type(layer)](
        branch.num_features, branch.eps, branch.momentum, branch.affine, branch.track_running_stats,
        device=device, dtype=dtype, **extra,
    )
    bn.load_state_dict(branch.state_dict())
    _copy_flags(branch, bn)
    return bn


def convert_bn(model: nn.Module, domain: int | None = None) -> nn.Module:
    """Replace every DSBN layer by a plain BN holding one domain's state (the inverse of :func:`convert_dsbn`).

    Taught in notebook 06: after DSBN training, deploy a single network for one domain
    (usually the target) with nothing DSBN-specific left in it.

    Parameters
    ----------
    model:
        Converted in place.
    domain:
        Which branch to keep; ``None`` keeps each layer's ``eval_domain`` (the target by
        default, like the snippet's ``use_target=True``).

    Returns
    -------
    nn.Module
        ``model`` itself, or the new BN when ``model`` is itself a DSBN layer.
    """
    if isinstance(model, _DSBN):
        return _to_bn(model, domain)
    for name, child in model.named_children():
        if isinstance(child, _DSBN):
            setattr(model, name, _to_bn(child, domain))
        else:
            convert_bn(child, domain)
    return model


@contextlib.contextmanager
def domain(model: nn.Module, index: int | None) -> Iterator[nn.Module]:
    """Route everything through branch ``index`` of every DSBN layer in ``model`` inside a ``with`` block.

    Taught in notebook 06. The previous per-layer choices are restored on exit, also when the
    block raises, so a training step for one domain cannot leak into the next::

        with domain(model, 0):
            loss = crit(model(x_source), y_source)
        with domain(model, 1):
            loss = loss + target_loss(model(x_target))

    Parameters
    ----------
    model:
        A model holding DSBN layers (a ``ValueError`` if it holds none: a silent no-op would
        hide a forgotten :func:`convert_dsbn`).
    index:
        Domain index (negative counts from the last), or ``None`` for split-batch mode.
    """
    layers = dsbn_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} contains no DSBN layers; convert it first with convert_dsbn(model)")
    if index is not None:
        for layer in layers:  # validate everything before changing anything
            _check_index(index, layer.num_domains, "domain")
    previous = [layer.domain for layer in layers]
    try:
        for layer in layers:
            layer.domain = index
        yield model
    finally:
        for layer, old in zip(layers, previous):
            layer.domain = old
