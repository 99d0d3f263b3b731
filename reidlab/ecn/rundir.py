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
* **training saved before it is evaluated** -- one checkpoint per epoch, written before the
  epoch's evaluation; the evaluation goes into the logs (the epoch's ``rank1`` and ``mAP`` in
  ``log.csv`` / ``history.json``, the final metrics in ``metrics.json``), so an evaluation that
  fails costs no training, and a run is finished when its last epoch is checkpointed *and* its
  evaluation logged (:func:`logged_evaluation`);
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
from torch import nn

from ..files import atomic_save, atomic_write_text, remove_stale_temporaries
from .config import RESUME_FREE_KEYS, ECNConfig
from .loop import ECNParts

try:  # POSIX; elsewhere runs are not locked (documented in run_lock)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]  # no flock here: run_lock checks for None

__all__ = [
    "CHECKPOINT_VERSION",
    "CHECKPOINT_KEYS",
    "LOG_COLUMNS",
    "RUN_FILES",
    "CHECKPOINT",
    "check_out_dir",
    "run_lock",
    "move_aside",
    "open_run",
    "record_start",
    "load_checkpoint",
    "config_differences",
    "check_resumable",
    "load_state",
    "restore",
    "save_checkpoint",
    "write_logs",
    "logged_evaluation",
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
#: The checkpoint's name in the run folder.
CHECKPOINT = "checkpoint.pt"
#: The columns of a history row that its evaluation fills in (the rest are the epoch's training).
_EVALUATED = ("rank1", "mAP")


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


def open_run(out: Path, config: ECNConfig, *, resume: bool, lock: contextlib.ExitStack | None) -> dict[str, Any] | None:
    """Lock ``out`` for the duration of ``lock`` and clean it (the process that writes passes its
    stack; the others ``None``), then read the checkpoint to resume from: ``None`` when there is
    none or ``resume`` is False; ``ValueError`` when its settings differ from ``config``."""
    if lock is not None:
        lock.enter_context(run_lock(out))
        prepare(out)
    path = out / CHECKPOINT
    if not (resume and path.exists()):
        return None
    ckpt = load_checkpoint(path)
    check_resumable(ckpt, config, path)
    return ckpt


def record_start(out: Path, config: ECNConfig, *, resume: bool, digest: str | None) -> None:
    """Move an old run aside (``resume=False``) and write ``config.json``: the settings, the values
    derived from them and the digest of the backbone the run started from. Called once the data has
    loaded and the model and memory are built (so the pretrained file and ``knn`` were checked):
    nothing is replaced before a run can start."""
    if not resume:
        move_aside(out)
    record = {**config.to_dict(derived=True), "backbone_digest": digest}
    atomic_write_text(out / "config.json", json.dumps(record, indent=1) + "\n")


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


def load_state(module: nn.Module | torch.optim.Optimizer | torch.optim.lr_scheduler.LRScheduler,
               state: dict[str, Any], what: str, path: Path) -> None:
    """``module.load_state_dict(state)``; a misfit is a ``ValueError`` carrying PyTorch's whole message."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        detail = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(
            f"checkpoint {path} does not fit this run's {what} (a different model shape or data?): {detail}"
        ) from None


def restore(parts: ECNParts, ckpt: Mapping[str, Any], path: Path, shapes: Mapping[str, int]) -> None:
    """Load the checkpoint's model, memory, optimizer and LR schedule into ``parts``; ``ValueError``
    when the checkpoint was written for other data (``shapes``: ``num_classes`` and ``num_samples``)."""
    for key, now in shapes.items():
        if ckpt[key] != now:
            raise ValueError(
                f"checkpoint {path} does not fit this data: {key} {ckpt[key]} in the checkpoint, {now} now "
                "(a different model shape: was the dataset changed?)"
            )
    load_state(parts.model, ckpt["model"], "model", path)
    if parts.criterion is not None:
        load_state(parts.criterion, ckpt["criterion"], "memory", path)
    load_state(parts.optimizer, ckpt["optimizer"], "optimizer", path)
    load_state(parts.scheduler, ckpt["scheduler"], "LR schedule", path)
    parts.backbone_digest = ckpt.get("backbone_digest")  # where the run started, not today's cache


def save_checkpoint(path: Path, parts: ECNParts, config: ECNConfig, epoch: int, history: list[dict[str, Any]],
                    shapes: Mapping[str, int]) -> None:
    """Everything an exact resume needs, written atomically (a full disk keeps the previous checkpoint).

    Written before the epoch is evaluated, so ``metrics`` is empty: the evaluation goes into the
    logs (:func:`logged_evaluation`). Checkpoints written before that rule hold their final metrics.
    """
    atomic_save(
        {
            "version": CHECKPOINT_VERSION, "epoch": epoch, "config": config.to_dict(), **shapes,
            "model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "criterion": parts.criterion.state_dict() if parts.criterion is not None else {},
            "history": history, "metrics": {}, "backbone_digest": parts.backbone_digest,
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


def logged_evaluation(out: Path, ckpt: Mapping[str, Any]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The checkpoint's history and final metrics, with the evaluation logged after it was written.

    A checkpoint is written before its epoch is evaluated; the evaluation then goes into
    ``history.json`` (the epoch's ``rank1`` and ``mAP``) and, after the last epoch, ``metrics.json``.
    They count when ``history.json``'s last row is the checkpoint's last epoch, with the same training
    numbers (so logs of another run never do). The metrics are ``{}`` until the last epoch's evaluation
    is logged; a checkpoint written before this rule holds its final metrics itself.
    """
    history = [dict(row) for row in ckpt["history"]]
    metrics = dict(ckpt["metrics"])
    try:
        logged = json.loads((out / "history.json").read_text())
        final = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").exists() else {}
    except (OSError, ValueError):  # no logs, or unreadable ones: the evaluation is run again
        return history, metrics
    training = lambda row: {k: v for k, v in row.items() if k not in _EVALUATED}  # noqa: E731
    if (history and isinstance(logged, list) and len(logged) == len(history) and isinstance(logged[-1], dict)
            and training(logged[-1]) == training(history[-1])):
        history[-1] = {**history[-1], **{k: logged[-1].get(k) for k in _EVALUATED}}
        metrics = metrics or dict(final)
    return history, metrics
