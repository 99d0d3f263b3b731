"""A pretrained backbone made here: the series' stand-in for ImageNet weights.

ECN starts from an ImageNet-trained ResNet-50, freezes conv1..layer2 (their BN layers in
eval) and trains the rest at a tenth of the new layers' learning rate. Nothing can be
downloaded here, and a recipe that freezes *random* layers teaches the wrong lesson, so the
series makes its own pretrained weights the way ImageNet weights are made: supervised
classification on a large, varied corpus that is neither the source nor the target domain.

The corpus is the synthetic domain ``synth_pretrain`` (:mod:`reidlab.data.synth.world`):
other people (its own palettes and clothing odds, none of the target's), other places, 16
cameras whose looks lie off the range between the bright source look and the dark target
look (green or magenta casts, washed-out or harsh colour). The classes are its identities;
held-out identities measure what the features learned (retrieval on people the network never
saw, the Market protocol). What it does *not* copy from ImageNet: object categories, a thousand
times more images, and 224x224 inputs. Notebooks 08 and 10 measure that its features are not
already target re-ID features: the pretrained backbone alone retrieves target people less well
than the same network trained on the source (docs/EVIDENCE.md logs the corpora and tasks tried).

:func:`synthetic_weights` trains once per (architecture, input size, pretraining size, seed)
and caches the backbone's ``state_dict`` under the data dir (:func:`reidlab.cache.load_or_train`:
atomic, read back with ``weights_only=True``); the ECN command line's ``--pretrained synthetic``
and the notebooks call it. Sizes per profile are :data:`PRETRAIN_SIZES` (``ci``: seconds;
``laptop`` and ``long``: about ten minutes on 2 cores, once). On the CPU it always trains with
:data:`PRETRAIN_THREADS` torch threads, whatever the caller's count: the thread count decides
the bits, and the backbone is part of every experiment that starts from it. Its
:func:`state_digest` is stored with it, for notebooks and logs to print.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..cache import cache_path, load_or_train
from ..data.datasets import load_reid_dataset
from ..data.loaders import ImageDataset, make_loader
from ..data.synth import GENERATOR_VERSION, Scale, make_synthetic_reid
from ..data.transforms import build_test_transform, build_train_transform
from ..evaluation import evaluate
from ..models import ReIDNet
from ..profiles import resolve_profile
from ..runtime import resolve_device, seed_everything, torch_threads
from .config import ECNConfig
from .loop import train_source

__all__ = [
    "SYNTHETIC", "CORPUS", "PRETRAIN_THREADS", "PretrainSize", "PRETRAIN_SIZES", "pretrain_backbone",
    "synthetic_weights", "pretrained_weights", "state_digest",
]

#: Torch threads of every CPU pretraining, whatever the caller's count (part of the backbone's bits).
PRETRAIN_THREADS = 2
#: The corpus's share of images showing their own camera's scene: fixed here, so that the backbone does
#: not change when the source and target worlds' knob does (reidlab.data.synth.world.DEFAULT_CAMERA_BACKGROUND).
CORPUS_CAMERA_BACKGROUND = 0.5

#: The ``pretrained=`` value (ECN's ``--pretrained``) that asks for this module's weights.
SYNTHETIC = "synthetic"
#: The synthetic domain the backbone is pretrained on.
CORPUS = "synth_pretrain"


@dataclass(frozen=True)
class PretrainSize:
    """How much pretraining a profile gets.

    ``classes`` identities with ``images`` training images between them; ``held_out``
    further identities (one query per camera they appear in, ``6 * held_out`` gallery images)
    measure retrieval on people the network never saw.
    """

    classes: int
    images: int
    held_out: int
    epochs: int
    batch_size: int
    lr: float = 0.1

    def scale(self) -> Scale:
        """The corpus as a :class:`reidlab.data.synth.Scale` (no distractors, no junk)."""
        return Scale(train_ids=self.classes, train_images=self.images, test_ids=self.held_out, query=None,
                     gallery_real=6 * self.held_out, distractors=0, junk=0)


#: Pretraining per profile (``reidlab.profiles``): ``ci`` a few seconds, ``laptop`` a few minutes
#: on 2 CPU cores, ``gpu`` a ResNet-50 at 256x128 (minutes on one GPU).
PRETRAIN_SIZES: dict[str, PretrainSize] = {
    "ci": PretrainSize(classes=40, images=320, held_out=20, epochs=2, batch_size=32),
    "laptop": PretrainSize(classes=400, images=4800, held_out=100, epochs=8, batch_size=64),
    "long": PretrainSize(classes=400, images=4800, held_out=100, epochs=8, batch_size=64),  # laptop's: one backbone
    "gpu": PretrainSize(classes=4000, images=64000, held_out=500, epochs=30, batch_size=256),
}


def _settings(arch: str, height: int, width: int, size: PretrainSize, seed: int, device: torch.device) -> dict:
    """Everything the weights depend on: the cache key, also stored beside the weights."""
    return {"arch": arch, "height": int(height), "width": int(width), "size": asdict(size), "seed": int(seed),
            "corpus": CORPUS, "task": "identities", "generator_version": GENERATOR_VERSION, "camera_background": CORPUS_CAMERA_BACKGROUND,
            "threads": PRETRAIN_THREADS if device.type == "cpu" else None}


def state_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The first 16 hex digits of a SHA-256 over a ``state_dict``'s names, shapes, dtypes and bytes.

    Two backbones with the same digest are the same bits; notebooks print it so that a rerun
    can tell whether it starts from the committed run's backbone.
    """
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def pretrain_backbone(
    arch: str,
    *,
    height: int,
    width: int,
    size: PretrainSize,
    seed: int = 0,
    device: str | torch.device = "cpu",
    root: str | os.PathLike | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> dict:
    """Train ``arch`` from scratch to classify the identities of the pretraining corpus.

    The network is :class:`reidlab.models.ReIDNet` with no embedding and no dropout (a backbone,
    global average pooling and one linear classifier, as an ImageNet classifier is), trained
    with SGD at ``size.lr`` for every layer (nothing is pretrained yet), label smoothing 0.1
    and ECN's step schedule. Returns ``{'state_dict', 'metrics', 'settings', 'digest'}``: the
    backbone's tensors under torchvision's names (no classifier), which
    :class:`~reidlab.models.ReIDNet` ``(pretrained=path)`` loads like an ImageNet file;
    ``metrics`` holds the number of SGD steps, the final training accuracy, the held-out
    rank-1 and mAP, and the seconds it took; ``digest`` is :func:`state_digest` of the weights.
    On the CPU it runs with :data:`PRETRAIN_THREADS` torch threads (the count in effect is
    restored afterwards).
    """
    dev = resolve_device(device)
    if dev.type == "cpu":
        with torch_threads(PRETRAIN_THREADS):
            return _pretrain(arch, height, width, size, seed, dev, root, num_workers, progress)
    return _pretrain(arch, height, width, size, seed, dev, root, num_workers, progress)


def _pretrain(arch: str, height: int, width: int, size: PretrainSize, seed: int, dev: torch.device,
              root: str | os.PathLike | None, num_workers: int, progress: bool) -> dict:
    start = time.perf_counter()
    corpus = make_synthetic_reid(root, CORPUS, size.scale(), seed, write_camstyle=False,  # no CamStyle: not read
                                 camera_background=CORPUS_CAMERA_BACKGROUND)
    data = load_reid_dataset(corpus, with_camstyle=False)
    seed_everything(seed)
    model = ReIDNet(data.num_train_pids, arch, num_features=0, dropout=0.0, freeze=None).to(dev)
    train = make_loader(
        ImageDataset(data.train, build_train_transform(height, width, random_erasing=0.5), cache=True),
        size.batch_size, shuffle=True, num_workers=num_workers, seed=seed, drop_last=True, device=dev,
    )
    history = train_source(
        model, train, epochs=size.epochs, lr_backbone=size.lr, lr_new=size.lr, device=dev, label_smoothing=0.1,
        progress=progress, desc="pretraining",
    )
    test_tf = build_test_transform(height, width)
    query, gallery = (make_loader(ImageDataset(items, test_tf), 2 * size.batch_size) for items in (data.query, data.gallery))
    held_out = evaluate(model, query, gallery, dev).step
    metrics = {
        "steps": len(history["step_loss"]), "train_acc": float(history["acc"][-1]),
        "held_out_rank1": float(held_out.cmc[0]), "held_out_mAP": float(held_out.mAP),
        "seconds": time.perf_counter() - start,
    }
    state = {k.removeprefix("base."): v.detach().cpu().clone() for k, v in model.state_dict().items()
             if k.startswith("base.")}
    return {"state_dict": state, "metrics": metrics, "settings": _settings(arch, height, width, size, seed, dev),
            "digest": state_digest(state)}


def synthetic_weights(
    arch: str,
    *,
    height: int,
    width: int,
    profile: str,
    seed: int = 0,
    device: str | torch.device = "cpu",
    root: str | os.PathLike | None = None,
    retrain: bool = False,
    progress: bool = True,
) -> Path:
    """The file of ``arch``'s synthetic pretrained weights for ``profile``'s size; trained on first use.

    The file (under ``<root or data dir>/cache/``) holds ``{'state_dict', 'metrics',
    'settings'}``; pass its path as ``pretrained=`` (:class:`reidlab.models.ReIDNet` unwraps the
    ``state_dict``). ``root`` also holds the generated corpus (``<root>/synth``, or the data
    dir's). A different architecture, input size, profile size, seed or generator version
    gets its own file, so a stale backbone is never reused.
    """
    if profile not in PRETRAIN_SIZES:
        raise ValueError(f"no pretraining size for profile {profile!r}; choose one of: {', '.join(PRETRAIN_SIZES)}")
    size = PRETRAIN_SIZES[profile]
    key = _settings(arch, height, width, size, seed, resolve_device(device))
    synth_root = Path(root) / "synth" if root is not None else None  # where load_reid_dataset puts worlds

    def train() -> dict:
        return pretrain_backbone(arch, height=height, width=width, size=size, seed=seed, device=device,
                                 root=synth_root, progress=progress)

    load_or_train(f"pretrain-{CORPUS}-{arch}", train, key, root=root, retrain=retrain)
    return cache_path(f"pretrain-{CORPUS}-{arch}", key, root=root)


def pretrained_weights(config: ECNConfig, device: str | torch.device = "cpu", *, progress: bool = True) -> str | None:
    """What ``ReIDNet(pretrained=...)`` gets for ``config.pretrained``.

    ``'synthetic'`` is the file of :func:`synthetic_weights` for this architecture, input size
    and profile (trained on ``device`` on first use, then cached in the data dir); anything else
    (``None``, a torchvision weights name, a file) is passed on. A config without a profile label
    takes the pretraining size of the profile :func:`reidlab.profiles.resolve_profile` picks.
    """
    if config.pretrained != SYNTHETIC:
        return config.pretrained
    profile = config.profile or resolve_profile().name
    return os.fspath(synthetic_weights(
        config.arch, height=config.height, width=config.width, profile=profile, device=device,
        root=config.data_dir, progress=progress,
    ))
