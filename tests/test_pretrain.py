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


def _white_balance_axes(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Per camera: the warm-cold axis (log red/blue gain) and the green-magenta axis (log green over red-blue)."""
    wb = np.array([c.wb for c in camera_styles(DOMAINS[name])])
    return np.log(wb[:, 0] / wb[:, 2]), np.log(wb[:, 1] / np.sqrt(wb[:, 0] * wb[:, 2]))


def test_the_corpus_lies_off_the_source_target_looks_and_has_its_own_people():
    """The stand-in for ImageNet must not already be a target re-ID corpus: its cameras lie off the
    warm-cold axis that joins the source and target looks, and its people come from palettes of their own."""
    from reidlab.data.synth import world

    assert len(camera_styles(DOMAINS["synth_pretrain"])) == 16
    warm_cold, green = {}, {}
    for name in DOMAINS:
        warm_cold[name], green[name] = _white_balance_axes(name)
    # the source is warm and the target cold ...
    assert warm_cold["synth_market"].min() > 0 > warm_cold["synth_duke"].max()
    # ... every pretraining camera has a green or magenta cast beyond any target camera's; the
    # source's cameras vary more (world v5's photometric cameras), and its greenest one reaches
    # into the weakest pretraining casts, so most (not all) lie beyond every source camera too
    cast = np.abs(green["synth_pretrain"])
    assert cast.min() > np.abs(green["synth_duke"]).max()
    assert np.mean(cast > np.abs(green["synth_market"]).max()) >= 0.8
    assert np.median(cast) > 1.2 * max(np.abs(green["synth_market"]).max(), np.abs(green["synth_duke"]).max())
    # and washed-out or harsh colour, outside both domains' saturation ranges
    sat = {n: np.array([c.saturation for c in camera_styles(DOMAINS[n])]) for n in DOMAINS}
    both = np.concatenate([sat["synth_market"], sat["synth_duke"]])
    assert all(s < both.min() or s > both.max() for s in sat["synth_pretrain"])
    # its own clothing palettes: no colour of the target's (or the source's) upper or lower palette
    theirs = {tuple(c) for pal in (world._UPPER, world._LOWER) for b in (True, False) for c, _ in pal[b]}
    ours = {tuple(c) for pal in (world._OTHER_UPPER, world._OTHER_LOWER) for c, _ in pal}
    assert not ours & theirs
    rng = np.random.default_rng(0)
    upper = world.sample_identities(DOMAINS["synth_pretrain"], 500, rng)["upper"]
    target_upper = np.array([c for c, _ in world._UPPER[False]])
    nearest = np.sqrt(((upper[:, None] - target_upper[None]) ** 2).sum(-1)).min(1)
    assert np.median(nearest) > 0.15  # most pretraining shirts are far from every winter palette colour


def test_pretraining_fixes_its_thread_count_and_records_a_digest(tmp_path):
    """The backbone's bits must not depend on the caller's thread count: one count for every CPU pretraining."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = pretrain.pretrain_backbone("resnet18", height=32, width=16, size=TINY, root=tmp_path, progress=False)
        assert torch.get_num_threads() == 1  # restored
        torch.set_num_threads(3)
        b = pretrain.pretrain_backbone("resnet18", height=32, width=16, size=TINY, root=tmp_path, progress=False)
    finally:
        torch.set_num_threads(before)
    assert a["settings"]["threads"] == pretrain.PRETRAIN_THREADS == 2
    assert a["digest"] == b["digest"] == pretrain.state_digest(a["state_dict"])
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    changed = {k: v.clone() for k, v in a["state_dict"].items()}
    changed["conv1.weight"].view(-1)[0] += 1e-6
    assert pretrain.state_digest(changed) != a["digest"]


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
    assert {p: ECNConfig.from_profile(p).pretrained for p in ("ci", "laptop", "long")} == {
        "ci": "synthetic", "laptop": "synthetic", "long": "synthetic"}
    assert set(PRETRAIN_SIZES) == {"ci", "laptop", "long", "gpu"}
    assert PRETRAIN_SIZES["long"] == PRETRAIN_SIZES["laptop"]  # one backbone for both


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
