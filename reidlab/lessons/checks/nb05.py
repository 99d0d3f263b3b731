"""Checkers of notebook 05 (``notebooks/05_freezing_bn.ipynb``): freezing BN.

Imported by the notebook as ``from reidlab.lessons.checks import nb05 as checks``.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from reidlab.lessons.checks import ExerciseError, apply_and_list_bns, checker, fail, passed, small_bn_model

__all__ = ["ExerciseError", "check_fixed_bn_names", "check_freeze_bn", "check_to_frozen_bn"]


@checker
def check_freeze_bn(fn: Callable[[torch.nn.Module], Any]) -> None:
    """Notebook 05: ``fn(model)`` must freeze every BN layer of ``model`` in both senses, in place.

    Frozen means: gamma/beta get no gradient (``requires_grad=False``), the running statistics
    stay put *and are used* even after ``model.train()``, and nothing else is frozen.
    """
    model = small_bn_model()
    model, bns = apply_and_list_bns(fn, model)
    if len(bns) != 3:
        fail(f"expected the model's 3 BN layers to stay BatchNorm layers, found {len(bns)}")
    for name, m in bns:
        if not callable(getattr(m, "requires_grad_", None)):
            fail(
                f"layer {name!r}: m.requires_grad_ is no longer a method. `m.requires_grad_ = False` assigns an "
                "attribute and freezes nothing; call m.requires_grad_(False)"
            )
        for pname in ("weight", "bias"):
            if getattr(m, pname).requires_grad:
                gamma = "gamma (weight)" if pname == "weight" else "beta (bias)"
                fail(f"layer {name!r}: {gamma} still has requires_grad=True, so the optimizer will train it")
    others = [n for n, p in model.named_parameters() if p.requires_grad]
    if not others:
        fail("no parameter is trainable any more: freeze only the BN layers, not the convolutions and the classifier")
    ref = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in bns}
    x = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(2)) * 3 + 2
    model.train()
    with torch.no_grad():
        y_train = model(x)
    for name, m in bns:
        if not (torch.equal(m.running_mean, ref[name][0]) and torch.equal(m.running_var, ref[name][1])):
            fail(f"running_mean of {name!r} moved after model.train(): your freeze does not survive train()")
    model.eval()
    with torch.no_grad():
        y_eval = model(x)
    if not torch.allclose(y_train, y_eval, atol=1e-5):
        fail(
            "after model.train() the BN layers normalise with the batch's statistics (the buffers stay put, e.g. "
            "with momentum=0, but they are not used): keep the layers in eval mode"
        )
    passed("gamma/beta frozen, running statistics frozen and used, even after model.train()")


@checker
def check_to_frozen_bn(fn: Callable[[torch.nn.Module], Any]) -> None:
    """Notebook 05: ``fn(model)`` must return ``model`` with every ``BatchNorm2d`` replaced by torchvision's ``FrozenBatchNorm2d``.

    The output must equal the original model's output in eval mode (weights, biases, running
    statistics *and eps* copied), nested layers included.
    """
    model = small_bn_model()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-2  # not the default: a conversion that forgets eps shows
    original = copy.deepcopy(model).eval()
    out = fn(model)
    if out is None:
        fail("return the converted model")
    if not isinstance(out, nn.Module):
        fail(f"return the converted model, got {type(out).__name__}")
    left = [n for n, m in out.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if left:
        fail(f"BatchNorm2d left at {left}: convert nested layers too (recurse into every child)")
    if not any(isinstance(m, nn.BatchNorm1d) for m in out.modules()):
        fail("the BatchNorm1d layer is gone: FrozenBatchNorm2d is for 4-D inputs, convert only BatchNorm2d")
    frozen = [n for n, m in out.named_modules() if isinstance(m, FrozenBatchNorm2d)]
    if len(frozen) != 2:
        fail(f"expected 2 FrozenBatchNorm2d layers (one per BatchNorm2d), found {len(frozen)}")
    x = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(3)) * 2 + 1
    with torch.no_grad():
        expected = original(x)
        out.eval()
        got = out(x)
        out.train()
        for m in out.modules():  # the BatchNorm1d stays a normal BN layer: keep it in eval
            if isinstance(m, nn.BatchNorm1d):
                m.eval()
        got_train = out(x)
    out.eval()
    for (name, fm) in [(n, m) for n, m in out.named_modules() if isinstance(m, FrozenBatchNorm2d)]:
        src = original.get_submodule(name)
        if torch.allclose(fm.running_mean, torch.zeros_like(fm.running_mean)) and not torch.allclose(
            src.running_mean, torch.zeros_like(src.running_mean)
        ):
            fail(f"{name!r}: running_mean is still zero: copy running_mean and running_var from the BN layer")
        if not torch.allclose(fm.weight, src.weight.detach()):
            fail(f"{name!r}: weight differs from the BN layer's gamma: copy weight and bias")
        if abs(fm.eps - src.eps) > 1e-12:
            fail(f"{name!r}: eps is {fm.eps:g} but the BN layer used {src.eps:g}: pass eps=bn.eps")
    if not torch.allclose(got, expected, atol=1e-5):
        fail(f"the output differs from the eval-mode original by up to {(got - expected).abs().max():.3g}")
    if not torch.allclose(got_train, got, atol=1e-5):
        fail("in train mode the output changed: the converted model should not depend on train()/eval() in its BN layers")
    passed("every BatchNorm2d replaced by FrozenBatchNorm2d; output equals the eval-mode original")


@checker
def check_fixed_bn_names(fn: Callable[[torch.nn.Module], Any]) -> None:
    """Notebook 05: ``fn(resnet)`` must return the names of all BN layers in conv1..layer2 of a torchvision ResNet-50."""
    model = torchvision.models.resnet50(weights=None)
    expected = []
    for name, m in model.named_modules():
        if name == "layer3":
            break
        if isinstance(m, torch.nn.BatchNorm2d):
            expected.append(name)
    got = fn(model)
    if got is None:
        fail("return the list of names")
    got = list(got)
    if not all(isinstance(n, str) for n in got):
        fail("return the layers' names (strings, as in model.named_modules()), not the modules")
    missing = [n for n in expected if n not in got]
    extra = [n for n in got if n not in expected]
    if missing and all("downsample" in n for n in missing):
        fail(
            f"you found {len(got)} layers; missing {missing}: a name filter ('bn' in name) misses the downsample "
            "BNs, select by type (isinstance(m, nn.BatchNorm2d))"
        )
    if extra and any(n.startswith(("layer3", "layer4")) for n in extra):
        fail(f"{len(extra)} of your layers are in layer3/layer4 (e.g. {extra[0]!r}): stop at layer3")
    if missing or extra:
        fail(f"expected {len(expected)} names; missing {missing[:3]}, unexpected {extra[:3]}")
    passed(f"all {len(expected)} BN layers of conv1..layer2, downsample BNs included")
