"""Notebook 11's exercise checkers: right answers pass, the usual wrong answers fail with a message that names
the mistake; and the answers the checkers accept agree with what they model (2 real DDP processes' BN
buffers, ECNConfig's shares, the memory under all_gather)."""
from __future__ import annotations

import inspect

import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

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


def test_buffers_right_answer_passes(capsys):
    checks.check_buffers_after(buffers_right)
    assert "correct" in capsys.readouterr().out


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


@pytest.mark.parametrize(
    "wrong, message",
    [
        (own_history, "START of every forward"),
        (rank0_everywhere, "not rank 0's final value"),
        (keras, "Keras"),
        (whole_batch, "SyncBN"),
        (always_broadcast, "nothing is copied"),
        (lambda m, mom, b: buffers_right(m, mom, b)[:1], "one running_mean per rank"),
        (lambda m, mom, b: None, "returned None"),
        (lambda m, mom, b: buffers_right(m, mom, b) + 0.5, "expected"),
    ],
)
def test_buffers_wrong_answers_named(wrong, message):
    with pytest.raises(checks.ExerciseError, match=message):
        checks.check_buffers_after(wrong)


# --- exercise 11.2: images per BN layer ---------------------------------------------------------------------


def images_right(batch_size, world_size, sync_bn):
    if batch_size % world_size:
        raise ValueError(f"batch {batch_size} cannot be shared by {world_size} processes")
    return batch_size if sync_bn else batch_size // world_size


def test_images_right_answer_passes(capsys):
    checks.check_images_per_bn(images_right)
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("batch, world", [(128, 1), (128, 4), (64, 8), (96, 3)])
def test_images_the_exercise_asks_for_is_the_trainers_share(batch, world):
    assert images_right(batch, world, False) == ECNConfig(batch_size=batch, world_size=world).batch_per_process


def test_images_indivisible_batch_is_refused_by_the_trainer_too():
    with pytest.raises(ValueError):
        ECNConfig(batch_size=100, world_size=3)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda b, w, s: images_right(b, w, s) * 2, "source and target together"),
        (lambda b, w, s: b // w, "whole global batch"),
        (lambda b, w, s: b, "only its own slice"),
        (lambda b, w, s: b * w if not s else b, "GLOBAL batch"),
        (lambda b, w, s: b / w if not s else float(b), "is an int"),
        (lambda b, w, s: b if s else round(b / w), "raise ValueError"),
        (lambda b, w, s: None, "returned None"),
        (lambda b, w, s: 7, "expected"),
    ],
)
def test_images_wrong_answers_named(wrong, message):
    with pytest.raises(checks.ExerciseError, match=message):
        checks.check_images_per_bn(wrong)


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


def test_copies_right_answers_pass(capsys):
    checks.check_update_all_copies(copies_right)
    checks.check_update_all_copies(copies_rank_by_rank)
    assert capsys.readouterr().out.count("correct") == 2


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


@pytest.mark.parametrize(
    "wrong, message",
    [
        (own_only, "only process 0's own batch"),
        (own_first, "applied its own batch first"),
        (reversed_order, "reverse rank order"),
        (not_in_place, "in place"),
        (lambda copies, batches, rate: None, "no copy changed"),
        (lambda copies, batches, rate: copies_right(copies, batches, 0.5), "differs"),
    ],
)
def test_copies_wrong_answers_named(wrong, message):
    with pytest.raises(checks.ExerciseError, match=message):
        checks.check_update_all_copies(wrong)


# --- the stub ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("check", [checks.check_buffers_after, checks.check_images_per_bn,
                                   checks.check_update_all_copies])
def test_the_student_stub_reads_as_not_attempted(check):
    def answer(*args):
        raise NotImplementedError()

    with pytest.raises(checks.ExerciseError, match=NOT_ATTEMPTED):
        check(answer)
