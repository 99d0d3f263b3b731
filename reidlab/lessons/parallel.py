"""``map_in_processes``: independent training runs side by side on a few CPU cores.

Why a notebook wants it: a small network uses a second thread poorly. One training step of
notebook 10's ResNet-18 (64x32, batch 32, conv1..layer2 frozen) took 182 ms with one thread and
107 ms with two on a 2-core machine, but two one-thread processes side by side took 178 ms
each, 89 ms per step between them; and what surrounds the step (decoding, augmenting, the
memory, evaluating) is mostly single-threaded, so it doubles up too. ``benchmarks/bench_parallel_runs.py``
measures whole ECN runs: four 12-epoch runs took 1.17x less time two at a time with one thread
each than one after the other with two threads each.

Each call runs in a child made by ``fork`` with ``threads`` torch threads, so its result has
the bits of a one-process run with that many threads: the thread count, not the parallelism,
decides them (:data:`reidlab.lessons.setup.DEFAULT_THREADS` says why it is fixed). Where
``fork`` is unsafe or missing (CUDA already initialised, macOS, Windows) or ``processes=1``,
the calls run one after the other in this process, with the same thread count, and give the
same results, only later.

What a child prints (warnings included) is captured and printed here after it returns, in
the order of ``items``; an exception in a child is raised here as ``RuntimeError`` naming the
item, with the child's traceback. ``fn`` and ``items`` are inherited through ``fork``, not
pickled, so a function defined in a notebook works; the *results* are pickled back (copied,
tensors included, so they outlive the child).
"""
from __future__ import annotations

import contextlib
import io
import math
import multiprocessing as mp
import pickle
import sys
import time
import traceback
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable, Sequence, cast

import torch
from tqdm.auto import tqdm

from ..runtime import torch_threads

__all__ = ["map_in_processes", "can_fork", "torch_threads"]


def can_fork() -> bool:
    """Whether :func:`map_in_processes` can run children: Linux, and CUDA not initialised here."""
    return sys.platform.startswith("linux") and not torch.cuda.is_initialized()


def _child(conn, fn: Callable[[Any], Any], item: Any, threads: int) -> None:
    out = io.StringIO()
    sys.stdout = sys.stderr = out  # for good: the parent's streams (a Jupyter kernel's) do not work here
    # Plain pickle, not the connection's own: once torch.multiprocessing is imported (a DataLoader
    # does), that one sends a tensor as a handle to this process's memory, gone when it exits.
    # Pickled inside the try, so that a result that cannot be pickled is reported like an error.
    try:
        torch.set_num_threads(threads)
        payload = pickle.dumps((True, fn(item), out.getvalue()), protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        payload = pickle.dumps((False, traceback.format_exc(), out.getvalue()), protocol=pickle.HIGHEST_PROTOCOL)
    conn.send_bytes(payload)
    conn.close()


def _serial(fn: Callable[[Any], Any], items: Sequence[Any], threads: int, bar) -> list[Any]:
    results = []
    with torch_threads(threads):
        for item in items:
            results.append(fn(item))
            bar.update(1)
    return results


def map_in_processes(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    processes: int = 2,
    threads: int = 1,
    desc: str | None = None,
    progress: bool = True,
    timeout: float | None = None,
) -> list[Any]:
    """``[fn(item) for item in items]``, up to ``processes`` calls at once, ``threads`` torch threads each.

    Parameters
    ----------
    fn:
        Called once per item; it should not depend on state that other calls change (each
        child starts from a copy of this process as it is when the child is made).
    items:
        The inputs, one call each.
    processes:
        How many children run at once (``1``: no children, one call after the other here).
    threads:
        Torch threads per call, in a child and in the serial fallback alike.
    desc, progress:
        A progress bar over finished calls.
    timeout:
        Seconds a child may take for its call (``None``: no limit). A child past it is stopped
        and reported like a failed call, instead of being waited for forever. The serial path
        (``processes=1``) runs in this process and cannot be stopped: it ignores ``timeout``.

    Returns the results in the order of ``items``. Raises ``ValueError`` for ``processes`` or
    ``threads`` below 1 or a ``timeout`` that is not a positive number, and ``RuntimeError`` (the
    child's traceback in its message) when a call raises, a child dies without a result or runs
    past ``timeout``.
    """
    items = list(items)
    if processes < 1 or threads < 1:
        raise ValueError(f"processes and threads must be >= 1, got processes={processes}, threads={threads}")
    if timeout is not None and not (isinstance(timeout, (int, float)) and 0 < timeout < math.inf):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    bar = tqdm(total=len(items), desc=desc, disable=not progress)
    with contextlib.closing(bar):
        if processes == 1 or len(items) < 2 or not can_fork():
            return _serial(fn, items, threads, bar)
        ctx = mp.get_context("fork")
        results: list[Any] = [None] * len(items)
        printed: list[str] = [""] * len(items)
        running: dict[Connection, tuple[int, Any, float]] = {}  # connection -> (index, process, deadline)
        todo = iter(range(len(items)))
        try:
            while True:
                while len(running) < processes and (i := next(todo, None)) is not None:
                    recv, send = ctx.Pipe(duplex=False)
                    proc = ctx.Process(target=_child, args=(send, fn, items[i], threads))
                    proc.start()
                    send.close()
                    running[recv] = (i, proc, time.monotonic() + (timeout or math.inf))
                if not running:
                    break
                # A child that has not answered by its deadline is stopped and reported.
                first = min(deadline for _, _, deadline in running.values())
                to_deadline = None if first == math.inf else max(0.0, first - time.monotonic())
                ready = cast("list[Connection]", wait(list(running), timeout=to_deadline))  # some of the connections given
                if not ready:
                    late = [i for i, _, deadline in running.values() if deadline <= time.monotonic()]
                    if late:  # the finally below stops it and the others
                        raise RuntimeError(f"the process computing item {late[0]} ({items[late[0]]!r}) ran past "
                                           f"the timeout of {timeout:g} s and was stopped")
                    continue
                for conn in ready:
                    i, proc, _ = running.pop(conn)
                    try:
                        ok, value, text = pickle.loads(conn.recv_bytes())
                    except EOFError:
                        proc.join()
                        raise RuntimeError(
                            f"the process computing item {i} ({items[i]!r}) died without a result "
                            f"(exit code {proc.exitcode})"
                        ) from None
                    finally:
                        conn.close()
                    proc.join()
                    if not ok:
                        raise RuntimeError(f"item {i} ({items[i]!r}) failed in its process:\n{text}{value}")
                    results[i], printed[i] = value, text
                    bar.update(1)
        finally:
            for conn, (_, proc, _) in running.items():  # after an error or a timeout: stop the others
                proc.terminate()
                proc.join()
                conn.close()
        for text in printed:
            if text:
                print(text, end="")
        return results
