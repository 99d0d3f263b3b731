"""The measurements behind docs/EVIDENCE.md, shared by notebooks 08 and 10 and ``tools/evidence.py``.

Notebook 10's ablation, notebook 08's domain gap and the world's realism targets all need the
same few things, computed the same way and cached under the same keys (so a notebook and the
evidence tool never train one run twice):

* :func:`ecn_run` -- one ECN run (any row of the ablation, a control, or a supervised run on the
  target's own labels) trained in memory and cached: its history, final metrics, the target
  test distances and who the trained features' nearest neighbours are;
* :func:`backbone_run` -- the same measurements for a network that is not trained at all: the
  pretrained backbone alone ("pretrained only") or random weights ("untrained");
* :func:`supervised` -- the config of the target-supervised ceiling: ECN's source branch trained
  on the *target's* labels, which no adaptation method has;
* :func:`realism` -- the realism targets of docs/EVIDENCE.md on one world, one direction;
* :func:`camstyle_probe` -- does a CamStyle image look like its new camera to a network, or
  like its old one? (the camera cue style transfer can remove).

Every number is measured with the hidden true identities of the synthetic world, which no
training run ever reads.
"""
from __future__ import annotations

import ast
import dataclasses
import hashlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import reidlab
from ..cache import load_or_train
from ..data.datasets import ReIDDataset
from ..data.layout import Item
from ..data.loaders import ImageDataset, make_loader
from ..data.synth import GENERATOR_VERSION
from ..data.transforms import build_test_transform
from ..ecn import ECNConfig, evaluate_model, load_domains, pretrained_weights, train_ecn
from ..evaluation import extract_features
from ..models import ReIDNet
from ..neighbours import neighbour_shares
from ..runtime import seed_everything
from .toy import mean_ci95

__all__ = [
    "CODE_FILES",
    "code_digest",
    "backbone_digest",
    "supervised",
    "ecn_run",
    "backbone_run",
    "camstyle_probe",
    "realism",
    "REALISM_TARGETS",
]

_PKG = Path(reidlab.__file__).resolve().parent
#: The code a cached run depends on: a change to one of these files retrains (the world's pixels
#: are keyed by the generator version, the backbone by its settings).
CODE_FILES: tuple[Path, ...] = tuple(
    sorted((_PKG / "ecn").glob("*.py"))
    + [_PKG / f"{name}.py" for name in ("memory", "models", "evaluation", "neighbours", "bn")]
    + [_PKG / "data" / f"{name}.py" for name in ("loaders", "transforms", "datasets")]
    + [Path(__file__).resolve()]
)


def _code_only(path: Path) -> bytes:
    """A file's syntax tree without its docstrings (comments are not in it): what its results depend on."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree).encode()


def code_digest() -> str:
    """12 hex digits of a SHA-1 over :data:`CODE_FILES`' code (docstrings and comments left out):
    part of every cache key here, so a change to the code retrains and a change to its prose does not."""
    return hashlib.sha1(b"".join(_code_only(p) for p in CODE_FILES)).hexdigest()[:12]


def backbone_digest(config: ECNConfig) -> str | None:
    """The digest of the weights ``config`` starts from (the pretrained backbone is part of every result)."""
    weights = pretrained_weights(config, "cpu", progress=False)
    if weights is None or not Path(weights).is_file():
        return None if weights is None else str(weights)
    saved = torch.load(weights, map_location="cpu", weights_only=True)
    return saved.get("digest") if isinstance(saved, dict) else None


def supervised(config: ECNConfig) -> ECNConfig:
    """The target-supervised ceiling: ECN's network and recipe trained on the *target's* labels.

    ECN's source branch alone (``'source-only'``) with the target as its source; no adaptation
    method has these labels, so it says what this world, budget and recipe can reach at best.
    """
    return config.replace(source=config.target, invariance="source-only", control="none")


def _test_loaders(config: ECNConfig, target: ReIDDataset) -> dict[str, Any]:
    tf = build_test_transform(config.height, config.width)
    make = lambda items: make_loader(ImageDataset(items, tf, cache=True), 2 * config.batch_size)  # noqa: E731
    return {"query": make(target.query), "gallery": make(target.gallery), "train": make(target.train)}


def _shares(model: torch.nn.Module, loaders: dict[str, Any], target: ReIDDataset, k: int) -> dict[str, float]:
    """Who the ``k`` nearest other original target training images are, by the model's test feature (pool5)."""
    f = extract_features(model, loaders["train"], labels=True)
    return dataclasses.asdict(neighbour_shares(f.features, list(target.train_original_pids), f.camids, k=k))


def _threads() -> int | None:
    return torch.get_num_threads() if not torch.cuda.is_available() else None


#: Settings that name a run but do not change it: left out of the cache key, so that a run of the
#: ``laptop`` and of the ``long`` profile (the same sizes) or of ``tools/evidence.py`` is one file.
_LABELS = ("profile", "cache_images")


def ecn_run(config: ECNConfig, *, keep_weights: bool = False, name: str | None = None) -> dict[str, Any]:
    """Train (or load) one run of ``config`` in memory; return what notebooks 08 and 10 read.

    Returns ``history`` (one row per epoch), ``metrics`` (target test: pool5 and ``embed_*``),
    ``distmat`` (target query x gallery distances of pool5), ``shares`` (the pool5 neighbours of
    the original target training images, :func:`reidlab.neighbours.neighbour_shares` with
    ``k = config.knn``), ``seconds`` (when it was trained) and, with ``keep_weights``, the trained
    ``state_dict``. Cached by :func:`reidlab.cache.load_or_train` under every setting of
    ``config`` (but its profile label), the world's version, :func:`code_digest`, the pretrained
    backbone's digest and the torch thread count (it decides a CPU run's bits). A cached result without weights is trained again when they are asked for
    (the same bits), so notebooks that need a run's weights and those that do not share one file.
    """
    def fit() -> dict[str, Any]:
        t0 = time.perf_counter()
        res = train_ecn(config, None, progress=False)
        _, target = load_domains(config)
        model = res.model.eval()
        out = {"history": res.history, "metrics": res.metrics, "distmat": torch.from_numpy(res.distmat).float(),
               "shares": _shares(model, _test_loaders(config, target), target, config.knn),
               "seconds": time.perf_counter() - t0}
        if keep_weights:
            out["state_dict"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return out

    settings = {k: v for k, v in config.to_dict().items() if k not in _LABELS}
    key = {**settings, "world": GENERATOR_VERSION, "code": code_digest(), "threads": _threads(),
           "backbone": backbone_digest(config)}
    label = (name or f"ecn_{config.invariance}_{config.control}_{config.camstyle}_seed{config.seed}")
    label = label.replace("+", "").replace("/", "_")
    result = load_or_train(label, fit, key)
    if keep_weights and "state_dict" not in result:
        result = load_or_train(label, fit, key, retrain=True)
    return result


def backbone_run(config: ECNConfig, *, pretrained: bool, seed: int = 0) -> dict[str, Any]:
    """``metrics`` and ``shares`` of a network that is not trained: ECN's network with the pretrained
    backbone (``pretrained=True``; its test feature pool5 depends on the backbone only) or with
    random weights drawn from ``seed`` (``pretrained=False``: the floor)."""
    source, target = load_domains(config)
    weights = pretrained_weights(config, config.device if config.device != "auto" else "cpu") if pretrained else None

    def fit() -> dict[str, Any]:
        seed_everything(seed)
        model = ReIDNet(source.num_train_pids, config.arch, pretrained=weights, num_features=config.num_features,
                        freeze=config.freeze if pretrained else None).eval()
        loaders = _test_loaders(config, target)
        return {"metrics": evaluate_model(model, loaders["query"], loaders["gallery"]),
                "shares": _shares(model, loaders, target, config.knn)}

    digest = torch.load(weights, map_location="cpu", weights_only=True).get("digest") if weights else None
    key = {"target": config.target, "source_ids": source.num_train_pids, "synth_scale": config.synth_scale,
           "synth_seed": config.synth_seed, "arch": config.arch, "size": (config.height, config.width),
           "num_features": config.num_features, "knn": config.knn, "backbone": digest, "pretrained": pretrained,
           "seed": seed if not pretrained else None, "world": GENERATOR_VERSION, "code": code_digest(),
           "threads": _threads()}
    return load_or_train(f"backbone_{'pretrained' if pretrained else 'untrained'}", fit, key)


@torch.no_grad()
def camstyle_probe(config: ECNConfig, model: torch.nn.Module, *, oracle: bool = False) -> dict[str, float]:
    """Which camera a network's features place a target CamStyle image in: its new one or its old one.

    The camera centroids are the mean L2-normalised test features of each camera's original
    training images (cameras are in the file names: ECN may use them). Each CamStyle image
    ``c -> c2`` goes to its nearest centroid; returned are the shares that land on ``c2`` (the
    camera it was styled into), on ``c`` (the camera it came from) and on any other camera,
    beside chance (``1 / num_cams``). A camera cue that style transfer can remove shows as a
    ``new`` share far above ``old``. ``oracle=True`` probes the pixel-aligned re-renders instead.
    """
    _, target = load_domains(config)
    tf = build_test_transform(config.height, config.width)
    items = list(target.train)
    orig = extract_features(model, make_loader(ImageDataset(items, tf), 2 * config.batch_size), labels=True)
    feats = F.normalize(orig.features, dim=1)
    cams = torch.as_tensor(orig.camids)
    centroids = F.normalize(torch.stack([feats[cams == c].mean(0) for c in range(target.num_cams)]), dim=1)
    lookup = target.camstyle_oracle if oracle else target.camstyle
    fakes: list[Item] = []
    old_cams: list[int] = []
    new_cams: list[int] = []
    for path, _, c in items:
        for c2, fake in sorted(lookup.get(path, {}).items()):
            fakes.append(Item(fake, 0, c2))
            old_cams.append(c)
            new_cams.append(c2)
    styled = extract_features(model, make_loader(ImageDataset(fakes, tf), 2 * config.batch_size), labels=True)
    nearest = (F.normalize(styled.features, dim=1) @ centroids.T).argmax(1).numpy()
    old, new = np.array(old_cams), np.array(new_cams)
    return {"new": float((nearest == new).mean()), "old": float((nearest == old).mean()),
            "other": float(((nearest != new) & (nearest != old)).mean()), "chance": 1.0 / target.num_cams,
            "images": len(fakes)}


#: docs/EVIDENCE.md's realism targets (measured without the method): name -> what it requires.
REALISM_TARGETS: dict[str, str] = {
    "R1 order": "pretrained only < direct transfer < target-supervised (paired 95 % intervals above 0)",
    "R2 ratios": "direct transfer >= 2x untrained and 20-45 % of target-supervised (mAP, seed means)",
    "R3 camera-bound": "strangers from the same camera above chance among the neighbours of the untrained and "
                       "source-trained networks (95 % interval of the lift above 1)",
    "R5 CamStyle moves the camera": "the pretrained backbone places CamStyle images with their new camera more often "
                                    "than with their old one",
}


def realism(config: ECNConfig, seeds: list[int], runs: dict[tuple[str, int], dict] | None = None) -> dict[str, Any]:
    """The realism targets of docs/EVIDENCE.md for ``config``'s world and direction, over ``seeds``.

    ``runs`` may hold ``('source-only', seed)`` and ``('target-supervised', seed)`` results of
    :func:`ecn_run` already computed (e.g. in parallel); missing ones are computed here. Returns
    the per-seed mAP (step rule, %) of each row, the ratios, the neighbour lifts, the CamStyle
    probe, and ``met``: each target's verdict.
    """
    runs = dict(runs or {})
    base = config.replace(invariance="source-only", control="none")
    for seed in seeds:
        for row, row_config in (("source-only", base), ("target-supervised", supervised(base))):
            if (row, seed) not in runs:  # not setdefault: its default argument would train every run given
                runs[row, seed] = ecn_run(row_config.replace(seed=seed))
    pre = backbone_run(base, pretrained=True)
    untrained = {s: backbone_run(base, pretrained=False, seed=s) for s in seeds}
    m = lambda r, key="mAP": 100 * r["metrics"][key]  # noqa: E731
    rows = {
        "untrained": [m(untrained[s]) for s in seeds],
        "pretrained only": [m(pre)] * len(seeds),
        "direct transfer": [m(runs["source-only", s]) for s in seeds],
        "target-supervised": [m(runs["target-supervised", s]) for s in seeds],
    }
    over_untrained = [d / u for d, u in zip(rows["direct transfer"], rows["untrained"])]
    of_supervised = [100 * d / t for d, t in zip(rows["direct transfer"], rows["target-supervised"])]
    lift = lambda sh: sh["same_camera_other"] / sh["chance_same_camera_other"]  # noqa: E731
    lifts = {"untrained": [lift(untrained[s]["shares"]) for s in seeds],
             "pretrained only": [lift(pre["shares"])] * len(seeds),
             "source-trained": [lift(runs["source-only", s]["shares"]) for s in seeds]}
    ids = {"source-only": load_domains(base)[0].num_train_pids, "target-supervised": load_domains(base)[1].num_train_pids}
    below_chance = {name: all(row["loss_src"] < math.log(n) for s in seeds for row in runs[name, s]["history"][1:])
                    for name, n in ids.items()}
    pw = pretrained_weights(base, "cpu")
    probe_net = ReIDNet(2, base.arch, pretrained=pw, num_features=0, freeze=base.freeze)
    probe = camstyle_probe(base, probe_net)
    dt_minus_pre = mean_ci95([d - p for d, p in zip(rows["direct transfer"], rows["pretrained only"])])
    ts_minus_dt = mean_ci95([t - d for t, d in zip(rows["target-supervised"], rows["direct transfer"])])
    ci = {name: mean_ci95(vals) for name, vals in lifts.items()}
    met = {
        "R1 order": dt_minus_pre[0] - dt_minus_pre[1] > 0 and ts_minus_dt[0] - ts_minus_dt[1] > 0,
        "R2 ratios": float(np.mean(over_untrained)) >= 2.0 and 20.0 <= float(np.mean(of_supervised)) <= 45.0,
        "R3 camera-bound": all(ci[n][0] - ci[n][1] > 1.0 for n in ("untrained", "source-trained")),
        "R5 CamStyle moves the camera": probe["new"] > probe["old"],
    }
    return {"seeds": list(seeds), "mAP": rows, "over_untrained": over_untrained, "of_supervised": of_supervised,
            "camera_lift": lifts, "probe": probe, "dt_minus_pretrained": dt_minus_pre,
            "supervised_minus_dt": ts_minus_dt, "met": met, "below_chance_after_epoch_1": below_chance}
