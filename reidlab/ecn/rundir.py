"""The run folder of :func:`reidlab.ecn.train_ecn`: what is in it, and how nothing in it gets lost.

A run folder (``--out``) holds ``checkpoint.pt``, ``log.csv``, ``history.json``,
``metrics.json`` and ``config.json``. The rules that keep it safe:

* **checked before touched** -- an empty path, a file, or a folder that cannot be written is a
  one-line error before anything happens; a run that replaces an old one (``resume=False``)
  moves the old files aside into ``replaced-<time>/`` only after the new run's settings and
  data have been checked, so a typo never destroys a finished run;
* **one run at a time** -- a lock (``.lock``, held with ``fcntl.flock``; the kernel releases it
  when the process dies, even on SIGKILL) refuses a second run on the same folder;
* **every write atomic** (:func:`reidlab.files.atomic_write`: fsync, then rename) and the
  temporaries a killed write leaves behind removed at the next start;
* **checkpoints read safely** -- with ``weights_only=True``, every expected key present, and a
  model that does not fit named with PyTorch's whole message.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_save, atomic_write_text, remove_stale_temporaries
from .config import RESUME_FREE_KEYS, ECNConfig

try:  # POSIX; elsewhere runs are not locked (documented in run_lock)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = [
    "CHECKPOINT_VERSION",
    "CHECKPOINT_KEYS",
    "LOG_COLUMNS",
    "RUN_FILES",
    "check_out_dir",
    "run_lock",
    "move_aside",
    "load_checkpoint",
    "config_differences",
    "check_resumable",
    "load_state",
    "save_checkpoint",
    "write_logs",
]

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 2  # 2: knn_start replaces knn_epoch among the settings
CHECKPOINT_KEYS: tuple[str, ...] = (
    "version", "epoch", "config", "num_classes", "num_samples", "model", "optimizer", "scheduler", "criterion",
    "history", "metrics",
)
LOG_COLUMNS: tuple[str, ...] = (
    "epoch", "steps", "loss_src", "loss_tgt", "acc_src", "lr", "knn_precision", "seconds", "rank1", "mAP",
)
#: The files a run writes into its folder.
RUN_FILES: tuple[str, ...] = ("checkpoint.pt", "log.csv", "history.json", "metrics.json", "config.json")


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` as a Path, created and checked writable; ``ValueError`` with one line otherwise."""
    if not str(out_dir).strip():
        raise ValueError("the output folder is empty (''): give the run a folder of its own, e.g. --out runs/ecn")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"cannot create output folder {out}: a part of its path is a file") from None
    except PermissionError:
        raise ValueError(f"cannot write to output folder {out}: permission denied") from None
    return out


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold ``out/.lock`` for the duration: a second run on the same folder gets a ``ValueError``.

    The lock is an advisory ``flock`` on an open file, so the kernel drops it when the process
    ends however it ends; the file itself stays (an unlocked ``.lock`` means nothing). Without
    ``fcntl`` (Windows) runs are not locked.
    """
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    with open(out / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise ValueError(
                f"{out} is in use by another run ({holder}); wait for it to finish or use another output folder"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {os.uname().nodename if hasattr(os, 'uname') else 'this machine'}\n")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def move_aside(out: Path) -> Path | None:
    """Move the files of a previous run in ``out`` into ``out/replaced-<time>/``; return that folder."""
    present = [name for name in RUN_FILES if (out / name).exists()]
    if not present:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = out / f"replaced-{stamp}"
    n = 1
    while dest.exists():
        n += 1
        dest = out / f"replaced-{stamp}-{n}"
    dest.mkdir()
    for name in present:
        os.replace(out / name, dest / name)
    log.warning("the previous run in %s was moved to %s", out, dest)
    return dest


def prepare(out: Path) -> None:
    """Remove what a killed write left behind in ``out`` (temporary files of the run's files)."""
    for p in remove_stale_temporaries(out, RUN_FILES):
        log.info("removed %s, left by an interrupted write", p)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a :func:`reidlab.ecn.train_ecn` checkpoint with ``weights_only=True`` (tensors and primitives only).

    ``ValueError`` for a file that cannot be read, that is not such a checkpoint, or that lacks
    one of :data:`CHECKPOINT_KEYS` (named).
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}") from None
    except Exception as err:  # unpickling errors come in many types
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"cannot read checkpoint {path}: {type(err).__name__}: {first}") from None
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} is not a reidlab ECN checkpoint (version {CHECKPOINT_VERSION})")
    missing = [k for k in CHECKPOINT_KEYS if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path} is incomplete: it lacks {', '.join(missing)}")
    return ckpt


def _with_defaults(saved: Mapping[str, Any]) -> dict[str, Any]:
    defaults = {f.name: f.default for f in dataclasses.fields(ECNConfig) if f.default is not dataclasses.MISSING}
    return {**defaults, **saved}


def config_differences(saved: Mapping[str, Any], config: ECNConfig) -> list[str]:
    """The settings (outside :data:`reidlab.ecn.config.RESUME_FREE_KEYS`) in which ``saved`` and ``config`` differ.

    A setting that ``saved`` lacks (a checkpoint written before the setting existed) counts as its
    default, the value that keeps the old behaviour: adding a setting does not strand old runs.
    """
    saved = _with_defaults(saved)
    now = config.to_dict()
    keys = sorted((set(saved) | set(now)) - RESUME_FREE_KEYS)
    return [k for k in keys if saved.get(k, "<missing>") != now.get(k, "<missing>")]


def check_resumable(ckpt: Mapping[str, Any], config: ECNConfig, path: Path) -> None:
    """``ValueError`` naming every setting in which the checkpoint's run and ``config`` differ."""
    diff = config_differences(ckpt["config"], config)
    if diff:
        saved = _with_defaults(ckpt["config"])
        shown = ", ".join(
            f"{k} ({saved.get(k, '<missing>')!r} in the checkpoint, {getattr(config, k, '<missing>')!r} now)"
            for k in diff
        )
        why = ""
        if "world_size" in diff:
            why = (" (a run cannot resume with another number of processes: each process's share of the data "
                   "and the batch every BN layer sees would change; start it with the checkpoint's number, "
                   "e.g. torchrun --nproc-per-node N)")
        raise ValueError(
            f"checkpoint {path} was written with different settings: {shown}{why}; "
            "use the same settings to resume, another output folder, or --no-resume (resume=False) to start over"
        )


def load_state(module: Any, state: Any, what: str, path: Path) -> None:
    """``module.load_state_dict(state)``; a misfit is a ``ValueError`` carrying PyTorch's whole message."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        detail = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(
            f"checkpoint {path} does not fit this run's {what} (a different model shape or data?): {detail}"
        ) from None


def save_checkpoint(path: Path, parts: Any, config: ECNConfig, epoch: int, history: list, metrics: dict,
                    shapes: Mapping[str, int]) -> None:
    """Everything an exact resume needs, written atomically (a full disk keeps the previous checkpoint)."""
    atomic_save(
        {
            "version": CHECKPOINT_VERSION, "epoch": epoch, "config": config.to_dict(), **shapes,
            "model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "criterion": parts.criterion.state_dict() if parts.criterion is not None else {},
            "history": history, "metrics": metrics, "backbone_digest": parts.backbone_digest,
        },
        path,
    )


def write_logs(out: Path, history: list[dict[str, Any]], metrics: Mapping[str, float] | None = None) -> None:
    """``log.csv`` and ``history.json`` (one row per epoch) and, when given, ``metrics.json``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LOG_COLUMNS)
    for row in history:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in LOG_COLUMNS])
    atomic_write_text(out / "log.csv", buf.getvalue())
    atomic_write_text(out / "history.json", json.dumps(history, indent=1) + "\n")
    if metrics:
        atomic_write_text(out / "metrics.json", json.dumps(dict(metrics), indent=1) + "\n")
