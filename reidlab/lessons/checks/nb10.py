"""Checkers of notebook 10 (``notebooks/10_ecn_pipeline.ipynb``): the ECN pipeline.

Imported by the notebook as ``from reidlab.lessons.checks import nb10 as checks``.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from reidlab.ecn.config import ECN_DECAY_EPOCH, ECN_KNN_EPOCH, scaled_schedule
from reidlab.lessons.checks import ExerciseError, checker, fail, passed

__all__ = ["ExerciseError", "check_ecn_total_loss", "check_relative_gain", "check_scaled_schedule"]


# The reference answer of exercise 10.2 is the trainer's own rule (one rule for the trainer,
# train_source, the notebook and this checker): ECN's 60 epochs, lr step at epoch 40, the
# neighbourhood (kNN) term from epoch 5 on (the code's ``epoch > 4``, 0-based), scaled.


@checker
def check_ecn_total_loss(fn: Callable[..., Any]) -> None:
    """Notebook 10: ``fn(loss_src, loss_tgt, lam)`` must return ECN's ``(1 - lam) * loss_src + lam * loss_tgt``.

    ``loss_tgt=None`` stands for the source-only baseline: the source loss alone, weight 1.
    The result must stay a tensor in the autograd graph (``backward()`` trains on it).
    """
    cases = ((2.0, 6.0, 0.3), (1.5, 0.5, 0.5), (4.0, 1.0, 0.1))
    for src_v, tgt_v, lam in cases:
        src = torch.tensor(src_v, dtype=torch.float64, requires_grad=True)
        tgt = torch.tensor(tgt_v, dtype=torch.float64, requires_grad=True)
        got = fn(src, tgt, lam)
        if got is None:
            fail("your function returned None: did it forget to `return` the loss?")
        if not isinstance(got, torch.Tensor):
            fail(f"return a tensor, not a {type(got).__name__}: `loss.backward()` needs the graph "
                 "(calling .item() or float() cuts it)")
        if got.grad_fn is None:
            fail("the returned tensor is not connected to the two losses: compute it from loss_src and loss_tgt "
                 "(no .detach(), no torch.tensor(...) of a number)")
        value = float(got.detach())
        want = (1 - lam) * src_v + lam * tgt_v
        if math.isclose(value, want, rel_tol=1e-9, abs_tol=1e-12):
            gs, gt = torch.autograd.grad(got, (src, tgt))
            if not (math.isclose(float(gs), 1 - lam) and math.isclose(float(gt), lam)):
                fail("the value is right but the gradients are not (1 - lam, lam): did you mix detached copies in?")
            continue
        wrong = {
            "that is the usual `L_src + lam * L_tgt`; ECN (paper Sec. 3.5 and its trainers.py) uses a convex "
            "combination: the source loss is weighted by 1 - lam":
                src_v + lam * tgt_v,
            "the weights are swapped: lam weighs the TARGET (invariance) loss, 1 - lam the source loss":
                lam * src_v + (1 - lam) * tgt_v,
            "lam is a weight between the two losses; a plain average ignores it":
                (src_v + tgt_v) / 2,
            "a plain sum ignores lam: (1 - lam) * L_src + lam * L_tgt":
                src_v + tgt_v,
        }
        for message, value_wrong in wrong.items():
            if math.isclose(value, value_wrong, rel_tol=1e-9, abs_tol=1e-12):
                fail(message)
        fail(f"for L_src={src_v}, L_tgt={tgt_v}, lam={lam} expected {want:.4f}, got {value:.4f}")
    # the source-only baseline
    src = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    try:
        got = fn(src, None, 0.3)
    except TypeError as err:
        fail(f"source-only (loss_tgt=None) raised TypeError ({err}): without a target loss return the source "
             "loss alone")
    if not isinstance(got, torch.Tensor) or got.grad_fn is None and got is not src:
        fail("source-only (loss_tgt=None): return the source loss tensor itself (weight 1)")
    if math.isclose(float(got.detach()), 0.7 * 2.0):
        fail("source-only (loss_tgt=None) trains L_src alone with weight 1 (ECN's baseline, lam = 0), not 1 - lam")
    if not math.isclose(float(got.detach()), 2.0):
        fail(f"source-only (loss_tgt=None): expected the source loss 2.0, got {float(got.detach())}")
    passed("ECN's loss (1 - lam) * L_src + lam * L_tgt, and L_src alone without a target")


@checker
def check_scaled_schedule(fn: Callable[[int], Any]) -> None:
    """Notebook 10: ``fn(epochs)`` must return ``(knn_epoch, decay_epoch)``: ECN's 5 and 40 of 60, scaled.

    Both are 0-based epochs rounded to the nearest integer (as :attr:`reidlab.ecn.ECNConfig.decay_epoch`
    does); the kNN term never starts before epoch 1, because during epoch 0 the memory is still
    being filled (its update rate ``alpha * epoch`` is 0 and unvisited slots are zeros).
    """
    cases = (60, 12, 10, 24, 3, 100, 40)
    for epochs in cases:
        want = scaled_schedule(epochs)
        got = fn(epochs)
        if got is None:
            fail("your function returned None: return the pair (knn_epoch, decay_epoch)")
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            fail(f"return two numbers, (knn_epoch, decay_epoch); got {got!r}")
        try:
            knn, decay = (int(v) for v in got)
        except (TypeError, ValueError):
            fail(f"return two whole epoch numbers, got {got!r}")
        if any(float(v) != int(v) for v in got):
            fail(f"epochs are whole numbers: round the scaled values (got {got!r} for {epochs} epochs)")
        if (knn, decay) == want:
            continue
        if (decay, knn) == want:
            fail("the order is (knn_epoch, decay_epoch): the kNN epoch first")
        if (knn, decay) == (ECN_KNN_EPOCH, ECN_DECAY_EPOCH):
            fail(f"for a {epochs}-epoch run you returned ECN's own (5, 40): scale them by epochs / 60")
        if (knn, decay) == (want[0] + 1, want[1] + 1):
            fail("epochs are counted from 0, as in the code: ECN's `epoch > 4` is epoch 5, its decay `epoch // 40` "
                 "starts at epoch 40")
        if epochs == 3 and knn == 0:
            fail("for a short run the kNN term would start at epoch 0, while the memory is still being filled "
                 "(alpha * epoch = 0, unvisited slots are zeros): start it at epoch 1 at the earliest")
        if epochs == 10 and decay == 6:
            fail("round to the NEAREST epoch (40/60 * 10 = 6.67 -> 7); int() and // round down")
        if epochs != 60 and (knn, decay) == (round(5 * 60 / epochs), round(40 * 60 / epochs)):
            fail("scaled the wrong way: the run is shorter than ECN's 60 epochs, so multiply by epochs / 60")
        fail(f"for {epochs} epochs expected (knn_epoch, decay_epoch) = {want}, got {(knn, decay)}")
    passed("ECN's schedule scaled: kNN from round(5/60 * E) (at least 1), LR step at round(40/60 * E)")


@checker
def check_relative_gain(fn: Callable[..., Any]) -> None:
    """Notebook 10: ``fn(table)`` must return ``{method: (points, percent)}``, each method's mAP gain over source-only.

    ``table`` maps a method name to ``{'rank1': ..., 'mAP': ...}`` in percent. ``points`` is
    ``mAP - mAP_source_only`` (percentage points), ``percent`` the same relative to the
    baseline, ``100 * points / mAP_source_only``. The baseline itself may be left out or
    given ``(0, 0)``.
    """
    tables = (
        {"source-only": {"rank1": 40.0, "mAP": 20.0}, "E": {"rank1": 50.0, "mAP": 25.0},
         "E+C": {"rank1": 62.0, "mAP": 33.0}, "E+C+N": {"rank1": 75.0, "mAP": 43.0}},
        {"source-only": {"rank1": 10.0, "mAP": 8.0}, "E": {"rank1": 9.0, "mAP": 6.0},
         "E+N": {"rank1": 20.0, "mAP": 14.0}},
    )
    for table in tables:
        got = fn({k: dict(v) for k, v in table.items()})
        if got is None:
            fail("your function returned None: return a dict {method: (points, percent)}")
        if not isinstance(got, dict):
            fail(f"return a dict {{method: (points, percent)}}, got {type(got).__name__}")
        base = table["source-only"]["mAP"]
        for name, row in table.items():
            if name == "source-only":
                if name in got and any(abs(float(v)) > 1e-9 for v in got[name]):
                    fail("source-only is the baseline: its gain over itself is (0, 0); or leave it out")
                continue
            if name not in got:
                fail(f"no entry for {name!r}: give every method except the baseline")
            try:
                points, percent = (float(v) for v in got[name])
            except (TypeError, ValueError):
                fail(f"the entry for {name!r} should be a pair (points, percent), got {got[name]!r}")
            want_pts = row["mAP"] - base
            want_pct = 100 * want_pts / base
            if math.isclose(points, want_pts, abs_tol=1e-6) and math.isclose(percent, want_pct, abs_tol=1e-6):
                continue
            r1_pts = row["rank1"] - table["source-only"]["rank1"]
            if math.isclose(points, r1_pts, abs_tol=1e-6):
                fail("that is the rank-1 gain: the exercise asks for mAP")
            if math.isclose(points, -want_pts, abs_tol=1e-6):
                fail("the sign is reversed: gain = method - source-only (positive when the method is better)")
            if not math.isclose(points, want_pts, abs_tol=1e-6):
                fail(f"{name}: the gain in points is mAP({name}) - mAP(source-only) = {want_pts:.2f}, got {points:.2f}")
            if math.isclose(percent, want_pct / 100, abs_tol=1e-6):
                fail("the relative gain is asked in percent: multiply the fraction by 100")
            if math.isclose(percent, 100 * want_pts / row["mAP"], abs_tol=1e-6):
                fail("divide by the BASELINE's mAP (source-only), not by the method's own")
            if math.isclose(percent, want_pts, abs_tol=1e-6):
                fail("the percent value is the gain relative to the baseline, 100 * points / mAP(source-only), "
                     "not the points again")
            fail(f"{name}: expected ({want_pts:.2f} points, {want_pct:.2f} %), got ({points:.2f}, {percent:.2f})")
    passed("mAP gain over source-only, in points and relative to the baseline")
