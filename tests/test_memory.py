"""reidlab.memory: ECN's exemplar memory against hand-derived values and the published rule."""
import copy
import math
import pickle

import pytest
import torch
import torch.nn.functional as F

import reidlab.memory as memory_module
from reidlab.memory import (
    InvarianceLoss,
    knn_precision,
    memory_update_,
    memory_update_loop_,
    smooth_targets,
)


def published(features, indices, memory, *, beta, knn, alpha, epoch):
    """The ECN code's InvNet + ExemplarMemory, transcribed loop by loop (the oracle).

    Returns (loss, grad of the loss w.r.t. features, memory after backward).
    """
    em = memory.clone()
    n, m = features.shape[0], em.shape[0]
    logits = [[float(features[i] @ em[j]) / beta for j in range(m)] for i in range(n)]
    target = torch.zeros(n, m, dtype=features.dtype)
    for i in range(n):
        if knn > 0 and epoch > 4:
            order = sorted(range(m), key=lambda j: -logits[i][j])
            for j in order[:knn]:
                target[i, j] = 1.0 / knn
        target[i, int(indices[i])] = 1.0
    logits_t = torch.tensor(logits, dtype=features.dtype)
    p = torch.softmax(logits_t, dim=1)
    logp = torch.log_softmax(logits_t, dim=1)
    loss = -(target * logp).sum() / n
    # d/dz of -sum_j t_j log p_j = p * sum_j t_j - t; chain through z = f M^T / beta.
    grad_z = (p * target.sum(dim=1, keepdim=True) - target) / n
    grad_f = grad_z @ em / beta
    a = alpha * epoch
    for x, y in zip(features, indices.tolist()):
        em[y] = a * em[y] + (1 - a) * x
        em[y] = em[y] / em[y].norm()
    return loss, grad_f, em


def _case(dtype, n=5, m=9, d=4, seed=0, repeat=False):
    g = torch.Generator().manual_seed(seed)
    memory = F.normalize(torch.randn(m, d, generator=g, dtype=dtype), dim=1)
    features = F.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=1)
    if repeat:
        indices = torch.tensor([2, 7, 2, 0, 2][:n])
    else:
        indices = torch.randperm(m, generator=g)[:n]
    return memory, features, indices


def _run(memory, features, indices, epoch, **kw):
    crit = InvarianceLoss(memory.shape[0], memory.shape[1], **kw).to(memory.dtype)
    crit.memory.copy_(memory)
    f = features.clone().requires_grad_(True)
    loss = crit(f, indices, epoch)
    loss.backward()
    return loss.detach(), f.grad, crit.memory.clone()


def test_hand_derived_two_slot_example():
    # Two slots e1, e2; one feature f = e1 with index 0; beta = 0.5; epoch 0 (rate 0).
    # logits = [1, 0] / 0.5 = [2, 0]; loss = -log(e^2 / (e^2 + 1)) = log(1 + e^-2).
    crit = InvarianceLoss(2, 2, beta=0.5, knn=0).double()
    crit.memory.copy_(torch.eye(2, dtype=torch.float64))
    f = torch.tensor([[1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    loss = crit(f, torch.tensor([0]), epoch=0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-12)
    loss.backward()
    p1 = 1 / (1 + math.exp(2))  # softmax weight of the wrong slot
    # grad = (p - onehot) M / beta = [p0 - 1, p1] / 0.5 and p0 - 1 = -p1
    assert f.grad.tolist()[0] == pytest.approx([-p1 / 0.5, p1 / 0.5], rel=1e-12)
    # epoch 0: the own slot is replaced by f (already unit length); the other is untouched
    assert crit.memory.tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_hand_derived_update_with_rate():
    # epoch 10, alpha 0.01: M[0] <- 0.1 * e1 + 0.9 * e2, then normalised.
    crit = InvarianceLoss(2, 2, beta=1.0, knn=0, alpha=0.01).double()
    crit.memory.copy_(torch.eye(2, dtype=torch.float64))
    f = torch.tensor([[0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    crit(f, torch.tensor([0]), epoch=10).backward()
    r = math.hypot(0.1, 0.9)
    assert crit.memory[0].tolist() == pytest.approx([0.1 / r, 0.9 / r], rel=1e-12)
    assert crit.memory[1].tolist() == [0.0, 1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("epoch", [0, 3, 4, 5, 12])
def test_matches_the_published_code(dtype, epoch):
    memory, features, indices = _case(dtype)
    loss, grad, mem = _run(memory, features, indices, epoch, beta=0.05, knn=3, alpha=0.01)
    ref_loss, ref_grad, ref_mem = published(features, indices, memory, beta=0.05, knn=3, alpha=0.01, epoch=epoch)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss, ref_loss, **tol)
    torch.testing.assert_close(grad, ref_grad, **tol)
    torch.testing.assert_close(mem, ref_mem, **tol)
    assert grad.dtype == dtype and mem.dtype == dtype


def test_cross_entropy_before_the_knn_epoch_and_soft_target_after():
    memory, features, indices = _case(torch.float64)
    ce, _, _ = _run(memory, features, indices, 4, beta=0.05, knn=3)
    logits = features @ memory.t() / 0.05
    assert ce.item() == pytest.approx(F.cross_entropy(logits, indices).item(), rel=1e-12)
    soft, _, _ = _run(memory, features, indices, 5, beta=0.05, knn=3)
    assert soft.item() > ce.item()  # the extra 1/k targets add positive terms
    off, _, _ = _run(memory, features, indices, 5, beta=0.05, knn=0)
    assert off.item() == pytest.approx(ce.item(), rel=1e-12)  # knn=0: the E / E+C ablations


def test_gradient_uses_the_memory_before_the_update():
    memory, features, indices = _case(torch.float64)
    _, grad, mem_after = _run(memory, features, indices, 0, beta=0.05, knn=0)
    assert not torch.allclose(mem_after, memory)  # the update happened ...
    f = features.clone().requires_grad_(True)
    F.cross_entropy(f @ memory.t() / 0.05, indices).backward()
    torch.testing.assert_close(grad, f.grad)  # ... after the gradient was taken


def test_epoch_zero_replaces_the_rows():
    memory, features, indices = _case(torch.float64)
    features = features * 3.0  # not unit length: the update normalises
    _, _, mem = _run(memory, features, indices, 0, knn=0)
    torch.testing.assert_close(mem[indices], F.normalize(features, dim=1))
    untouched = torch.ones(memory.shape[0], dtype=torch.bool)
    untouched[indices] = False
    assert torch.equal(mem[untouched], memory[untouched])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_repeated_indices_follow_the_sequential_rule_exactly(dtype):
    memory, features, indices = _case(dtype, repeat=True)  # index 2 three times
    vec = memory_update_(memory.clone(), indices, features, 0.3)
    loop = memory_update_loop_(memory.clone(), indices, features, 0.3)
    assert torch.equal(vec, loop)
    # and it is not what a naive one-shot scatter (last write wins) would give
    naive = memory.clone()
    rows = 0.3 * naive[indices] + 0.7 * features
    naive[indices] = rows / rows.norm(dim=1, keepdim=True)
    assert not torch.allclose(naive[2], loop[2])
    # through the loss as well
    _, _, mem = _run(memory, features, indices, 30, knn=0, alpha=0.01)
    torch.testing.assert_close(mem, memory_update_loop_(memory.clone(), indices, features, 0.3))


def test_vectorised_update_equals_loop_on_a_big_batch():
    g = torch.Generator().manual_seed(1)
    memory = F.normalize(torch.randn(500, 64, generator=g), dim=1)
    indices = torch.randint(0, 500, (256,), generator=g)  # ~25% of rows repeated
    features = torch.randn(256, 64, generator=g)
    torch.testing.assert_close(
        memory_update_(memory.clone(), indices, features, 0.45),
        memory_update_loop_(memory.clone(), indices, features, 0.45),
        rtol=0, atol=1e-6,
    )


def test_a_workspace_is_reused_and_changes_no_bit():
    g = torch.Generator().manual_seed(2)
    memory = F.normalize(torch.randn(300, 32, generator=g), dim=1)
    workspace: list[torch.Tensor] = []
    with_ws, fresh = memory.clone(), memory.clone()
    for step in range(4):  # batches of distinct indices, then one with repeats (several rounds)
        indices = torch.randint(0, 300, (40,), generator=g) if step == 3 else torch.randperm(300, generator=g)[:40]
        features = torch.randn(40, 32, generator=g)
        memory_update_(with_ws, indices, features, 0.2, workspace=workspace)
        memory_update_loop_(fresh, indices, features, 0.2)
        if step == 0:
            kept = [b.data_ptr() for b in workspace]
    assert torch.equal(with_ws, fresh)
    assert len(workspace) == 2 and [b.data_ptr() for b in workspace] == kept  # allocated once, reused since
    memory_update_(torch.zeros(5, 8), torch.tensor([1]), torch.ones(1, 8), 0.0, workspace=workspace)
    assert workspace[0].shape[1] == 8  # a memory of another width gets buffers of its own width


def test_blocks_of_rows_give_the_bits_of_one_block(monkeypatch):
    # With several CPU threads the update goes a few rows at a time (_rows_per_block); blocks of 3
    # here, so that rounds of repeated indices and non-finite rows fall across block boundaries.
    g = torch.Generator().manual_seed(4)
    memory = F.normalize(torch.randn(60, 16, generator=g), dim=1)
    indices = torch.randint(0, 20, (50,), generator=g)  # many repeats: several rounds of several blocks
    features = torch.randn(50, 16, generator=g)
    features[[3, 17]] = float("nan")
    features[30, 2] = float("inf")
    whole = memory_update_(memory.clone(), indices, features, 0.3)
    monkeypatch.setattr(memory_module, "_rows_per_block", lambda memory, batch: 3)
    blocks = memory_update_(memory.clone(), indices, features, 0.3, workspace=[])
    assert torch.equal(blocks, whole)
    finite = torch.isfinite(features).all(dim=1)
    assert torch.equal(blocks, memory_update_loop_(memory.clone(), indices[finite], features[finite], 0.3))


def test_rows_per_block_keeps_each_op_under_torchs_grain_size(monkeypatch):
    market = torch.zeros(10, 4096)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert memory_module._rows_per_block(market, 128) == 128  # one thread: nothing to hand off, one block
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert memory_module._rows_per_block(market, 128) == 7  # 7 x 4,096 = 28,672 elements < 32,768
    assert memory_module._rows_per_block(torch.zeros(2, 40_000), 128) == 1
    assert memory_module._rows_per_block(torch.zeros(10, 4096, device="meta"), 128) == 128  # not a CPU


def test_the_reused_buffers_never_alias_the_callers_tensors(monkeypatch):
    g = torch.Generator().manual_seed(5)
    memory = F.normalize(torch.randn(30, 8, generator=g), dim=1)
    idx = torch.tensor([11, 10, 12, 13, 14])
    workspace: list[torch.Tensor] = []
    features = torch.randn(5, 8, generator=g)
    kept = features.clone()
    first = memory_update_(memory.clone(), idx, features, 0.4, workspace=workspace)
    first_bits = first.clone()
    second = memory_update_(memory.clone(), idx, torch.randn(5, 8, generator=g), 0.4, workspace=workspace)
    assert torch.equal(first, first_bits)  # the second call wrote nothing into the first one's result
    assert torch.equal(features, kept)  # the caller's features are read, never scaled in place
    buffers = {b.untyped_storage().data_ptr() for b in workspace}
    assert len(buffers) == 2 and not buffers & {t.untyped_storage().data_ptr() for t in (first, second, features)}
    # features that are rows of the memory itself are all read before any row is written (the first
    # block of 2 writes rows 13 and 14, which the next blocks read as features)
    monkeypatch.setattr(memory_module, "_rows_per_block", lambda memory, batch: 2)
    own, shifted = memory.clone(), torch.tensor([13, 14, 10, 11, 12])
    memory_update_(own, shifted, own[10:15], 0.4, workspace=workspace)
    assert torch.equal(own, memory_update_(memory.clone(), shifted, memory[10:15].clone(), 0.4))
    # through the loss: backward leaves the features as they were, and each loss has its own buffers
    crits = [InvarianceLoss(30, 8, knn=0) for _ in range(2)]
    f = features.clone().requires_grad_(True)
    for crit in crits:
        crit(f, idx, 3).backward()
    assert torch.equal(f.detach(), kept)
    assert crits[0]._workspace[0].data_ptr() != crits[1]._workspace[0].data_ptr()


def test_huge_finite_features_still_update_and_non_finite_rows_are_skipped():
    memory = F.normalize(torch.ones(4, 3), dim=1)
    features = torch.tensor([[3e38, 3e38, 0.0],              # finite, but its sum overflows to inf
                             [1.0, float("inf"), 0.0],
                             [0.0, 0.0, float("nan")],
                             [0.0, 1.0, 0.0]])
    out = memory_update_(memory.clone(), torch.tensor([0, 1, 2, 3]), features, 0.0)
    expected = memory_update_loop_(memory.clone(), torch.tensor([0, 3]), features[[0, 3]], 0.0)
    assert torch.equal(out[[0, 3]], expected[[0, 3]]) and not torch.equal(out[0], memory[0])
    assert torch.equal(out[[1, 2]], memory[[1, 2]])


@pytest.mark.parametrize("bad", [-1, 5])
def test_an_index_outside_the_memory_is_named(bad):
    memory = F.normalize(torch.ones(5, 3), dim=1)
    with pytest.raises(IndexError, match=f"index {bad} is outside the memory's 5 slots"):
        memory_update_(memory.clone(), torch.tensor([0, bad]), torch.ones(2, 3), 0.5)


def test_smooth_targets_own_slot_inside_and_outside_the_top_k():
    logits = torch.tensor([[9.0, 8.0, 7.0, 1.0, 0.0]], dtype=torch.float64)
    inside = smooth_targets(logits, torch.tensor([0]), k=3)
    assert inside.tolist() == [[1.0, 1 / 3, 1 / 3, 0.0, 0.0]]  # own slot overwritten with 1
    assert inside.sum().item() == pytest.approx(1 + 2 / 3)  # not renormalised
    outside = smooth_targets(logits, torch.tensor([4]), k=3)
    assert outside.tolist() == [[1 / 3, 1 / 3, 1 / 3, 0.0, 1.0]]
    assert outside.sum().item() == pytest.approx(2.0)


def test_memory_is_a_buffer_saved_in_the_state_dict():
    crit = InvarianceLoss(7, 3)
    assert list(crit.parameters()) == []
    assert "memory" in dict(crit.named_buffers())
    memory, features, indices = _case(torch.float32, m=7, d=3)
    crit.memory.copy_(memory)
    f = features.clone().requires_grad_(True)
    crit(f, indices, 2).backward()
    other = InvarianceLoss(7, 3)
    other.load_state_dict(crit.state_dict())
    assert torch.equal(other.memory, crit.memory)


def test_loss_under_bf16_autocast_is_float32_and_finite():
    memory, features, indices = _case(torch.float32)
    crit = InvarianceLoss(*memory.shape)
    crit.memory.copy_(memory)
    f = features.to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = crit(f, indices, 6)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert f.grad.dtype == torch.bfloat16 and crit.memory.dtype == torch.float32


def test_no_update_without_backward():
    memory, features, indices = _case(torch.float32)
    crit = InvarianceLoss(*memory.shape)
    crit.memory.copy_(memory)
    with torch.no_grad():
        crit(features, indices, 1)
    assert torch.equal(crit.memory, memory)


@pytest.mark.parametrize(
    "kwargs, call, match",
    [
        (dict(), dict(features=torch.zeros(2, 5)), r"features must be \(batch, 4\)"),
        (dict(), dict(indices=torch.tensor([0, 9])), r"indices must lie in \[0, 9\)"),
        (dict(), dict(indices=torch.tensor([0])), "1 indices for a batch of 2"),
        (dict(), dict(epoch=-1), "epoch must be >= 0"),
        (dict(alpha=0.02), dict(epoch=60), r"alpha\*epoch = 1.2 > 1"),
    ],
)
def test_bad_inputs_name_the_problem(kwargs, call, match):
    crit = InvarianceLoss(9, 4, **kwargs)
    args = dict(features=torch.zeros(2, 4), indices=torch.tensor([0, 1]), epoch=1) | call
    with pytest.raises(ValueError, match=match):
        crit(args["features"], args["indices"], args["epoch"])


def test_constructor_rejects_bad_settings():
    with pytest.raises(ValueError, match="temperature"):
        InvarianceLoss(5, 2, beta=0)
    with pytest.raises(ValueError, match="knn"):
        InvarianceLoss(5, 2, knn=6)


def test_knn_precision_against_brute_force():
    g = torch.Generator().manual_seed(3)
    ids = torch.arange(40) // 4  # 10 identities, 4 images each
    centres = torch.randn(10, 16, generator=g)
    memory = F.normalize(centres[ids] + 0.8 * torch.randn(40, 16, generator=g), dim=1)
    memory[5] = 0  # a slot never written: its neighbours count as misses
    k = 3
    hits = 0
    unit = F.normalize(memory, dim=1)
    for i in range(40):
        sims = [(float(unit[i] @ unit[j]), j) for j in range(40) if j != i]
        top = [j for _, j in sorted(sims, key=lambda t: (-t[0], t[1]))[:k]]
        hits += 0 if i == 5 else sum(int(ids[j] == ids[i]) for j in top)
    expected = hits / (40 * k)
    assert knn_precision(memory, ids, k, chunk=7) == pytest.approx(expected)
    assert 0.3 < expected < 1.0  # a meaningful case: neither trivial nor random (1/13)
    assert knn_precision(F.normalize(centres[ids], dim=1), ids, 3) == 1.0


# --- one call, one backward ----------------------------------------------------------------------


def _crit_and_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    crit = InvarianceLoss(6, 4, knn=0)
    feats = F.normalize(torch.randn(3, 4, generator=g), dim=1).requires_grad_()
    return crit, feats, torch.tensor([0, 2, 4])


def test_a_second_call_before_backward_raises_instead_of_updating_twice():
    crit, feats, idx = _crit_and_batch()
    first = crit(feats, idx, 0)
    with pytest.raises(RuntimeError, match="called again before the previous call's loss went through backward"):
        crit(feats, idx, 0)
    first.backward()
    after_one = crit.memory.clone()
    crit(feats, idx, 0).backward()  # after the backward, calling again is fine
    assert torch.equal(crit.memory[idx], F.normalize(feats.detach(), dim=1))  # rate 0: replaced, not doubled
    assert torch.equal(after_one, crit.memory)


def test_a_second_backward_of_one_call_raises():
    crit, feats, idx = _crit_and_batch()
    loss = crit(feats, idx, 3)
    loss.backward(retain_graph=True)
    once = crit.memory.clone()
    with pytest.raises(RuntimeError, match="second backward through the same InvarianceLoss call"):
        loss.backward()
    assert torch.equal(crit.memory, once)


def test_calls_without_gradients_or_dropped_losses_update_nothing_and_do_not_block():
    crit, feats, idx = _crit_and_batch()
    with torch.no_grad():
        crit(feats, idx, 0)
    crit(feats.detach(), idx, 0)  # features that need no gradient: no graph, no update
    assert torch.equal(crit.memory, torch.zeros(6, 4))
    dropped = crit(feats, idx, 0)
    del dropped  # the graph is freed: nothing is pending any more
    crit(feats, idx, 0).backward()
    assert crit.memory.abs().sum() > 0
    copy.deepcopy(crit)
    pickle.loads(pickle.dumps(crit))
