"""The CPU recipe (scaled_recipe, ecn_exact), notebook 10's negative controls, the embedding's
metrics and the source loss's chance check, on a micro synthetic world."""
from __future__ import annotations

import json
import math

import pytest
import torch

import reidlab.ecn.loop as ecn_loop
from reidlab.data.loaders import CamStyleTargetDataset, make_loader
from reidlab.data.transforms import build_test_transform
from reidlab.ecn import ECNConfig, build_ecn, evaluate_model
from reidlab.ecn.config import CPU_NEW_LAYER_FACTOR, ECN_IMAGES_PER_PERSON, SCALED_KEYS, images_per_person, scaled_recipe
from reidlab.ecn.build import other_person_donors
from reidlab.data.loaders import ImageDataset
from reidlab.memory import InvarianceLoss, smooth_targets
from reidlab.models import ReIDNet

from ecn_micro import SMALL, domains, worlds  # noqa: F401 (fixtures)


def _cfg(worlds, **kw) -> ECNConfig:
    return ECNConfig.from_profile("ci", source=worlds["source"], target=worlds["target"], **{**SMALL, **kw})


# --- the scaled recipe ---------------------------------------------------------------------------


def test_scaled_recipe_scales_each_setting_by_its_rule():
    ecn = scaled_recipe(128, 60, ECN_IMAGES_PER_PERSON)
    # at ECN's own scale: k, alpha and the backbone's rate are ECN's; the new layers keep the stability factor
    assert ecn == pytest.approx({"lr_new": 0.1 * CPU_NEW_LAYER_FACTOR, "lr_backbone": 0.01, "knn": 6, "alpha": 0.01})
    lab = scaled_recipe(32, 12, 8.0)
    assert lab["lr_new"] == pytest.approx(0.0125)  # 0.1 x 32 / 128, halved
    assert lab["lr_backbone"] == 0.01  # ECN's, whatever the batch: layer3-4 must move in a short run
    assert lab["knn"] == 3  # 6 x 8 / 17.2 = 2.79
    assert lab["alpha"] * 11 == pytest.approx(0.59)  # ECN's last-epoch rate, alpha x 59
    assert scaled_recipe(64, 12, 8.0)["lr_new"] == pytest.approx(2 * lab["lr_new"])  # linear in the batch
    assert scaled_recipe(32, 12, 1.0)["knn"] == 1  # never below one neighbour
    assert scaled_recipe(32, 1, 8.0)["alpha"] == 0.01  # a one-epoch run's only rate is 0
    for bad in ((0, 12, 8.0), (32, 0, 8.0), (32, 12, 0.0), (32, 12, float("nan")), (32.0, 12, 8.0)):
        with pytest.raises(ValueError):
            scaled_recipe(*bad)


def test_images_per_person_comes_from_the_design_not_the_labels(tmp_path):
    assert images_per_person("synth_duke", "lab") == 8.0 and images_per_person("synth_duke", "market") == 12936 / 751
    assert images_per_person("market1501") == pytest.approx(17.22, abs=0.01)
    assert images_per_person("DukeMTMC-reID") == pytest.approx(23.5, abs=0.1)
    (tmp_path / "manifest.json").write_text(json.dumps({"counts": {"train_images": 30, "train_ids": 6}}))
    assert images_per_person(str(tmp_path)) == 5.0  # a generated folder's manifest
    assert images_per_person(str(tmp_path / "nowhere")) == ECN_IMAGES_PER_PERSON  # unknown: k stays 6


def test_profiles_pick_the_recipe_and_explicit_settings_win():
    laptop, gpu = ECNConfig.from_profile("laptop"), ECNConfig.from_profile("gpu")
    assert not laptop.ecn_exact and gpu.ecn_exact
    assert (gpu.lr_new, gpu.lr_backbone, gpu.knn, gpu.alpha) == (0.1, 0.01, 6, 0.01)  # the paper's
    assert {k: getattr(laptop, k) for k in SCALED_KEYS} == pytest.approx(scaled_recipe(32, 12, 8.0))
    own = ECNConfig.from_profile("laptop", lr_backbone=0.02, knn=5)
    assert own.lr_backbone == 0.02 and own.knn == 5 and own.lr_new == pytest.approx(0.0125)
    # a changed batch or run length re-derives what the rule derived, and keeps what was set by hand
    longer = own.replace(epochs=24, batch_size=64)
    assert longer.alpha * 23 == pytest.approx(0.59) and longer.lr_new == pytest.approx(0.025)
    assert longer.lr_backbone == 0.02 and longer.knn == 5
    assert gpu.replace(epochs=30).alpha == 0.01  # ecn_exact: nothing is scaled
    exact = ECNConfig.from_profile("laptop", ecn_exact=True)
    assert (exact.lr_new, exact.knn, exact.alpha) == (0.1, 6, 0.01)
    back = laptop.replace(ecn_exact=True)  # switching the recipe restores what the rule had derived
    assert (back.lr_new, back.lr_backbone, back.knn, back.alpha) == (0.1, 0.01, 6, 0.01)
    assert back.replace(ecn_exact=False) == laptop


# --- the controls ---------------------------------------------------------------------------------


@pytest.mark.parametrize("control,invariance,match", [
    ("target-bn", "E", "needs invariance source-only"),
    ("camstyle-other-person", "E", "needs an invariance with C"),
    ("random-neighbours", "E+C", "needs an invariance with N"),
    ("shuffled-slots", "source-only", "needs a target loss"),
    ("typo", "E", "control='typo': choose one of"),
])
def test_a_control_needs_the_signal_it_breaks(control, invariance, match):
    with pytest.raises(ValueError, match=match):
        ECNConfig(invariance=invariance, control=control)


def test_target_bn_passes_the_target_through_the_network_without_a_loss(worlds, domains):
    parts = build_ecn(_cfg(worlds, invariance="source-only", control="target-bn"), *domains, "cpu")
    assert parts.criterion is None and parts.target_train is not None
    plain = build_ecn(_cfg(worlds, invariance="source-only"), *domains, "cpu")
    assert plain.target_train is None
    config = _cfg(worlds, invariance="source-only", control="target-bn", epochs=1)
    seen = []
    hook = lambda m, inp, out: seen.append(inp[0].shape[0])  # noqa: E731
    parts.model.base.layer4[0].bn1.register_forward_hook(hook)
    row = ecn_loop.ecn_epoch(parts, config, 0, progress=False)
    assert row["loss_tgt"] is None and len(seen) == 2 * row["steps"]  # a source and a target pass per step
    counted = parts.model.base.layer4[0].bn1.num_batches_tracked.item()
    assert counted == 2 * row["steps"]  # both passes update the running statistics


def test_other_person_donors_and_their_views(domains):
    _, target = domains
    donors = other_person_donors(target, seed=0)
    ids = list(target.train_original_pids)
    assert len(donors) == len(target.train) and all(ids[d] != ids[i] for i, d in enumerate(donors))
    assert donors == other_person_donors(target, seed=0) and donors != other_person_donors(target, seed=1)
    ds = CamStyleTargetDataset(target.train, target.camstyle, target.num_cams, donors=donors)
    g = torch.Generator().manual_seed(0)
    own = foreign = 0
    for _ in range(200):
        i = int(torch.randint(len(ds), ()))
        path, cam = ds.choose(i, g)
        donor_path = target.train[donors[i]][0]
        if cam == target.train[i][2]:
            assert path == target.train[i][0]  # the own camera: the image itself
            own += 1
        else:
            stem = donor_path.rsplit("/", 1)[-1].removesuffix(".jpg")
            assert path == donor_path or stem in path  # the donor's view in that camera
            foreign += 1
    assert own and foreign
    with pytest.raises(ValueError, match="donors"):
        CamStyleTargetDataset(target.train, target.camstyle, target.num_cams, donors=[0])


def test_random_neighbours_replace_the_nearest_by_random_slots():
    torch.manual_seed(0)
    logits = torch.randn(5, 40)
    idx = torch.arange(5)
    nearest = smooth_targets(logits, idx, 4)
    random = smooth_targets(logits, idx, 4, random=True)
    assert torch.equal(random[idx, idx], torch.ones(5))  # the own slot still gets 1
    assert ((random > 0).sum(1) >= 4).all() and ((random > 0).sum(1) <= 5).all()
    assert not torch.equal(random, nearest)
    crit = InvarianceLoss(40, 8, knn=4, knn_epoch=0, random_neighbours=True)
    assert "random_neighbours=True" in repr(crit)


def test_shuffled_slots_read_and_write_the_mapped_slot():
    crit = InvarianceLoss(6, 4, knn=0)
    assert torch.equal(crit.slot_map, torch.arange(6))
    crit.shuffle_slots(torch.Generator().manual_seed(3))
    perm = crit.slot_map.clone()
    assert sorted(perm.tolist()) == list(range(6)) and not torch.equal(perm, torch.arange(6))
    f = torch.nn.functional.normalize(torch.randn(2, 4), dim=1).requires_grad_()
    crit(f, torch.tensor([0, 1]), 0).backward()
    written = (crit.memory.abs().sum(1) > 0).nonzero().flatten().sort().values
    assert torch.equal(written, perm[:2].sort().values)  # images 0 and 1 wrote to their mapped slots
    assert "slot_map" in crit.state_dict()  # checkpointed with the memory


def test_shuffled_slots_draws_a_new_map_each_epoch(worlds, domains):
    config = _cfg(worlds, invariance="E", control="shuffled-slots", epochs=2)
    parts = build_ecn(config, *domains, "cpu")
    maps = []
    for epoch in range(2):
        ecn_loop.ecn_epoch(parts, config, epoch, progress=False)
        maps.append(parts.criterion.slot_map.clone())
    assert not torch.equal(maps[0], maps[1])


# --- what a run reports ---------------------------------------------------------------------------


def test_the_embedding_is_scored_beside_pool5(worlds, domains):
    _, target = domains
    torch.manual_seed(0)
    net = ReIDNet(4, "resnet18", num_features=16, freeze=None).eval()
    tf = build_test_transform(32, 16)
    q = make_loader(ImageDataset(target.query, tf), 8)
    g = make_loader(ImageDataset(target.gallery, tf), 8)
    both = evaluate_model(net, q, g)
    net.test_feature = "embed"
    alone = evaluate_model(net, q, g)
    assert "embed_mAP" not in alone  # a model tested on its embedding reports it as its feature
    for k in ("rank1", "mAP", "mAP_trapezoid"):
        assert both[f"embed_{k}"] == pytest.approx(alone[k])
    net.test_feature = "pool5"
    assert both["mAP"] == pytest.approx(evaluate_model(net, q, g)["mAP"])


def test_a_source_loss_at_chance_after_the_first_epoch_warns(worlds, domains, monkeypatch):
    config = _cfg(worlds, invariance="source-only")
    parts = build_ecn(config, *domains, "cpu")
    fake = {"loss_src": math.log(parts.model.num_classes) + 0.5, "loss_tgt": None, "acc_src": 0.0, "steps": 1,
            "seconds": 0.0, "step_loss": [1.0]}
    monkeypatch.setattr(ecn_loop, "run_epoch", lambda *a, **k: dict(fake))
    with _no_warning():
        ecn_loop.ecn_epoch(parts, config, 0, progress=False)  # epoch 0 starts at chance: no warning
    with pytest.warns(UserWarning, match="at or above chance"):
        ecn_loop.ecn_epoch(parts, config, 1, progress=False)


class _no_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings(record=True)
        self.records = self._ctx.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        assert not [w for w in self.records if "chance" in str(w.message)]
        return False


def test_the_trainer_uses_the_scaled_values(worlds, domains):
    config = _cfg(worlds, invariance="E+N", ecn_exact=False)  # SMALL sets knn=2 by hand: kept
    assert config.lr_new == pytest.approx(0.1 * 8 / 128 / 2) and config.alpha * 2 == pytest.approx(0.59)
    parts = build_ecn(config, *domains, "cpu")
    lrs = {g["name"]: g["lr"] for g in parts.optimizer.param_groups}
    assert lrs == pytest.approx({"backbone": 0.01, "new": 0.1 * 8 / 128 / 2})
    assert parts.criterion.alpha == config.alpha and parts.criterion.knn == 2
