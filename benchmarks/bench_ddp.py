"""ECN's step on 1 vs N processes (DistributedDataParallel), and what keeping the memory consistent costs.

The same global batch (``--batch`` source + ``--batch`` target images per step) is trained by 1,
2, ... processes, each with its share, through the trainer's own step (``reidlab.ecn.loop.run_epoch``
around a DDP-wrapped ``ECNForward``, the memory gathering every process's batch before its
update). Data loading is left out (random tensors), as in ``bench_ecn_step.py``. For each process
count it prints steps/s, the speed-up over 1 process (the reference, measured in the same run),
and the share of a step spent in the memory's all-gather.

    python benchmarks/bench_ddp.py                                   # CPU: 1 and 2 processes, gloo
    python benchmarks/bench_ddp.py --device cuda --procs 1 2 4 8 --arch resnet50 --height 256 --width 128 \\
        --batch 128 --num-target 12936 --num-features 4096           # a machine with 8 GPUs, NCCL

Each process runs with one OpenMP thread on the CPU, so N processes use N cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from reidlab.distributed import all_gather_cat, init_from_env
from reidlab.ecn.loop import ECNForward, make_optimizer, run_epoch
from reidlab.memory import InvarianceLoss
from reidlab.models import ReIDNet
from reidlab.syncbn import convert_sync_bn

ROOT = Path(__file__).resolve().parents[1]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to compare (first = reference)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch", type=int, default=32, help="global batch per domain")
    p.add_argument("--num-target", type=int, default=2000, help="memory slots")
    p.add_argument("--num-features", type=int, default=512)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--sync-bn", action="store_true")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run as one torchrun process, write JSON here
    return p


class _TimedGather:
    """all_gather_cat, timed (what keeping the memory consistent costs)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = all_gather_cat(t)
        if t.is_cuda:
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0
        return out


def worker(args: argparse.Namespace) -> None:
    """One process of a torchrun launch: time ``args.steps`` ECN steps on this process's share."""
    torch.set_num_threads(1)
    with init_from_env(args.device) as info:
        device = torch.device("cuda", info.local_rank) if args.device == "cuda" else torch.device("cpu")
        per = args.batch // info.world_size
        torch.manual_seed(0)
        model = ReIDNet(751, args.arch, num_features=args.num_features).to(device).train()
        if args.sync_bn and info.distributed:
            convert_sync_bn(model)
        crit = InvarianceLoss(args.num_target, model.num_features).to(device)
        gather = _TimedGather()
        crit.gather = gather if info.distributed else None
        forward = ECNForward(model)
        if info.distributed:
            forward = DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None)
        opt = make_optimizer(model, lr_backbone=0.01, lr_new=0.1)
        g = torch.Generator().manual_seed(info.rank)
        src = [(torch.randn(per, 3, args.height, args.width, generator=g), torch.randint(0, 751, (per,), generator=g))
               for _ in range(args.warmup + args.steps)]
        tgt = iter([(torch.randn(per, 3, args.height, args.width, generator=g),
                     torch.randint(0, args.num_target, (per,), generator=g)) for _ in range(args.warmup + args.steps)])
        common = dict(device=device, criterion=crit, next_target=lambda: next(tgt), epoch=1, lam=0.3, forward=forward)
        run_epoch(model, opt, src[: args.warmup], **common)
        gather.seconds = 0.0
        row = run_epoch(model, opt, src[args.warmup :], **common)
        if info.is_main:
            Path(args.worker).write_text(json.dumps(
                {"procs": info.world_size, "seconds": row["seconds"], "steps": row["steps"], "gather": gather.seconds}))


def launch(args: argparse.Namespace, procs: int) -> dict:
    """Run this script under ``torchrun --standalone --nproc-per-node procs``; return rank 0's timings."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
               __file__, "--worker", str(out), "--device", args.device, "--arch", args.arch,
               "--height", str(args.height), "--width", str(args.width), "--batch", str(args.batch),
               "--num-target", str(args.num_target), "--num-features", str(args.num_features),
               "--steps", str(args.steps), "--warmup", str(args.warmup)] + (["--sync-bn"] if args.sync_bn else [])
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun with {procs} processes failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if any(args.batch % n for n in args.procs):
        raise SystemExit(f"--batch {args.batch} must be divisible by every process count {args.procs}")
    print(f"{args.arch} {args.height}x{args.width}, global batch {args.batch} + {args.batch}, {args.num_target} slots "
          f"x {args.num_features}, {args.steps} timed steps, device {args.device}"
          f"{', SyncBN' if args.sync_bn else ''}; load average {os.getloadavg()[0]:.1f}")
    ref = None
    for n in args.procs:
        r = launch(args, n)
        rate = r["steps"] / r["seconds"]
        ref = ref or rate
        share = 100 * r["gather"] / r["seconds"]
        print(f"{n} process{'es' if n > 1 else ''}: {rate:.2f} steps/s, speed-up {rate / ref:.2f}x over {args.procs[0]}; "
              f"memory all-gather {share:.1f}% of a step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
