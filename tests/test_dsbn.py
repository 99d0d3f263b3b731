"""reidlab.dsbn against PyTorch's own BN modules and against the classic split-batch snippet.

Every DSBN branch must behave exactly like an independent ``nn.BatchNorm`` fed the same data
(outputs, running statistics, num_batches_tracked, gradients); the split mode must do what the
widely copied snippet of a Chinese blog post on domain-specific BN for unsupervised re-ID
("训练过程source和target采用不同的BN参数…") does (re-stated below in our own words);
conversion must be lossless both ways, on any device and dtype, and survive a state_dict
round trip with strict=True.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from reidlab.dsbn import DSBN1d, DSBN2d, convert_bn, convert_dsbn, domain, dsbn_layers

def _randomise_bn(bn: nn.Module, gen: torch.Generator, nbt: int = 3) -> None:
    """Give a BN layer non-default weight, bias and running stats, so that copying them matters."""
    c = bn.num_features
    with torch.no_grad():
        if bn.affine:
            bn.weight.copy_(torch.rand(c, generator=gen) + 0.5)
            bn.bias.copy_(torch.randn(c, generator=gen))
        if bn.track_running_stats:
            bn.running_mean.copy_(torch.randn(c, generator=gen))
            bn.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            bn.num_batches_tracked.fill_(nbt)


def _inputs(kind: str, n: int, c: int, gen: torch.Generator) -> torch.Tensor:
    shape = {"1d": (n, c), "1d3": (n, c, 5), "2d": (n, c, 4, 3)}[kind]
    # each call a different scale/shift, so the running stats move visibly
    return torch.randn(shape, generator=gen) * 2.0 + 1.0


def _assert_same_bn(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6, msg=f"{k} differs")


# --- each branch is an ordinary BN -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["1d", "1d3", "2d"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_each_branch_matches_an_independent_batchnorm(kind, momentum):
    gen = torch.Generator().manual_seed(0)
    c, num_domains = 6, 3
    cls, ref_cls = (DSBN2d, nn.BatchNorm2d) if kind == "2d" else (DSBN1d, nn.BatchNorm1d)
    layer = cls(c, num_domains, momentum=momentum)
    for bn in layer.bns:
        _randomise_bn(bn, gen)
    # independent references: fresh PyTorch modules holding the same starting state
    refs = []
    for bn in layer.bns:
        ref = ref_cls(c, momentum=momentum)
        ref.load_state_dict(bn.state_dict())
        refs.append(ref)
    untouched = [copy.deepcopy(bn.state_dict()) for bn in layer.bns]

    d = 1
    layer.train()
    for ref in refs:
        ref.train()
    for step in range(3):
        x = _inputs(kind, 5, c, gen).requires_grad_(True)  # odd batch: fine with an explicit domain
        x_ref = x.detach().clone().requires_grad_(True)
        g = torch.randn(x.shape, generator=gen)
        with domain(layer, d):
            out = layer(x)
        out_ref = refs[d](x_ref)
        torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
        (out * g).sum().backward()
        (out_ref * g).sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.bns[d].weight.grad, refs[d].weight.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.bns[d].bias.grad, refs[d].bias.grad, rtol=1e-5, atol=1e-5)
    _assert_same_bn(layer.bns[d], refs[d])
    assert int(layer.bns[d].num_batches_tracked) == 3 + 3
    # the other branches saw nothing: same state as before, no gradient
    for other in (0, 2):
        _assert_same_bn(layer.bns[other], refs[other])
        for k, v in untouched[other].items():
            assert torch.equal(layer.bns[other].state_dict()[k], v), k
        assert layer.bns[other].weight.grad is None

    # eval: each branch normalises with its own running statistics
    layer.eval()
    x = _inputs(kind, 4, c, gen)
    for i, ref in enumerate(refs):
        ref.eval()
        with domain(layer, i):
            torch.testing.assert_close(layer(x), ref(x), rtol=1e-5, atol=1e-6)
    # and with no domain chosen, eval uses eval_domain (last by default)
    assert layer.eval_domain == num_domains - 1
    torch.testing.assert_close(layer(x), refs[-1](x), rtol=1e-5, atol=1e-6)
    layer.eval_domain = 0
    torch.testing.assert_close(layer(x), refs[0](x), rtol=1e-5, atol=1e-6)


def test_branches_keep_bn_settings():
    layer = DSBN2d(4, 2, eps=1e-3, momentum=0.3, affine=False, track_running_stats=False)
    for bn in layer.bns:
        assert type(bn) is nn.BatchNorm2d
        assert (bn.eps, bn.momentum, bn.affine, bn.track_running_stats) == (1e-3, 0.3, False, False)
    assert list(layer.state_dict()) == []


# --- split-batch mode = the classic snippet --------------------------------------------------------


class ClassicSplitBN(nn.Module):
    """The behaviour of the blog post's split-batch snippet, re-stated: two BNs, S and T.

    Training: the first half of the batch goes through BN_S, the second half through BN_T,
    the two outputs are concatenated in that order. Eval: the whole batch goes through BN_T.
    """

    def __init__(self, bn_s: nn.Module, bn_t: nn.Module) -> None:
        super().__init__()
        self.BN_S, self.BN_T = bn_s, bn_t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.BN_T(x)
        half = x.shape[0] // 2
        return torch.cat((self.BN_S(x[:half]), self.BN_T(x[half:])), 0)


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_split_mode_matches_classic_snippet(kind):
    gen = torch.Generator().manual_seed(1)
    c = 5
    cls, ref_cls = (DSBN2d, nn.BatchNorm2d) if kind == "2d" else (DSBN1d, nn.BatchNorm1d)
    layer = cls(c)  # 2 domains, split mode (domain=None) by default
    assert layer.domain is None
    for bn in layer.bns:
        _randomise_bn(bn, gen)
    bn_s, bn_t = ref_cls(c), ref_cls(c)
    bn_s.load_state_dict(layer.bns[0].state_dict())
    bn_t.load_state_dict(layer.bns[1].state_dict())
    classic = ClassicSplitBN(bn_s, bn_t)

    layer.train()
    classic.train()
    for step in range(3):
        # source half and target half drawn from different distributions
        xs = _inputs(kind, 4, c, gen)
        xt = _inputs(kind, 4, c, gen) * 3.0 - 2.0
        x = torch.cat((xs, xt)).requires_grad_(True)
        x_ref = x.detach().clone().requires_grad_(True)
        g = torch.randn(x.shape, generator=gen)
        out, out_ref = layer(x), classic(x_ref)
        torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-6)
        (out * g).sum().backward()
        (out_ref * g).sum().backward()
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.bns[0].weight.grad, bn_s.weight.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(layer.bns[1].bias.grad, bn_t.bias.grad, rtol=1e-5, atol=1e-5)
    _assert_same_bn(layer.bns[0], bn_s)
    _assert_same_bn(layer.bns[1], bn_t)
    # the branches really did see different data
    assert not torch.allclose(layer.bns[0].running_mean, layer.bns[1].running_mean)

    layer.eval()
    classic.eval()
    x = _inputs(kind, 3, c, gen)  # odd is fine in eval
    torch.testing.assert_close(layer(x), classic(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer(x), bn_t(x), rtol=1e-5, atol=1e-6)


def test_split_mode_with_three_domains_uses_consecutive_thirds():
    gen = torch.Generator().manual_seed(2)
    layer = DSBN2d(3, num_domains=3).train()
    x = _inputs("2d", 6, 3, gen)
    refs = [copy.deepcopy(bn) for bn in layer.bns]
    out = layer(x)
    expected = torch.cat([refs[i](x[2 * i: 2 * i + 2]) for i in range(3)])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [1, 3, 5, 7])
def test_odd_batch_in_split_training_is_a_clear_value_error(n):
    layer = DSBN2d(4).train()
    with pytest.raises(ValueError, match=rf"odd batch of {n} samples.*cannot be cut into 2 equal"):
        layer(torch.randn(n, 4, 3, 3))


def test_batch_of_two_in_split_training_is_a_clear_value_error():
    layer = DSBN1d(4).train()
    with pytest.raises(ValueError, match=r"batch of 2 samples, i\.e\. 1 per domain.*at least 2"):
        layer(torch.randn(2, 4))
    layer2 = DSBN2d(4, num_domains=3).train()
    with pytest.raises(ValueError, match=r"batch of 4 samples.*cannot be cut into 3 equal"):
        layer2(torch.randn(4, 4, 2, 2))


def test_odd_batch_is_fine_in_eval_and_with_an_explicit_domain():
    layer = DSBN2d(4)
    x = torch.randn(3, 4, 3, 3)
    layer.eval()
    assert layer(x).shape == x.shape
    layer.train()
    layer.domain = 0
    assert layer(x).shape == x.shape


def test_bad_domain_values():
    layer = DSBN2d(4)
    with pytest.raises(ValueError, match="out of range.*2 domains"):
        with domain(layer, 2):
            pass
    layer.domain = 5
    with pytest.raises(ValueError, match="domain=5 is out of range"):
        layer(torch.randn(4, 4, 2, 2))
    with pytest.raises(TypeError, match="domain must be an int"):
        with domain(layer, "target"):
            pass
    with pytest.raises(ValueError, match="eval_domain=2 is out of range"):
        DSBN1d(4, 2, eval_domain=2)
    with pytest.raises(ValueError, match="num_domains must be an int >= 1"):
        DSBN1d(4, 0)


# --- the domain context manager -----------------------------------------------------------------


def _two_layer_model() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 1), DSBN2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 9, 6), DSBN1d(6))


def test_domain_context_manager_sets_every_layer_and_restores():
    model = _two_layer_model()
    model[5].domain = 0  # a layer with its own explicit choice
    with domain(model, 1) as m:
        assert m is model
        assert [layer.domain for layer in dsbn_layers(model)] == [1, 1]
    assert [layer.domain for layer in dsbn_layers(model)] == [None, 0]
    # restored also when the block raises
    with pytest.raises(RuntimeError, match="boom"):
        with domain(model, -1):
            assert [layer.domain for layer in dsbn_layers(model)] == [-1, -1]
            raise RuntimeError("boom")
    assert [layer.domain for layer in dsbn_layers(model)] == [None, 0]
    # nested blocks unwind in order
    with domain(model, 0):
        with domain(model, None):
            assert [layer.domain for layer in dsbn_layers(model)] == [None, None]
        assert [layer.domain for layer in dsbn_layers(model)] == [0, 0]


def test_domain_context_manager_routes_the_data():
    gen = torch.Generator().manual_seed(3)
    model = _two_layer_model().train()
    x = torch.randn(3, 3, 3, 3, generator=gen)  # odd: needs an explicit domain in training
    before = [copy.deepcopy(layer.bns[0].state_dict()) for layer in dsbn_layers(model)]
    with domain(model, 1):
        model(x)
    for layer, b in zip(dsbn_layers(model), before):
        assert int(layer.bns[1].num_batches_tracked) == 1
        assert int(layer.bns[0].num_batches_tracked) == 0
        assert torch.equal(layer.bns[0].running_mean, b["running_mean"])


def test_domain_context_manager_on_a_model_without_dsbn():
    with pytest.raises(ValueError, match="contains no DSBN layers; convert it first"):
        with domain(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), 0):
            pass


# --- conversion both ways ------------------------------------------------------------------------


def _random_resnet18(gen: torch.Generator, odd_settings: bool = True) -> nn.Module:
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    for i, m in enumerate(model.modules()):
        if isinstance(m, nn.BatchNorm2d):
            _randomise_bn(m, gen, nbt=i)
    if odd_settings:  # settings that must be carried over (they are not in the state_dict)
        model.bn1.eps, model.bn1.momentum = 1e-3, 0.05
        model.layer1[0].bn2.weight.requires_grad_(False)
    return model


def test_convert_dsbn_then_convert_bn_round_trip_on_resnet18():
    gen = torch.Generator().manual_seed(4)
    original = _random_resnet18(gen).eval()
    bn_names = [n for n, m in original.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bn_names) == 20
    model = convert_dsbn(copy.deepcopy(original), num_domains=2)
    modules = dict(model.named_modules())
    for name in bn_names:
        layer = modules[name]
        assert type(layer) is DSBN2d and layer.num_domains == 2
        assert layer.training is False
        for branch in layer.bns:
            _assert_same_bn(branch, dict(original.named_modules())[name])
    # no plain BN left outside the DSBN branches
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 2 * 20
    assert (model.bn1.bns[1].eps, model.bn1.bns[1].momentum) == (1e-3, 0.05)
    assert model.layer1[0].bn2.bns[0].weight.requires_grad is False
    assert model.layer1[0].bn2.bns[0].bias.requires_grad is True

    x = torch.randn(2, 3, 64, 32, generator=gen)
    with torch.no_grad():
        ref = original(x)
        torch.testing.assert_close(model(x), ref)  # eval_domain branch holds the copied stats
        with domain(model, 0):
            torch.testing.assert_close(model(x), ref)

    # train the source branch only, so the branches differ
    model.train()
    with domain(model, 0):
        model(torch.randn(4, 3, 64, 32, generator=gen) * 3 + 1)
    model.eval()
    assert not torch.equal(model.bn1.bns[0].running_mean, model.bn1.bns[1].running_mean)
    with torch.no_grad(), domain(model, 0):
        out_source = model(x)
    with torch.no_grad():
        out_default = model(x)
    torch.testing.assert_close(out_default, ref)  # the target branch was not touched

    back = convert_bn(copy.deepcopy(model), domain=0)
    assert not dsbn_layers(back)
    assert sum(type(m) is nn.BatchNorm2d for m in back.modules()) == 20
    assert list(back.state_dict()) == list(original.state_dict())
    for name in bn_names:
        _assert_same_bn(dict(back.named_modules())[name], dict(model.named_modules())[name].bns[0])
    assert (back.bn1.eps, back.bn1.momentum) == (1e-3, 0.05)
    assert back.layer1[0].bn2.weight.requires_grad is False
    with torch.no_grad():
        torch.testing.assert_close(back(x), out_source)
        # default: each layer's eval_domain (the target), which still equals the original
        torch.testing.assert_close(convert_bn(copy.deepcopy(model))(x), ref)


def test_convert_dsbn_keeps_train_flag_dtype_and_device():
    gen = torch.Generator().manual_seed(5)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Sequential(nn.Unflatten(1, (4, 1, 1)), nn.BatchNorm2d(4)))
    model = model.double()
    _randomise_bn(model[1], gen)
    model[2][1].eval()
    convert_dsbn(model, num_domains=3, eval_domain=0)
    assert type(model[1]) is DSBN1d and type(model[2][1]) is DSBN2d
    assert model[1].training and not model[2][1].training
    assert all(not b.training for b in model[2][1].bns)
    assert model[1].eval_domain == 0 and model[1].num_domains == 3
    for t in model[1].state_dict().values():
        assert t.dtype in (torch.float64, torch.int64)
    assert model[1].bns[2].weight.dtype == torch.float64
    # the meta device has no data but keeps the device: the new layers must be created there too
    meta = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).to("meta")
    convert_dsbn(meta)
    assert {t.device.type for t in meta.state_dict().values()} == {"meta"}
    convert_bn(meta, 1)
    assert {t.device.type for t in meta.state_dict().values()} == {"meta"}


def test_convert_dsbn_twice_does_not_nest_and_top_level_bn():
    model = convert_dsbn(torchvision.models.resnet18(weights=None))
    keys = list(model.state_dict())
    convert_dsbn(model)
    assert list(model.state_dict()) == keys
    layer = convert_dsbn(nn.BatchNorm1d(3))
    assert type(layer) is DSBN1d
    assert type(convert_bn(layer, 0)) is nn.BatchNorm1d
    with pytest.raises(ValueError, match="num_domains must be an int >= 1"):
        convert_dsbn(nn.BatchNorm1d(3), num_domains=0)
    with pytest.raises(ValueError, match="out of range"):
        convert_bn(convert_dsbn(nn.BatchNorm1d(3)), domain=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_convert_dsbn_on_cuda():
    gen = torch.Generator().manual_seed(6)
    original = _random_resnet18(gen).eval().cuda()
    model = convert_dsbn(copy.deepcopy(original))  # the classic snippet asserts CPU here
    assert {t.device.type for t in model.state_dict().values()} == {"cuda"}
    x = torch.randn(2, 3, 64, 32, generator=gen).cuda()
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x))
    model.train()
    with domain(model, 0):
        model(x.repeat(2, 1, 1, 1))
    back = convert_bn(model, 1).eval()
    assert {t.device.type for t in back.state_dict().values()} == {"cuda"}
    with torch.no_grad():
        torch.testing.assert_close(back(x), original(x))


def test_state_dict_round_trip_strict(tmp_path):
    gen = torch.Generator().manual_seed(7)
    model = convert_dsbn(_random_resnet18(gen, odd_settings=False))  # eps is not in a state_dict
    model.train()
    model(torch.randn(4, 3, 64, 32, generator=gen))  # split mode: the two branches diverge
    model.eval()
    path = tmp_path / "dsbn.pt"
    torch.save(model.state_dict(), path)

    fresh = convert_dsbn(torchvision.models.resnet18(weights=None, num_classes=10)).eval()
    assert list(fresh.state_dict()) == list(model.state_dict())
    result = fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 3, 64, 32, generator=gen)
    with torch.no_grad():
        for d in (0, 1):
            with domain(model, d), domain(fresh, d):
                torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
        with domain(model, 0), domain(fresh, 1):
            assert not torch.allclose(fresh(x), model(x))
