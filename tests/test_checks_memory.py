"""Notebook 09's exercise checkers, and its hand-written ECN loop against reidlab.memory.

Each checker's right and wrong answers are in ``ANSWERS`` at the end (run by ``test_answer_suites.py``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from answers import Answers
from reidlab.lessons.checks import NOT_ATTEMPTED
from reidlab.lessons.checks import nb09 as checks
from reidlab.memory import InvarianceLoss, memory_update_, memory_update_loop_, smooth_targets

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "09_exemplar_memory.ipynb"


# --- exercise 9.1: the soft target -----------------------------------------------------------


def soft_solution(logits, indices, k):
    top = logits.topk(k, dim=1).indices
    target = torch.zeros_like(logits).scatter_(1, top, 1.0 / k)
    return target.scatter_(1, indices.view(-1, 1), 1.0)


def soft_one_hot(logits, indices, k):
    """Also right: the top-k as a boolean mask, the own slot written last with torch.where."""
    top = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, logits.topk(k, dim=1).indices, True)
    own = F.one_hot(indices, logits.shape[1]).bool()
    return torch.where(own, torch.ones_like(logits), top.to(logits.dtype) / k)


def soft_row_by_row(logits, indices, k):
    """The right target, with the loop over the rows that the exercise rules out."""
    target = torch.zeros_like(logits)
    for row in range(len(logits)):
        target[row, logits[row].topk(k).indices] = 1.0 / k
        target[row, indices[row]] = 1.0
    return target


def soft_renormalised(logits, indices, k):
    t = soft_solution(logits, indices, k)
    return t / t.sum(dim=1, keepdim=True)


def soft_added(logits, indices, k):
    t = torch.zeros_like(logits).scatter_(1, logits.topk(k, dim=1).indices, 1.0 / k)
    t[torch.arange(len(indices)), indices] += 1.0
    return t


def soft_own_excluded(logits, indices, k):
    # the answer reading notes on ECN expected: keep the sample itself out of its top-k
    masked = logits.clone()
    masked[torch.arange(len(indices)), indices] = float("-inf")
    t = torch.zeros_like(logits).scatter_(1, masked.topk(k, dim=1).indices, 1.0 / k)
    return t.scatter_(1, indices.view(-1, 1), 1.0)


def soft_smallest(logits, indices, k):
    t = torch.zeros_like(logits).scatter_(1, logits.topk(k, dim=1, largest=False).indices, 1.0 / k)
    return t.scatter_(1, indices.view(-1, 1), 1.0)


def soft_no_own(logits, indices, k):
    return torch.zeros_like(logits).scatter_(1, logits.topk(k, dim=1).indices, 1.0 / k)


def soft_ones(logits, indices, k):
    t = torch.zeros_like(logits).scatter_(1, logits.topk(k, dim=1).indices, 1.0)
    return t.scatter_(1, indices.view(-1, 1), 1.0)


def soft_wrong_order(logits, indices, k):
    t = torch.zeros_like(logits).scatter_(1, indices.view(-1, 1), 1.0)
    return t.scatter_(1, logits.topk(k, dim=1).indices, 1.0 / k)


def soft_in_place(logits, indices, k):
    logits -= logits.max(dim=1, keepdim=True).values
    return soft_solution(logits, indices, k)


SOFT_TARGET_WRONG = (
    # what the exercise rules out: smooth_targets (imported by name at the top of notebook 09), and a Python loop
    (smooth_targets, "by hand, without `reidlab.memory.smooth_targets`"),
    (lambda logits, indices, k: smooth_targets(logits, indices, k), "by hand, without `reidlab.memory.smooth_targets`"),
    (soft_row_by_row, r"asks for no Python loop, but a line of `soft_row_by_row` ran \d+ times for 2 rows"),
    # the mistakes
    (soft_renormalised, "you renormalised the row"),
    (soft_added, "you added 1 to the own slot"),
    (soft_own_excluded, "you kept the own slot out of the top-k"),
    (soft_smallest, "k smallest logits"),
    (soft_no_own, "own slot must get weight 1"),
    (soft_ones, "gets 1/k, not 1"),
    (soft_wrong_order, "write the 1 last"),
    (soft_in_place, "changed the logits in place"),
    (lambda logits, indices, k: None, "forget to `return`"),
    (lambda logits, indices, k: soft_solution(logits, indices, k)[:, :5], "expected \\(4, 10\\)"),
)


def test_smooth_targets_works_again_after_the_check():
    with pytest.raises(checks.ExerciseError):
        checks.check_soft_target(smooth_targets)
    logits, indices, k = checks._soft_target_cases()[0]
    torch.testing.assert_close(smooth_targets(logits, indices, k), soft_solution(logits, indices, k))  # restored


def test_soft_target_cases_cover_own_slot_inside_and_outside():
    # the checker is only as good as its cases: some rows must have the own slot in the top-k, some not
    inside = outside = 0
    for logits, indices, k in checks._soft_target_cases():
        top = logits.topk(k, dim=1).indices
        hit = (top == indices.view(-1, 1)).any(dim=1)
        inside += int(hit.sum())
        outside += int((~hit).sum())
        assert len(set(logits.flatten().tolist())) == logits.numel()  # no ties: the top-k is unambiguous
    assert inside >= 3 and outside >= 3


# --- exercise 9.2: the memory update -------------------------------------------------------


def update_by_rounds(memory, indices, features, alpha, epoch):
    """Without a loop over the batch: one vectorised round per occurrence (the exercise's hint)."""
    rate = alpha * epoch
    pending = torch.arange(len(indices))
    while len(pending):
        idx = indices[pending]
        unique, inverse = torch.unique(idx, return_inverse=True)
        first = torch.full((len(unique),), len(idx)).scatter_reduce(0, inverse, torch.arange(len(idx)), "amin")
        rows = rate * memory[unique] + (1 - rate) * features[pending[first]]
        memory[unique] = rows / rows.norm(dim=1, keepdim=True)
        keep = torch.ones(len(idx), dtype=torch.bool)
        keep[first] = False
        pending = pending[keep]
    return memory


def update_by_occurrence(memory, indices, features, alpha, epoch):
    """Also right: number each sample by how many earlier samples share its index (a pairwise comparison), then
    update all the samples of one number at once, first numbers first."""
    rate = alpha * epoch
    earlier = torch.ones(len(indices), len(indices), dtype=torch.bool).tril(-1)  # [i, j]: sample j comes before i
    occurrence = ((indices[:, None] == indices[None, :]) & earlier).sum(1)
    for number in range(int(occurrence.max()) + 1):
        now = occurrence == number
        memory[indices[now]] = F.normalize(rate * memory[indices[now]] + (1 - rate) * features[now], dim=1)
    return memory


def update_per_sample(memory, indices, features, alpha, epoch):
    """The published per-sample loop: the right memory, but the exercise asks for no loop over the batch."""
    rate = alpha * epoch
    for x, i in zip(features, indices.tolist()):
        memory[i] = rate * memory[i] + (1 - rate) * x
        memory[i] = memory[i] / memory[i].norm()
    return memory


def update_no_normalise(memory, indices, features, alpha, epoch):
    rate = alpha * epoch
    for x, i in zip(features, indices.tolist()):
        memory[i] = rate * memory[i] + (1 - rate) * x
    return memory


def update_alpha_only(memory, indices, features, alpha, epoch):
    return update_by_rounds(memory, indices, features, alpha, 1)


def update_swapped(memory, indices, features, alpha, epoch):
    return update_by_rounds(memory, indices, features, 1 - alpha * epoch, 1)


def update_normalise_feature_only(memory, indices, features, alpha, epoch):
    rate = alpha * epoch
    for x, i in zip(features, indices.tolist()):
        memory[i] = rate * memory[i] + (1 - rate) * x / x.norm()
    return memory


def update_one_shot(memory, indices, features, alpha, epoch):
    rate = alpha * epoch
    rows = rate * memory[indices] + (1 - rate) * features
    memory[indices] = rows / rows.norm(dim=1, keepdim=True)
    return memory


def update_touches_all(memory, indices, features, alpha, epoch):
    memory = update_by_rounds(memory, indices, features, alpha, epoch)
    return memory / memory.norm(dim=1, keepdim=True).clamp_min(1.5)


UPDATE_RIGHT = (update_by_rounds, update_by_occurrence)
UPDATE_WRONG = (
    # what the exercise rules out: the library's update (imported by name at the top of notebook 09), and a loop
    # over the batch
    (lambda m, i, f, a, e: memory_update_loop_(m, i, f, a * e), "by hand, without `reidlab.memory.memory_update_loop_`"),
    (lambda m, i, f, a, e: memory_update_(m, i, f, a * e), "by hand, without `reidlab.memory.memory_update_`"),
    (update_per_sample, r"asks for no loop over the batch, but a line of `update_per_sample` ran \d+ times for a batch "
                        r"of 2 and \d+ times for a batch of 8"),
    # the naive vectorised update: wrong where an index occurs twice, which the visible check already has
    (update_one_shot, r"\[4, 1, 4, 0\]\) an index that occurs more than once in a batch must be updated once per "
                      "occurrence, in batch order"),
    # the mistakes
    (update_no_normalise, "you forgot to L2-normalise the updated row"),
    (update_normalise_feature_only, "you forgot to L2-normalise the updated row"),
    (update_alpha_only, "you used alpha instead of alpha\\*epoch"),
    (update_swapped, "the weights are swapped"),
    (update_touches_all, "rows that are not in the batch"),
    (lambda m, i, f, a, e: None, "returned None"),
)


def test_the_hidden_test_accepts_the_right_answers(capsys):
    for answer in UPDATE_RIGHT:
        checks.check_memory_update(answer)
        checks.check_memory_update(answer, repeated_indices=True)
    assert capsys.readouterr().out.splitlines() == [  # what notebook 09's committed output shows, visible and hidden
        "correct: memory update: rate alpha*epoch (0 at epoch 0: rows replaced), rows L2-normalised",
        "correct: memory update: rate alpha*epoch (0 at epoch 0: rows replaced), rows L2-normalised, repeated indices "
        "applied in order",
    ] * len(UPDATE_RIGHT)


@pytest.mark.parametrize("wrong, message", UPDATE_WRONG)
def test_the_hidden_test_refuses_the_wrong_answers_too(wrong, message):
    with pytest.raises(checks.ExerciseError, match=message):
        checks.check_memory_update(wrong, repeated_indices=True)


def test_the_library_update_works_again_after_the_check():
    with pytest.raises(checks.ExerciseError):
        checks.check_memory_update(UPDATE_WRONG[1][0])
    memory = F.normalize(torch.randn(4, 3), dim=1)
    torch.testing.assert_close(memory_update_(memory.clone(), torch.tensor([1, 1]), torch.ones(2, 3), 0.5),
                               update_per_sample(memory.clone(), torch.tensor([1, 1]), torch.ones(2, 3), 0.5, 1))


# --- exercise 9.3: the temperature for a probability ratio -----------------------------------


def temp_solution(gap, ratio):
    return gap / math.log(ratio)


def temp_by_search(gap, ratio):
    """Also right, without the algebra: bisect for the beta at which a softmax over two slots `gap` apart gives
    that ratio (the ratio falls as beta grows)."""
    low, high = 1e-6, 1e6
    for _ in range(200):
        beta = math.sqrt(low * high)
        p = torch.softmax(torch.tensor([1.0, 1.0 - gap], dtype=torch.float64) / beta, dim=0)
        low, high = (beta, high) if p[0] / p[1] > ratio else (low, beta)
    return math.sqrt(low * high)


def test_temperature_matches_the_softmax():
    # the answer, checked against an actual softmax over a memory: two slots `gap` apart in cosine
    beta = temp_solution(0.2, 5.0)
    memory = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=torch.float64)  # cosines 1.0, 0.8, 0.0 with f
    p = torch.softmax(torch.tensor([1.0, 0.0], dtype=torch.float64) @ memory.t() / beta, dim=0)
    assert (p[0] / p[1]).item() == pytest.approx(5.0)


TEMPERATURE_WRONG = (
    (lambda gap, ratio: gap * math.log(ratio), "you multiplied by ln\\(ratio\\)"),
    (lambda gap, ratio: math.log(ratio) / gap, "that is 1 / beta"),
    (lambda gap, ratio: gap / ratio, "divided by the ratio itself"),
    (lambda gap, ratio: gap / math.log10(ratio), "natural logarithm"),
    (lambda gap, ratio: gap / math.log2(ratio), "natural logarithm"),
    (lambda gap, ratio: None, "returned None"),
    (lambda gap, ratio: [gap], "one number"),
)


def test_unattempted_exercises_explain_themselves():
    def stub(*args):
        raise NotImplementedError()

    for checker in (checks.check_soft_target, checks.check_memory_update, checks.check_temperature_for):
        with pytest.raises(checks.ExerciseError, match=NOT_ATTEMPTED):
            checker(stub)


# --- the notebook's hand-written ECN against reidlab.memory ---------------------------------


def _notebook_functions(*names: str) -> dict:
    """Execute the notebook cells that define ``names`` (in notebook order) and return them."""
    nb = json.loads(NOTEBOOK.read_text())
    namespace: dict = {"torch": torch, "F": F}
    found = set()
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "code" and any(f"def {n}(" in src for n in names):
            exec(compile(src, f"09_exemplar_memory:{'/'.join(names)}", "exec"), namespace)
            found |= {n for n in names if f"def {n}(" in src}
    missing = set(names) - found
    assert not missing, f"notebook 09 defines no {sorted(missing)}"
    return namespace


@pytest.mark.skipif(not NOTEBOOK.exists(), reason="notebook 09 not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("epoch, repeat", [(0, False), (4, False), (5, False), (11, True), (20, False)])
def test_notebook_published_loop_matches_invariance_loss(dtype, epoch, repeat):
    ns = _notebook_functions("smooth_hot_loop", "published_ecn")
    g = torch.Generator().manual_seed(epoch)
    memory = F.normalize(torch.randn(11, 6, generator=g, dtype=dtype), dim=1)
    features = F.normalize(torch.randn(5, 6, generator=g, dtype=dtype), dim=1)
    indices = torch.tensor([3, 9, 3, 0, 3]) if repeat else torch.randperm(11, generator=g)[:5]
    loss, grad, mem = ns["published_ecn"](features, indices, memory, beta=0.05, knn=4, alpha=0.01, epoch=epoch)
    crit = InvarianceLoss(11, 6, beta=0.05, knn=4, alpha=0.01).to(dtype)
    crit.memory.copy_(memory)
    f = features.clone().requires_grad_(True)
    ours = crit(f, indices, epoch)
    ours.backward()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.as_tensor(loss, dtype=dtype), ours.detach(), **tol)
    torch.testing.assert_close(grad, f.grad, **tol)
    torch.testing.assert_close(mem, crit.memory, **tol)


@pytest.mark.skipif(not NOTEBOOK.exists(), reason="notebook 09 not built")
def test_notebook_soft_target_loop_matches_library():
    ns = _notebook_functions("smooth_hot_loop")
    for logits, indices, k in checks._soft_target_cases():
        torch.testing.assert_close(ns["smooth_hot_loop"](logits, indices, k), smooth_targets(logits, indices, k))


ANSWERS = {  # run by tests/test_answer_suites.py
    checks.check_soft_target: Answers(right=(soft_solution, soft_one_hot), wrong=SOFT_TARGET_WRONG),
    checks.check_memory_update: Answers(right=UPDATE_RIGHT, wrong=UPDATE_WRONG),
    checks.check_temperature_for: Answers(right=(temp_solution, temp_by_search), wrong=TEMPERATURE_WRONG),
}
