"""``load_or_train``: train once, reuse the result (the pattern of the UvA DL notebooks).

Long computations (a notebook's training run, the synthetic pretraining of
:mod:`reidlab.ecn.pretrain` that ``--pretrained synthetic`` uses) go behind this helper; it lives
in the library, not in the lessons, because the ECN command line needs it too. The first run trains and caches; later runs load the cache. The cache key
holds the profile and every setting passed in ``key``, so changing a setting retrains
instead of silently loading a stale result. Files live under :func:`reidlab.files.data_dir`
(git-ignored), are written atomically and read with ``weights_only=True``: a cache file
can hold tensors, numbers, strings, lists and dicts, never arbitrary pickled objects.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from .files import atomic_save, data_dir


def cache_path(name: str, key: dict[str, Any] | None = None, *, root: str | os.PathLike | None = None) -> Path:
    """The file :func:`load_or_train` uses for ``name`` and ``key``."""
    blob = json.dumps(key or {}, sort_keys=True, default=str)
    digest = hashlib.sha1(blob.encode()).hexdigest()[:10]
    return Path(root or data_dir()) / "cache" / f"{name}-{digest}.pt"


def _first_unloadable(obj: Any, where: str = "result") -> str | None:
    """Where in ``obj`` the first value lies that ``torch.load(weights_only=True)`` would refuse."""
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes, torch.Tensor, torch.Size,
                                       torch.dtype, torch.device)):
        return None
    if isinstance(obj, dict):
        for k, v in obj.items():
            found = _first_unloadable(k, f"a key of {where}") or _first_unloadable(v, f"{where}[{k!r}]")
            if found:
                return found
        return None
    if isinstance(obj, (list, tuple, set)):
        for i, v in enumerate(obj):
            found = _first_unloadable(v, f"{where}[{i}]")
            if found:
                return found
        return None
    return f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}"


def _check_cacheable(result: Any, name: str) -> None:
    """``TypeError`` unless ``result`` survives a ``weights_only`` round trip (checked in memory)."""
    buf = io.BytesIO()
    torch.save(result, buf)
    buf.seek(0)
    try:
        torch.load(buf, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - the unpickler raises many types
        where = _first_unloadable(result) or f"{type(err).__name__}: {err}"
        raise TypeError(
            f"load_or_train({name!r}) can cache tensors, numbers, strings, lists, tuples and dicts of them, "
            f"which load back safely (weights_only=True); {where}: convert it (e.g. torch.as_tensor for a "
            "numpy array, a dict for a result object)"
        ) from None


def load_or_train(
    name: str,
    train_fn: Callable[[], Any],
    key: dict[str, Any] | None = None,
    *,
    root: str | os.PathLike | None = None,
    retrain: bool = False,
) -> Any:
    """Return the cached result of ``train_fn()`` for (``name``, ``key``), computing it if needed.

    A cache file that cannot be read (truncated, corrupt, from an incompatible version) is
    named in a warning, then trained again and overwritten.

    Parameters
    ----------
    name:
        A short file-system-safe name, e.g. ``"08_source_baseline"``.
    train_fn:
        Called with no arguments when there is no cache; its result (tensors, numbers,
        strings, lists, tuples and dicts of them, e.g. a ``state_dict`` and a metrics dict)
        is saved and returned. Anything else (a numpy array, a result object) raises
        ``TypeError`` before it is saved: it could not be loaded back with ``weights_only=True``.
    key:
        Every setting the result depends on (profile name, seed, epochs, ...).
    retrain:
        Ignore an existing cache and train again.
    """
    path = cache_path(name, key, root=root)
    if path.exists() and not retrain:
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - the unpickler raises many types
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            warnings.warn(f"cache file {path} cannot be read ({type(err).__name__}: {first}); training again",
                          UserWarning, stacklevel=2)
    result = train_fn()
    _check_cacheable(result, name)
    atomic_save(result, path)
    return result
