"""reidlab.bn against PyTorch's own BN modules, and the freezing / recalibration helpers.

The from-scratch batch_norm must give the same outputs, the same in-place buffer updates
(running_mean, running_var, num_batches_tracked) and the same gradients as nn.BatchNorm1d/2d
and F.batch_norm; the helpers are checked on torchvision's ResNet-50 (weights=None) and on
small models whose right answer can be worked out by hand.
"""
from __future__ import annotations

import ast
import copy
import io
import json
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reidlab.bn import (
    BNSummary,
    batch_norm,
    bn_summary,
    freeze_bn,
    is_bn,
    recalibrate_bn,
    set_bn_eval,
    unfreeze_bn,
)

NOTEBOOK_01 = Path(__file__).resolve().parents[1] / "notebooks" / "01_batchnorm_from_scratch.ipynb"


def _tol(dtype: torch.dtype) -> dict:
    return {"atol": 1e-5, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 1e-9}


def _random_shape(kind: str, gen: torch.Generator, channels: int) -> tuple[int, ...]:
    n = int(torch.randint(2, 7, (1,), generator=gen))
    if kind == "NC":
        return (n, channels)
    if kind == "NCL":
        return (n, channels, int(torch.randint(1, 6, (1,), generator=gen)))
    return (n, channels, int(torch.randint(1, 5, (1,), generator=gen)), int(torch.randint(1, 5, (1,), generator=gen)))


def _module_for(kind: str, channels: int, **kw) -> nn.Module:
    return (nn.BatchNorm2d if kind == "NCHW" else nn.BatchNorm1d)(channels, **kw)


# --- batch_norm vs nn.BatchNorm1d/2d ---------------------------------------------------------


@pytest.mark.parametrize("track", [True, False], ids=["track", "notrack"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
@pytest.mark.parametrize("momentum", [0.1, 0.5, None], ids=["m0.1", "m0.5", "mNone"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", ["NC", "NCL", "NCHW"])
def test_batch_norm_matches_module(kind, dtype, momentum, affine, track):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((kind, dtype, momentum, affine, track)).encode()))
    channels = int(torch.randint(1, 5, (1,), generator=gen))
    ref = _module_for(kind, channels, momentum=momentum, affine=affine, track_running_stats=track).to(dtype)
    if affine:
        with torch.no_grad():
            ref.weight.copy_(torch.rand(channels, generator=gen, dtype=dtype) + 0.5)
            ref.bias.copy_(torch.randn(channels, generator=gen, dtype=dtype))
        weight = ref.weight.detach().clone().requires_grad_(True)
        bias = ref.bias.detach().clone().requires_grad_(True)
    else:
        weight = bias = None
    if track:
        rm, rv = ref.running_mean.clone(), ref.running_var.clone()
        nbt = ref.num_batches_tracked.clone()
    else:
        assert ref.running_mean is None
        rm = rv = nbt = None

    def step(training: bool) -> None:
        x = torch.randn(_random_shape(kind, gen, channels), generator=gen, dtype=dtype) * 3 + 2
        x_ref = x.clone().requires_grad_(True)
        x_me = x.clone().requires_grad_(True)
        ref.train(training)
        y_ref = ref(x_ref)
        y_me = batch_norm(x_me, rm, rv, weight, bias, training=training, momentum=momentum, eps=ref.eps,
                          num_batches_tracked=nbt)
        torch.testing.assert_close(y_me, y_ref, **_tol(dtype))
        upstream = torch.randn(x.shape, generator=gen, dtype=dtype)
        (y_ref * upstream).sum().backward()
        (y_me * upstream).sum().backward()
        torch.testing.assert_close(x_me.grad, x_ref.grad, **_tol(dtype))
        if affine:
            torch.testing.assert_close(weight.grad, ref.weight.grad, **_tol(dtype))
            torch.testing.assert_close(bias.grad, ref.bias.grad, **_tol(dtype))
            weight.grad = bias.grad = ref.weight.grad = ref.bias.grad = None
        if track:
            torch.testing.assert_close(rm, ref.running_mean, **_tol(dtype))
            torch.testing.assert_close(rv, ref.running_var, **_tol(dtype))
            assert int(nbt) == int(ref.num_batches_tracked)

    for _ in range(3):
        step(training=True)
    if track:
        assert int(nbt) == 3
        # after several steps the running stats have really moved away from (0, 1)
        assert not torch.allclose(rm, torch.zeros_like(rm))
    step(training=False)
    if track:
        assert int(nbt) == 3  # eval does not count batches
    step(training=True)


def test_batch_norm_matches_functional_5d_and_leaves_buffers_alone_in_eval():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 2, 3, 2, generator=gen)
    w, b = torch.rand(4, generator=gen) + 0.5, torch.randn(4, generator=gen)
    rm_ref, rv_ref = torch.randn(4, generator=gen), torch.rand(4, generator=gen) + 0.5
    rm, rv = rm_ref.clone(), rv_ref.clone()
    y_ref = F.batch_norm(x, rm_ref, rv_ref, w, b, training=True, momentum=0.3, eps=1e-3)
    y = batch_norm(x, rm, rv, w, b, training=True, momentum=0.3, eps=1e-3)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(rm, rm_ref)
    torch.testing.assert_close(rv, rv_ref)
    before = rm.clone(), rv.clone()
    y = batch_norm(x, rm, rv, w, b, training=False, eps=1e-3)
    torch.testing.assert_close(y, F.batch_norm(x, rm_ref, rv_ref, w, b, training=False, eps=1e-3))
    assert torch.equal(rm, before[0]) and torch.equal(rv, before[1])


def test_hand_worked_values_biased_vs_unbiased():
    # one channel, values 1 and 3: mean 2, biased var 1 (normalise), unbiased var 2 (running_var)
    x = torch.tensor([[1.0], [3.0]])
    rm, rv, nbt = torch.zeros(1), torch.ones(1), torch.tensor(0)
    y = batch_norm(x, rm, rv, training=True, momentum=None, eps=1e-12, num_batches_tracked=nbt)
    assert y.flatten().tolist() == pytest.approx([-1.0, 1.0])  # divided by sqrt(biased var) = 1, not sqrt(2)
    assert rm.item() == 2.0 and rv.item() == 2.0 and int(nbt) == 1  # factor 1/1 replaces the init
    # momentum 0.5 from there: running <- 0.5 * running + 0.5 * batch
    batch_norm(torch.tensor([[0.0], [4.0]]), rm, rv, training=True, momentum=0.5)
    assert rm.item() == 2.0 and rv.item() == pytest.approx(0.5 * 2 + 0.5 * 8)
    # cumulative average: after a second batch the factor is 1/2
    nbt2, rm2, rv2 = torch.tensor(0), torch.zeros(1), torch.ones(1)
    batch_norm(torch.tensor([[1.0], [3.0]]), rm2, rv2, momentum=None, num_batches_tracked=nbt2)
    batch_norm(torch.tensor([[5.0], [9.0]]), rm2, rv2, momentum=None, num_batches_tracked=nbt2)
    assert rm2.item() == pytest.approx((2 + 7) / 2) and rv2.item() == pytest.approx((2 + 8) / 2)


def test_eps_keeps_a_constant_channel_finite_and_must_be_positive():
    x = torch.full((4, 2, 3, 3), 5.0)
    y = batch_norm(x, None, None, eps=1e-5)
    assert torch.isfinite(y).all() and y.abs().max() == 0
    # eps = 0 would give 0 / sqrt(0) = NaN here: refused wherever batch statistics are used
    with pytest.raises(ValueError, match="eps must be positive"):
        batch_norm(x, None, None, eps=0.0)
    with pytest.raises(ValueError, match="eps must be positive"):
        batch_norm(x, torch.zeros(2), torch.ones(2), training=True, eps=0.0)
    with pytest.raises(ValueError, match="non-negative"):
        batch_norm(x, torch.zeros(2), torch.ones(2), training=False, eps=-1.0)
    # eval mode with running statistics accepts eps = 0, like F.batch_norm
    out = batch_norm(x, torch.full((2,), 4.0), torch.full((2,), 4.0), training=False, eps=0.0)
    torch.testing.assert_close(out, F.batch_norm(x, torch.full((2,), 4.0), torch.full((2,), 4.0), training=False, eps=0.0))
    assert torch.allclose(out, torch.full_like(x, 0.5))


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(3, generator=gen, dtype=torch.float64) + 0.5).requires_grad_(True)
    b = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: batch_norm(x, None, None, w, b, training=True), (x, w, b))
    rm, rv = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5
    assert torch.autograd.gradcheck(lambda x, w, b: batch_norm(x, rm, rv, w, b, training=False), (x, w, b))


def test_eval_mode_accepts_a_single_sample():
    y = batch_norm(torch.randn(1, 3), torch.zeros(3), torch.ones(3), training=False)
    assert y.shape == (1, 3)


@pytest.mark.parametrize(
    "x, kwargs, message",
    [
        (torch.randn(1, 3), {}, "more than 1 value per channel"),
        (torch.randn(1, 3, 1, 1), {}, "more than 1 value per channel"),
        (torch.randn(1, 3), {"running_mean": None, "running_var": None, "training": False}, "more than 1 value"),
        (torch.randn(5), {}, "at least 2 dims"),
        (torch.randn(4, 3), {"running_mean": torch.zeros(4)}, "running_mean has shape (4,)"),
        (torch.randn(4, 3), {"running_var": torch.ones(2)}, "running_var has shape (2,)"),
        (torch.randn(4, 3), {"weight": torch.ones(3, 1)}, "weight has shape (3, 1)"),
        (torch.randn(4, 3), {"bias": torch.zeros(5)}, "bias has shape (5,)"),
        (torch.randn(4, 3), {"running_var": None}, "both running_mean and running_var"),
        (torch.randn(4, 3), {"momentum": None}, "num_batches_tracked"),
    ],
)
def test_errors_are_clear_value_errors(x, kwargs, message):
    args = {"running_mean": torch.zeros(3), "running_var": torch.ones(3), **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        batch_norm(x, **args)


def test_single_value_per_channel_is_also_rejected_by_pytorch():
    with pytest.raises(ValueError):
        nn.BatchNorm1d(3).train()(torch.randn(1, 3))
    with pytest.raises(ValueError):
        batch_norm(torch.randn(1, 3), torch.zeros(3), torch.ones(3), training=True)


def test_type_errors():
    with pytest.raises(TypeError, match="x must be a tensor"):
        batch_norm([[1.0, 2.0]], None, None)
    with pytest.raises(TypeError, match="momentum"):
        batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(3), momentum="0.1")


# --- notebook 01's implementation agrees with reidlab's ---------------------------------------


def _notebook_function(name: str):
    """Exec the notebook cell that defines ``name`` (and only that cell) and return the function."""
    nb = json.loads(NOTEBOOK_01.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        if cell["cell_type"] != "code":
            continue
        tree = ast.parse(src)
        if any(isinstance(node, ast.FunctionDef) and node.name == name for node in tree.body):
            defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.Import, ast.ImportFrom))]
            namespace = {"torch": torch}
            exec(compile(ast.Module(body=defs, type_ignores=[]), str(NOTEBOOK_01), "exec"), namespace)
            return namespace[name]
    raise AssertionError(f"no code cell of {NOTEBOOK_01.name} defines {name}()")


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (3, 2, 4, 4)])
def test_notebook_01_batch_norm_agrees_with_reidlab(shape, momentum):
    nb_bn = _notebook_function("my_batch_norm")
    gen = torch.Generator().manual_seed(3)
    c = shape[1]
    w, b = torch.rand(c, generator=gen) + 0.5, torch.randn(c, generator=gen)
    nb_state = [torch.zeros(c), torch.ones(c), torch.tensor(0)]
    lib_state = [t.clone() for t in nb_state]
    for training in (True, True, True, False):
        x = torch.randn(shape, generator=gen) * 2 - 1
        y_nb = nb_bn(x, *nb_state, w, b, training=training, momentum=momentum, eps=1e-5)
        y_lib = batch_norm(x, lib_state[0], lib_state[1], w, b, training=training, momentum=momentum, eps=1e-5,
                           num_batches_tracked=lib_state[2])
        torch.testing.assert_close(y_nb, y_lib)
        for a, c_ in zip(nb_state, lib_state):
            torch.testing.assert_close(a, c_)
    assert int(lib_state[2]) == 3


# --- freeze_bn / unfreeze_bn ------------------------------------------------------------------


def _small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2), nn.BatchNorm1d(2),
    )


def _stats(model: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for n, b in model.named_buffers()]


def test_plain_eval_is_undone_by_model_train():
    """The bug freeze_bn fixes: bn.eval() lasts only until the next model.train()."""
    net = _small_net()
    net[1].eval()
    net.train()
    assert net[1].training


def test_freeze_bn_survives_train_and_blocks_stats_and_grads():
    net = _small_net()
    names = freeze_bn(net)
    assert names == ["1", "4", "9"]
    net.train()  # what every training loop calls at the start of an epoch
    assert all(not m.training for m in net.modules() if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)))
    assert net[0].training and net.training  # the rest of the model really is in train mode
    before = _stats(net)
    out = net(torch.randn(5, 3, 6, 6))
    out.sum().backward()
    for a, b in zip(before, _stats(net)):
        assert torch.equal(a, b)
    for i in (1, 4, 9):
        assert net[i].weight.grad is None and net[i].bias.grad is None
        assert not net[i].weight.requires_grad
    assert net[0].weight.grad is not None


def test_freeze_bn_options_and_unfreeze():
    net = _small_net()
    freeze_bn(net, stats=False, affine=True)
    net.train()
    assert net[1].training and not net[1].weight.requires_grad
    before = _stats(net)
    net(torch.randn(4, 3, 5, 5))
    assert not torch.equal(before[0], _stats(net)[0])  # requires_grad=False does not freeze the stats

    net = _small_net()
    freeze_bn(net, stats=True, affine=False)
    net.train()
    assert not net[1].training and net[1].weight.requires_grad
    assert unfreeze_bn(net) == ["1", "4", "9"]
    net.train()
    assert net[1].training and "train" not in net[1].__dict__
    net.eval()
    assert not net[1].training


def test_freeze_bn_deepcopy_pickle_and_state_dict_round_trip():
    net = _small_net()
    freeze_bn(net)
    clone = copy.deepcopy(net)
    clone.train()
    assert not clone[1].training
    clone[1].running_mean.fill_(7.0)  # the copy's frozen train() is bound to the copy, not the original
    assert net[1].running_mean.abs().max() == 0
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    loaded.train()
    assert not loaded[1].training and loaded[0].training
    fresh = _small_net()
    assert set(net.state_dict()) == set(fresh.state_dict())  # no new buffers or parameters
    fresh.load_state_dict(clone.state_dict(), strict=True)
    assert torch.equal(fresh[1].running_mean, clone[1].running_mean)
    net.load_state_dict(fresh.state_dict(), strict=True)


def test_freeze_bn_on_a_single_layer_and_errors():
    bn = nn.BatchNorm2d(3)
    assert freeze_bn(bn) == [""]
    bn.train()
    assert not bn.training
    with pytest.raises(ValueError, match="freeze nothing"):
        freeze_bn(bn, stats=False, affine=False)
    with pytest.raises(TypeError, match="nn.Module"):
        freeze_bn("resnet50")


# --- set_bn_eval on ResNet-50 -----------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet50():
    torchvision = pytest.importorskip("torchvision")
    return torchvision.models.resnet50(weights=None)


def test_set_bn_eval_resnet50_until_layer3(resnet50):
    model = copy.deepcopy(resnet50).train()
    names = set_bn_eval(model, until="layer3")
    assert len(names) == 24
    assert names[0] == "bn1"
    assert {n.split(".")[0] for n in names} == {"bn1", "layer1", "layer2"}
    modules = dict(model.named_modules())
    assert all(not modules[n].training for n in names)
    later = [n for n, m in model.named_modules() if is_bn(m) and n.startswith(("layer3", "layer4"))]
    assert later and all(modules[n].training for n in later)
    assert modules["conv1"].training  # only BN layers change mode
    # the ECN reference code's filter: only names containing "bn"
    assert len([n for n in names if "bn" in n]) == 22
    assert sorted(n for n in names if "bn" not in n) == ["layer1.0.downsample.1", "layer2.0.downsample.1"]
    # not sticky, exactly like the reference code: model.train() undoes it
    model.train()
    assert modules["layer1.0.bn1"].training


def test_ecn_reference_loop_keeps_22(resnet50):
    """Re-state ECN's loop (trainers.py): walk named_modules until 'layer3', eval() names with 'bn'."""
    model = copy.deepcopy(resnet50).train()
    fixed = []
    for name, module in model.named_modules():
        if name.find("layer3") != -1:
            break
        if name.find("bn") != -1:
            fixed.append(name)
            module.eval()
    assert len(fixed) == 22
    modules = dict(model.named_modules())
    assert modules["layer1.0.downsample.1"].training and modules["layer2.0.downsample.1"].training


def test_set_bn_eval_nested_and_errors(resnet50):
    wrapper = nn.Module()
    wrapper.base = copy.deepcopy(resnet50)
    wrapper.head = nn.BatchNorm1d(4)
    names = set_bn_eval(wrapper, until="layer3")
    assert len(names) == 24 and names[0] == "base.bn1"
    assert wrapper.head.training
    assert len(set_bn_eval(copy.deepcopy(resnet50), until="layer2")) == 1 + 9 + 1
    with pytest.raises(ValueError, match="no module named 'layer9'"):
        set_bn_eval(resnet50, until="layer9")


# --- bn_summary -------------------------------------------------------------------------------


def test_bn_summary_rows():
    from torchvision.ops.misc import FrozenBatchNorm2d

    net = nn.Sequential(
        nn.BatchNorm1d(3, momentum=None),
        nn.BatchNorm2d(3, affine=False),
        nn.BatchNorm3d(3, track_running_stats=False),
        nn.SyncBatchNorm(3),
        FrozenBatchNorm2d(3),
        nn.InstanceNorm2d(3),
        nn.Conv2d(3, 3, 1),
    )
    with torch.no_grad():
        net[1].running_mean.copy_(torch.tensor([1.0, 2.0, 6.0]))
    net[3].weight.requires_grad_(False)
    freeze_bn(net[0], affine=False)
    rows = bn_summary(net)
    assert isinstance(rows, BNSummary) and isinstance(rows, list)
    assert [r["name"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert [r["type"] for r in rows] == ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "FrozenBatchNorm2d"]
    r0, r1, r2, r3, r4 = rows
    assert r0["momentum"] is None and r0["training"] is False and r0["frozen_stats"] is True
    assert r1["requires_grad"] is None and r1["running_mean"] == pytest.approx(3.0) and r1["running_var"] == 1.0
    assert r2["track_running_stats"] is False and r2["running_mean"] is None and r2["num_batches_tracked"] is None
    assert r3["requires_grad"] == "mixed" and r3["training"] is True and r3["frozen_stats"] is False
    assert r4["requires_grad"] is False and r4["frozen_stats"] is True
    text = str(rows)
    assert text.splitlines()[0].split()[:3] == ["name", "type", "training"] and "FrozenBatchNorm2d" in text
    assert len(text.splitlines()) == 2 + 5
    assert rows._repr_html_().count("<tr>") == 6
    assert str(bn_summary(nn.Linear(2, 2))) == "(no BN layers)"


def test_bn_summary_resnet50_counts(resnet50):
    rows = bn_summary(resnet50)
    assert len(rows) == 53  # 1 stem + 3*(3+4+6+3) in blocks + 4 downsample
    model = copy.deepcopy(resnet50).train()
    set_bn_eval(model)
    assert sum(not r["training"] for r in bn_summary(model)) == 24


# --- recalibrate_bn ---------------------------------------------------------------------------


def _data(n=40, c=3, gen_seed=4):
    gen = torch.Generator().manual_seed(gen_seed)
    return torch.randn(n, c, generator=gen) * torch.tensor([1.0, 2.0, 0.5]) + torch.tensor([3.0, -1.0, 0.0])


def test_recalibrate_single_layer_exact_stats():
    x = _data()
    batches = [(x[i : i + 10], torch.zeros(10)) for i in range(0, 40, 10)]
    model = nn.Sequential(nn.BatchNorm1d(3, momentum=0.3))
    with torch.no_grad():
        model[0].running_mean.fill_(100.0)
    model.eval()
    seen = recalibrate_bn(model, batches)
    bn = model[0]
    assert seen == 40 and int(bn.num_batches_tracked) == 4
    assert bn.momentum == 0.3 and not bn.training and not model.training
    torch.testing.assert_close(bn.running_mean, x.mean(0))  # equal batch sizes: the exact data mean
    per_batch_var = torch.stack([b.var(0, unbiased=True) for b, _ in batches]).mean(0)
    torch.testing.assert_close(bn.running_var, per_batch_var)
    # one batch holding all the data: exactly the unbiased variance of the data
    recalibrate_bn(model, [x])
    torch.testing.assert_close(bn.running_mean, x.mean(0))
    torch.testing.assert_close(bn.running_var, x.var(0, unbiased=True))
    # num_batches: only the first two batches are used
    recalibrate_bn(model, batches, num_batches=2)
    torch.testing.assert_close(bn.running_mean, x[:20].mean(0))
    assert int(bn.num_batches_tracked) == 2


def test_recalibrate_bn2d_per_channel_over_nhw():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(8, 2, 3, 3, generator=gen) + torch.tensor([1.0, -2.0]).view(1, 2, 1, 1)
    model = nn.BatchNorm2d(2)
    recalibrate_bn(model, [x], progress=True)
    torch.testing.assert_close(model.running_mean, x.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(model.running_var, x.transpose(0, 1).reshape(2, -1).var(1, unbiased=True))


def test_recalibrate_restores_modes_and_momenta_everywhere():
    net = _small_net()
    net.eval()
    net[4].train()  # a mixed state must come back exactly
    net[1].momentum = 0.01
    freeze_bn(net[9], affine=False)
    modes = [m.training for m in net.modules()]
    x = torch.randn(6, 3, 5, 5)
    recalibrate_bn(net, [x, (x.flip(0), "labels")])
    assert [m.training for m in net.modules()] == modes
    assert net[1].momentum == 0.01 and net[4].momentum == 0.1
    assert int(net[9].num_batches_tracked) == 2  # frozen layers are recalibrated too...
    net.train()
    assert not net[9].training  # ...and stay frozen


def test_recalibrate_errors_restore_the_previous_stats():
    model = nn.Sequential(nn.BatchNorm1d(3))
    with torch.no_grad():
        model[0].running_mean.fill_(5.0)
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_bn(model, [])
    assert torch.equal(model[0].running_mean, torch.full((3,), 5.0))
    with pytest.raises(TypeError, match="loader item"):
        recalibrate_bn(model, [{"image": torch.randn(4, 3)}])
    assert torch.equal(model[0].running_mean, torch.full((3,), 5.0)) and model[0].momentum == 0.1
    with pytest.raises(ValueError, match="num_batches"):
        recalibrate_bn(model, [torch.randn(4, 3)], num_batches=0)
    with pytest.raises(ValueError, match="nothing to recalibrate"):
        recalibrate_bn(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3, track_running_stats=False)), [torch.randn(4, 3)])
