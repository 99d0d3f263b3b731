"""ReIDNet (ECN's network): shapes, freezing, BN modes, parameter groups, weight loading."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from reidlab.models import ReIDNet, param_groups, resolve_weights

POOL = {"resnet18": 512, "resnet50": 2048}


def _x(n=2, h=64, w=32, seed=0):
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _bns(module):
    return [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
@pytest.mark.parametrize("size", [(64, 32), (256, 128)])
def test_output_shapes_train_and_eval(arch, size):
    torch.manual_seed(0)
    model = ReIDNet(7, arch, num_features=64)
    out = model(_x(2, *size))
    assert set(out) == {"pool5", "feat", "embed", "tgt_feat", "logits"}
    assert out["pool5"].shape == (2, POOL[arch])
    assert out["feat"].shape == out["embed"].shape == out["tgt_feat"].shape == (2, 64)
    assert out["logits"].shape == (2, 7)
    model.eval()
    feat = model(_x(2, *size))
    assert feat.shape == (2, POOL[arch])  # ECN tests on pool5
    assert torch.allclose(feat.norm(dim=1), torch.ones(2), atol=1e-5)


def test_eval_feature_is_normalised_pool5_or_bnneck_embedding():
    torch.manual_seed(0)
    x = _x(4)
    for neck, key in (("no", "pool5"), ("bnneck", "embed")):
        model = ReIDNet(5, "resnet18", num_features=0, neck=neck, freeze=None).eval()
        with torch.no_grad():
            pool5 = model.base(x)
            expected = pool5 if key == "pool5" else model.feat_bn(pool5)
            assert torch.allclose(model(x), F.normalize(expected, dim=1), atol=1e-6)
    model = ReIDNet(5, "resnet18", num_features=16, test_feature="embed").eval()
    with torch.no_grad():
        assert torch.allclose(model(x), F.normalize(model.feat_bn(model.feat(model.base(x))), dim=1), atol=1e-6)


def test_ecn_head_matches_a_hand_written_forward():
    torch.manual_seed(0)
    model = ReIDNet(5, "resnet18", num_features=16, dropout=0.0, freeze=None)
    x = _x(4)
    out = model(x)
    pool5 = model.base(x)
    embed = model.feat_bn(model.feat(pool5))  # same train-mode batch statistics
    assert torch.allclose(out["embed"], embed, atol=1e-6)
    assert torch.allclose(out["tgt_feat"], F.normalize(embed, dim=1), atol=1e-6)
    assert torch.allclose(out["logits"], model.classifier(F.relu(embed)), atol=1e-6)


def test_dropout_acts_on_tgt_feat_in_train_mode_only():
    torch.manual_seed(0)
    model = ReIDNet(5, "resnet18", num_features=256, dropout=0.5, freeze=None)
    out = model(_x(4))
    tgt, unit = out["tgt_feat"], F.normalize(out["embed"], dim=1)
    kept = tgt != 0
    assert 0.3 < (~kept).float().mean().item() < 0.7
    # inverted dropout: normalise first, then drop and scale the survivors by 1 / (1 - p)
    assert torch.allclose(tgt[kept], 2 * unit[kept], atol=1e-6)


def test_frozen_stages_no_grad_and_bn_stay_in_eval():
    torch.manual_seed(0)
    model = ReIDNet(5, "resnet50", num_features=32)
    frozen = nn.ModuleList(model.frozen_modules())
    assert len(_bns(frozen)) == 24  # conv1's bn1 + layer1 (10) + layer2 (13), downsample BNs included
    for name, p in model.base.named_parameters():
        assert p.requires_grad == name.startswith(("layer3", "layer4")), name
    model.eval()
    model.train()
    model.train()  # a trainer calls train() every epoch
    assert all(not bn.training for bn in _bns(frozen))
    assert all(bn.training for bn in _bns(model.base.layer3))
    before = {k: v.clone() for k, v in model.base.state_dict().items() if "running" in k}
    model(_x(2, 64, 32))
    after = model.base.state_dict()
    for k, v in before.items():
        moved = not torch.equal(v, after[k])
        assert moved == k.startswith(("layer3", "layer4")), k


def test_freeze_none_trains_everything():
    model = ReIDNet(5, "resnet18", num_features=0, freeze=None)
    assert all(p.requires_grad for p in model.parameters())
    assert all(bn.training for bn in _bns(model))
    assert model.frozen_modules() == []


def test_param_groups_split_backbone_and_new_layers():
    model = ReIDNet(5, "resnet18", num_features=32)
    groups = param_groups(model, lr_backbone=0.01, lr_new=0.1)
    assert [g["name"] for g in groups] == ["backbone", "new"]
    assert [g["lr"] for g in groups] == [0.01, 0.1]
    ids = {g["name"]: {id(p) for p in g["params"]} for g in groups}
    trainable_base = {id(p) for n, p in model.base.named_parameters() if n.startswith(("layer3", "layer4"))}
    assert ids["backbone"] == trainable_base
    head = [*model.feat.parameters(), *model.feat_bn.parameters(), *model.classifier.parameters()]
    assert ids["new"] == {id(p) for p in head}
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(p.requires_grad for p in model.parameters())


def test_bnneck_bias_is_frozen_and_classifier_has_no_bias():
    model = ReIDNet(5, "resnet18", num_features=0, neck="bnneck", freeze=None)
    assert model.classifier.bias is None
    assert not model.feat_bn.bias.requires_grad and model.feat_bn.weight.requires_grad
    new = {id(p) for g in param_groups(model, 0.01, 0.1) if g["name"] == "new" for p in g["params"]}
    assert id(model.feat_bn.bias) not in new
    out = model(_x(4))
    assert torch.allclose(out["logits"], out["embed"] @ model.classifier.weight.T, atol=1e-6)
    assert torch.equal(out["feat"], out["pool5"])  # the triplet-style feature is before the BN


def test_load_param_skips_classifier_and_reports():
    torch.manual_seed(0)
    src = ReIDNet(11, "resnet18", num_features=32)
    torch.manual_seed(1)
    dst = ReIDNet(5, "resnet18", num_features=32)
    cls_before = dst.classifier.weight.clone()
    sd = {f"module.{k}": v for k, v in src.state_dict().items()}  # a DataParallel checkpoint
    report = dst.load_param(sd)
    assert set(report.skipped) == {"module.classifier.weight", "module.classifier.bias"}
    assert all(r == "classifier" for r in report.skipped.values())
    assert len(report.loaded) == len(sd) - 2
    assert torch.equal(dst.classifier.weight, cls_before)
    for k, v in dst.state_dict().items():
        if not k.startswith("classifier"):
            assert torch.equal(v, src.state_dict()[k]), k


def test_load_param_reads_torchvision_keys_and_reports_mismatches():
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None)
    model = ReIDNet(5, "resnet18", num_features=0)
    sd = tv.state_dict()
    sd["layer4.1.bn2.weight"] = torch.ones(3)  # wrong shape
    sd["extra.weight"] = torch.ones(1)
    report = model.load_param(sd)
    assert report.skipped["fc.weight"] == "classifier"
    assert report.skipped["layer4.1.bn2.weight"].startswith("shape")
    assert report.skipped["extra.weight"] == "no such key"
    assert torch.equal(model.base.conv1.weight, tv.conv1.weight)
    with pytest.raises(ValueError, match="layer4.1.bn2.weight"):
        model.load_param(sd, strict_shapes=True)
    with pytest.raises(TypeError, match="state_dict"):
        model.load_param([1, 2])


def test_pretrained_from_a_local_file(tmp_path):
    torch.manual_seed(3)
    tv = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(tv.state_dict(), path)
    model = ReIDNet(5, "resnet18", pretrained=path, num_features=0)
    for k, v in tv.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(model.base.state_dict()[k], v), k
    assert not model.base.conv1.weight.requires_grad  # freezing still applied after loading
    for name, content in (("tensor.pth", torch.ones(3)), ("list.pth", [torch.ones(3)])):
        torch.save(content, tmp_path / name)
        with pytest.raises(ValueError, match=f"{tmp_path / name} holds a {type(content).__name__}, not a state_dict"):
            ReIDNet(5, "resnet18", pretrained=tmp_path / name, num_features=0)
    bad = tmp_path / "other.pth"
    torch.save({"something": torch.ones(2)}, bad)
    with pytest.raises(ValueError, match="holds no tensor"):
        ReIDNet(5, "resnet18", pretrained=bad)


def test_resolve_weights_without_downloading():
    assert resolve_weights("resnet50", "IMAGENET1K_V2") is torchvision.models.ResNet50_Weights.IMAGENET1K_V2
    assert resolve_weights("resnet18", "ResNet18_Weights.IMAGENET1K_V1") is torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    assert resolve_weights("resnet18", None) is None
    with pytest.raises(ValueError, match="another network"):
        resolve_weights("resnet18", torchvision.models.ResNet50_Weights.IMAGENET1K_V1)
    with pytest.raises(ValueError, match="neither an existing file"):
        resolve_weights("resnet18", "no_such_weights.pth")


def test_last_stride_one_doubles_the_final_map():
    sizes = {}
    for stride in (2, 1):
        model = ReIDNet(5, "resnet50", num_features=0, last_stride=stride).eval()
        fmap = {}

        def hook(module, inputs, output):
            fmap["s"] = output.shape[-2:]

        model.base.layer4.register_forward_hook(hook)
        with torch.no_grad():
            assert model(_x(1, 128, 64)).shape == (1, 2048)
        sizes[stride] = tuple(fmap["s"])
    assert sizes == {2: (4, 2), 1: (8, 4)}


def test_channels_last_gives_the_same_features():
    torch.manual_seed(0)
    a = ReIDNet(5, "resnet18", num_features=0).eval()
    b = ReIDNet(5, "resnet18", num_features=0, channels_last=True).eval()
    b.load_state_dict(a.state_dict())
    assert b.base.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(a(_x()), b(_x()), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"arch": "vgg16"}, "arch="),
        ({"neck": "bn"}, "neck="),
        ({"last_stride": 3}, "last_stride"),
        ({"freeze": "layer5"}, "freeze="),
        ({"num_classes": 0}, "num_classes"),
        ({"dropout": 1.0}, "dropout"),
        ({"test_feature": "logits"}, "test_feature"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, message):
    args = {"num_classes": 5, "arch": "resnet18"} | kwargs
    with pytest.raises(ValueError, match=message):
        ReIDNet(**args)


def test_bad_input_shape():
    model = ReIDNet(5, "resnet18", num_features=0)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        model(torch.randn(3, 64, 32))


# --- IBN-a backbones (notebook 07) ------------------------------------------------------------


def _ins(module):
    return [m for m in module.modules() if isinstance(m, nn.InstanceNorm2d)]


@pytest.mark.parametrize("arch, dim", [("resnet18_ibn_a", 512), ("resnet50_ibn_a", 2048)])
def test_ibn_backbone_forward_at_256x128_in_train_and_eval(arch, dim):
    from reidlab.ibn import IBN, ResNetIBN

    torch.manual_seed(0)
    model = ReIDNet(7, arch, num_features=64)
    assert isinstance(model.base, ResNetIBN)
    assert sum(isinstance(m, IBN) for m in model.base.modules()) == (6 if arch == "resnet18_ibn_a" else 13)
    out = model(_x(2, 256, 128))
    assert set(out) == {"pool5", "feat", "embed", "tgt_feat", "logits"}
    assert out["pool5"].shape == (2, dim)
    assert out["embed"].shape == (2, 64) and out["logits"].shape == (2, 7)
    model.eval()
    with torch.no_grad():
        feat = model(_x(2, 256, 128))
        alone = model(_x(2, 256, 128)[:1])
    assert feat.shape == (2, dim)
    assert torch.allclose(feat.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(feat[:1], alone, atol=1e-5)  # eval: an image's feature does not depend on its batch


def test_ibn_frozen_stages_keep_bn_and_in_in_eval():
    model = ReIDNet(5, "resnet50_ibn_a", num_features=32)  # freeze='layer2' by default, as in ECN
    frozen = nn.ModuleList(model.frozen_modules())
    assert len(_bns(frozen)) == 24  # bn1 of the stem, the BN halves and all other BNs of layer1-2
    assert len(_ins(frozen)) == 7  # the IN halves of layer1 (3 blocks) and layer2 (4 blocks)
    for name, p in model.base.named_parameters():
        assert p.requires_grad == name.startswith(("layer3", "layer4")), name
    model.eval()
    model.train()
    model.train()
    assert all(not m.training for m in _bns(frozen) + _ins(frozen))
    assert all(m.training for m in _bns(model.base.layer3) + _ins(model.base.layer3))
    before = {k: v.clone() for k, v in model.base.state_dict().items() if "running" in k}
    model(_x(2, 64, 32))
    after = model.base.state_dict()
    for k, v in before.items():
        assert (not torch.equal(v, after[k])) == k.startswith(("layer3", "layer4")), k
    # freeze=None: every IN and BN trains
    free = ReIDNet(5, "resnet18_ibn_a", num_features=0, freeze=None)
    assert all(m.training for m in _bns(free) + _ins(free))
    assert all(p.requires_grad for p in free.parameters())


def test_ibn_last_stride_and_param_groups():
    model = ReIDNet(5, "resnet50_ibn_a", num_features=0, last_stride=1).eval()
    fmap = {}
    model.base.layer4.register_forward_hook(lambda m, i, o: fmap.__setitem__("s", tuple(o.shape[-2:])))
    with torch.no_grad():
        model(_x(1, 128, 64))
    assert fmap["s"] == (8, 4)
    groups = param_groups(model, 0.01, 0.1)
    trainable = {id(p) for n, p in model.base.named_parameters() if n.startswith(("layer3", "layer4"))}
    assert {id(p) for p in groups[0]["params"]} == trainable


def test_ibn_pretrained_from_a_local_file(tmp_path):
    from reidlab.ibn import resnet18_ibn_a

    torch.manual_seed(4)
    src = resnet18_ibn_a()
    with torch.no_grad():
        src.layer1[0].bn1.IN.weight.uniform_(0.5, 1.5)
    path = tmp_path / "resnet18_ibn_a.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)  # the release format
    model = ReIDNet(5, "resnet18_ibn_a", pretrained=path, num_features=0)
    for k, v in src.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(model.base.state_dict()[k], v), k
    assert not model.base.layer1[0].bn1.IN.weight.requires_grad  # freezing applied after loading

    plain = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), plain)
    with pytest.raises(ValueError, match=r"backbone tensors of resnet18_ibn_a unset: base\.layer1\.0\.bn1\.IN\.weight"):
        ReIDNet(5, "resnet18_ibn_a", pretrained=plain)


def test_ibn_pretrained_rejects_torchvision_weight_names():
    with pytest.raises(ValueError, match="no weights for resnet50_ibn_a"):
        ReIDNet(5, "resnet50_ibn_a", pretrained="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="local weight file"):
        resolve_weights("resnet18_ibn_a", torchvision.models.ResNet18_Weights.IMAGENET1K_V1)
    assert resolve_weights("resnet18_ibn_a", None) is None
