"""``load_or_train``: train once, reuse the result (the pattern of the UvA DL notebooks).

Long computations in the notebooks (training a network, generating a dataset) go behind
this helper. The first run trains and caches; later runs load the cache. The cache key
holds the profile and every setting passed in ``key``, so changing a setting retrains
instead of silently loading a stale result. Files live under :func:`reidlab.files.data_dir`
(git-ignored), are written atomically and read with ``weights_only=True``: a cache file
can hold tensors, numbers, strings, lists and dicts, never arbitrary pickled objects.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch

from reidlab.files import atomic_save, data_dir


def cache_path(name: str, key: dict[str, Any] | None = None, *, root: str | os.PathLike | None = None) -> Path:
    """The file :func:`load_or_train` uses for ``name`` and ``key``."""
    blob = json.dumps(key or {}, sort_keys=True, default=str)
    digest = hashlib.sha1(blob.encode()).hexdigest()[:10]
    return Path(root or data_dir()) / "cache" / f"{name}-{digest}.pt"


def load_or_train(
    name: str,
    train_fn: Callable[[], Any],
    key: dict[str, Any] | None = None,
    *,
    root: str | os.PathLike | None = None,
    retrain: bool = False,
) -> Any:
    """Return the cached result of ``train_fn()`` for (``name``, ``key``), computing it if needed.

    Parameters
    ----------
    name:
        A short file-system-safe name, e.g. ``"08_source_baseline"``.
    train_fn:
        Called with no arguments when there is no cache; its result (tensors, numbers,
        lists, dicts, e.g. a ``state_dict`` and a metrics dict) is saved and returned.
    key:
        Every setting the result depends on (profile name, seed, epochs, ...).
    retrain:
        Ignore an existing cache and train again.
    """
    path = cache_path(name, key, root=root)
    if path.exists() and not retrain:
        return torch.load(path, map_location="cpu", weights_only=True)
    result = train_fn()
    atomic_save(result, path)
    return result
