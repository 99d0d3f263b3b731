"""ECN's test: the Market protocol on a model's test feature, and on its embedding from the same pass.

:func:`evaluate_model` is what notebooks 08-10 call; :func:`evaluate_test` is the same with the
distance matrix the metrics come from, which :func:`reidlab.ecn.train_ecn` returns so that a caller
can look at rank lists without extracting the features again. The protocol itself (features,
distances, CMC, mAP, mINP) is :mod:`reidlab.evaluation`'s (notebook 08).
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..evaluation import Evaluation, evaluate_features, extract_features
from ..models import ReIDNet

__all__ = ["evaluate_model", "evaluate_test"]


def evaluate_model(
    model: nn.Module,
    query_loader: Iterable,
    gallery_loader: Iterable,
    *,
    device: str | torch.device | None = None,
    amp: bool = False,
) -> dict[str, float]:
    """Market-protocol rank-1/5/10, mAP and mINP (fractions) of ``model`` on a query/gallery pair.

    ``model`` returns its test feature in eval mode (ReIDNet: L2-normalised pool5, as ECN
    tests); distances are euclidean (:mod:`reidlab.evaluation`, notebook 08). ``mAP`` is
    non-interpolated (torchreid's rule); ``mAP_trapezoid`` is Market-1501's official rule,
    which ECN's evaluator computes too: the paper's numbers compare with that one. For a
    :class:`~reidlab.models.ReIDNet` with an embedding (``num_features > 0``) the same pass also
    scores the L2-normalised embedding (after its BN), under ``embed_rank1``, ``embed_mAP`` and
    ``embed_mAP_trapezoid``: ECN's target losses act on the embedding first, pool5 moves only
    through layer3-4 (notebook 10).
    """
    return evaluate_test(model, query_loader, gallery_loader, device, amp)[0]


class _TestFeatures(nn.Module):
    """A ReIDNet's L2-normalised pool5 and embedding side by side, from one forward pass."""

    def __init__(self, model: ReIDNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        assert m.feat is not None and m.feat_bn is not None  # evaluate_test wraps only a ReIDNet with an embedding
        pool5 = m.base(x.contiguous(memory_format=torch.channels_last) if m.channels_last else x)
        embed = m.feat_bn(m.feat(pool5))
        return torch.cat([F.normalize(pool5, dim=1), F.normalize(embed, dim=1)], dim=1)


def _metrics(ev: Evaluation, prefix: str = "") -> dict[str, float]:
    step, trapezoid = ev.step, ev.trapezoid
    if prefix:
        return {f"{prefix}rank1": float(step.cmc[0]), f"{prefix}mAP": float(step.mAP),
                f"{prefix}mAP_trapezoid": float(trapezoid.mAP)}
    return {"rank1": float(step.cmc[0]), "rank5": float(step.cmc[4]), "rank10": float(step.cmc[9]),
            "mAP": float(step.mAP), "mAP_trapezoid": float(trapezoid.mAP), "mINP": float(step.mINP)}


def evaluate_test(model: nn.Module, query_loader: Iterable, gallery_loader: Iterable,
                  device: str | torch.device | None = None, amp: bool = False) -> tuple[dict[str, float], np.ndarray]:
    """:func:`evaluate_model`'s metrics and the distance matrix they come from (the test feature's)."""
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    net: nn.Module = model
    if isinstance(model, ReIDNet) and model.feat is not None and model.test_feature == "pool5":
        net = _TestFeatures(model)  # ECN's pool5, and the embedding from the same pass
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp and dev.type == "cuda"):
        q = extract_features(net, query_loader, dev, labels=True)
        g = extract_features(net, gallery_loader, dev, labels=True)
    if not isinstance(net, _TestFeatures):
        ev = evaluate_features(q, g, max_rank=10)
        return _metrics(ev), ev.distances
    d = q.features.shape[1] - net.model.num_features  # pool5's width
    ev = evaluate_features(q._replace(features=q.features[:, :d]), g._replace(features=g.features[:, :d]), max_rank=10)
    embed = evaluate_features(q._replace(features=q.features[:, d:]), g._replace(features=g.features[:, d:]), max_rank=10)
    return {**_metrics(ev), **_metrics(embed, prefix="embed_")}, ev.distances
