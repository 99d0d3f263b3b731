"""ECN's exemplar memory and invariance loss (taught in notebook 09, used by notebook 10).

ECN (Zhong et al., "Invariance Matters: Exemplar Memory for Domain Adaptive Person
Re-identification", CVPR 2019) treats every unlabelled target image as its own class. A
*memory* ``M`` (``num_samples x num_features``) holds one L2-normalised feature per target
training image; it is a non-parametric classifier whose "weights" are those features:

* **logits** ``f @ M.T / beta`` for a batch of target features ``f`` (``beta = 0.05`` is a
  softmax temperature: cosine similarities in [-1, 1] become logits in [-20, 20]);
* **exemplar invariance**: cross-entropy towards the image's own slot, which pushes each
  image away from all others;
* **camera invariance**: the same loss on camera-style-transferred copies of the image
  (done by the data loader, see :mod:`reidlab.data.loaders`), so the slot also attracts
  the image as other cameras would see it;
* **neighbourhood invariance** (from epoch ``knn_epoch`` on; the paper's code uses
  ``epoch > 4``): a soft target that also puts weight ``1/k`` on the ``k`` slots with the
  highest logits (computed from the detached logits), pulling likely same-identity
  images together;
* **memory update** in ``backward``: each batch row becomes
  ``M[i] <- a * M[i] + (1 - a) * f``, then is L2-normalised, with ``a = alpha * epoch``.

Exactly as in the published code (and worth knowing):

* ``a = alpha * epoch`` is **0 at epoch 0**: during the first epoch each slot is simply
  *replaced* by the newest feature; the memory only becomes a moving average later, and
  ``a`` grows to 0.59 at epoch 59.
* The soft target's top-k is taken over *all* slots, so it usually contains the image's
  own slot (its logit is the largest once the memory is trained). That entry is then
  overwritten with 1: the row is **not** renormalised, its weights sum to ``1 + (k-1)/k``
  when the own slot is in the top-k and to 2 when it is not.
* The gradient with respect to the features uses the memory *before* this step's update
  (the reference computes it first and updates afterwards); so does this module.

What differs from the reference, on purpose: the memory is a registered buffer (saved in
``state_dict`` and checkpoints, never touched by an optimizer or weight decay), the autograd
Function is a modern static one, the update is vectorised over the batch (no loop over its
samples; notebook 09 and ``benchmarks/bench_memory.py`` measure the speed-up), and a batch that
contains an index more than once gives exactly what the reference's sequential loop gives.
"""
from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: Smallest norm the memory update divides by (a zero row stays zero instead of becoming NaN).
NORM_EPS = 1e-12

__all__ = [
    "NORM_EPS",
    "InvarianceLoss",
    "memory_update_",
    "memory_update_loop_",
    "smooth_targets",
    "knn_precision",
]


def _occurrence_rank(indices: torch.Tensor) -> torch.Tensor:
    """For each position, how many earlier positions hold the same index (0 for the first).

    ``[5, 3, 5, 5, 3] -> [0, 0, 1, 2, 1]``. Computed with a stable sort, no Python loop.
    """
    n = indices.numel()
    order = torch.sort(indices, stable=True).indices
    sorted_idx = indices[order]
    pos = torch.arange(n, device=indices.device)
    new_group = torch.ones(n, dtype=torch.bool, device=indices.device)
    new_group[1:] = sorted_idx[1:] != sorted_idx[:-1]
    group_start = torch.cummax(torch.where(new_group, pos, torch.zeros_like(pos)), dim=0).values
    rank = torch.empty_like(pos)
    rank[order] = pos - group_start
    return rank


def _scratch(workspace: list[torch.Tensor] | None, slot: int, rows: int, memory: torch.Tensor) -> torch.Tensor:
    """A ``rows x width`` buffer like ``memory``'s rows: ``workspace[slot]`` when it fits, else a new one kept there."""
    if workspace is None:
        return memory.new_empty(rows, memory.shape[1])
    while len(workspace) <= slot:
        workspace.append(memory.new_empty(0, memory.shape[1]))
    buf = workspace[slot]
    if buf.shape[0] < rows or buf.shape[1] != memory.shape[1] or buf.dtype != memory.dtype or buf.device != memory.device:
        buf = workspace[slot] = memory.new_empty(rows, memory.shape[1])
    return buf[:rows]


#: A CPU op on fewer elements than this runs on the calling thread alone; a larger one is split
#: over torch's threads (``at::internal::GRAIN_SIZE``).
_GRAIN_SIZE = 32768


def _rows_per_block(memory: torch.Tensor, batch: int) -> int:
    """How many rows :func:`memory_update_` blends at once.

    The whole batch on a GPU (fewest kernel launches) and on a CPU with one thread. On a CPU
    with several threads, blocks just under torch's grain size (7 rows of 4,096 features), so
    that torch runs every op on this thread. A whole Market batch is 2 MB, and torch would split
    each op over its threads. On two idle cores that saves half a millisecond a step; when other
    processes keep the cores busy, each split op waits for a core, and the update took 5 to 120 ms
    a step instead of 0.4, up to ten times slower than the loop (``benchmarks/README.md``).
    """
    if memory.device.type != "cpu" or torch.get_num_threads() == 1:
        return batch
    return max(1, (_GRAIN_SIZE - 1) // memory.shape[1])


def _update_rows_(memory: torch.Tensor, slots: torch.Tensor, features: torch.Tensor, positions: torch.Tensor,
                  rate: float, workspace: list[torch.Tensor] | None) -> None:
    """``M[s] <- rate * M[s] + (1 - rate) * f``, normalised, for distinct ``slots`` and ``features[positions]``."""
    # A copy of the block's features, which is scaled in place below: the caller's tensor is only read.
    feats = torch.index_select(features, 0, positions, out=_scratch(workspace, 1, positions.numel(), memory))
    # A non-finite feature never enters the memory (its loss is non-finite: the trainer stops).
    # One sum checks the block (a finite sum means every entry is finite); only a block that
    # fails it pays for the per-row check.
    if not math.isfinite(feats.sum().item()):
        finite = torch.isfinite(feats).all(dim=1)
        slots, feats = slots[finite], feats[finite]
    # rate * M[s] + (1 - rate) * f as the published code writes it: two products and a sum
    # (a fused add(..., alpha=) may round differently).
    rows = torch.index_select(memory, 0, slots, out=_scratch(workspace, 0, slots.numel(), memory)).mul_(rate)
    rows.add_(feats.mul_(1.0 - rate))
    rows.div_(rows.norm(dim=1, keepdim=True).clamp_min_(NORM_EPS))  # a zero row stays zero, not 0/0
    memory.index_copy_(0, slots, rows)


@torch.no_grad()
def memory_update_(memory: torch.Tensor, indices: torch.Tensor, features: torch.Tensor, rate: float,
                   *, workspace: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Update ``memory`` in place: ``M[i] <- rate * M[i] + (1 - rate) * f``, then L2-normalise.

    Vectorised over the batch. Indices that occur more than once are applied in batch order,
    one "round" per repetition (round ``r`` updates every row's ``r``-th occurrence at once),
    which is exactly the per-sample loop of the published code
    (:func:`memory_update_loop_`): the second occurrence sees the row the first one wrote.
    A batch of distinct indices takes a single round.

    Two guards the published code lacks, so that one bad batch cannot poison every later
    step: a row whose feature has a NaN or an infinity is left as it was, and the
    normalisation divides by ``max(norm, NORM_EPS)``, so an all-zero feature at epoch 0 writes
    a zero row instead of 0/0 = NaN. For every other row the result is bit-identical to
    :func:`memory_update_loop_`.

    Speed on the CPU (``benchmarks/bench_memory.py``): ``workspace`` is a list in which this
    function keeps its two buffers between calls (:class:`InvarianceLoss` passes its own), since
    fresh 2 MB buffers every step cost more than the update itself; without one they are fresh.
    With several threads, a round goes in blocks of a few rows (see :func:`_rows_per_block`).

    Returns ``memory`` (for chaining).
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(
            f"update rate alpha*epoch = {rate:g} must lie in [0, 1] (it is a moving-average "
            "weight; with alpha=0.01 that holds up to epoch 100)"
        )
    indices = indices.to(memory.device).long().view(-1)
    features = features.detach().to(memory.device, memory.dtype)
    if features.untyped_storage().data_ptr() == memory.untyped_storage().data_ptr():
        features = features.clone()  # rows of the memory itself: read them all before any row is written
    if indices.numel() != features.shape[0]:
        raise ValueError(f"{indices.numel()} indices for {features.shape[0]} features")
    if indices.numel() == 0:
        return memory
    lo, hi = int(indices.min()), int(indices.max())
    if lo < 0 or hi >= memory.shape[0]:
        raise IndexError(f"index {lo if lo < 0 else hi} is outside the memory's {memory.shape[0]} slots "
                         "(an index is the image's position in the target training set)")
    rank = _occurrence_rank(indices)
    block = _rows_per_block(memory, indices.numel())
    for r in range(int(rank.max()) + 1):  # round r: every index's r-th occurrence, in batch order
        positions = torch.nonzero(rank == r).view(-1)
        slots = indices[positions]
        for start in range(0, positions.numel(), block):
            end = start + block
            _update_rows_(memory, slots[start:end], features, positions[start:end], rate, workspace)
    return memory


@torch.no_grad()
def memory_update_loop_(memory: torch.Tensor, indices: torch.Tensor, features: torch.Tensor, rate: float) -> torch.Tensor:
    """The published code's update, one sample at a time (the reference for tests and benchmarks)."""
    for x, y in zip(features.detach().to(memory.dtype), indices.tolist()):
        memory[y] = rate * memory[y] + (1.0 - rate) * x
        memory[y] /= memory[y].norm()
    return memory


def smooth_targets(logits: torch.Tensor, indices: torch.Tensor, k: int, *, random: bool = False) -> torch.Tensor:
    """ECN's neighbourhood-invariance target (the reference's ``smooth_hot``).

    ``1/k`` on each of the ``k`` largest entries of each row of ``logits`` (detached), then
    ``1`` on the image's own slot, which overrides the ``1/k`` when the own slot is among
    the top-k. Rows are not renormalised (see the module docstring).

    ``random=True`` is notebook 10's negative control: ``k`` distinct slots drawn at random
    (torch's global generator) instead of the ``k`` nearest, the same soft target otherwise.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > logits.shape[1]:
        raise ValueError(f"k={k} neighbours requested but the memory has only {logits.shape[1]} slots")
    logits = logits.detach()
    if random:
        top = torch.rand(logits.shape, device=logits.device).topk(k, dim=1).indices
    else:
        # torch.sort(descending, stable) ranks ties by slot order, like the reference's sort.
        top = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :k]
    target = torch.zeros_like(logits)
    target.scatter_(1, top, 1.0 / k)
    target.scatter_(1, indices.view(-1, 1).to(logits.device), 1.0)
    return target


class _ExemplarMemory(torch.autograd.Function):
    """``logits = features @ memory.T``; backward returns the features' gradient, then updates."""

    @staticmethod
    def forward(ctx: Any, features: torch.Tensor, indices: torch.Tensor, memory: torch.Tensor, rate: float,
                gather: Any, workspace: list[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(features, indices)
        ctx.memory, ctx.rate, ctx.gather, ctx.workspace = memory, rate, gather, workspace
        return features.to(memory.dtype) @ memory.t()

    @staticmethod
    def backward(ctx: Any, grad_logits: torch.Tensor):
        if getattr(ctx, "updated", False):
            raise RuntimeError(
                "a second backward through the same InvarianceLoss call (retain_graph=True) would update the "
                "memory twice; compute the loss again for every backward"
            )
        ctx.updated = True
        features, indices = ctx.saved_tensors
        grad_features = None
        if ctx.needs_input_grad[0]:
            # The memory as it was in forward: the update below comes after.
            grad_features = (grad_logits.to(ctx.memory.dtype) @ ctx.memory).to(features.dtype)
        if ctx.gather is not None:  # several processes: every copy of the memory sees every process's batch
            features, indices = ctx.gather(features.detach()), ctx.gather(indices)
        memory_update_(ctx.memory, indices, features, ctx.rate, workspace=ctx.workspace)
        return grad_features, None, None, None, None, None


class InvarianceLoss(nn.Module):
    """ECN's target-domain loss on an exemplar memory (see the module docstring).

    Call ``loss = crit(features, indices, epoch)`` with the batch's features (the model's
    ``tgt_feat``), their indices into the target training set and the 0-based epoch;
    ``loss.backward()`` then updates ``crit.memory``. The memory starts at zeros, as in the
    published code, and is filled by the first epoch's updates (rate 0 there).

    One call, one backward: the memory update lives in the backward pass, so a second call
    while the first call's loss is still waiting for its backward, or a second backward of one
    call (``retain_graph=True``), would update the memory twice. Both raise ``RuntimeError``.
    A call without gradients (``torch.no_grad()``, or features that need none) only computes
    the loss and updates nothing; a loss dropped without backward is forgotten.

    Parameters
    ----------
    num_samples:
        Number of target training images (one memory slot each; Market-1501: 12,936).
    num_features:
        Feature width (ECN: the 4096-d embedding).
    beta:
        Softmax temperature (ECN: 0.05).
    knn:
        Number of neighbours ``k`` of the neighbourhood-invariance target (ECN: 6);
        ``0`` switches the neighbourhood term off (the E and E+C ablations).
    alpha:
        Memory update rate per epoch: the moving-average weight is ``alpha * epoch``
        (ECN: 0.01).
    knn_epoch:
        First epoch that uses the soft target (ECN's code: ``epoch > 4``, i.e. 5).
    random_neighbours:
        Notebook 10's negative control for N: the soft target's ``k`` slots are drawn at random
        instead of being the nearest (:func:`smooth_targets`).

    Notes
    -----
    ``slot_map`` (a buffer, the identity unless changed) maps an image's index to the slot it
    reads and writes. :meth:`shuffle_slots` draws a new random map: notebook 10's negative
    control for E, in which an image is pulled towards whatever another image left in the slot.
    """

    memory: torch.Tensor
    slot_map: torch.Tensor

    def __init__(
        self,
        num_samples: int,
        num_features: int,
        beta: float = 0.05,
        knn: int = 6,
        alpha: float = 0.01,
        knn_epoch: int = 5,
        random_neighbours: bool = False,
    ) -> None:
        super().__init__()
        if num_samples < 1 or num_features < 1:
            raise ValueError(f"num_samples and num_features must be >= 1, got {num_samples}, {num_features}")
        if beta <= 0:
            raise ValueError(f"beta (a temperature) must be > 0, got {beta}")
        if not 0 <= knn <= num_samples:
            raise ValueError(f"knn must be in [0, num_samples={num_samples}], got {knn}")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.num_samples, self.num_features = num_samples, num_features
        self.beta, self.knn, self.alpha, self.knn_epoch = beta, knn, alpha, knn_epoch
        self.random_neighbours = bool(random_neighbours)
        self.register_buffer("memory", torch.zeros(num_samples, num_features))
        self.register_buffer("slot_map", torch.arange(num_samples))
        #: With several processes (notebook 11): a function returning every process's tensor, concatenated
        #: in rank order (:func:`reidlab.distributed.all_gather_cat`), applied to the features and indices
        #: before the memory update, so every process's memory stays identical. ``None``: one process.
        self.gather: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._pending: weakref.ref | None = None  # the last call's backward node, until it has run
        self._workspace: list[torch.Tensor] = []  # the memory update's buffers, reused every step

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_pending"] = None  # a weak reference cannot be pickled; a saved loss has no pending graph
        state["_workspace"] = []  # scratch space, not state
        return state

    def _check_no_pending_update(self) -> None:
        node = self._pending() if self._pending is not None else None
        if node is not None and not getattr(node, "updated", False):
            raise RuntimeError(
                "InvarianceLoss called again before the previous call's loss went through backward(): both "
                "backward passes would update the memory; call backward() once per call (or drop the first loss)"
            )

    def extra_repr(self) -> str:
        return (
            f"num_samples={self.num_samples}, num_features={self.num_features}, beta={self.beta}, "
            f"knn={self.knn}, alpha={self.alpha}, knn_epoch={self.knn_epoch}"
            + (", random_neighbours=True" if self.random_neighbours else "")
        )

    @torch.no_grad()
    def shuffle_slots(self, generator: torch.Generator) -> None:
        """Map images to slots by a new random permutation (notebook 10's control for E; see Notes)."""
        perm = torch.randperm(self.num_samples, generator=generator)
        self.slot_map.copy_(perm.to(self.slot_map.device))

    def uses_knn(self, epoch: int) -> bool:
        """Whether ``epoch`` uses the neighbourhood (soft) target."""
        return self.knn > 0 and epoch >= self.knn_epoch

    def forward(self, features: torch.Tensor, indices: torch.Tensor, epoch: int) -> torch.Tensor:
        if features.dim() != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"features must be (batch, {self.num_features}), got {tuple(features.shape)}")
        indices = torch.as_tensor(indices, device=features.device).long().view(-1)
        if indices.numel() != features.shape[0]:
            raise ValueError(f"{indices.numel()} indices for a batch of {features.shape[0]} features")
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.num_samples):
            raise ValueError(f"indices must lie in [0, {self.num_samples}); got {indices.min().item()}..{indices.max().item()}")
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        rate = self.alpha * epoch
        if rate > 1.0:
            raise ValueError(f"alpha*epoch = {rate:g} > 1: the memory update would not be a moving average")
        self._check_no_pending_update()
        indices = self.slot_map[indices]  # the identity unless shuffle_slots was called
        with torch.autocast(features.device.type, enabled=False):
            raw = _ExemplarMemory.apply(features, indices, self.memory, rate, self.gather, self._workspace)
            self._pending = weakref.ref(raw.grad_fn) if raw.grad_fn is not None else None
            logits = raw / self.beta
            if self.uses_knn(epoch):
                target = smooth_targets(logits, indices, self.knn, random=self.random_neighbours)
                return -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
            return F.cross_entropy(logits, indices)


@torch.no_grad()
def knn_precision(memory: torch.Tensor, true_ids: Any, k: int = 6, *, chunk: int = 2048) -> float:
    """Fraction of each slot's ``k`` nearest slots (cosine, itself excluded) with its true id.

    This is what the neighbourhood term relies on: ECN pulls each image towards its top-k
    memory neighbours, which only helps if they are mostly the same person. The true ids
    are never used for training; the synthetic world (and real datasets' file names) know
    them, so notebooks 09 and 10 can measure this as training proceeds. Rows that are all
    zero (slots never written) count as misses. Any per-slot label works: with the cameras
    as ``true_ids`` it measures how camera-bound the neighbours are (notebook 09).
    """
    memory = memory.float()
    ids = torch.as_tensor(true_ids, device=memory.device).view(-1)
    n = memory.shape[0]
    if ids.numel() != n:
        raise ValueError(f"{ids.numel()} true ids for a memory of {n} slots")
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, {n - 1}], got {k}")
    unit = F.normalize(memory, dim=1)
    hits = 0.0
    for start in range(0, n, chunk):
        sim = unit[start:start + chunk] @ unit.t()
        rows = torch.arange(start, min(start + chunk, n), device=memory.device)
        sim[rows - start, rows] = float("-inf")
        nn_idx = sim.topk(k, dim=1).indices
        same = ids[nn_idx] == ids[rows].view(-1, 1)
        written = memory[rows].abs().sum(dim=1, keepdim=True) > 0
        hits += (same & written).float().sum().item()
    return hits / (n * k)
