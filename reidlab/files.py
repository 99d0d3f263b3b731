"""Where generated files go, and how they are written so that a kill never leaves half of one.

* :func:`data_dir` -- the one folder for everything the series generates or caches
  (synthetic worlds, cached training results): never the tracked tree;
* :func:`atomic_write` -- the one atomic writer: write to a temporary file in the target's
  folder, then ``os.replace`` it into place. A run killed mid-write leaves the previous file
  (or none), never a truncated one. :func:`atomic_save` (``torch.save``) and
  :func:`atomic_write_text` are that writer with the two payloads the package writes.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

DATA_ENV = "REIDLAB_DATA_DIR"

__all__ = ["DATA_ENV", "data_dir", "atomic_write", "atomic_save", "atomic_write_text"]


def data_dir() -> Path:
    """Where generated data and cached results go (never the tracked tree).

    ``$REIDLAB_DATA_DIR`` if set; else ``data/`` at the root of a source checkout
    (git-ignored); else ``~/.cache/reidlab``.
    """
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and os.access(root, os.W_OK):
        return root / "data"
    return Path.home() / ".cache" / "reidlab"


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it to ``path``.

    The rename is atomic on POSIX and Windows (same folder, ``os.replace``), so readers see
    the old file or the new one. The temporary file is removed if ``write`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` through :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` through :func:`atomic_write`."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)

    return atomic_write(path, write)
