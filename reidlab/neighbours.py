"""What a feature space's nearest neighbours are made of: the same person, or the same camera?

ECN's neighbourhood invariance (the kNN target) pulls each target image towards its k nearest
neighbours in the exemplar memory, trusting that they show the same person. Its camera
invariance exists because they often do not: features of an untrained or a source-trained
network group images *by camera* (background, light, colour cast) before they group them by
person. :func:`neighbour_shares` measures both shares for a set of labelled features, beside
what chance would give, so notebooks 08 and 10 can say how camera-bound a network is (the
labels are only used to measure, never to train).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["NeighbourShares", "neighbour_shares"]


@dataclass(frozen=True)
class NeighbourShares:
    """Shares among each image's ``k`` nearest other images, averaged over images.

    ``same_person``: the same identity (any camera). ``same_camera_other``: another identity
    seen by the *same* camera (the confusion camera invariance targets). ``chance_*``: the
    expected shares for neighbours drawn at random from the other images.
    """

    k: int
    same_person: float
    same_camera_other: float
    chance_same_person: float
    chance_same_camera_other: float

    @property
    def camera_lift(self) -> float:
        """``same_camera_other / chance_same_camera_other``: 1 = camera-blind, above 1 = camera-bound."""
        return self.same_camera_other / self.chance_same_camera_other if self.chance_same_camera_other else float("nan")

    def summary(self) -> str:
        return (f"k={self.k}: same person {100 * self.same_person:.1f}% (chance {100 * self.chance_same_person:.1f}%), "
                f"another person of the same camera {100 * self.same_camera_other:.1f}% "
                f"(chance {100 * self.chance_same_camera_other:.1f}%, x{self.camera_lift:.1f})")


def neighbour_shares(features: torch.Tensor, pids, camids, k: int = 6) -> NeighbourShares:
    """Measure, for each row of ``features``, who its ``k`` nearest other rows are.

    Distances are euclidean on L2-normalised rows (cosine ranking, as the memory's kNN uses
    inner products of unit vectors). ``pids`` and ``camids`` are one label per row.
    """
    x = torch.nn.functional.normalize(torch.as_tensor(features, dtype=torch.float32), dim=1)
    pid, cam = (torch.as_tensor(np.asarray(a), dtype=torch.long) for a in (pids, camids))
    n = x.shape[0]
    if not (pid.shape == cam.shape == (n,)):
        raise ValueError(f"need one pid and one camid per feature row: {n} rows, {tuple(pid.shape)} pids, "
                         f"{tuple(cam.shape)} camids")
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, {n - 1}] for {n} features, got {k}")
    sim = x @ x.T
    sim.fill_diagonal_(-float("inf"))  # never your own neighbour
    nn_idx = sim.topk(k, dim=1).indices
    same_pid = pid[nn_idx] == pid[:, None]
    same_cam_other = (cam[nn_idx] == cam[:, None]) & ~same_pid
    # chance: a neighbour drawn uniformly from the n - 1 other images
    pid_eq = pid[:, None] == pid[None, :]
    cam_eq = cam[:, None] == cam[None, :]
    others = n - 1
    chance_pid = ((pid_eq.sum(1) - 1).double() / others).mean()
    chance_cam = ((cam_eq & ~pid_eq).sum(1).double() / others).mean()
    return NeighbourShares(
        k=k, same_person=float(same_pid.double().mean()), same_camera_other=float(same_cam_other.double().mean()),
        chance_same_person=float(chance_pid), chance_same_camera_other=float(chance_cam),
    )
