"""Notebook 11's exercise checkers: right answers pass, the usual wrong answers fail with a message that names
the mistake; and the answers the checkers accept agree with what they model (2 real DDP processes' BN
buffers, ECNConfig's shares, the memory under all_gather).

Each checker's right and wrong answers are in ``ANSWERS`` at the end (run by ``test_answer_suites.py``).
"""
from __future__ import annotations

import inspect

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from answers import Answers
from reidlab.ecn import ECNConfig
from reidlab.lessons.checks import NOT_ATTEMPTED
from reidlab.lessons.checks import nb11 as checks
from reidlab.memory import memory_update_

from gloo import spawn

# --- exercise 11.1: the buffers DDP leaves on each process --------------------------------------------------


def buffers_right(slice_means, momentum, broadcast):
    buffers = torch.zeros(slice_means.shape[1], dtype=slice_means.dtype)
    for means in slice_means:
        if broadcast:
            buffers = torch.full_like(buffers, float(buffers[0]))
        buffers = (1 - momentum) * buffers + momentum * means
    return buffers


def buffers_by_bn_layers(slice_means, momentum, broadcast):
    """Also right: one real BatchNorm1d per rank, fed a slice with that rank's mean; DDP's broadcast is a copy of rank
    0's running_mean into every other rank's layer, before any of them runs the step."""
    layers = [torch.nn.BatchNorm1d(1, momentum=momentum).double() for _ in range(slice_means.shape[1])]
    for means in slice_means:
        if broadcast:
            for layer in layers[1:]:
                layer.running_mean.copy_(layers[0].running_mean)
        for layer, mean in zip(layers, means):
            layer(torch.stack([mean - 1, mean + 1]).view(2, 1))
    return torch.cat([layer.running_mean for layer in layers])


def _ddp_bn_buffers(rank, world, slices, broadcast, out):
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm1d(1, momentum=0.3).double()
    model = DistributedDataParallel(bn) if broadcast else DistributedDataParallel(bn, **{_switch(): False})
    for step_slices in slices:
        model(step_slices[rank]).sum().backward()
    torch.save(bn.running_mean, out / f"rank{rank}.pt")


def _switch():
    names = inspect.signature(DistributedDataParallel).parameters
    return "forward_sync_buffers" if "forward_sync_buffers" in names else "broadcast_buffers"


@pytest.mark.parametrize("broadcast", [True, False])
def test_the_exercise_predicts_what_ddp_does(tmp_path, broadcast):
    """The answer the checker accepts is what 2 real DDP processes (gloo) hold after 4 steps."""
    g = torch.Generator().manual_seed(3)
    slices = torch.randn(4, 2, 6, 1, generator=g, dtype=torch.float64) + torch.tensor([0.0, 2.0]).view(1, 2, 1, 1)
    spawn(_ddp_bn_buffers, slices, broadcast, tmp_path)
    held = torch.cat([torch.load(tmp_path / f"rank{r}.pt") for r in range(2)])
    torch.testing.assert_close(held, buffers_right(slices.mean((2, 3)), 0.3, broadcast))


def own_history(slice_means, momentum, broadcast):
    return buffers_right(slice_means, momentum, False)


def rank0_everywhere(slice_means, momentum, broadcast):
    final = buffers_right(slice_means, momentum, broadcast)
    return torch.full_like(final, float(final[0])) if broadcast else final


def keras(slice_means, momentum, broadcast):
    return buffers_right(slice_means, 1 - momentum, broadcast)


def whole_batch(slice_means, momentum, broadcast):
    return buffers_right(slice_means.mean(1, keepdim=True), momentum, False).expand(slice_means.shape[1])


def always_broadcast(slice_means, momentum, broadcast):
    return buffers_right(slice_means, momentum, True)


BUFFERS_WRONG = (
    (own_history, "you let each process keep its own history"),
    (rank0_everywhere, "not rank 0's final value"),
    (keras, "you used Keras' convention"),
    (whole_batch, "what a BN over the whole batch would hold \\(SyncBN\\)"),
    (always_broadcast, "with broadcast=False nothing is copied"),
    (lambda m, mom, b: buffers_right(m, mom, b)[:1], "return one running_mean per rank"),
    (lambda m, mom, b: None, "returned None"),
    (lambda m, mom, b: buffers_right(m, mom, b) + 0.5, "expected \\["),
)


# --- exercise 11.2: images per BN layer ---------------------------------------------------------------------


def images_right(batch_size, world_size, sync_bn):
    if batch_size % world_size:
        raise ValueError(f"batch {batch_size} cannot be shared by {world_size} processes")
    return batch_size if sync_bn else batch_size // world_size


def images_by_the_config(batch_size, world_size, sync_bn):
    """Also right: ask the trainer's own config, whose share refuses a batch that cannot be shared (ValueError)."""
    return batch_size if sync_bn else ECNConfig(batch_size=batch_size, world_size=world_size).batch_per_process


def images_by_assert(batch_size, world_size, sync_bn):
    assert batch_size % world_size == 0, "the processes cannot share the batch"
    return batch_size if sync_bn else batch_size // world_size


@pytest.mark.parametrize("batch, world", [(128, 1), (128, 4), (64, 8), (96, 3)])
def test_images_the_exercise_asks_for_is_the_trainers_share(batch, world):
    assert images_right(batch, world, False) == ECNConfig(batch_size=batch, world_size=world).batch_per_process


def test_images_indivisible_batch_is_refused_by_the_trainer_too():
    with pytest.raises(ValueError):
        ECNConfig(batch_size=100, world_size=3)


IMAGES_WRONG = (
    (lambda b, w, s: images_right(b, w, s) * 2, "you counted source and target together"),
    (lambda b, w, s: b // w, "with SyncBN .* of the whole global batch"),
    (lambda b, w, s: b, "without SyncBN each process's BN sees only its own slice"),
    (lambda b, w, s: b * w if not s else b, "batch_size is the GLOBAL batch"),
    (lambda b, w, s: b / w if not s else float(b), "a number of images is an int"),
    (lambda b, w, s: b if s else round(b / w), "cannot be shared by 3 processes: raise ValueError .*, do not round"),
    (images_by_assert, "cannot be shared by 3 processes: raise ValueError \\(as ECNConfig does\\), not AssertionError"),
    (lambda b, w, s: None, "returned None"),
    (lambda b, w, s: 7, "expected 128 images per BN layer, got 7"),
)


# --- exercise 11.3: every process's memory copy -------------------------------------------------------------


def copies_right(copies, batches, rate):
    features = torch.cat([f for f, _ in batches])
    indices = torch.cat([i for _, i in batches])
    for memory in copies:
        memory_update_(memory, indices, features, rate)


def copies_rank_by_rank(copies, batches, rate):
    """Also right: the published update is a loop over the samples, so rank 0's batch then rank 1's is the same."""
    for memory in copies:
        for features, indices in batches:
            memory_update_(memory, indices, features, rate)


def own_only(copies, batches, rate):
    for memory, (features, indices) in zip(copies, batches):
        memory_update_(memory, indices, features, rate)


def own_first(copies, batches, rate):
    for r, memory in enumerate(copies):
        order = [r] + [k for k in range(len(batches)) if k != r]
        memory_update_(memory, torch.cat([batches[k][1] for k in order]), torch.cat([batches[k][0] for k in order]),
                       rate)


def reversed_order(copies, batches, rate):
    copies_right(copies, batches[::-1], rate)


def not_in_place(copies, batches, rate):
    out = [c.clone() for c in copies]
    copies_right(out, batches, rate)
    return out


def first_copy_then_rebind(copies, batches, rate):
    """Updates copy 0, then puts it in every place of the list: the other processes' tensors are never updated."""
    copies_right(copies[:1], batches, rate)
    copies[1:] = [copies[0].clone() for _ in copies[1:]]


def first_copy_only(copies, batches, rate):
    copies_right(copies[:1], batches, rate)


COPIES_WRONG = (
    (own_only, "copy 0 got only process 0's own batch"),
    (own_first, "applied its own batch first"),
    (reversed_order, "got the batches in reverse rank order"),
    (not_in_place, "you returned updated copies but left the processes' memories as they were"),
    (first_copy_then_rebind, "you put other tensors into the list `copies`"),
    (first_copy_only, "copy 1 was not updated"),
    (lambda copies, batches, rate: None, "no copy changed"),
    (lambda copies, batches, rate: copies_right(copies, batches, 0.5), "copy 0 differs from one process's update"),
)


# --- the stub ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("check", [checks.check_buffers_after, checks.check_images_per_bn,
                                   checks.check_update_all_copies])
def test_the_student_stub_reads_as_not_attempted(check):
    def answer(*args):
        raise NotImplementedError()

    with pytest.raises(checks.ExerciseError, match=NOT_ATTEMPTED):
        check(answer)


ANSWERS = {  # run by tests/test_answer_suites.py
    checks.check_buffers_after: Answers(right=(buffers_right, buffers_by_bn_layers), wrong=BUFFERS_WRONG),
    checks.check_images_per_bn: Answers(right=(images_right, images_by_the_config), wrong=IMAGES_WRONG),
    checks.check_update_all_copies: Answers(right=(copies_right, copies_rank_by_rank), wrong=COPIES_WRONG),
}
