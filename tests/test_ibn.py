"""reidlab.ibn: the IBN layer against separate IN/BN modules, the published IBN-Net layout, 256x128 inputs.

The released IBN-Net weight files can only load with strict=True if our state_dict has the
published keys, order and shapes. No weight file can be downloaded here, so the expected key
list is *generated* from the published structure (XingangPan/IBN-Net, ibnnet/resnet_ibn.py):

* IBN-a = torchvision's ResNet with the same module names and registration order, except that
  in every block of layer1, layer2 and layer3 (not layer4) ``bn1`` is an IBN layer whose children
  are ``IN`` = InstanceNorm2d(half, affine=True) (weight and bias only: no running stats) and
  ``BN`` = BatchNorm2d(planes - half), half = planes // 2. So each such block's five ``bn1.*``
  entries become ``bn1.IN.{weight,bias}`` followed by ``bn1.BN.{weight,bias,running_mean,
  running_var,num_batches_tracked}``, in place.

(During development the models were also compared key by key, and output by output at
224x224, with a local copy of the published code; that copy is not part of this repository.)
"""
from __future__ import annotations

import pickle
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn

from reidlab.ibn import IBN, Bottleneck, ResNetIBN, load_pretrained, resnet18_ibn_a, resnet34_ibn_a, resnet50_ibn_a

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def expected_ibn_a_keys(tv_model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """torchvision ResNet keys with each layer1-3 block's bn1 replaced by the IBN layer's keys."""
    out: list[tuple[str, tuple[int, ...]]] = []
    for key, shape in _shapes(tv_model):
        parts = key.split(".")
        is_ibn_bn1 = parts[0] in ("layer1", "layer2", "layer3") and len(parts) == 4 and parts[2] == "bn1"
        if not is_ibn_bn1:
            out.append((key, shape))
            continue
        prefix, leaf = ".".join(parts[:3]), parts[3]
        if leaf == "weight":  # the BN's first entry: emit the whole IBN group here
            planes = shape[0]
            half = planes // 2
            out += [(f"{prefix}.IN.weight", (half,)), (f"{prefix}.IN.bias", (half,))]
            out += [(f"{prefix}.BN.{k}", () if k == "num_batches_tracked" else (planes - half,)) for k in BN_KEYS]
    return out


# --- the IBN layer --------------------------------------------------------------------------------


@pytest.mark.parametrize("planes,ratio", [(8, 0.5), (7, 0.5), (16, 0.25), (10, 0.7)])
def test_ibn_is_in_on_first_channels_and_bn_on_the_rest(planes, ratio):
    gen = torch.Generator().manual_seed(0)
    layer = IBN(planes, ratio)
    half = int(planes * ratio)
    assert layer.num_in == half
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    inorm = nn.InstanceNorm2d(half, affine=True)
    bnorm = nn.BatchNorm2d(planes - half)
    inorm.load_state_dict(layer.IN.state_dict())
    bnorm.load_state_dict(layer.BN.state_dict())
    # per-image, per-channel style: scale and shift differ for every (sample, channel)
    x = torch.randn(4, planes, 5, 6, generator=gen) * (torch.rand(4, planes, 1, 1, generator=gen) * 3) + 2
    for training in (True, False):
        layer.train(training)
        inorm.train(training)
        bnorm.train(training)
        xa = x.clone().requires_grad_(True)
        xb = x.clone().requires_grad_(True)
        out = layer(xa)
        ref = torch.cat((inorm(xb[:, :half]), bnorm(xb[:, half:])), 1)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        g = torch.randn(out.shape, generator=gen)
        (out * g).sum().backward()
        (ref * g).sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.BN.running_mean, bnorm.running_mean)
    # the IN half is normalised per image: every (sample, channel) of it has mean beta
    layer.eval()
    with torch.no_grad():
        y = layer(x)[:, :half]
    torch.testing.assert_close(y.mean(dim=(2, 3)), layer.IN.bias.expand(4, half), rtol=1e-4, atol=1e-4)


def test_ibn_state_dict_layout():
    layer = IBN(64)
    assert _shapes(layer) == [
        ("IN.weight", (32,)), ("IN.bias", (32,)),
        ("BN.weight", (32,)), ("BN.bias", (32,)), ("BN.running_mean", (32,)), ("BN.running_var", (32,)),
        ("BN.num_batches_tracked", ()),
    ]
    assert isinstance(layer.IN, nn.InstanceNorm2d) and layer.IN.affine and not layer.IN.track_running_stats


def test_ibn_bad_input():
    with pytest.raises(ValueError, match="both parts need at least one channel"):
        IBN(8, ratio=0.0)
    with pytest.raises(ValueError, match="both parts need at least one channel"):
        IBN(1)
    with pytest.raises(ValueError, match=r"expects input \(N, 8, H, W\), got \(2, 6, 3, 3\)"):
        IBN(8)(torch.randn(2, 6, 3, 3))
    with pytest.raises(ValueError, match="ibn must be 'a' or None"):
        Bottleneck(64, 16, ibn="c")


# --- the published layout -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ours,tv",
    [
        (resnet18_ibn_a, torchvision.models.resnet18),
        (resnet34_ibn_a, torchvision.models.resnet34),
        (resnet50_ibn_a, torchvision.models.resnet50),
    ],
)
def test_ibn_a_state_dict_matches_published_layout(ours, tv):
    model = ours()
    expected = expected_ibn_a_keys(tv(weights=None))
    got = _shapes(model)
    assert [k for k, _ in got] == [k for k, _ in expected]  # same keys in the same order
    assert got == expected  # and the same shapes
    # IBN layers exactly in layer1-3, one per block, always as bn1; none in layer4 or the stem
    ibn_names = [n for n, m in model.named_modules() if isinstance(m, IBN)]
    n_blocks = sum(len(getattr(model, f"layer{i}")) for i in (1, 2, 3))
    assert len(ibn_names) == n_blocks
    assert all(n.split(".")[0] in ("layer1", "layer2", "layer3") and n.endswith(".bn1") for n in ibn_names)
    assert not any(isinstance(m, nn.InstanceNorm2d) for m in model.layer4.modules())


@pytest.mark.parametrize("ours,tv", [(resnet18_ibn_a, torchvision.models.resnet18), (resnet50_ibn_a, torchvision.models.resnet50)])
def test_ibn_a_is_torchvisions_resnet_with_bn1_swapped(ours, tv):
    """Same seed, same weights: every tensor outside the IBN layers equals torchvision's, and the IBN
    layers start where torchvision's BN init starts (gamma 1, beta 0, running mean 0, var 1)."""
    torch.manual_seed(0)
    model = ours()
    torch.manual_seed(0)
    plain = tv(weights=None).state_dict()
    assert isinstance(model, torchvision.models.ResNet) and isinstance(model.avgpool, nn.AdaptiveAvgPool2d)
    for key, value in model.state_dict().items():
        if ".bn1.IN." in key or ".bn1.BN." in key:
            half = key.replace(".IN.", ".").replace(".BN.", ".")
            assert torch.equal(value, plain[half][: value.numel()] if value.dim() else plain[half]), key
        else:
            assert torch.equal(value, plain[key]), key


def test_bottleneck_is_torchvisions_with_ibn_bn1():
    torch.manual_seed(0)
    ours = Bottleneck(64, 16, ibn="a")
    torch.manual_seed(0)
    plain = torchvision.models.resnet.Bottleneck(64, 16)
    assert isinstance(ours.bn1, IBN) and list(ours._modules) == list(plain._modules)
    assert list(Bottleneck(64, 16).state_dict()) == list(plain.state_dict())
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in plain.state_dict().items() if not k.startswith("bn1"))


def test_resnet50_ibn_a_has_resnet50s_parameter_count():
    ours = sum(p.numel() for p in resnet50_ibn_a().parameters())
    theirs = sum(p.numel() for p in torchvision.models.resnet50(weights=None).parameters())
    assert ours == theirs
    # the buffers do shrink: the IN halves keep no running statistics
    n_buf = sum(b.numel() for b in resnet50_ibn_a().buffers())
    assert n_buf < sum(b.numel() for b in torchvision.models.resnet50(weights=None).buffers())


# --- 256x128 re-ID inputs ------------------------------------------------------------------------


def test_resnet50_ibn_a_at_256x128():
    model = resnet50_ibn_a().eval()
    x = torch.randn(2, 3, 256, 128, generator=torch.Generator().manual_seed(1))
    seen = {}
    model.layer4.register_forward_hook(lambda m, i, o: seen.update(fmap=o))
    model.avgpool.register_forward_hook(lambda m, i, o: seen.update(feat=torch.flatten(o, 1)))
    with torch.no_grad():
        logits = model(x)
    feat = seen["feat"]
    fmap = seen["fmap"]
    assert fmap.shape == (2, 2048, 8, 4)  # stride 32: 256x128 -> 8x4
    assert feat.shape == (2, 2048)
    assert logits.shape == (2, 1000)
    torch.testing.assert_close(feat, fmap.mean(dim=(2, 3)))
    torch.testing.assert_close(logits, model.fc(feat))

    # the published model applies a fixed nn.AvgPool2d(7) to this 8x4 map: it fails
    with pytest.raises(RuntimeError, match="(?i)output size is too small"):
        nn.AvgPool2d(7)(fmap)


def test_fixed_pool_agrees_only_at_224():
    fmap7 = torch.randn(2, 16, 7, 7)  # what a 224x224 image leaves after layer4
    torch.testing.assert_close(nn.AvgPool2d(7)(fmap7), nn.AdaptiveAvgPool2d(1)(fmap7))
    fmap9 = torch.randn(2, 16, 9, 9)  # a 288x288 image: the fixed pool silently drops the border
    assert nn.AvgPool2d(7)(fmap9).shape == (2, 16, 1, 1)
    assert not torch.allclose(nn.AvgPool2d(7)(fmap9), nn.AdaptiveAvgPool2d(1)(fmap9))


# --- loading a weight file ------------------------------------------------------------------------


def _trained_copy(model: nn.Module) -> nn.Module:
    """A few training-mode forwards so the BN buffers are not at their defaults."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, 64, 32))
    return model.eval()


def test_load_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    src = _trained_copy(resnet18_ibn_a(num_classes=7))
    path = tmp_path / "resnet18_ibn_a.pth"
    torch.save(src.state_dict(), path)
    dst = resnet18_ibn_a(num_classes=7).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert not torch.allclose(dst(x), src(x))
    result = load_pretrained(dst, path)
    assert result.missing_keys == [] and result.unexpected_keys == []
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_load_pretrained_checkpoint_with_module_prefix(tmp_path):
    torch.manual_seed(1)
    src = _trained_copy(resnet18_ibn_a(num_classes=5))
    wrapped = nn.DataParallel(src)  # keys 'module.conv1.weight', ... as in the original release's checkpoints
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": wrapped.state_dict(), "epoch": 3}, path)
    dst = resnet18_ibn_a(num_classes=5).eval()
    load_pretrained(dst, str(path))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_load_pretrained_old_file_without_num_batches_tracked(tmp_path):
    src = _trained_copy(resnet18_ibn_a(num_classes=3))
    sd = OrderedDict((k, v) for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked"))
    path = tmp_path / "old.pth"
    torch.save(sd, path)
    dst = resnet18_ibn_a(num_classes=3)
    load_pretrained(dst, path)
    torch.testing.assert_close(dst.layer1[0].bn1.BN.running_var, src.layer1[0].bn1.BN.running_var)


def test_load_pretrained_errors(tmp_path):
    a_file = tmp_path / "a.pth"
    torch.save(resnet18_ibn_a().state_dict(), a_file)
    # the wrong architecture: IBN-a weights into a plain torchvision ResNet-18
    with pytest.raises(ValueError, match=r"keys missing from the file: .*layer1\.0\.bn1\.weight") as err:
        load_pretrained(torchvision.models.resnet18(weights=None), a_file)
    assert "unexpected keys in the file: " in str(err.value) and "layer1.0.bn1.IN.weight" in str(err.value)
    # a different head: shapes differ, an error even when not strict
    with pytest.raises(ValueError, match=r"shape mismatches: fc\.weight: file \(1000, 512\) vs model \(10, 512\)"):
        load_pretrained(resnet18_ibn_a(num_classes=10), a_file, strict=False)
    # strict=False skips missing/unexpected keys and reports them
    b_file = tmp_path / "b.pth"
    sd = resnet18_ibn_a().state_dict()
    sd.pop("fc.bias")
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, b_file)
    result = load_pretrained(resnet18_ibn_a(), b_file, strict=False)
    assert result.missing_keys == ["fc.bias"] and result.unexpected_keys == ["extra.weight"]
    # not a state dict at all
    c_file = tmp_path / "c.pth"
    torch.save({"epoch": 3, "best": 0.5}, c_file)
    with pytest.raises(TypeError, match="holds neither a state_dict"):
        load_pretrained(resnet18_ibn_a(), c_file)
    with pytest.raises(FileNotFoundError, match="no weight file"):
        load_pretrained(resnet18_ibn_a(), tmp_path / "missing.pth")


def test_load_pretrained_refuses_pickled_code(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": resnet18_ibn_a().state_dict(), "cfg": ResNetIBN}, path)  # a class: not weights
    with pytest.raises(pickle.UnpicklingError, match="(?i)weights only load failed"):
        load_pretrained(resnet18_ibn_a(), path)
