"""``python -m reidlab.ecn`` (or ``reidlab-ecn``): train or resume an ECN run from the command line.

Every setting of :class:`reidlab.ecn.ECNConfig` is a flag (``lr_new`` -> ``--lr-new``), made from
the dataclass's fields and their help texts, so a default lives in one place: an omitted flag
takes the profile's size or ECN's published value. ``--profile`` picks the sizes (``ci``,
``laptop``, ``gpu``); ``--out`` the run folder.

Under ``torchrun --nproc-per-node N -m reidlab.ecn ...`` the same command trains with N processes
(DistributedDataParallel; gloo on the CPU, NCCL on CUDA): ``--batch-size`` stays the global batch,
shared out; ``--sync-bn`` synchronises the BN layers that train; only rank 0 writes and speaks.

Each epoch prints one line on stderr (the trainer logs it at level INFO on the ``reidlab.ecn.run``
logger; ``--quiet`` hides it, with the progress bars).

Exit codes: 0 on success (a one-line summary on stdout); 2 for bad input or a failing
environment (missing data dir or dataset, unreadable image, mismatched checkpoint, bad setting,
non-finite loss, an output folder in use or not writable, a full disk) with a one-line
``error: ...`` on stderr; 130 when interrupted by Ctrl-C or SIGTERM (rerun the same command to resume). Warnings
come as ``warning: ...`` lines, notes (an old run moved aside) as ``note: ...``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import logging
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Callable

from ..distributed import env_info
from .config import INVARIANCES, PROFILE_KEYS, ECNConfig
from .run import log as epoch_log
from .run import train_ecn

__all__ = ["build_parser", "config_from_args", "one_line", "main"]

_NONE = ("none", "null")
#: Settings that are not flags: ``--profile`` picks the sizes; torchrun sets the number of processes.
NOT_FLAGS = ("profile", "world_size")


def _converter(kind: Callable[[str], Any], optional: bool, name: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        if optional and text.strip().lower() in _NONE:
            return None
        try:
            return kind(text)
        except ValueError:
            what = {"int": "an integer", "float": "a number"}.get(kind.__name__, kind.__name__)
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None

    return convert


def _add_setting(group: argparse._ArgumentGroup, f: dataclasses.Field) -> None:
    """One flag for the ECNConfig field ``f``, typed from its annotation."""
    flag = "--" + f.name.replace("_", "-")
    kind = f.type.split("|")[0].strip()
    optional = "None" in f.type
    help_text = f.metadata.get("help", "")
    default = "the profile's" if f.name in PROFILE_KEYS else repr(f.default)
    if kind == "bool":
        group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=f"{help_text} (default: {default})")
        return
    convert = {"int": int, "float": float, "str": str}[kind]
    unset = "; 'none' unsets it" if optional else ""
    group.add_argument(flag, type=_converter(convert, optional, f.name), default=argparse.SUPPRESS,
                       metavar=f.name.upper(), help=f"{help_text} (default: {default}{unset})")


def build_parser() -> argparse.ArgumentParser:
    """The parser: run options, then one flag per ECNConfig setting."""
    p = argparse.ArgumentParser(
        prog="python -m reidlab.ecn",
        description="Train ECN (Zhong et al., CVPR 2019) for domain-adaptive person re-ID: labelled source, "
        "unlabelled target. Writes checkpoint.pt, log.csv, history.json, metrics.json and config.json to --out "
        f"and resumes from its checkpoint when rerun. Ablation switches: {', '.join(INVARIANCES)}.",
    )
    p.add_argument("--out", required=True, help="output folder (checkpoint and logs)")
    p.add_argument("--profile", help="ci | laptop | gpu (sizes; default: $REIDLAB_PROFILE, else gpu with CUDA, else laptop)")
    p.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    group = p.add_argument_group("settings (ECNConfig; an omitted flag keeps the profile's or ECN's value)")
    for f in dataclasses.fields(ECNConfig):
        if f.name not in NOT_FLAGS:
            _add_setting(group, f)
    return p


def config_from_args(args: argparse.Namespace) -> ECNConfig:
    """The profile's ECNConfig with every setting flag that was given (settings default to
    ``argparse.SUPPRESS``, so the namespace holds only those; ``none`` sets an optional one to None),
    and the number of processes torchrun started (``WORLD_SIZE``; 1 without torchrun)."""
    names = {f.name for f in dataclasses.fields(ECNConfig)} - set(NOT_FLAGS)
    overrides = {k: v for k, v in vars(args).items() if k in names}
    return ECNConfig.from_profile(args.profile, **overrides, world_size=env_info().world_size)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line. An error raised in a DataLoader worker arrives wrapped
    in the worker's traceback; its last line is the original message."""
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split()) or type(err).__name__


@contextlib.contextmanager
def _console(main_process: bool = True, epochs: bool = True) -> Iterator[None]:
    """Warnings as ``warning: ...`` lines, and the package's log messages as ``note: ...`` lines, on stderr;
    with ``epochs``, also the trainer's line per epoch (INFO on ``reidlab.ecn.run``), as it is.

    Under torchrun only rank 0 speaks (errors excepted): N copies of each line say nothing more.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("note: %(message)s"))
    handler.setLevel(logging.WARNING)
    logger = logging.getLogger("reidlab")
    logger.addHandler(handler)
    lines = logging.StreamHandler(sys.stderr)  # the trainer's line per epoch, as it is (only rank 0 logs them)
    level = epoch_log.level
    if epochs:
        epoch_log.addHandler(lines)
        epoch_log.setLevel(logging.INFO)
    with warnings.catch_warnings():
        warnings.simplefilter("default" if main_process else "ignore")
        warnings.showwarning = lambda message, *args, **kwargs: print(f"warning: {message}", file=sys.stderr)
        try:
            yield
        finally:
            logger.removeHandler(handler)
            epoch_log.removeHandler(lines)
            epoch_log.setLevel(level)


@contextlib.contextmanager
def _stop_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the run as Ctrl-C does: the last checkpoint stays, exit code 130, a rerun resumes.

    SIGTERM is what a job scheduler, ``kill`` or torchrun (passing on its own stop to its workers)
    sends; Python's default for it ends the process at once, with no message. Installed only in
    the main thread (the only one that may set a handler), and the previous handler comes back.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _release(err: BaseException) -> None:
    """Free what a failed run still holds, before the interpreter starts shutting down.

    An error raised in a DataLoader worker is re-raised by torch from a frame that keeps the
    exception in a local variable, a reference cycle through the traceback that keeps the
    loader's iterator, and with it the worker processes and their queues, alive until the
    interpreter exits. Torn down that late, the queues' feeder threads can print a traceback
    of their own after the clean error message (torch 2.4: "semaphore or lock released too
    many times"). Clearing the traceback's frames and collecting now shuts the workers down
    while the interpreter is still whole.
    """
    exc: BaseException | None = err
    while exc is not None:
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__
    gc.collect()


def main(argv: Sequence[str] | None = None) -> int:
    """Train (or resume) ECN from command-line arguments; return the exit code (see the module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed usage and the error
        return int(exc.code or 0)
    try:
        info = env_info()
        with _console(info.is_main, epochs=not args.quiet), _stop_as_interrupt():
            config = config_from_args(args)
            if config.data_dir is not None and not Path(config.data_dir).expanduser().is_dir():
                raise FileNotFoundError(f"data dir not found: {config.data_dir}")
            result = train_ecn(config, args.out, resume=not args.no_resume, progress=not args.quiet)
    except KeyboardInterrupt as err:
        print(f"interrupted; rerun the same command to resume from {args.out}/checkpoint.pt", file=sys.stderr)
        _release(err)
        return 130
    except (OSError, ValueError, FloatingPointError) as err:  # OSError: missing files, unreadable images, full disk
        print(f"error: {one_line(err)}", file=sys.stderr)
        _release(err)
        return 2
    if not info.is_main:
        return 0
    m = result.metrics
    rule = f" (Market-1501's trapezoid rule, ECN's: {_pct(m['mAP_trapezoid'])})" if "mAP_trapezoid" in m else ""
    src = f"; source rank-1 {_pct(m['source_rank1'])} mAP {_pct(m['source_mAP'])}" if "source_rank1" in m else ""
    if result.already_finished:  # the data may have changed since: say these are the checkpoint's numbers
        print(f"note: {args.out} holds this run finished: nothing was trained or evaluated, the numbers are its "
              "checkpoint's (--no-resume trains it again)", file=sys.stderr)
    print(
        f"ECN {config.invariance} {config.source} -> {config.target}: target rank-1 {_pct(m['rank1'])} "
        f"mAP {_pct(m['mAP'])}{rule} after {len(result.history)} epochs{src} ({args.out})"
    )
    return 0
