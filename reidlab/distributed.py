"""Several processes, one training run: the few ``torch.distributed`` helpers the series needs.

``torchrun --nproc-per-node N ...`` starts N copies of a program and tells each its place in the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``).
:func:`init_from_env` reads that and joins the process group (gloo on the CPU, NCCL on CUDA),
with a timeout so that a crashed process makes the others fail instead of wait forever. Without
those variables (a plain ``python`` run) it is a single process and nothing is initialised.

:func:`all_gather_cat` is how ECN's exemplar memory stays identical on every process (notebook
11): each step, every process contributes its target features and indices, and every process
updates its memory copy with the concatenation, in rank order, which is exactly the update one
process would make on the concatenated batch.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "env_info", "init_from_env", "all_gather_cat", "barrier", "main_first", "TIMEOUT_ENV", "dist_timeout", "leave_process_group"]

#: Seconds a collective waits for the other processes before failing (default 600).
TIMEOUT_ENV = "REIDLAB_DIST_TIMEOUT"


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank ``rank`` of ``world_size``, GPU ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints and logs, and evaluates."""
        return self.rank == 0


def env_info() -> DistInfo:
    """The rank, world size and local rank torchrun put into the environment (a single process without them)."""
    try:
        info = DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                        int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise ValueError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (set by torchrun)") from None
    if not 0 <= info.rank < info.world_size:
        raise ValueError(f"RANK={info.rank} does not fit WORLD_SIZE={info.world_size}")
    return info


def dist_timeout() -> float:
    """Seconds a collective waits for the other processes: ``$REIDLAB_DIST_TIMEOUT``, else 600.

    Checked here, so that a typo gives one line naming the variable instead of a conversion or
    socket error from inside the process group.
    """
    raw = os.environ.get(TIMEOUT_ENV, "600")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds <= 86400:  # also refuses nan and inf
        raise ValueError(f"{TIMEOUT_ENV}={raw!r}: give the seconds a process waits for the others, "
                         "a number above 0 and at most 86400 (a day)")
    return seconds


@contextlib.contextmanager
def init_from_env(device_type: str) -> Iterator[DistInfo]:
    """Join the process group torchrun describes, for the duration of the block; yield where we sit.

    gloo for ``device_type='cpu'``, NCCL for ``'cuda'``; a group that is already initialised
    (by the caller) is used as it is and left alone. The timeout is ``$REIDLAB_DIST_TIMEOUT``
    seconds (600 by default).
    """
    info = env_info()
    if not info.distributed or dist.is_initialized():
        if dist.is_initialized():
            info = DistInfo(dist.get_rank(), dist.get_world_size(), info.local_rank)
        yield info
        return
    timeout = timedelta(seconds=dist_timeout())
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend, timeout=timeout)
    try:
        yield info
        # Leave together (only when the block succeeded: after a failure the others may be gone).
        dist.barrier()
    finally:
        leave_process_group()


def leave_process_group() -> None:
    """``destroy_process_group()``, after giving gloo's worker threads the GIL for a moment.

    Under torch 2.4 a gloo worker thread can still be freeing its last collective's tensors,
    which needs the GIL, while this thread holds the GIL inside ``~ProcessGroupGloo`` waiting
    for that worker's lock: a deadlock (one rank of a two-process test stuck there, stacks read
    with py-spy; an earlier note saw a hang here in 1 run of 8). Sleeping first releases the
    GIL, so the worker finishes before the group is freed (90 two-process runs since, no hang).
    """
    time.sleep(0.2)
    dist.destroy_process_group()


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Every process's ``t`` concatenated along dim 0 in rank order (``t`` itself in a single process).

    The processes' tensors may differ in length along dim 0 (an uneven last batch): the lengths
    are gathered first, each tensor is padded to the longest for the collective, and the padding
    is dropped again. The other dimensions must agree (``ValueError`` naming every process's
    shape, raised on every process alike). The result carries no gradient. Both collectives
    gather into one tensor (:func:`_gather_into`), which gloo and NCCL support alike.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    if not 1 <= t.dim() <= _MAX_GATHER_DIMS:
        raise ValueError(f"all_gather_cat takes tensors of 1 to {_MAX_GATHER_DIMS} dimensions, got shape {tuple(t.shape)}")
    shape = torch.zeros(_MAX_GATHER_DIMS + 1, dtype=torch.long, device=t.device)
    shape[0] = t.dim()
    shape[1:1 + t.dim()] = torch.tensor(t.shape)
    shapes = _gather_into(shape)
    dims = [tuple(s[1:1 + int(s[0])].tolist()) for s in shapes]
    if any(d[1:] != dims[0][1:] for d in dims):
        raise ValueError(f"all_gather_cat: the processes' tensors differ beyond dim 0: shapes by rank {dims}")
    longest = max(d[0] for d in dims)
    padded = t.new_zeros((longest, *t.shape[1:]))
    padded[: t.shape[0]] = t.detach()
    parts = _gather_into(padded)
    return torch.cat([part[: d[0]] for part, d in zip(parts, dims)], dim=0)


#: The most dimensions :func:`all_gather_cat` takes (its shapes travel in one fixed-size tensor).
_MAX_GATHER_DIMS = 8


def _gather_into(t: torch.Tensor) -> torch.Tensor:
    """Every process's ``t`` (the same shape on each), stacked in rank order: ``(world_size, *t.shape)``.

    One collective into one preallocated tensor instead of a list of ``world_size`` tensors:
    ``dist.all_gather_single`` where torch has it (it replaces ``all_gather_into_tensor``, which
    recent torch deprecates), else ``dist.all_gather_into_tensor`` (torch 2.4 has only that one;
    gloo runs it there too, checked on two processes).
    """
    out = t.new_empty((dist.get_world_size() * t.shape[0], *t.shape[1:]))
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, t.contiguous())
    return out.view(dist.get_world_size(), *t.shape)


def barrier() -> None:
    """Wait for every process (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def main_first(fn):
    """Run ``fn()`` on rank 0 first, then (if it succeeded) on the other ranks; return its result.

    For steps that must not run concurrently (generating a synthetic world into a shared
    folder) or that check something every process depends on: when ``fn`` raises on rank 0,
    every rank raises (the others a ``RuntimeError`` carrying rank 0's message) instead of
    waiting for it at the next collective. In a single process it is just ``fn()``.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return fn()
    failure = [None]
    result = None
    if dist.get_rank() == 0:
        try:
            result = fn()
        except BaseException as err:  # noqa: BLE001 - re-raised below, after telling the others
            failure = [f"{type(err).__name__}: {err}"]
            dist.broadcast_object_list(failure, src=0)
            raise
    dist.broadcast_object_list(failure, src=0)
    if dist.get_rank() != 0:
        if failure[0] is not None:
            raise RuntimeError(f"rank 0 failed: {failure[0]}")
        result = fn()
    return result
