"""Re-ID evaluation: features, distances, the Market-1501 protocol (CMC, mAP, mINP).

Notebook 08 (``08_reid_primer``) teaches everything in this module: it computes CMC, AP and
INP by hand for a handful of queries and checks the numbers against :func:`evaluate_rank`.
Notebooks 10 (ECN) and the DSBN / IBN-a notebooks then only call it. (Re-ranking: :mod:`reidlab.rerank`.)

The protocol (Market-1501, as in the dataset's official MATLAB code and in torchreid):

* For each query, the gallery images of **the same identity seen by the same camera** are
  removed before ranking: finding the person again in the camera that just filmed them is
  too easy (often the neighbouring frame of the same tracklet).
* Gallery **junk** images (person id ``-1``: bad detections, body parts) are removed for
  every query. The official code lists them in ``junk_index`` together with the
  same-id-same-camera images. torchreid drops them earlier, when it parses the dataset
  folder (``if pid == -1: continue``); the numbers are the same either way. We drop them
  here, so a gallery parsed with its junk still gives the official numbers.
* **Distractors** (person id ``0``, file names ``0000_...``) stay in the gallery as
  ordinary negatives: they can never be a true match, and they push true matches down.
* A query left without any true match after the removal is **skipped** (not counted as a
  failure), and the number of valid queries is reported.
* **CMC** at rank k: the fraction of valid queries whose first true match is within the
  top k. **INP**: the inverse negative penalty of Ye et al. (AGW, TPAMI 2021):
  ``NP = (R_hard - |G|) / R_hard`` where ``R_hard`` is the rank of the *hardest* (last) true
  match and ``|G|`` the number of true matches, and ``INP = 1 - NP = |G| / R_hard``.
* **AP**, by one of two rules (keyword ``ap``), for true matches i = 1..n at ranks r_i:
  ``"step"`` (default), non-interpolated AP, the mean of the precisions i / r_i (torchreid's
  ``eval_market1501`` and the code derived from it); ``"trapezoid"``, the dataset's official
  MATLAB ``compute_AP`` (Zheng et al., ICCV 2015), the mean of ``(p_before + i / r_i) / 2``
  with ``p_before = (i - 1) / (r_i - 1)`` the precision one rank earlier (1 if ``r_i = 1``).
  Both estimate the area under the precision-recall curve, known only at the ranks: "step"
  holds each match's precision over its recall step, "trapezoid" draws a line to it from the
  point just before. As ``p_before <= i / r_i``, trapezoid AP <= step AP, equal only when all
  true matches come first (one match at rank r > 1: 1/r vs 1/(2r)): compare under one rule.
  ECN's published code, reid/evaluation_metrics/ranking.py, uses the trapezoid, not
  non-interpolated AP: its ``average_precision_score`` is ``precision_recall_curve(y_true,
  y_score)`` then ``auc(recall, precision)`` (scikit-learn's trapezoidal area), with
  ``y_score = -distance`` over the gallery minus same-id-same-camera items (its parser drops
  junk). That curve has a point per distinct distance plus (recall 0, precision 1), so for
  untied distances each match adds ``(p_before + i / r_i) / 2n``: MATLAB's sum, term by term.
  A tie is one point there, while here ties are broken by gallery order (ECN's AP can differ).
* **Ties** (equal distances) are broken by gallery order, as a stable sort does: the item
  first in the gallery list is ranked first. An unstable sort (numpy's default quicksort,
  torch.sort on a GPU) may order ties differently from machine to machine.

:func:`evaluate_rank` gives the same numbers as the per-query loop over a stable argsort that
notebook 08 writes (``tests/references.py``; ``benchmarks/bench_evaluation.py`` times both);
:func:`evaluate` runs a model over query and gallery loaders and gives both AP rules at once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, NamedTuple, Union

import numpy as np
from numpy.typing import ArrayLike
import torch
import torch.nn.functional as F
from torch import nn

from .runtime import module_device

Distances = Union[np.ndarray, torch.Tensor]
"""A ``(num_query, num_gallery)`` distance matrix, numpy or torch."""

__all__ = [
    "AP_RULES",
    "JUNK_PID",
    "DISTRACTOR_PID",
    "Features",
    "RankResult",
    "extract_features",
    "pairwise_distance",
    "evaluate_rank",
    "Evaluation",
    "evaluate",
    "evaluate_features",
    "check_rank_inputs",
    "rank_gallery",
]

JUNK_PID = -1
"""Person id of Market-1501's junk gallery images (``-1_c3s1_000301_02.jpg``): always removed."""
DISTRACTOR_PID = 0
"""Person id of Market-1501's distractors (``0000_...``): kept, as negatives."""
AP_RULES = ("step", "trapezoid")  # the values of evaluate_rank's ``ap`` keyword (module docstring)


# --- features ---------------------------------------------------------------------------------


class Features(NamedTuple):
    """What :func:`extract_features` returns.

    ``features`` is an ``(N, D)`` CPU float32 tensor; ``pids`` and ``camids`` are int64
    numpy arrays of length N, or ``None`` when the loader gives no labels.
    """

    features: torch.Tensor
    pids: np.ndarray | None
    camids: np.ndarray | None


def _select_output(out: Any, output: str | int | None) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        if output is not None:
            raise ValueError(f"output={output!r} was given but the model returned a single tensor in eval mode; leave output=None")
        return out
    if isinstance(out, dict):
        if output is None:
            raise ValueError(
                f"the model returned a dict with keys {sorted(out)}; pass output=<key> to say which is the feature"
            )
        if output not in out:
            raise ValueError(f"output={output!r} is not among the model's outputs {sorted(out)}")
        return out[output]
    if isinstance(out, (tuple, list)):
        if not isinstance(output, int):
            raise ValueError(
                f"the model returned a {type(out).__name__} of {len(out)} items; pass output=<index> to pick the feature"
            )
        return out[output]
    raise TypeError(f"the model returned a {type(out).__name__}; expected a tensor, a dict or a tuple of tensors")


def _labels_to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy().astype(np.int64).reshape(-1)
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} in a batch must be integers (the loader gives {arr.dtype}); put pids and camids at positions 1 and 2")
    return arr.astype(np.int64).reshape(-1)


def extract_features(
    model: nn.Module,
    loader: Iterable,
    device: torch.device | str | None = None,
    *,
    flip: bool = False,
    normalize: bool = False,
    output: str | int | None = None,
    labels: bool | None = None,
) -> Features:
    """Run ``model`` over ``loader`` in eval mode and stack the features (notebook 08).

    Parameters
    ----------
    model:
        Any module. It is put in eval mode (BN uses its running statistics, dropout is off)
        for the pass and then restored to the mode it had, so calling this in the middle
        of training does not leave the model in eval mode.
    loader:
        Yields a tensor of images, or a tuple/list ``(images, pids, camids, ...)``, or
        ``(images, ...)``.
    device:
        Where to run; ``None`` uses the device of the model's first parameter (CPU if none).
    flip:
        Also run the horizontally flipped images and *average* the two features, a common
        test-time augmentation (pedestrians look alike mirrored).
    normalize:
        L2-normalise each feature (after the flip average). ECN evaluates L2-normalised
        ``pool5`` features; with normalised features euclidean and cosine rankings agree.
    output:
        When the model returns a dict (ECN's reference network returns ``{'pool5', 'tgt_feat',
        'logits'}``), the key of the feature to use; the index when it returns a tuple.
        Leave it ``None`` for a model that returns one tensor (``reidlab.models.ReIDNet``
        returns its L2-normalised test feature in eval mode).
    labels:
        ``None`` (default): take ``pids`` and ``camids`` from positions 1 and 2 when a batch
        has at least three items, otherwise return none. ``True``: require them.
        ``False``: ignore anything after the images (e.g. the memory index of a target
        training set, which is not a person id).

    Returns
    -------
    Features
        ``(features, pids, camids)``: an ``(N, D)`` CPU float32 tensor and two int64
        numpy arrays (or ``None``).

    Notes
    -----
    The pass runs under :func:`torch.inference_mode`: no autograd graph is built, which
    saves memory and time. ``no_grad``/``inference_mode`` do **not** switch BN to eval mode
    (notebook 02); that is what ``model.eval()`` here is for.
    """
    device = module_device(model) if device is None else torch.device(device)
    was_training = model.training
    feats: list[torch.Tensor] = []
    pids: list[np.ndarray] = []
    cams: list[np.ndarray] = []
    model.eval()
    try:
        with torch.inference_mode():
            for batch in loader:
                if isinstance(batch, torch.Tensor):
                    images, rest = batch, ()
                elif isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
                    images, rest = batch[0], tuple(batch[1:])
                else:
                    raise TypeError(
                        "each loader item must be an image tensor or a tuple (images, pids, camids, ...) "
                        f"starting with a tensor; got {type(batch).__name__}"
                    )
                use_labels = len(rest) >= 2 if labels is None else labels
                if use_labels and len(rest) < 2:
                    raise ValueError(f"labels=True but a batch has {1 + len(rest)} items; expected (images, pids, camids, ...)")
                if images.dim() != 4:
                    raise ValueError(f"images must be a (B, C, H, W) batch, got shape {tuple(images.shape)}")
                x = images.to(device, non_blocking=True)
                f = _select_output(model(x), output)
                if flip:
                    f = f + _select_output(model(torch.flip(x, dims=[3])), output)
                    f = f / 2
                f = f.float().reshape(f.shape[0], -1)
                if normalize:
                    f = F.normalize(f, dim=1)
                feats.append(f.cpu())
                if use_labels:
                    pids.append(_labels_to_numpy(rest[0], "pids"))
                    cams.append(_labels_to_numpy(rest[1], "camids"))
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("the loader yielded no batches")
    features = torch.cat(feats)
    if pids:
        return Features(features, np.concatenate(pids), np.concatenate(cams))
    return Features(features, None, None)


# --- distances --------------------------------------------------------------------------------


def pairwise_distance(
    qf: torch.Tensor | np.ndarray,
    gf: torch.Tensor | np.ndarray,
    metric: str = "euclidean",
    *,
    squared: bool = True,
    chunk_size: int = 1024,
) -> np.ndarray:
    """Distances between every query and every gallery feature, as an ``(M, N)`` numpy array.

    Parameters
    ----------
    qf, gf:
        ``(M, D)`` and ``(N, D)`` features (tensors or arrays).
    metric:
        ``'euclidean'``: ``|q|^2 + |g|^2 - 2 q.g``, the **squared** euclidean distance by
        default, as torchreid's ``euclidean_squared_distance`` and ECN's evaluator compute it
        (squaring does not change any ranking, so CMC/mAP/mINP are the same; pass
        ``squared=False`` for the plain distance). Small negative values from rounding are
        clipped to 0. ``'cosine'``: ``1 - cos(q, g)``, in ``[0, 2]``.
    chunk_size:
        Query rows computed at once, so the temporaries stay small for a Market-size
        problem (3,368 x 15,913).

    Notes
    -----
    For L2-normalised features ``|q - g|^2 = 2 - 2 cos(q, g) = 2 * cosine distance``, so the
    two metrics rank the gallery identically (``tests/test_evaluation.py``).
    """
    if metric not in ("euclidean", "cosine"):
        raise ValueError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    q = torch.as_tensor(qf).detach()
    g = torch.as_tensor(gf).detach()
    if q.dim() != 2 or g.dim() != 2:
        raise ValueError(f"features must be 2-D (num, dim); got query {tuple(q.shape)} and gallery {tuple(g.shape)}")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query features have dimension {q.shape[1]} but gallery features {g.shape[1]}")
    if not q.is_floating_point():
        q = q.float()
    if not g.is_floating_point():
        g = g.float()
    dtype = torch.promote_types(q.dtype, g.dtype)
    q, g = q.to(dtype), g.to(dtype)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out = torch.empty((q.shape[0], g.shape[0]), dtype=dtype, device=q.device)
    if metric == "cosine":
        gn = F.normalize(g, dim=1)
        for s in range(0, q.shape[0], chunk_size):
            out[s : s + chunk_size] = 1 - F.normalize(q[s : s + chunk_size], dim=1) @ gn.T
    else:
        g2 = (g * g).sum(1)
        for s in range(0, q.shape[0], chunk_size):
            qc = q[s : s + chunk_size]
            d = (qc * qc).sum(1, keepdim=True) + g2[None, :] - 2 * (qc @ g.T)
            d.clamp_(min=0)
            out[s : s + chunk_size] = d if squared else d.sqrt()
    return out.cpu().numpy()


# --- the Market-1501 protocol -----------------------------------------------------------------


@dataclass(frozen=True)
class RankResult:
    """CMC, mAP and mINP of one evaluation (all fractions in [0, 1]).

    Attributes
    ----------
    cmc:
        ``cmc[k-1]`` is the fraction of valid queries whose first true match is within the
        top k (length ``max_rank``; float64).
    mAP, mINP:
        Means of ``ap`` and ``inp`` over the valid queries.
    num_valid_queries:
        Queries that kept at least one true match after the exclusion.
    num_queries:
        All queries, valid or skipped.
    ap, inp, ap_rule:
        Per-query AP and INP (``nan`` for a skipped query), e.g. to find the worst queries,
        and the rule AP was computed by, ``"step"`` or ``"trapezoid"`` (module docstring).
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int
    num_queries: int
    ap: np.ndarray
    inp: np.ndarray
    ap_rule: str = "step"

    @property
    def rank1(self) -> float:
        """CMC at rank 1."""
        return float(self.cmc[0])

    @property
    def num_skipped_queries(self) -> int:
        """Queries without any true match after the exclusion (not counted in the means)."""
        return self.num_queries - self.num_valid_queries

    def summary(self, ranks: Iterable[int] = (1, 5, 10)) -> str:
        """One line, in percent: ``mAP 41.2% (step AP) | mINP 9.8% | R1 66.0% | ... (3368/3368 queries)``."""
        parts = [f"mAP {100 * self.mAP:.1f}% ({self.ap_rule} AP)", f"mINP {100 * self.mINP:.1f}%"]
        parts += [f"R{k} {100 * self.cmc[k - 1]:.1f}%" for k in ranks if k <= len(self.cmc)]
        return " | ".join(parts) + f" ({self.num_valid_queries}/{self.num_queries} queries)"


def _as_1d_int(x: Any, name: str, n: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries but the distance matrix implies {n}")
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(arr == np.round(arr)):
            pass  # float labels holding whole numbers are accepted
        elif arr.size:
            raise ValueError(f"{name} must hold integer ids, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def check_rank_inputs(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=1):
    """The inputs of :func:`evaluate_rank` as checked numpy arrays: ``(distmat, q_pids, g_pids, q_camids,
    g_camids, max_rank)``; ``ValueError`` naming the first bad one (shape, NaN, length, type)."""
    if isinstance(distmat, torch.Tensor):
        distmat = distmat.detach().cpu().numpy()
    d = np.asarray(distmat)
    if d.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {d.shape}")
    if d.dtype.kind != "f":
        d = d.astype(np.float64)
    nq, ng = d.shape
    if nq == 0 or ng == 0:
        raise ValueError(f"distmat is empty (shape {d.shape}): need at least one query and one gallery item")
    if not np.all(np.isfinite(d)):
        raise ValueError("distmat contains NaN or infinite distances")
    # past the gallery the curve is flat: a longer one would only fill memory (10**9 ranks: 8 GB)
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or not 1 <= max_rank <= max(ng, 50):
        raise ValueError(f"max_rank must be an integer from 1 to the gallery's size ({ng}) or 50, got {max_rank!r}")
    qp = _as_1d_int(q_pids, "q_pids", nq)
    gp = _as_1d_int(g_pids, "g_pids", ng)
    qc = _as_1d_int(q_camids, "q_camids", nq)
    gc = _as_1d_int(g_camids, "g_camids", ng)
    return d, qp, gp, qc, gc, int(max_rank)


def _excluded(q_pid, q_camid, g_pids, g_camids) -> np.ndarray:
    """Gallery items the protocol removes for a query: same id and same camera, and junk.

    Works for one query (scalars) or a chunk (``(Q, 1)`` columns, broadcasting to ``(Q, G)``).
    """
    return ((g_pids == q_pid) & (g_camids == q_camid)) | (g_pids == JUNK_PID)


def _check_ap_rule(ap: Any) -> str:
    if not (isinstance(ap, str) and ap in AP_RULES):
        raise ValueError(f"ap must be 'step' or 'trapezoid', got {ap!r}")
    return ap


def _finish(first_rank, ap, inp, max_rank, ap_rule) -> RankResult:
    valid = ~np.isnan(ap)
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(
            "no query has a true match left in the gallery after removing same-id-same-camera and "
            "junk items; check that query and gallery identities overlap and that camera ids differ"
        )
    # first_rank is 1-based; count how many valid queries have their first match at each rank
    counts = np.bincount(np.minimum(first_rank[valid], max_rank + 1), minlength=max_rank + 2)[1 : max_rank + 1]
    cmc = np.cumsum(counts) / num_valid
    mAP = math.fsum(ap[valid]) / num_valid
    mINP = math.fsum(inp[valid]) / num_valid
    return RankResult(cmc, mAP, mINP, num_valid, len(ap), ap, inp, ap_rule)


def _ap(hit_ranks: np.ndarray, rule: str) -> float:
    """AP by ``rule`` (module docstring) from the sorted 1-based ranks of a query's true matches;
    ``math.fsum`` adds exactly rounded, so the result does not depend on summation order."""
    hits = np.arange(1, len(hit_ranks) + 1)
    precision = hits / hit_ranks
    if rule == "trapezoid":
        before = np.where(hit_ranks > 1, (hits - 1) / np.maximum(hit_ranks - 1, 1), 1.0)
        precision = (before + precision) / 2
    return math.fsum(precision) / len(hit_ranks)


def _hit_ranks(d: np.ndarray, qp: np.ndarray, gp: np.ndarray, qc: np.ndarray, gc: np.ndarray,
               chunk_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(query index, sorted 1-based ranks of its true matches)`` for each query that has one.

    CMC, AP and INP only need the rank of each *true match* in the kept list: one plus the
    number of kept items placed before it. So for a chunk of queries we sort the kept distances
    (values only, excluded items set to +inf), much cheaper than a stable argsort of indices,
    and find each true match's rank by binary search (``searchsorted``). A kept item at exactly
    the same distance comes first when it comes first in the gallery (the stable-sort rule);
    that rare case is counted exactly.
    """
    for s in range(0, d.shape[0], chunk_size):
        D = d[s : s + chunk_size]
        excluded = _excluded(qp[s : s + chunk_size, None], qc[s : s + chunk_size, None], gp[None, :], gc[None, :])
        positive = (gp[None, :] == qp[s : s + chunk_size, None]) & ~excluded
        kept_sorted = np.where(excluded, np.inf, D)
        kept_sorted.sort(axis=1)
        rows, cols = np.nonzero(positive)  # row-major: the true matches of each row, in gallery order
        bounds = np.searchsorted(rows, np.arange(D.shape[0] + 1))
        for r in range(D.shape[0]):
            pcols = cols[bounds[r] : bounds[r + 1]]
            if pcols.size == 0:
                continue  # skipped query
            dp = D[r, pcols]
            before = np.searchsorted(kept_sorted[r], dp, side="left")  # kept items strictly closer
            ties = np.searchsorted(kept_sorted[r], dp, side="right") - before  # kept items at the same distance
            hit_ranks = before + 1
            for t in np.flatnonzero(ties > 1):  # tied with another kept item: gallery order decides
                c = pcols[t]
                hit_ranks[t] += np.count_nonzero((D[r, :c] == dp[t]) & ~excluded[r, :c])
            hit_ranks.sort()
            yield s + r, hit_ranks


def _rank_results(distmat: Distances, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
                  g_camids: ArrayLike, max_rank: int, rules: tuple[str, ...], chunk_size: int) -> dict[str, RankResult]:
    """One :class:`RankResult` per AP rule in ``rules``, all from one ranking of the gallery."""
    d, qp, gp, qc, gc, max_rank = check_rank_inputs(distmat, q_pids, g_pids, q_camids, g_camids, max_rank)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    first_rank, nq = np.zeros(d.shape[0], dtype=np.int64), d.shape[0]
    aps = {rule: np.full(nq, np.nan) for rule in rules}
    inp = np.full(nq, np.nan)
    for i, hit_ranks in _hit_ranks(d, qp, gp, qc, gc, chunk_size):
        first_rank[i] = hit_ranks[0]
        for rule in rules:
            aps[rule][i] = _ap(hit_ranks, rule)
        inp[i] = len(hit_ranks) / float(hit_ranks[-1])  # INP = |G| / R_hard
    return {rule: _finish(first_rank, aps[rule], inp.copy(), max_rank, rule) for rule in rules}


def evaluate_rank(
    distmat: Distances,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    *,
    ap: str = "step",
    chunk_size: int = 128,
) -> RankResult:
    """CMC, mAP and mINP under the Market-1501 protocol (see the module docstring).

    Parameters
    ----------
    distmat:
        ``(num_query, num_gallery)`` distances (numpy or torch), smaller = more similar.
    q_pids, g_pids, q_camids, g_camids:
        Integer person and camera ids. Gallery pid ``-1`` is junk (removed), pid ``0``
        a distractor (kept as a negative).
    max_rank:
        Length of the CMC curve. Unlike torchreid, which shortens the curve when the gallery
        is smaller than ``max_rank``, the curve always has ``max_rank`` entries: past the end
        of a query's ranked list its first true match has already been counted.
    ap:
        ``"step"``: non-interpolated AP, as torchreid. ``"trapezoid"``: Market-1501's MATLAB
        ``compute_AP``, and ECN's (module docstring); never higher. Compare like with like.
        :func:`evaluate` gives both from one ranking.
    chunk_size:
        Queries processed at once (memory ~ ``chunk_size x num_gallery x 10`` bytes).

    Returns
    -------
    RankResult
        ``.cmc``, ``.mAP``, ``.mINP``, ``.num_valid_queries``, per-query ``.ap``/``.inp``, ``.ap_rule``.

    Raises
    ------
    ValueError
        For inconsistent shapes, non-finite distances, non-integer ids, an unknown ``ap``
        rule, or when no query has a true match left.
    """
    ap = _check_ap_rule(ap)
    return _rank_results(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, (ap,), chunk_size)[ap]


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` returns: both AP rules' results (they share CMC and mINP) from one ranking
    of ``distances`` (squared euclidean, query x gallery), and the ``query`` and ``gallery`` features."""

    step: RankResult
    trapezoid: RankResult
    distances: np.ndarray
    query: Features
    gallery: Features


def evaluate_features(query: Features, gallery: Features, max_rank: int = 50, *, chunk_size: int = 128) -> Evaluation:
    """:func:`evaluate` from features already extracted (e.g. two slices of one forward pass)."""
    if query.pids is None or query.camids is None or gallery.pids is None or gallery.camids is None:
        raise ValueError("the features have no person/camera ids: extract them with labels=True")
    dist = pairwise_distance(query.features, gallery.features)
    res = _rank_results(dist, query.pids, gallery.pids, query.camids, gallery.camids, max_rank, AP_RULES, chunk_size)
    return Evaluation(res["step"], res["trapezoid"], dist, query, gallery)


def evaluate(
    model: nn.Module,
    query: Iterable,
    gallery: Iterable,
    device: torch.device | str | None = None,
    *,
    max_rank: int = 50,
) -> Evaluation:
    """Features, distances and the Market protocol under both AP rules, from loaders of
    ``(images, pids, camids, ...)``. The gallery is ranked once: each rule needs only the ranks
    of the true matches, so the second rule costs almost nothing."""
    q = extract_features(model, query, device, labels=True)
    g = extract_features(model, gallery, device, labels=True)
    return evaluate_features(q, g, max_rank)


def rank_gallery(
    dist_row: ArrayLike | torch.Tensor,
    q_pid: int,
    q_camid: int,
    g_pids: ArrayLike,
    g_camids: ArrayLike,
    *,
    k: int | None = None,
    keep_excluded: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The ranked gallery list of one query under the Market protocol (used by the ranked-list pictures).

    Parameters
    ----------
    dist_row:
        Distances from the query to every gallery item.
    k:
        Return only the first ``k`` items (all if ``None``).
    keep_excluded:
        Keep same-id-same-camera and junk items in the list, flagged ``-1``, to *show* what
        the protocol removes (notebook 08); by default they are dropped as in evaluation.

    Returns
    -------
    indices, flags
        Gallery indices in rank order (stable: ties keep gallery order) and, for each, ``1``
        for a true match, ``0`` for a false match and ``-1`` for an excluded item.
    """
    row = np.asarray(dist_row.detach().cpu() if isinstance(dist_row, torch.Tensor) else dist_row)
    if row.ndim != 1:
        raise ValueError(f"dist_row must be 1-D, got shape {row.shape}")
    g_pids = _as_1d_int(g_pids, "g_pids", row.shape[0])
    g_camids = _as_1d_int(g_camids, "g_camids", row.shape[0])
    order = np.argsort(row, kind="stable")
    excl = _excluded(q_pid, q_camid, g_pids[order], g_camids[order])
    flags = np.where(excl, -1, (g_pids[order] == q_pid).astype(np.int64))
    if not keep_excluded:
        order, flags = order[~excl], flags[~excl]
    if k is not None:
        order, flags = order[:k], flags[:k]
    return order, flags
