"""Run a test function in 2 real processes joined by gloo (the CPU backend of torch.distributed)."""
from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from reidlab.distributed import leave_process_group


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, *args, world_size: int = 2) -> None:
    """Run ``fn(rank, world_size, *args)`` in ``world_size`` gloo processes (one OpenMP thread each).

    ``fn`` must be importable (a module-level function of a test file): ``spawn`` sends it by name.
    """
    os.environ["OMP_NUM_THREADS"] = "1"
    mp.spawn(_worker, args=(fn, free_port(), world_size, args), nprocs=world_size, join=True)


def _worker(rank: int, fn, port: int, world_size: int, args) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # A short timeout: a rank that cannot meet its peer (say, a port taken between free_port() and
    # the bind) fails in two minutes instead of gloo's default thirty.
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=120))
    try:
        fn(rank, world_size, *args)
        dist.barrier()  # both ranks done before either tears down
    finally:
        leave_process_group()  # the library's own teardown (a torch 2.4 deadlock, see its docstring)
