"""Checkers of notebook 11 (``notebooks/11_bn_across_devices.ipynb``): BatchNorm across devices.

Imported by the notebook as ``from reidlab.lessons.checks import nb11 as checks``.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from reidlab.lessons.checks import ExerciseError, as_number, as_tensor, checker, fail, passed
from reidlab.memory import memory_update_

__all__ = ["ExerciseError", "check_buffers_after", "check_images_per_bn", "check_update_all_copies"]


# --- exercise 11.1: the running statistics DDP leaves on each process ------------------------------------


def _ddp_buffers(slice_means: torch.Tensor, momentum: float, broadcast: bool) -> torch.Tensor:
    """Each rank's running_mean after the steps: rank 0's buffer broadcast at every forward start, or not."""
    buffers = torch.zeros(slice_means.shape[1], dtype=slice_means.dtype)
    for step_means in slice_means:
        if broadcast:
            buffers = buffers[0].expand_as(buffers).clone()   # DDP: rank 0's buffer, before this forward
        buffers = (1 - momentum) * buffers + momentum * step_means
    return buffers


def _buffer_mistakes(slice_means: torch.Tensor, momentum: float, broadcast: bool) -> dict[str, torch.Tensor]:
    """The buffers that each usual mistake produces, by message."""
    ranks = slice_means.shape[1]
    whole_batch = _ddp_buffers(slice_means.mean(1, keepdim=True), momentum, False).expand(ranks)
    mistakes = {
        "PyTorch's momentum weighs the NEW value: running = (1 - momentum) * running + momentum * slice_mean "
        "(notebook 03); you used Keras' convention":
            _ddp_buffers(slice_means, 1 - momentum, broadcast),
        "that is what a BN over the whole batch would hold (SyncBN); without SyncBN each process updates its buffer "
        "from its own slice only":
            whole_batch,
    }
    if broadcast:
        rank0 = _ddp_buffers(slice_means, momentum, True)[0]
        mistakes.update({
            "with broadcast=True DDP copies rank 0's buffer to every process at the START of every forward; you let "
            "each process keep its own history":
                _ddp_buffers(slice_means, momentum, False),
            "the broadcast comes at the start of a forward, and each process then still updates from its own slice: "
            "after the last step rank r holds rank 0's previous buffer updated with rank r's last slice mean, not "
            "rank 0's final value":
                rank0.expand(ranks),
        })
    else:
        mistakes["with broadcast=False nothing is copied between processes: each keeps its own moving average"] = (
            _ddp_buffers(slice_means, momentum, True))
    return mistakes


@checker
def check_buffers_after(fn: Callable[[torch.Tensor, float, bool], Any]) -> None:
    """Notebook 11: ``fn(slice_means, momentum, broadcast)`` returns each rank's BN ``running_mean`` after DDP.

    ``slice_means[t, r]`` is the mean of rank ``r``'s slice at step ``t`` (one channel); every
    buffer starts at 0 and follows PyTorch's update ``(1 - momentum) * running + momentum *
    slice_mean``. With ``broadcast=True`` (DDP's default) rank 0's buffer is copied to every
    process at the start of every forward, before that process's own update; with
    ``broadcast=False`` each process keeps its own. Tried with 2 and 3 ranks, momenta 0.1 and
    0.3, both settings.
    """
    g = torch.Generator().manual_seed(115)
    for steps, ranks, momentum in ((5, 2, 0.1), (7, 3, 0.3)):
        slice_means = torch.randn(steps, ranks, generator=g, dtype=torch.float64) + 2.0 * torch.arange(ranks)
        for broadcast in (True, False):
            want = _ddp_buffers(slice_means, momentum, broadcast)
            got = fn(slice_means.clone(), momentum, broadcast)
            if got is None:
                fail("your function returned None: return one running_mean per rank")
            got = as_tensor(got, "the buffers").detach().to(torch.float64).reshape(-1)
            if got.numel() != ranks:
                fail(f"return one running_mean per rank ({ranks} values for slice_means of shape "
                     f"{tuple(slice_means.shape)}), got {got.numel()}")
            if torch.allclose(got, want, atol=1e-9):
                continue
            where = f"({ranks} ranks, momentum {momentum}, broadcast={broadcast})"
            for message, value in _buffer_mistakes(slice_means, momentum, broadcast).items():
                if torch.allclose(got, value, atol=1e-9):
                    fail(f"{message} {where}")
            fail(f"expected {[round(v, 4) for v in want.tolist()]}, got {[round(v, 4) for v in got.tolist()]} {where}")
    passed("DDP's buffers: rank 0's copied at every forward start, then each rank's own update; or each rank's own")


# --- exercise 11.2: how many images one BN layer normalises over ------------------------------------------


@checker
def check_images_per_bn(fn: Callable[[int, int, bool], Any]) -> None:
    """Notebook 11: ``fn(batch_size, world_size, sync_bn)``: images one trainable BN layer normalises over in ECN.

    ECN's ``batch_size`` is the global batch of *each* domain (source and target), shared out by
    ``world_size`` processes, and the two domains go through the network in separate forward
    passes. So a BN layer normalises ``batch_size // world_size`` images without SyncBN and
    ``batch_size`` with it, never source and target together. A batch the processes cannot
    share equally raises ``ValueError`` (as ``ECNConfig`` does).
    """
    cases = ((128, 1, False), (128, 4, False), (128, 4, True), (64, 8, False), (256, 16, True), (96, 3, False),
             (32, 2, True))
    for batch, world, sync in cases:
        want = batch if sync else batch // world
        raw = fn(batch, world, sync)
        got = as_number(raw, float, if_none="your function returned None: return the number of images",
                        if_wrong="return one number of images, got {type}")
        if got == want:
            if isinstance(raw, float) or (isinstance(raw, torch.Tensor) and raw.is_floating_point()):
                fail(f"{raw!r} for batch {batch} on {world} processes: a number of images is an int (use //)")
            continue
        where = f"batch_size={batch}, world_size={world}, sync_bn={sync}"
        if got == 2 * want:
            fail(f"{where}: you counted source and target together; ECN feeds them in two separate forward passes, "
                 "so a BN layer never normalises the two domains in one batch")
        if sync and got == batch // world:
            fail(f"{where}: with SyncBN every process normalises with the statistics of every process's slice, i.e. "
                 "of the whole global batch")
        if not sync and world > 1 and got == batch:
            fail(f"{where}: without SyncBN each process's BN sees only its own slice, batch_size // world_size "
                 "images; batch_size is the global batch")
        if got == batch * world:
            fail(f"{where}: batch_size is the GLOBAL batch (shared out by the processes), not the batch per process")
        fail(f"{where}: expected {want} images per BN layer, got {got}")
    try:
        fn(100, 3, False)
    except ValueError:
        pass
    except Exception as err:  # noqa: BLE001 - an assert, say: the learner's exception names no ValueError
        fail(f"batch_size=100 cannot be shared by 3 processes: raise ValueError (as ECNConfig does), not "
             f"{type(err).__name__}")
    else:
        fail("batch_size=100 cannot be shared by 3 processes: raise ValueError (as ECNConfig does), do not round")
    passed("batch_size // world_size images per BN without SyncBN, batch_size with it, one domain at a time")


# --- exercise 11.3: every process's copy of the memory ----------------------------------------------------


def _memory_case(world: int, seed: int) -> tuple[torch.Tensor, list]:
    g = torch.Generator().manual_seed(seed)
    memory = torch.nn.functional.normalize(torch.randn(12, 4, generator=g), dim=1)
    batches = []
    for rank in range(world):
        idx = torch.randperm(12, generator=g)[:3]
        idx[0] = 5  # slot 5 is in every process's batch: the order of the updates matters
        batches.append((torch.randn(3, 4, generator=g), idx))
    return memory, batches


def _updated(memory: torch.Tensor, batches: list, order: list[int], rate: float) -> torch.Tensor:
    feats = torch.cat([batches[r][0] for r in order])
    idx = torch.cat([batches[r][1] for r in order])
    return memory_update_(memory.clone(), idx, feats, rate)


@checker
def check_update_all_copies(fn: Callable[[list, list, float], Any]) -> None:
    """Notebook 11: ``fn(copies, batches, rate)`` updates every process's memory copy in place, as DDP needs.

    ``copies[r]`` is process ``r``'s memory (all equal at the start), ``batches[r]`` its
    ``(features, indices)``. Every copy must get every process's batch, concatenated in rank
    order (what :func:`reidlab.distributed.all_gather_cat` returns), through
    :func:`reidlab.memory.memory_update_`: then all copies stay identical and equal to one
    process's update on the concatenated batch. Tried with 2 and 3 processes, a slot that is in
    every process's batch, and update rates 0 and 0.3.
    """
    for world, seed, rate in ((2, 121, 0.3), (3, 122, 0.0), (3, 123, 0.3)):
        memory, batches = _memory_case(world, seed)
        copies = [memory.clone() for _ in range(world)]
        given = [(f.clone(), i.clone()) for f, i in batches]
        tensors = list(copies)  # what each process holds: the answer must update these, not the list
        returned = fn(copies, given, rate)
        if len(copies) != world or any(c is not t for c, t in zip(copies, tensors)):
            fail("you put other tensors into the list `copies`; each process keeps using its own tensor, so update "
                 "each copy in place (memory_update_ does)")
        want = _updated(memory, batches, list(range(world)), rate)
        if all(torch.equal(c, memory) for c in copies):
            if isinstance(returned, (list, tuple)) and len(returned) == world and all(
                    isinstance(c, torch.Tensor) and torch.allclose(c, want, atol=1e-6) for c in returned):
                fail("you returned updated copies but left the processes' memories as they were: update each copy "
                     "in place (memory_update_ does), since each process keeps using its own tensor")
            fail("no copy changed: update every copy in place with memory_update_")
        if all(torch.allclose(c, want, atol=1e-6) for c in copies):
            continue
        for rank, copy in enumerate(copies):
            if torch.allclose(copy, want, atol=1e-6):
                continue
            if torch.equal(copy, memory):
                fail(f"copy {rank} was not updated: every process applies the gathered batch to its own copy")
            if torch.allclose(copy, _updated(memory, batches, [rank], rate), atol=1e-6):
                fail(f"copy {rank} got only process {rank}'s own batch: then each copy writes only its own slots and "
                     "the copies drift apart; every copy needs every process's batch (all_gather)")
            own_first = [rank] + [r for r in range(world) if r != rank]
            if torch.allclose(copy, _updated(memory, batches, own_first, rate), atol=1e-6):
                fail(f"copy {rank} applied its own batch first: slot 5 is in every process's batch, so the order "
                     "decides which feature it ends with; use rank order on every copy (what all_gather returns), "
                     "or the copies differ")
            if torch.allclose(copy, _updated(memory, batches, list(range(world))[::-1], rate), atol=1e-6):
                fail(f"copy {rank} got the batches in reverse rank order: a slot in several batches ends with a "
                     "different feature than one process would give it; concatenate in rank order")
            fail(f"copy {rank} differs from one process's update on the concatenated batch (rank order) by up to "
                 f"{(copy - want).abs().max().item():.3g}")
    passed("every copy updated with every process's batch in rank order: the copies stay identical")
