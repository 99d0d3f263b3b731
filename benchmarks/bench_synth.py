"""Time the synthetic re-ID world at Market-1501 scale.

    python benchmarks/bench_synth.py                     # market scale, with and without CamStyle
    python benchmarks/bench_synth.py --scale small --workers 2 --camstyle only

Prints, for each run, the seconds, the number of images written and images per second,
and whether the CamStyle images (5 per training image for synth_market) were included.
The tree goes to a temporary folder that is removed afterwards. The machine's load average
is printed too: on a shared machine the timings scale with it.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from reidlab.data.synth import make_synthetic_reid


def run(domain: str, scale: str, workers: int, write_camstyle: bool) -> None:
    """Generate one tree into a temporary folder and print its timing."""
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        t0 = time.perf_counter()
        out = make_synthetic_reid(tmp, domain, scale, seed=0, write_camstyle=write_camstyle, workers=workers)
        dt = time.perf_counter() - t0
        counts = json.loads((Path(out) / "manifest.json").read_text())["counts"]
        n = counts["train_images"] + counts["query"] + counts["gallery_files"] + counts["camstyle"]
    print(
        f"{domain} {scale:6} camstyle={'yes' if write_camstyle else 'no ':3} workers={workers}: "
        f"{dt:7.1f} s  {n:6d} images ({counts['camstyle']} CamStyle)  {n / dt:7.0f} images/s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--domain", default="synth_market")
    ap.add_argument("--scale", default="market")
    ap.add_argument("--workers", type=int, default=2, help="threads (the target machine has 2 cores)")
    ap.add_argument("--camstyle", choices=["both", "only", "none"], default="both")
    args = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"cores: {os.cpu_count()}  load average (1 min): {load:.1f}")
    if args.camstyle in ("both", "none"):
        run(args.domain, args.scale, args.workers, write_camstyle=False)
    if args.camstyle in ("both", "only"):
        run(args.domain, args.scale, args.workers, write_camstyle=True)


if __name__ == "__main__":
    main()
