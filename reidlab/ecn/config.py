"""ECN's settings: one dataclass, its validation, and the rules that scale its recipe to a run.

ECN (Zhong et al., "Invariance Matters: Exemplar Memory for Domain Adaptive Person
Re-identification", CVPR 2019) trains 60 epochs, steps the learning rates down by 10x at
epoch 40 and switches the neighbourhood (kNN) target on from epoch 5 (its code's
``epoch > 4``). A shorter run keeps those *fractions* of training: :func:`scaled_schedule` is
the one place that says how, used by :class:`ECNConfig`, by
:func:`reidlab.ecn.loop.train_source`, by notebook 10 and by its exercise 10.2's checker.

ECN's other numbers belong to its scale, and a CPU run that copies them is a different
recipe: lr 0.1 for the new layers is a rate for a batch of 128 (at 32 it overshoots, and the
source loss climbs above chance), k = 6 neighbours suits about 17 images per person
(Market-1501), and alpha = 0.01 per epoch lets a memory slot reach a weight of 0.59 on its old
value only because ECN trains 60 epochs. :func:`scaled_recipe` scales them to a short run (the
new layers' rate with the batch, then halved for stability; k with the images per person; alpha
so that ``alpha * (epochs - 1)`` is ECN's 0.59) and keeps the backbone's 0.01 (docs/EVIDENCE.md
says why). The CPU profiles use it (``ecn_exact=False``); the ``gpu`` profile keeps the published
values (``ecn_exact=True``).

Every field of :class:`ECNConfig` carries its help text, from which the command line
(:mod:`reidlab.ecn.cli`) builds one flag per setting, so no default is written twice.
"""
from __future__ import annotations

import dataclasses
import math
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.loaders import CAMSTYLE_MODES
from ..data.synth.world import SCALES
from ..profiles import Profile, resolve_profile

__all__ = [
    "INVARIANCES",
    "CONTROLS",
    "CAMSTYLE_SOURCES",
    "ECN_EPOCHS",
    "ECN_DECAY_EPOCH",
    "ECN_KNN_EPOCH",
    "RESUME_FREE_KEYS",
    "PROFILE_KEYS",
    "DERIVED_KEYS",
    "RECORDED_KEYS",
    "scaled_schedule",
    "ECN_IMAGES_PER_PERSON",
    "images_per_person",
    "scaled_recipe",
    "CPU_NEW_LAYER_FACTOR",
    "knn_warning",
    "ECNConfig",
]

#: The ablation switches of ECN's Table 1: E = exemplar invariance (the memory's
#: cross-entropy), C = camera invariance (camera-style target images), N = neighbourhood
#: invariance (the kNN soft target from :attr:`ECNConfig.knn_epoch` on). ``'source-only'``:
#: no target loss.
INVARIANCES: tuple[str, ...] = ("source-only", "E", "E+C", "E+N", "E+C+N")

#: Negative controls of notebook 10's ablation, each the same training with one signal broken
#: (docs/EVIDENCE.md says what each must do): ``'target-bn'`` runs the target batch through the
#: network with no target loss (source-only plus ECN's per-domain BN passes: what the mixed
#: running statistics do without the memory); ``'camstyle-other-person'`` fills the C views of
#: an image with another person's CamStyle images; ``'random-neighbours'`` gives N k random slots
#: instead of the k nearest; ``'shuffled-slots'`` maps images to memory slots by a new random
#: permutation each epoch, so E pulls each image towards another image's stale feature.
CONTROLS: tuple[str, ...] = ("none", "target-bn", "camstyle-other-person", "random-neighbours", "shuffled-slots")

#: Where camera-style target images come from when the invariance has C: the modes of
#: :data:`reidlab.data.loaders.CAMSTYLE_MODES` other than ``'none'`` (which the trainer uses
#: when the invariance has no C, see :attr:`ECNConfig.target_camstyle`).
CAMSTYLE_SOURCES: tuple[str, ...] = tuple(m for m in CAMSTYLE_MODES if m != "none")

#: ECN's schedule (paper and published code): 60 epochs, lr x0.1 at epoch 40, kNN from epoch 5.
ECN_EPOCHS, ECN_DECAY_EPOCH, ECN_KNN_EPOCH = 60, 40, 5
#: ECN's batch (128 source + 128 target), learning rates, k and alpha (paper and published code).
ECN_BATCH, ECN_LR_NEW, ECN_LR_BACKBONE, ECN_KNN, ECN_ALPHA = 128, 0.1, 0.01, 6, 0.01
#: Images per person of Market-1501's training split (12,936 / 751), the scale ECN's k = 6 was set at.
ECN_IMAGES_PER_PERSON = 12936 / 751
#: Training images per identity of the real datasets (Market-1501, DukeMTMC-reID, MSMT17 as ECN reads them).
_REAL_IMAGES_PER_PERSON = {"market1501": 12936 / 751, "dukemtmc-reid": 16522 / 702, "msmt17": 32621 / 1041}

#: Settings that may differ between a checkpoint and the run resuming it: they change how a
#: run is executed or reported, not what it computes on the CPU.
#: Not among them: ``num_workers`` (data-loader workers draw the augmentations from their own
#: seeds, so the batches of a resumed run would differ) and ``amp`` (bf16 changes every number).
#: ``device`` and ``channels_last`` are: moving a run to another device changes its numbers only
#: at float precision.
RESUME_FREE_KEYS: frozenset[str] = frozenset(
    {"eval_every", "eval_source", "device", "data_dir", "cache_images", "channels_last", "profile"}
)

#: Values computed from the settings that ``config.json`` also records, for a reader.
DERIVED_KEYS: tuple[str, ...] = ("batch_per_process", "decay_epoch", "knn_epoch")
#: What ``config.json`` holds beside the settings: :data:`DERIVED_KEYS` and the digest of the backbone
#: the run started from (:func:`reidlab.ecn.pretrain.state_digest`); :meth:`ECNConfig.from_dict` skips them.
RECORDED_KEYS: tuple[str, ...] = (*DERIVED_KEYS, "backbone_digest")

#: The settings a profile (``ci`` / ``laptop`` / ``long`` / ``gpu``, :mod:`reidlab.profiles`) decides.
PROFILE_KEYS: tuple[str, ...] = (
    "height", "width", "arch", "batch_size", "epochs", "amp", "channels_last", "num_workers", "synth_scale",
    "pretrained", "ecn_exact",
)
#: The settings :func:`scaled_recipe` derives when ``ecn_exact`` is False.
SCALED_KEYS: tuple[str, ...] = ("lr_new", "lr_backbone", "knn", "alpha")
#: The settings :func:`scaled_recipe` reads: a change to one of them re-derives :data:`SCALED_KEYS`.
_SCALING_INPUTS: tuple[str, ...] = ("batch_size", "epochs", "target", "synth_scale", "ecn_exact")


def scaled_schedule(epochs: int) -> tuple[int, int]:
    """``(knn_epoch, decay_epoch)``: ECN's epoch 5 and epoch 40 of 60, scaled to ``epochs``.

    Both are 0-based epochs, rounded to the nearest integer and at least 1: the learning
    rate never drops before one epoch at full rate, and the kNN target never starts in
    epoch 0, while the memory is still being filled (its update rate ``alpha * epoch`` is 0
    and unvisited slots are zeros). ``scaled_schedule(60) == (5, 40)``, ECN's own;
    ``scaled_schedule(10) == (1, 7)``.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    knn = max(1, round(ECN_KNN_EPOCH * epochs / ECN_EPOCHS))
    decay = max(1, round(ECN_DECAY_EPOCH * epochs / ECN_EPOCHS))
    return knn, decay


def images_per_person(target: str, synth_scale: str = "market") -> float:
    """Training images per identity of a target dataset: what ECN's k = 6 is scaled by.

    Known from the design, never from the labels a run must not see: a synthetic world's
    scale (:data:`reidlab.data.synth.SCALES`), the published statistics of the real
    datasets, or a generated folder's ``manifest.json``; anything else is taken to be at
    Market-1501's ratio (so k stays 6).
    """
    key = str(target).strip().lower()
    if key.startswith("synth_") and synth_scale in SCALES:
        sc = SCALES[synth_scale]
        return sc.train_images / sc.train_ids
    if key in _REAL_IMAGES_PER_PERSON:
        return _REAL_IMAGES_PER_PERSON[key]
    manifest = Path(str(target)).expanduser() / "manifest.json"
    try:
        counts = json.loads(manifest.read_text())["counts"]
        return counts["train_images"] / counts["train_ids"]
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return ECN_IMAGES_PER_PERSON


#: The CPU recipe's factor on the linearly scaled rate of the new layers: the largest of 1, 1/2, 1/4, ...
#: for which the two baselines (source-only and target-supervised, no target loss) keep every epoch's
#: source loss below chance after the first (docs/EVIDENCE.md, section 2: at 1 the target-supervised
#: loss rose above ln(#ids) in its third epoch).
CPU_NEW_LAYER_FACTOR = 0.5


def scaled_recipe(batch_size: int, epochs: int, images_per_person: float) -> dict[str, float | int]:
    """ECN's learning rates, k and alpha scaled to a short CPU run (the CPU profiles' ``ecn_exact=False``).

    * ``lr_new``: ECN's 0.1 times ``batch_size / 128`` (the linear scaling rule of Goyal et al.
      2017: the same step per image), times :data:`CPU_NEW_LAYER_FACTOR`: the fresh head's large
      early steps overshoot at the linear rate (the source loss climbs above chance), and the
      stability rule of docs/EVIDENCE.md halves it;
    * ``lr_backbone``: ECN's 0.01, not scaled. ECN's layer3-4 move at 0.01 for about 4,000 steps;
      a CPU run has a few hundred, and at a tenth of the new layers' scaled rate they stay where the
      pretraining left them (docs/EVIDENCE.md measured direct transfer equal to the pretrained
      backbone alone), so the test feature pool5 would never feel the training;
    * ``knn``: ECN's 6 times ``images_per_person / 17.2`` (Market-1501's ratio), rounded, at
      least 1: the neighbours are meant to be mostly the same person, which they cannot be when
      k exceeds a person's other images;
    * ``alpha``: ``0.59 / (epochs - 1)``, so that the memory's last update rate ``alpha * (epochs - 1)``
      equals ECN's ``0.01 * 59`` (0.01 when ``epochs`` is 60; 0.01 for a one-epoch run, whose only
      rate is 0).
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if not (isinstance(images_per_person, (int, float)) and math.isfinite(images_per_person) and images_per_person > 0):
        raise ValueError(f"images_per_person must be a positive number, got {images_per_person!r}")
    alpha = ECN_ALPHA if epochs == 1 else ECN_ALPHA * (ECN_EPOCHS - 1) / (epochs - 1)
    return {
        "lr_new": ECN_LR_NEW * batch_size / ECN_BATCH * CPU_NEW_LAYER_FACTOR,
        "lr_backbone": ECN_LR_BACKBONE,
        "knn": max(1, round(ECN_KNN * images_per_person / ECN_IMAGES_PER_PERSON)),
        "alpha": alpha,
    }


def _apply_scaling(values: dict[str, Any], explicit: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with :data:`SCALED_KEYS` set by the recipe ``ecn_exact`` names (ECN's published values,
    or :func:`scaled_recipe`'s), except those given in ``explicit``."""
    if values.get("ecn_exact", True):
        recipe: dict[str, Any] = {"lr_new": ECN_LR_NEW, "lr_backbone": ECN_LR_BACKBONE, "knn": ECN_KNN,
                                  "alpha": ECN_ALPHA}
    else:
        recipe = scaled_recipe(
            int(values.get("batch_size", ECN_BATCH)), int(values.get("epochs", ECN_EPOCHS)),
            images_per_person(values.get("target", "synth_duke"), values.get("synth_scale", "market")),
        )
    return {**values, **{k: v for k, v in recipe.items() if k not in explicit}}


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def _normalise_invariance(value: str) -> str:
    key = str(value).strip().upper().replace(" ", "").replace("_", "-")
    for name in INVARIANCES:
        if key == name.upper():
            return name
    if key in ("SOURCE", "SOURCEONLY", "BASELINE"):
        return "source-only"
    raise ValueError(f"unknown invariance {value!r}; choose one of: {', '.join(INVARIANCES)}")


@dataclass(frozen=True)
class ECNConfig:
    """Every setting of an ECN run, primitives only (it round-trips through JSON).

    Validated once, when it is made, and frozen, so it stays valid (:meth:`replace` makes a
    changed, validated copy). Defaults are ECN's published settings at paper scale (each field's
    ``metadata['help']`` says what it is; ``python -m reidlab.ecn --help`` prints them all).
    :meth:`from_profile` takes the sizes of :data:`PROFILE_KEYS` from a ``ci`` / ``laptop`` / ``gpu`` profile.
    Two settings are derived from ``epochs`` unless given: :attr:`decay_epoch` (from
    ``step_epoch``) and :attr:`knn_epoch` (from ``knn_start``), both by
    :func:`scaled_schedule`, so a shorter run keeps ECN's proportions.
    """

    # data
    source: str = _setting("synth_market", "source dataset: a name (synth_market, market1501, ...) or a folder")
    target: str = _setting("synth_duke", "target dataset: a name (synth_duke, dukemtmc-reid, ...) or a folder")
    data_dir: str | None = _setting(None, "folder holding the real datasets; synthetic worlds are generated in it")
    synth_scale: str = _setting("market", "size of a synthetic world: tiny | small | market")
    synth_seed: int = _setting(0, "seed of a synthetic world")
    # network
    arch: str = _setting("resnet50", "backbone: resnet18/34/50 or resnet18/34/50_ibn_a")
    pretrained: str | None = _setting(
        None, "initial weights: synthetic (pretrained here, reidlab.ecn.pretrain), a torchvision weights name "
        "(IMAGENET1K_V1) or a file; none: random")
    num_features: int = _setting(4096, "width of the embedding (ECN: FC-4096 + BN)")
    dropout: float = _setting(0.5, "dropout before the classifiers")
    neck: str = _setting("no", "no | bnneck")
    freeze: str | None = _setting("layer2", "last frozen stage, BNs in eval (ECN: conv1..layer2); none to train all")
    # input
    height: int = _setting(256, "input height (ECN: 256)")
    width: int = _setting(128, "input width (ECN: 128)")
    batch_size: int = _setting(128, "source batch size; the target batch has the same size (ECN: 128 + 128)")
    random_erasing: float = _setting(0.5, "random-erasing probability (ECN: 0.5)")
    # optimisation
    epochs: int = _setting(60, "epochs; one epoch is one pass over the source (ECN: 60)")
    ecn_exact: bool = _setting(
        True, "ECN's published lr_new, lr_backbone, knn and alpha (true), or scaled to the batch, the run length "
        "and the world by scaled_recipe (false: the CPU profiles)")
    lr_new: float = _setting(0.1, "learning rate of the new layers (ECN: 0.1 at batch 128)")
    lr_backbone: float = _setting(0.01, "learning rate of the pretrained backbone (ECN: 0.01 at batch 128)")
    momentum: float = _setting(0.9, "SGD momentum")
    nesterov: bool = _setting(True, "Nesterov momentum")
    weight_decay: float = _setting(5e-4, "weight decay")
    step_epoch: int | None = _setting(None, "epoch of the x gamma lr step; none: ECN's 40 of 60 scaled")
    gamma: float = _setting(0.1, "lr factor at the step")
    max_steps: int | None = _setting(None, "cap on the steps of an epoch (quick experiments only)")
    # ECN
    invariance: str = _setting("E+C+N", f"ablation switch: {' | '.join(INVARIANCES)}")
    lam: float = _setting(0.3, "weight of the target loss: (1 - lam) L_src + lam L_tgt")
    beta: float = _setting(0.05, "temperature of the memory's softmax")
    alpha: float = _setting(0.01, "memory update rate per epoch (rate alpha * epoch)")
    knn: int = _setting(6, "neighbours of the kNN target, and k of the logged kNN precision")
    knn_start: int | None = _setting(None, "first epoch of the kNN target; none: ECN's 5 of 60 scaled")
    camstyle: str = _setting("auto", f"camera-style source with C: {' | '.join(CAMSTYLE_SOURCES)}")
    control: str = _setting("none", f"negative control (notebook 10): {' | '.join(CONTROLS)}")
    # evaluation
    eval_every: int = _setting(0, "evaluate on the target test set every N epochs (0: at the end only)")
    eval_source: bool = _setting(True, "also evaluate on the source test set at the end")
    # run
    seed: int = _setting(0, "seed of everything")
    device: str = _setting("auto", "auto | cpu | cuda | cuda:N")
    amp: bool = _setting(True, "bf16 autocast (CUDA only)")
    channels_last: bool = _setting(True, "channels_last memory format (CUDA only)")
    num_workers: int = _setting(8, "data-loader worker processes (per training process)")
    sync_bn: bool = _setting(False, "with several processes: synchronise the BN layers that train (SyncBatchNorm)")
    world_size: int = _setting(1, "number of training processes (set from torchrun's WORLD_SIZE, not a flag)")
    cache_images: bool = _setting(True, "keep decoded images in memory")
    profile: str | None = _setting(None, "the profile the sizes came from (a label)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "invariance", _normalise_invariance(self.invariance))  # frozen: set once, here
        _validate(self)

    @classmethod
    def from_profile(cls, profile: str | Profile | None = None, **overrides: Any) -> ECNConfig:
        """ECN's settings with the sizes of a profile, then ``overrides``.

        ``profile`` is a name (``'ci'``, ``'laptop'``, ``'gpu'``; ``None`` reads
        ``$REIDLAB_PROFILE``, see :func:`reidlab.profiles.resolve_profile`) or the
        :class:`reidlab.profiles.Profile` that ``reidlab.lessons.setup()`` returns (its seed
        is used too).
        """
        prof = profile if isinstance(profile, Profile) else resolve_profile(profile)
        values: dict[str, Any] = {"profile": prof.name, **{k: getattr(prof, k) for k in PROFILE_KEYS}}
        if isinstance(profile, Profile):
            values["seed"] = prof.seed
        _check_names(overrides)
        return cls(**_apply_scaling({**values, **overrides}, overrides))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ECNConfig:
        """Inverse of :meth:`to_dict` (also reads ``config.json``, skipping :data:`RECORDED_KEYS`);
        unknown keys raise ``ValueError``."""
        data = {k: v for k, v in data.items() if k not in RECORDED_KEYS}
        _check_names(data)
        return cls(**data)

    def to_dict(self, *, derived: bool = False) -> dict[str, Any]:
        """A plain dict (JSON-serialisable): what checkpoints hold; ``derived=True`` adds
        :data:`DERIVED_KEYS` (``config.json`` has them, for a reader)."""
        out = dataclasses.asdict(self)
        if derived:
            out.update({k: getattr(self, k) for k in DERIVED_KEYS})
        return out

    def replace(self, **changes: Any) -> ECNConfig:
        """A copy with ``changes`` applied (and validated); derived epochs follow a new ``epochs``,
        and with ``ecn_exact=False`` a change of batch, epochs or target re-derives the scaled
        learning rates, k and alpha (:func:`scaled_recipe`) unless ``changes`` gives them."""
        _check_names(changes)
        if any(k in changes for k in _SCALING_INPUTS):
            # re-derive only what was derived: a value set by hand (not the rule's) stays
            derived = _apply_scaling(self.to_dict(), {})
            hand_set = {k for k in SCALED_KEYS if getattr(self, k) != derived[k]}
            explicit = {**{k: getattr(self, k) for k in hand_set}, **changes}
            changes = {k: v for k, v in _apply_scaling({**self.to_dict(), **changes}, explicit).items()
                       if k in changes or k in SCALED_KEYS}
        return dataclasses.replace(self, **changes)

    @property
    def decay_epoch(self) -> int:
        """The epoch (0-based) from which both learning rates are multiplied by ``gamma``."""
        return self.step_epoch if self.step_epoch is not None else scaled_schedule(self.epochs)[1]

    @property
    def knn_epoch(self) -> int:
        """The first epoch (0-based) of the kNN target (ECN: 5 of 60; used only with N)."""
        return self.knn_start if self.knn_start is not None else scaled_schedule(self.epochs)[0]

    @property
    def batch_per_process(self) -> int:
        """Images of each domain per step and process: ``batch_size`` is the global batch, shared out."""
        return self.batch_size // self.world_size

    @property
    def uses_target(self) -> bool:
        """False for ``'source-only'``: no target batch, no memory."""
        return self.invariance != "source-only"

    @property
    def uses_target_batch(self) -> bool:
        """Whether each step also runs a target batch through the network (a target loss, or the
        ``'target-bn'`` control's forward pass without one)."""
        return self.uses_target or self.control == "target-bn"

    @property
    def uses_camstyle(self) -> bool:
        return "C" in self.invariance.split("+")

    @property
    def uses_knn(self) -> bool:
        return "N" in self.invariance.split("+")

    @property
    def target_camstyle(self) -> str:
        """The ``camstyle=`` mode of the target loader (:func:`reidlab.data.loaders.target_train_dataset`)."""
        return self.camstyle if self.uses_camstyle else "none"


def _check_names(values: Mapping[str, Any]) -> None:
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(ECNConfig)})
    if unknown:
        raise ValueError(f"unknown ECNConfig setting(s): {', '.join(unknown)}")


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


#: Every float setting: (low, high, low inclusive, high inclusive), all finite.
_FLOAT_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "lam": (0.0, 1.0, True, True),  # weights (1 - lam) and lam
    "beta": (0.0, math.inf, False, False),  # a temperature
    "alpha": (0.0, 1.0, True, True),  # a moving-average weight per epoch
    "lr_new": (0.0, math.inf, True, False),
    "lr_backbone": (0.0, math.inf, True, False),
    "momentum": (0.0, 1.0, True, False),
    "weight_decay": (0.0, math.inf, True, False),
    "gamma": (0.0, 1.0, False, True),  # a decay factor
    "dropout": (0.0, 1.0, True, False),
    "random_erasing": (0.0, 1.0, True, True),  # a probability
}


def _in_range(value: Any, low: float, high: float, low_in: bool, high_in: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return (value >= low if low_in else value > low) and (value <= high if high_in else value < high)


def _range_text(low: float, high: float, low_in: bool, high_in: bool) -> str:
    if high == math.inf:
        return f"a finite number {'>=' if low_in else '>'} {low:g}"
    return f"a number in {'[' if low_in else '('}{low:g}, {high:g}{']' if high_in else ')'}"


def _validate(c: ECNConfig) -> None:
    """Raise ``ValueError`` naming the first bad setting of ``c`` (every number finite and in its range)."""

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ValueError(f"ECNConfig: {msg}")

    for name, bounds in _FLOAT_RANGES.items():
        need(_in_range(getattr(c, name), *bounds), f"{name} must be {_range_text(*bounds)}, got {getattr(c, name)!r}")
    for name in ("height", "width", "epochs", "num_features"):
        need(_is_int(getattr(c, name), 1), f"{name} must be a positive int, got {getattr(c, name)!r}")
    need(_is_int(c.batch_size, 2),
         f"batch_size must be an int >= 2 (BatchNorm needs more than one sample), got {c.batch_size!r}")
    need(c.alpha * (c.epochs - 1) <= 1.0,
         f"alpha * (epochs - 1) = {c.alpha * (c.epochs - 1):g} > 1: the memory update would stop being "
         "a moving average before the last epoch")
    need(_is_int(c.knn, 0), f"knn must be an int >= 0, got {c.knn!r}")
    need(c.knn_start is None or _is_int(c.knn_start, 0), f"knn_start must be None or an int >= 0, got {c.knn_start!r}")
    need(not (c.uses_knn and c.knn == 0), f"invariance {c.invariance} needs knn >= 1")
    need(c.step_epoch is None or _is_int(c.step_epoch, 1), f"step_epoch must be None or an int >= 1, got {c.step_epoch!r}")
    need(c.max_steps is None or _is_int(c.max_steps, 1), f"max_steps must be None or an int >= 1, got {c.max_steps!r}")
    need(_is_int(c.eval_every, 0), f"eval_every must be an int >= 0, got {c.eval_every!r}")
    need(_is_int(c.synth_seed, 0), f"synth_seed must be an int >= 0, got {c.synth_seed!r}")
    need(c.camstyle in CAMSTYLE_SOURCES, f"camstyle={c.camstyle!r}: choose one of {', '.join(CAMSTYLE_SOURCES)}")
    need(c.control in CONTROLS, f"control={c.control!r}: choose one of {', '.join(CONTROLS)}")
    needs = {"target-bn": (not c.uses_target, "invariance source-only"),
             "camstyle-other-person": (c.uses_camstyle, "an invariance with C"),
             "random-neighbours": (c.uses_knn, "an invariance with N"),
             "shuffled-slots": (c.uses_target, "a target loss (E)")}
    if c.control in needs:
        ok, what = needs[c.control]
        need(ok, f"control={c.control!r} needs {what}, got invariance {c.invariance!r}")
    need(_is_int(c.seed, 0), f"seed must be an int >= 0, got {c.seed!r}")
    need(_is_int(c.num_workers, 0), f"num_workers must be >= 0, got {c.num_workers!r}")
    need(_is_int(c.world_size, 1), f"world_size must be an int >= 1, got {c.world_size!r}")
    need(c.batch_size % c.world_size == 0 and c.batch_size // c.world_size >= 2,
         f"batch_size {c.batch_size} cannot be shared by {c.world_size} processes: it must be a multiple of the "
         f"number of processes, with at least 2 images each (BatchNorm)")
    need(isinstance(c.device, str) and bool(c.device), f"device must be 'auto', 'cpu', 'cuda', ..., got {c.device!r}")
    if c.device != "auto":  # only the spelling here: a CUDA device on a CPU machine is refused when the run starts
        try:
            torch.device(c.device)
        except (RuntimeError, ValueError):
            raise ValueError(
                f"ECNConfig: device={c.device!r} is not a torch device (use 'auto', 'cpu', 'cuda', 'cuda:0')"
            ) from None


def knn_warning(c: ECNConfig) -> str | None:
    """Why the neighbourhood term of ``c`` would never be used, or None.

    With N in the invariance but a kNN start at or after the last epoch, the run trains
    E (or E+C) while its name says E+N: :func:`reidlab.ecn.train_ecn` warns.
    """
    if c.uses_knn and c.knn_epoch >= c.epochs:
        return (
            f"invariance {c.invariance} but the kNN target starts at epoch {c.knn_epoch} of a {c.epochs}-epoch run "
            f"(epochs 0..{c.epochs - 1}): it never starts, so this run trains "
            f"{c.invariance.replace('+N', '')}; lower knn_start or train longer"
        )
    return None
