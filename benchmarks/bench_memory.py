"""Time ECN's memory update: the published per-sample loop vs reidlab's vectorised update.

One run at ECN's Market-1501 scale (12,936 target images x 4,096 features, batch 128),
both implementations in the same process on the same inputs, each applied ``--steps``
times to its own copy of the memory. It checks that the two memories agree and prints
both times and their ratio.

    python benchmarks/bench_memory.py                    # CPU, Market scale
    python benchmarks/bench_memory.py --device cuda      # on a GPU
    python benchmarks/bench_memory.py --repeat-frac 0.1  # 10% of each batch repeats an index
    python benchmarks/bench_memory.py --threads 2        # torch's CPU threads (default: torch's own choice)

The loop is :func:`reidlab.memory.memory_update_loop_` (the published code's
``for x, y in zip(inputs, targets): em[y] = ...``): 2 x 128 small kernels per step, each a
Python round trip (on a GPU also a kernel launch and, for ``norm``, a host sync-free but
serial reduction). The vectorised :func:`reidlab.memory.memory_update_` gathers the rows and
the features, then does two products and a sum, a normalisation and one scatter per step (one
extra round per repeated index), in two buffers it reuses from step to step, as :class:`InvarianceLoss` does. With several
CPU threads it takes the batch a few rows at a time, so that torch runs every op on this thread
(a whole-batch op is split over the threads, and on a busy machine waits for a core).
The load average printed with the sizes says how busy the machine was: the times depend on it.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torch.nn.functional as F

from reidlab.memory import memory_update_, memory_update_loop_


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, memory, batches, rate, device) -> float:
    _sync(device)
    start = time.perf_counter()
    for idx, feats in batches:
        fn(memory, idx, feats, rate)
    _sync(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=int, default=12936)
    p.add_argument("--num-features", type=int, default=4096)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rate", type=float, default=0.3, help="alpha*epoch (0.3 = epoch 30)")
    p.add_argument("--repeat-frac", type=float, default=0.0, help="fraction of each batch that repeats an earlier index")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave torch's choice)")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(args.seed)
    memory = F.normalize(torch.randn(args.num_samples, args.num_features, generator=g), dim=1).to(device)
    batches = []
    for _ in range(args.steps):
        idx = torch.randperm(args.num_samples, generator=g)[: args.batch]
        n_rep = int(round(args.repeat_frac * args.batch))
        if n_rep:
            idx[-n_rep:] = idx[:n_rep]
        feats = torch.randn(args.batch, args.num_features, generator=g)
        batches.append((idx.to(device), feats.to(device)))
    print(f"memory {args.num_samples} x {args.num_features}, batch {args.batch}, {args.steps} steps, "
          f"rate {args.rate}, repeated {args.repeat_frac:.0%}, device {device} "
          f"({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or platform.machine()}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    workspace: list[torch.Tensor] = []  # the update's buffers, kept between steps as InvarianceLoss keeps them

    def vectorised(m, idx, feats, rate):
        memory_update_(m, idx, feats, rate, workspace=workspace)

    # warm-up (allocator, kernels) on a throw-away copy
    timed(vectorised, memory.clone(), batches[:2], args.rate, device)
    timed(memory_update_loop_, memory.clone(), batches[:2], args.rate, device)
    m_loop, m_vec = memory.clone(), memory.clone()
    t_loop = timed(memory_update_loop_, m_loop, batches, args.rate, device)
    t_vec = timed(vectorised, m_vec, batches, args.rate, device)
    diff = (m_loop - m_vec).abs().max().item()
    print(f"loop (published):  {t_loop / args.steps * 1e3:8.3f} ms/step")
    print(f"vectorised:        {t_vec / args.steps * 1e3:8.3f} ms/step")
    print(f"max |difference| of the memories: {diff:.2e}")
    if diff > 1e-5:
        print("ERROR: the two updates disagree")
        return 1
    print(f"speed-up: {t_loop / t_vec:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
