"""Independent ECN runs one after the other vs side by side (``reidlab.lessons.parallel``).

Notebook 10 trains 18 independent ECN runs. On a machine with few cores, is it faster to give
each run every thread, one run after the other, or to run several one-thread runs at once? Each
job here is one whole ECN run as notebook 10 trains it (``train_ecn(config, None)``: data loading
and augmentation, the two forward passes, the memory, the final evaluation), shorter: ResNet-18
at 64x32 from random weights (no pretraining to wait for), batch 32 + 32, ``--epochs`` epochs of
the ``tiny`` synthetic worlds (generated in a temporary folder first, unless ``--data-dir`` holds
them). The reference is measured in the same run: the jobs one after the other in this process
with ``--threads`` threads; then the same jobs through ``map_in_processes`` with ``--procs``
processes of one thread each. It prints the wall time of each and the speed-up, and checks that a
one-thread run gives the same metrics and weights in a child process as in this one.

    python benchmarks/bench_parallel_runs.py                  # 4 runs: 2 threads serially vs 2 x 1 thread
    python benchmarks/bench_parallel_runs.py --jobs 8 --procs 4 --threads 4
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

import torch

from reidlab.ecn import ECNConfig, train_ecn
from reidlab.lessons.parallel import can_fork, map_in_processes, torch_threads


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=4, help="independent runs (seeds 0, 1, ...)")
    p.add_argument("--procs", type=int, default=2, help="processes side by side, one thread each")
    p.add_argument("--threads", type=int, default=2, help="threads of the reference, one run after the other")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--invariance", default="E+C+N")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--batch", type=int, default=32, help="source and target batch")
    p.add_argument("--num-features", type=int, default=4096)
    p.add_argument("--source", default="synth_market", help="a dataset name or folder")
    p.add_argument("--target", default="synth_duke", help="a dataset name or folder")
    p.add_argument("--data-dir", default=None, help="where the tiny worlds are (default: generated in a temp folder)")
    return p


def _config(args: argparse.Namespace, data_dir: str) -> ECNConfig:
    return ECNConfig.from_profile(
        "laptop", source=args.source, target=args.target, data_dir=data_dir, synth_scale="tiny",
        arch="resnet18", pretrained=None, height=args.height, width=args.width, batch_size=args.batch,
        num_features=args.num_features, epochs=args.epochs, invariance=args.invariance, camstyle="auto",
        eval_source=False, num_workers=0, device="cpu",
    )


def _job(config: ECNConfig):
    def run(seed: int) -> dict:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # freezing random weights: fine for timing
            res = train_ecn(config.replace(seed=seed), None, progress=False)
        return {"metrics": res.metrics, "state": res.model.state_dict()}

    return run


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        config = _config(args, args.data_dir or tmp)
        run = _job(config)
        seeds = list(range(args.jobs))
        print(f"{args.jobs} ECN runs ({args.invariance}) of {args.epochs} epochs: resnet18 {args.height}x{args.width}, "
              f"batch {args.batch} + {args.batch}; {os.cpu_count()} cores")
        if not can_fork():
            print("this platform cannot fork (or CUDA is initialised): nothing to compare")
            return 0
        with torch_threads(args.threads):
            run(seeds[0])  # warm-up, and generates the worlds if needed
            t0 = time.perf_counter()
            for s in seeds:
                run(s)
            reference = time.perf_counter() - t0
        t0 = time.perf_counter()
        side_by_side = map_in_processes(run, seeds, processes=args.procs, threads=1, progress=False)
        parallel = time.perf_counter() - t0
        print(f"one after the other, {args.threads} threads: {reference:7.2f} s (reference)")
        print(f"{args.procs} side by side, 1 thread each:  {parallel:7.2f} s")
        print(f"speed-up: {reference / parallel:.2f}x")
        with torch_threads(1):
            here = run(seeds[-1])
        there = side_by_side[-1]
        same = here["metrics"] == there["metrics"] and all(torch.equal(v, there["state"][k]) for k, v in here["state"].items())
        print(f"a one-thread run gives the same metrics and weights in a child process as here: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
