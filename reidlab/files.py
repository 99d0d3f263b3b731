"""Where generated files go, and how they are written so that a kill never leaves half of one.

* :func:`data_dir` -- the one folder for everything the series generates or caches
  (synthetic worlds, cached training results): never the tracked tree;
* :func:`atomic_write` -- the one atomic writer: write to a temporary file in the target's
  folder, then ``os.replace`` it into place. A run killed mid-write leaves the previous file
  (or none), never a truncated one. :func:`atomic_save` (``torch.save``) and
  :func:`atomic_write_text` are that writer with the two payloads the package writes.
"""
from __future__ import annotations

import errno
import glob
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

DATA_ENV = "REIDLAB_DATA_DIR"

__all__ = [
    "DATA_ENV", "DiskFullError", "data_dir", "atomic_write", "atomic_save", "atomic_write_text", "remove_stale_temporaries",
]


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


class DiskFullError(OSError):
    """Writing a file failed because the disk (or the quota) is full; the previous file is intact."""


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(fh)`` on a temporary file beside ``path``, fsync it, then rename it to ``path``.

    The rename is atomic on POSIX and Windows (same folder, ``os.replace``), so readers see
    the old file or the new one; the fsync before it (and of the folder after it) makes sure a
    power cut cannot leave a renamed but empty file. The temporary file (``<name>.<random>.tmp``,
    see :func:`remove_stale_temporaries`) is removed if ``write`` fails. A full disk raises
    :class:`DiskFullError` naming the file, with the previous version left in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        # torch.save reports a failed write as RuntimeError("... unexpected pos ...") with the
        # OSError only in its context: look along the chain for the disk being full.
        cause: BaseException | None = err
        while cause is not None and not (isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            full = DiskFullError(f"disk full while writing {path}; the previous version is kept")
            full.errno = cause.errno
            raise full from None
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(path.parent)
    return path


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete the temporary files a killed :func:`atomic_write` of ``folder/<name>`` left behind.

    Only files named ``<name>.<random>.tmp`` for the given ``names`` are touched. Returns them.
    """
    folder = Path(folder)
    removed = []
    for name in names:
        for p in folder.glob(f"{glob.escape(name)}.*.tmp"):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` through :func:`atomic_write`."""
    return atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` through :func:`atomic_write`."""

    return atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))
