"""Time the Market-protocol evaluation: per-query reference loop vs the vectorised version.

One run on a synthetic problem of Market-1501's size (3,368 queries x 15,913 gallery images,
750 identities, 6 cameras, distractors and junk), both implementations in the same process,
on the same distance matrix. It checks that they give identical results (CMC, mAP, mINP and
every per-query AP/INP, compared exactly) and prints both times and their ratio (goal: >= 5x).

    python benchmarks/bench_evaluation.py            # Market size
    python benchmarks/bench_evaluation.py --scale 0.1   # a quick smoke run

The distances are "random but structured": each identity has a feature centre, each camera
adds its own offset (so the same-camera images the protocol removes really are the easiest
ones), each image adds noise; distractors and junk are random points. Distances are squared
euclidean in float32, as :func:`reidlab.evaluation.pairwise_distance` returns them.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

from reidlab.evaluation import evaluate_rank, pairwise_distance

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from references import evaluate_rank_reference  # noqa: E402  (the test suite's slow reference)


def make_problem(scale: float = 1.0, seed: int = 0, dim: int = 64):
    """A Market-size ranking problem: (distmat, q_pids, g_pids, q_camids, g_camids)."""
    rng = np.random.default_rng(seed)
    num_ids, num_cams = max(2, round(750 * scale)), 6
    num_query, num_gallery = round(3368 * scale), round(15913 * scale)
    num_distractors, num_junk = round(2793 * scale), round(500 * scale)
    num_id_gallery = num_gallery - num_distractors - num_junk
    centres = rng.normal(size=(num_ids + 1, dim))  # pid 1..num_ids (row 0 unused)
    cam_offset = 0.6 * rng.normal(size=(num_cams + 1, dim))  # cameras 1..6
    # every identity is seen by 2..6 cameras
    cams_of = [rng.choice(np.arange(1, num_cams + 1), size=rng.integers(2, num_cams + 1), replace=False) for _ in range(num_ids + 1)]

    def draw(pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cams = np.array([rng.choice(cams_of[p]) for p in pids])
        feats = centres[pids] + cam_offset[cams] + 0.9 * rng.normal(size=(len(pids), dim))
        return feats, cams

    q_pids = np.concatenate([np.arange(1, num_ids + 1), rng.integers(1, num_ids + 1, num_query - num_ids)])
    g_pids = np.concatenate([np.arange(1, num_ids + 1), rng.integers(1, num_ids + 1, num_id_gallery - num_ids)])
    qf, q_cams = draw(q_pids)
    gf, g_cams = draw(g_pids)
    other = num_distractors + num_junk
    of = 1.2 * rng.normal(size=(other, dim))
    o_cams = rng.integers(1, num_cams + 1, other)
    o_pids = np.concatenate([np.zeros(num_distractors, dtype=np.int64), -np.ones(num_junk, dtype=np.int64)])
    perm = rng.permutation(num_gallery)  # interleave identities, distractors and junk
    gf = np.concatenate([gf, of])[perm]
    g_pids = np.concatenate([g_pids, o_pids])[perm]
    g_cams = np.concatenate([g_cams, o_cams])[perm]
    distmat = pairwise_distance(qf.astype(np.float32), gf.astype(np.float32))
    return distmat, q_pids, g_pids, q_cams, g_cams


def identical(a, b) -> bool:
    return (
        np.array_equal(a.cmc, b.cmc)
        and a.mAP == b.mAP
        and a.mINP == b.mINP
        and a.num_valid_queries == b.num_valid_queries
        and np.array_equal(a.ap, b.ap, equal_nan=True)
        and np.array_equal(a.inp, b.inp, equal_nan=True)
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of Market-1501's size (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    problem = make_problem(args.scale, args.seed)
    distmat = problem[0]
    print(f"problem: {distmat.shape[0]} queries x {distmat.shape[1]} gallery ({distmat.dtype}), "
          f"{len(np.unique(problem[1]))} query ids, seed {args.seed}, built in {time.perf_counter() - t0:.1f} s")
    print(f"machine: {platform.processor() or platform.machine()}, numpy {np.__version__}")

    t0 = time.perf_counter()
    ref = evaluate_rank_reference(*problem)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast = evaluate_rank(*problem)
    t_fast = time.perf_counter() - t0

    same = identical(ref, fast)
    print(f"reference (per-query stable argsort): {t_ref:7.2f} s   {ref.summary()}")
    print(f"evaluate_rank (vectorised):           {t_fast:7.2f} s   {fast.summary()}")
    print(f"identical results: {same}")
    print(f"speed-up: {t_ref / t_fast:.1f}x (goal >= 5x)")
    if not same:
        raise SystemExit("the two implementations disagree")


if __name__ == "__main__":
    main()
