"""The pretrained backbone made here (reidlab.ecn.pretrain): the corpus, the cache, and ECN started from it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import reidlab.ecn.pretrain as pretrain
from reidlab.data.synth import DOMAINS, camera_styles
from reidlab.ecn import ECNConfig, load_checkpoint
from reidlab.models import ReIDNet
from reidlab.ecn.pretrain import PRETRAIN_SIZES, PretrainSize, synthetic_weights

from ecn_micro import CLI_SMALL, make_worlds, run_cli

TINY = PretrainSize(classes=8, images=48, held_out=4, epochs=1, batch_size=8)


def test_the_corpus_spans_both_looks_and_is_neither_domain():
    brightness = {name: np.array([c.brightness for c in camera_styles(DOMAINS[name])]) for name in DOMAINS}
    corpus = brightness["synth_pretrain"]
    assert len(corpus) == 16
    # cameras on both sides of the gap: some as bright as the source's darkest, some as dark as the target's brightest
    assert corpus.max() >= brightness["synth_market"].min() and corpus.min() <= brightness["synth_duke"].max()
    assert not set(corpus) & set(brightness["synth_market"]) and not set(corpus) & set(brightness["synth_duke"])


def test_pretrain_backbone_returns_a_torchvision_state_dict_that_reidnet_loads(tmp_path):
    out = pretrain.pretrain_backbone("resnet18", height=32, width=16, size=TINY, root=tmp_path, progress=False)
    m = out["metrics"]
    assert m["steps"] == TINY.epochs * (TINY.images // TINY.batch_size)  # drop_last: 6 full batches
    assert 0.0 <= m["held_out_mAP"] <= 1.0 and 0.0 <= m["held_out_rank1"] <= 1.0
    sd = out["state_dict"]
    assert "conv1.weight" in sd and not any(k.startswith(("fc.", "base.", "classifier")) for k in sd)
    net = ReIDNet(5, "resnet18", pretrained=None, num_features=0, freeze=None)
    report = net.load_param(sd)
    assert len(report.loaded) == len(sd)
    torch.testing.assert_close(net.base.layer3[0].conv1.weight, sd["layer3.0.conv1.weight"])
    # it learned something: the weights moved away from torchvision's initialisation
    fresh = ReIDNet(5, "resnet18", pretrained=None, num_features=0, freeze=None)
    assert not torch.equal(fresh.base.conv1.weight, net.base.conv1.weight)


def test_synthetic_weights_are_cached_and_keyed_by_what_they_depend_on(tmp_path, monkeypatch):
    calls = []

    def fake(arch, *, height, width, size, seed, device, root, progress):
        calls.append((arch, height, width))
        base = ReIDNet(3, arch, num_features=0, freeze=None).base
        return {"state_dict": {k: v for k, v in base.state_dict().items() if not k.startswith("fc.")},
                "metrics": {"steps": 0}, "settings": {}}

    monkeypatch.setattr(pretrain, "pretrain_backbone", fake)
    a = synthetic_weights("resnet18", height=32, width=16, profile="ci", root=tmp_path)
    b = synthetic_weights("resnet18", height=32, width=16, profile="ci", root=tmp_path)
    c = synthetic_weights("resnet18", height=64, width=32, profile="ci", root=tmp_path)
    assert a == b and a != c and a.is_file() and c.is_file()
    assert calls == [("resnet18", 32, 16), ("resnet18", 64, 32)]  # the second call loaded the cache
    ReIDNet(7, "resnet18", pretrained=a, num_features=8)  # loads as a weights file, every tensor
    with pytest.raises(ValueError, match="no pretraining size for profile 'huge'"):
        synthetic_weights("resnet18", height=32, width=16, profile="huge", root=tmp_path)


def test_cpu_profiles_default_to_the_synthetic_backbone():
    assert {p: ECNConfig.from_profile(p).pretrained for p in ("ci", "laptop")} == {"ci": "synthetic",
                                                                                  "laptop": "synthetic"}
    assert set(PRETRAIN_SIZES) == {"ci", "laptop", "gpu"}


def test_cli_pretrains_then_starts_ecn_from_those_weights(tmp_path):
    """``--pretrained synthetic``: pretrain (ci size, a few steps), then ECN; the frozen conv1..layer2
    of the finished run are exactly the pretrained tensors (frozen: ECN never changes them)."""
    worlds = make_worlds(tmp_path / "worlds")
    data, out = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    proc = run_cli("--source", worlds["source"], "--target", worlds["target"], "--out", str(out), *CLI_SMALL,
                   "--pretrained", "synthetic", "--freeze", "layer2", "--data-dir", str(data), "--epochs", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "freezes randomly initialised layers" not in proc.stderr
    files = sorted((data / "cache").glob("pretrain-synth_pretrain-resnet18-*.pt"))
    assert len(files) == 1
    saved = torch.load(files[0], weights_only=True)
    assert saved["settings"]["height"] == 32 and saved["metrics"]["steps"] > 0
    state = load_checkpoint(out / "checkpoint.pt")["model"]
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.conv2.weight", "layer2.1.bn2.running_var"):
        torch.testing.assert_close(state[f"base.{key}"], saved["state_dict"][key], rtol=0, atol=0)
    assert not torch.equal(state["base.layer3.0.conv1.weight"], saved["state_dict"]["layer3.0.conv1.weight"])
