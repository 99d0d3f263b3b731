"""A tiny, fast, deterministic image-classification world for the BN notebooks (02-05).

The BN notebooks need a network whose accuracy *moves* when BN is misused (evaluated in
train mode, with stale statistics, on a shifted domain), and they need it in seconds on a
CPU. The re-ID world of notebooks 06-10 is far too big for that, so this module draws
16x16 images of oriented stripe patterns:

* the **class** is the pattern's orientation (horizontal, vertical, diagonal, ...), drawn
  with a random frequency, phase and colour, plus Gaussian noise, so the network has to
  learn spatial filters and cannot read the class off a channel mean;
* a **style** change ``x -> gain * x + shift`` per colour channel changes every BN layer's
  statistics but not the class: the stand-in for a domain shift (another camera, another
  dataset) used to teach BN recalibration and AdaBN in notebook 03.

The task is deliberately **not** solved perfectly. A network at 100 % accuracy hides what BN
misuse costs (an evaluation that is "batch-invariant" or a recalibration that "costs nothing"
holds trivially at the ceiling), so the pixel noise is set by one independent target: the
standard training (:func:`standard_net`, ``ci`` sizes) reaches an eval-mode test accuracy of
about 0.9 (0.907 on average over the training seeds 0-4, range 0.889-0.928; seed 0: 0.908).
The notebooks then compare logits as well as accuracies.

Notebook 02 introduces :class:`SmallBNNet`, :func:`train_classifier`, :func:`accuracy` and
:func:`standard_net` (the network that notebooks 03 and 04 reuse); notebooks 01 and 03 compare
runs over several seeds with :func:`mean_ci95`.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Union

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from reidlab.runtime import module_device

__all__ = [
    "DEFAULT_NOISE", "PATTERNS", "STANDARD_TRAINING", "SmallBNNet", "accuracy", "make_toy_images", "mean_ci95",
    "standard_net", "train_classifier",
]

#: The class patterns, in label order: class ``k`` is ``PATTERNS[k]``.
PATTERNS: tuple[str, ...] = ("horizontal", "vertical", "diagonal", "anti-diagonal", "checker", "rings")

#: Standard deviation of the pixel noise (the pattern's amplitude is 0.5 to 1). Chosen so that the
#: standard training reaches about 0.9 eval accuracy, not 1.0 (module docstring); ``tests/test_toy.py``
#: checks that it stays off the ceiling.
DEFAULT_NOISE = 3.1

#: Two-sided 95 % quantiles of Student's t by degrees of freedom (1 to 30), for :func:`mean_ci95`.
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)

#: Training-set size and epochs of the standard training of notebooks 02-04, per profile.
STANDARD_TRAINING: dict[str, tuple[int, int]] = {"ci": (2000, 3), "laptop": (4000, 4), "gpu": (4000, 4)}

Style = Union[float, Sequence[float], torch.Tensor]


def _per_channel(value: Style, name: str) -> torch.Tensor:
    """A style argument as a (3, 1, 1) tensor (a scalar applies to every channel)."""
    t = torch.as_tensor(value, dtype=torch.float32)
    if t.dim() == 0:
        t = t.repeat(3)
    if t.shape != (3,):
        raise ValueError(f"{name} must be a number or 3 numbers (one per colour channel), got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    return t.view(3, 1, 1)


def make_toy_images(
    n: int,
    *,
    num_classes: int = 4,
    size: int = 16,
    shift: Style = 0.0,
    gain: Style = 1.0,
    noise: float = DEFAULT_NOISE,
    seed: int = 0,
) -> TensorDataset:
    """Draw ``n`` labelled images of oriented stripes, the same ones for the same ``seed``.

    Parameters
    ----------
    n:
        Number of images. Labels are balanced (``arange(n) % num_classes``) and shuffled.
    num_classes:
        2 to 6; class ``k`` is the pattern ``PATTERNS[k]``.
    size:
        Height and width in pixels (>= 8).
    shift, gain:
        The domain's style, applied last as ``gain * x + shift`` per colour channel (a
        number or three numbers). It changes the per-channel statistics every BN layer
        sees without changing the class, so a network trained on ``shift=0, gain=1`` and
        evaluated on another style shows what stale BN statistics cost (notebook 03).
        The same ``seed`` with another style gives the *same* images, restyled.
    noise:
        Standard deviation of the pixel noise (the pattern's amplitude is 0.5 to 1); the
        default :data:`DEFAULT_NOISE` keeps the standard training near 0.9 accuracy.
    seed:
        Seed of a private ``torch.Generator``: the global random state is neither used
        nor changed.

    Returns
    -------
    TensorDataset
        ``(images, labels)``: float32 ``(n, 3, size, size)`` and int64 ``(n,)``.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(num_classes, int) or not 2 <= num_classes <= len(PATTERNS):
        raise ValueError(f"num_classes must be an int from 2 to {len(PATTERNS)}, got {num_classes!r}")
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8, got {size!r}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    shift_t = _per_channel(shift, "shift")
    gain_t = _per_channel(gain, "gain")
    if (gain_t == 0).any():
        raise ValueError("gain must be non-zero in every channel (a zero gain erases the image)")

    g = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]
    freq = 1.5 + 1.5 * torch.rand(n, generator=g)  # cycles per image
    phase = 2 * math.pi * torch.rand(n, generator=g)
    colour = 0.5 + 0.5 * torch.rand(n, 3, generator=g)  # nuisance: the class is not a colour
    pixel_noise = noise * torch.randn(n, 3, size, size, generator=g)

    coords = torch.arange(size, dtype=torch.float32) / size
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    centre = (size - 1) / (2 * size)
    radius = torch.sqrt((yy - centre) ** 2 + (xx - centre) ** 2)
    # Each pattern as a function of (frequency, phase), broadcast over images.
    w = (2 * math.pi * freq).view(n, 1, 1)
    p = phase.view(n, 1, 1)
    patterns = torch.stack(
        [
            torch.sin(w * yy + p),
            torch.sin(w * xx + p),
            torch.sin(w * (xx + yy) / math.sqrt(2) + p),
            torch.sin(w * (xx - yy) / math.sqrt(2) + p),
            torch.sin(w * xx + p) * torch.sin(w * yy + p),
            torch.sin(2 * w * radius + p),
        ][:num_classes],
        dim=1,
    )  # (n, num_classes, size, size)
    chosen = patterns[torch.arange(n), labels]  # (n, size, size)
    images = colour.view(n, 3, 1, 1) * chosen.unsqueeze(1) + pixel_noise
    images = gain_t * images + shift_t
    return TensorDataset(images.contiguous(), labels)


class SmallBNNet(nn.Module):
    """Three conv-BN-ReLU blocks, global average pooling and a linear classifier.

    Small enough to train on the toy images in a few seconds on a CPU, with four BN
    layers whose behaviour the notebooks change (``train()``/``eval()``, momentum,
    recalibration, freezing).

    Parameters
    ----------
    num_classes:
        Output size of the classifier.
    width:
        Channels of the first block (the next two have ``2 * width``).
    head_bn:
        Put a ``BatchNorm1d`` between pooling and the classifier (a bnneck-like head).
    dropout:
        Dropout probability before the classifier (0: no Dropout layer at all).
    seed:
        If given, the weights are initialised from this seed without touching the global
        random state, so two nets built with the same seed are identical.
    """

    def __init__(
        self,
        num_classes: int = 4,
        width: int = 16,
        *,
        head_bn: bool = False,
        dropout: float = 0.0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive int, got {width!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if seed is None:
            self._build(num_classes, width, head_bn, dropout)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self._build(num_classes, width, head_bn, dropout)

    def _build(self, num_classes: int, width: int, head_bn: bool, dropout: float) -> None:
        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(
            block(3, width),
            nn.MaxPool2d(2),
            block(width, 2 * width),
            nn.MaxPool2d(2),
            block(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        head: list[nn.Module] = []
        if head_bn:
            head.append(nn.BatchNorm1d(2 * width))
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(2 * width, num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_classifier(
    model: nn.Module,
    dataset: Dataset,
    *,
    epochs: int,
    batch_size: int = 64,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    anneal: bool = True,
    seed: int = 0,
) -> list[float]:
    """Train ``model`` with SGD and cross-entropy; return the loss of every step.

    The model is put in train mode (BN normalises with batch statistics and updates its
    running statistics) and left in train mode: choosing ``eval()`` afterwards is the
    caller's job, which is the point of notebook 02. Batches are shuffled by a private
    ``torch.Generator`` seeded with ``seed`` and the last incomplete batch is dropped (a
    batch of one cannot be normalised in train mode), so with the same initial weights
    the run is deterministic on the CPU.

    Parameters
    ----------
    model:
        Any classifier returning logits; its device is where the batches are sent.
    dataset:
        Yields ``(image, label)`` pairs, e.g. :func:`make_toy_images`.
    epochs:
        Passes over the data (>= 1).
    batch_size:
        >= 2, and no larger than the dataset.
    lr, momentum, weight_decay:
        SGD settings; ``lr`` is the learning rate of the first step.
    anneal:
        Let the learning rate fall linearly from ``lr`` to 0 over the run, as real trainings
        anneal theirs. The weights then change slowly at the end, so the running statistics
        (an average over the last few tens of batches, notebook 03) describe the final
        network. With ``anneal=False`` the run stops at full speed and the statistics lag
        behind the weights (notebook 03 measures what that costs).
    seed:
        Seed of the shuffling generator.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size must be an int >= 2 (BN cannot normalise a batch of one), got {batch_size!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if len(dataset) < batch_size:  # type: ignore[arg-type]
        raise ValueError(f"the dataset has {len(dataset)} items, fewer than one batch of {batch_size}")  # type: ignore[arg-type]
    device = module_device(model)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(seed)
    )
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    losses: list[float] = []
    total = epochs * len(loader)
    for _ in range(epochs):
        for x, y in loader:
            if anneal:
                for group in opt.param_groups:
                    group["lr"] = lr * (1 - len(losses) / total)
            x, y = x.to(device), y.to(device)
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return losses


def accuracy(
    model: nn.Module,
    data: Dataset | Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    batch_size: int = 256,
) -> float:
    """Fraction of correctly classified images, **in whatever mode the model is in**.

    This function deliberately does not call ``model.eval()``: the caller chooses. In eval
    mode BN uses its running statistics and the result does not depend on how the data
    are batched; in train mode every batch is normalised with its own statistics *and*
    the running statistics are overwritten as a side effect (notebook 02 measures both).
    Gradients are off (``torch.no_grad()``), which does not change the mode.

    Parameters
    ----------
    model:
        A classifier returning logits.
    data:
        A dataset of ``(image, label)`` pairs, batched in its own order with
        ``batch_size``; or any iterable of ``(images, labels)`` batches, e.g. a
        ``DataLoader`` (then ``batch_size`` is not used).
    batch_size:
        Batch size for a dataset (>= 1).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if isinstance(data, Dataset):
        if len(data) == 0:  # type: ignore[arg-type]
            raise ValueError("cannot measure accuracy on an empty dataset")
        batches: Iterable = DataLoader(data, batch_size=batch_size, shuffle=False)
    else:
        batches = data
    device = module_device(model)
    correct = total = 0
    with torch.no_grad():
        for x, y in batches:
            pred = model(x.to(device)).argmax(dim=1)
            correct += (pred == y.to(device)).sum().item()
            total += y.numel()
    if total == 0:
        raise ValueError("no batches to measure accuracy on")
    return correct / total


def standard_net(profile: str = "ci", *, seed: int = 0) -> tuple[SmallBNNet, list[float], TensorDataset, TensorDataset]:
    """The network of notebooks 02-04: ``SmallBNNet(seed=seed)`` trained the standard way.

    Draws the training set (``make_toy_images(n, seed=0)``, ``n`` from
    :data:`STANDARD_TRAINING`) and the test set (1000 images, ``seed=1``), and trains with
    :func:`train_classifier` (batch 64, lr 0.05 annealed to 0, the profile's epochs, shuffling
    seed ``seed``).
    The network is left in **train** mode, like :func:`train_classifier` leaves it. Notebook 02
    writes these steps out; 03 and 04 call this function so that all three study the same
    network.

    Parameters
    ----------
    profile:
        ``"ci"``, ``"laptop"`` or ``"gpu"`` (sizes only: the network runs on the CPU).
    seed:
        Seed of the initial weights and of the shuffling.

    Returns
    -------
    tuple
        ``(net, losses, train_set, test_set)``; ``losses`` has one entry per SGD step.
    """
    if profile not in STANDARD_TRAINING:
        raise ValueError(f"profile must be one of {sorted(STANDARD_TRAINING)}, got {profile!r}")
    n_train, epochs = STANDARD_TRAINING[profile]
    train_set = make_toy_images(n_train, seed=0)
    test_set = make_toy_images(1000, seed=1)
    net = SmallBNNet(seed=seed)
    losses = train_classifier(net, train_set, epochs=epochs, batch_size=64, seed=seed)
    return net, losses, train_set, test_set


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean of ``values`` and the half-width of its two-sided 95 % confidence interval.

    The interval is Student's t interval, ``mean ± t(0.975, n - 1) * sd / sqrt(n)`` with the
    sample standard deviation (``n - 1``), the usual one for a handful of training runs that
    differ only in their seed. The notebooks draw a conclusion from a comparison only when the
    two intervals do not overlap (notebooks 01 and 03).

    Parameters
    ----------
    values:
        At least 2 and at most 31 finite numbers (e.g. one test accuracy per seed).

    Returns
    -------
    tuple of float
        ``(mean, half_width)``.
    """
    vals = [float(v) for v in values]
    if not 2 <= len(vals) <= len(_T95) + 1:
        raise ValueError(f"need 2 to {len(_T95) + 1} values for a t interval, got {len(vals)}")
    if not all(math.isfinite(v) for v in vals):
        raise ValueError(f"values must be finite, got {vals}")
    n = len(vals)
    mean = sum(vals) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    return mean, _T95[n - 2] * sd / math.sqrt(n)
