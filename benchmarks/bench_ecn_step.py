"""Training throughput of ECN's step: the paper code's configuration vs ours, and ECN's overhead.

Three configurations, timed in the same process on the same random input tensors (data
loading is left out on purpose: it is the same for all three and would hide the step):

* ``paper``  — fp32, contiguous tensors, the published per-sample memory update
  (:func:`reidlab.memory.memory_update_loop_`);
* ``ours``   — bf16 autocast and channels_last on CUDA, the vectorised update;
* ``plain``  — ours, but plain backbone training: source cross-entropy on as many images
  per step as ECN's step sees (batch source + batch target), no memory.

It prints images/s for each, ``ours / paper`` (goal on a GPU: >= 3x) and ECN's overhead
``plain / ours - 1`` (goal: <= 10%). The step is ECN's: ReIDNet (ResNet-50, conv1..layer2
frozen, FC-4096 + BN, 751-way source classifier), a source batch and a target batch in two
forward passes, ``(1 - lam) * CE + lam * InvarianceLoss`` on a 12,936-slot memory, SGD.

    python benchmarks/bench_ecn_step.py --device cuda                   # paper scale, GPU
    python benchmarks/bench_ecn_step.py --arch resnet18 --height 64 --width 32 --batch 16 --steps 3  # CPU smoke run

On the CPU autocast and channels_last are off (reidlab keeps CPU runs exact), so ``ours``
and ``paper`` differ only by the memory update there.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F

import reidlab.memory as memory_module
from reidlab.memory import InvarianceLoss
from reidlab.models import ReIDNet
from reidlab.ecn import ecn_loss, make_optimizer


def published_update(memory, indices, features, rate, *, workspace=None):
    """The published per-sample loop with ``memory_update_``'s signature (it keeps no buffers)."""
    return memory_module.memory_update_loop_(memory, indices, features, rate)


@contextlib.contextmanager
def loop_update():
    """Swap the vectorised memory update for the published per-sample loop."""
    saved = memory_module.memory_update_
    memory_module.memory_update_ = published_update
    try:
        yield
    finally:
        memory_module.memory_update_ = saved


def make_step(args, device: torch.device, *, fast: bool, ecn: bool):
    cuda = device.type == "cuda"
    channels_last = fast and cuda
    amp = fast and cuda
    model = ReIDNet(751, args.arch, num_features=4096, channels_last=channels_last).to(device)
    model.train()
    opt = make_optimizer(model, lr_backbone=0.01, lr_new=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    crit = InvarianceLoss(args.num_target, model.num_features).to(device) if ecn else None
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    n_src = args.batch if ecn else 2 * args.batch
    src = torch.randn(n_src, 3, args.height, args.width, generator=g).to(device, memory_format=fmt)
    pid = torch.randint(0, 751, (n_src,), generator=g).to(device)
    tgt = torch.randn(args.batch, 3, args.height, args.width, generator=g).to(device, memory_format=fmt)
    epoch = 10  # a kNN epoch with a moving-average update: the most work per step

    def step(i: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(src)["logits"]
        loss_src = F.cross_entropy(logits.float(), pid)
        loss_tgt = None
        if crit is not None:
            idx = torch.arange(i * args.batch, (i + 1) * args.batch, device=device) % args.num_target
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                feat = model(tgt)["tgt_feat"]
            loss_tgt = crit(feat.float(), idx, epoch)
        loss = ecn_loss(loss_src, loss_tgt, 0.3)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def images_per_second(step, steps: int, warmup: int, images_per_step: int, device: torch.device) -> float:
    for i in range(warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * images_per_step / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--batch", type=int, default=128, help="source batch = target batch (ECN: 128)")
    p.add_argument("--num-target", type=int, default=12936, help="memory slots (Market-1501 train: 12,936)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{args.arch} {args.height}x{args.width}, batch {args.batch}+{args.batch}, memory {args.num_target} x 4096, "
          f"{args.steps} steps after {args.warmup} warm-up, device {name}, torch {torch.__version__}")
    per_step = 2 * args.batch
    results = {}
    with loop_update():
        results["paper"] = images_per_second(make_step(args, device, fast=False, ecn=True), args.steps, args.warmup, per_step, device)
    results["ours"] = images_per_second(make_step(args, device, fast=True, ecn=True), args.steps, args.warmup, per_step, device)
    results["plain"] = images_per_second(make_step(args, device, fast=True, ecn=False), args.steps, args.warmup, per_step, device)
    for key, label in [("paper", "paper code (fp32, loop update)"), ("ours", "ours (bf16, channels_last, vectorised)"),
                       ("plain", "plain backbone training, same images/step")]:
        print(f"{label:45s} {results[key]:9.1f} images/s")
    print(f"speed-up ours / paper: {results['ours'] / results['paper']:.2f}x (goal on a GPU >= 3x)")
    print(f"ECN overhead vs plain training: {100 * (results['plain'] / results['ours'] - 1):+.1f}% (goal <= 10%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
