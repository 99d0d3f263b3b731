"""Checkers of notebook 05 (``notebooks/05_freezing_bn.ipynb``): freezing BN.

Imported by the notebook as ``from reidlab.lessons.checks import nb05 as checks``.
"""
from __future__ import annotations

import copy
import io
import pickle
from collections import OrderedDict
from typing import Any, Callable

import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

import reidlab.bn
from reidlab.lessons.checks import ExerciseError, checker, fail, forbid, passed, small_bn_model

__all__ = ["ExerciseError", "check_freeze_bn", "check_name_filter_errors", "check_to_frozen_bn"]


_BN = nn.modules.batchnorm._BatchNorm


def _freeze_and_list(fn: Callable[[torch.nn.Module], Any], model: nn.Module) -> tuple[nn.Module, list[tuple[str, Any]]]:
    """Apply the learner's ``fn(model)`` (``reidlab.bn.freeze_bn`` refused while it runs) and list, by the
    names the model's BN layers had, what stands there now: a BN layer or torchvision's FrozenBatchNorm2d
    (typed ``Any``: torchvision has no type hints, and the learner's layer may have lost its buffers).

    ``fn`` may change the model in place (any return value) or return a new model.
    """
    names = [n for n, m in model.named_modules() if isinstance(m, _BN)]
    with forbid((reidlab.bn, "freeze_bn"), why="freeze each layer yourself: requires_grad_(False) and a train() that "
                "keeps it in eval (functools.partial of stay_in_eval), or torchvision's FrozenBatchNorm2d"):
        out = fn(model)
    if isinstance(out, nn.Module):
        model = out
    modules = dict(model.named_modules())
    for name in names:
        if not isinstance(modules.get(name), (_BN, FrozenBatchNorm2d)):
            now = "gone" if name not in modules else f"now a {type(modules[name]).__name__}"
            fail(f"the BN layer {name!r} is {now}: freeze every BN layer where it is, as a BN layer that stays in eval or "
                 f"as torchvision's FrozenBatchNorm2d (for 4-D inputs only)")
    return model, [(name, modules[name]) for name in names]


@checker
def check_freeze_bn(fn: Callable[[torch.nn.Module], Any]) -> None:
    """Notebook 05: ``fn(model)`` must freeze every BN layer of ``model`` in both senses, in place.

    Frozen means: gamma/beta get no gradient (``requires_grad=False``), the running statistics
    stay put (in a forward right after the freeze too) *and are used* even after ``model.train()``
    (the output in train mode is the original model's in eval mode), and nothing else is frozen. A
    layer may stay a BN layer or become torchvision's ``FrozenBatchNorm2d`` (which holds gamma and
    beta as buffers).
    """
    model = small_bn_model()
    x = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(2)) * 3 + 2
    with torch.no_grad():
        reference = copy.deepcopy(model).eval()(x)
    model, bns = _freeze_and_list(fn, model)
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
    with torch.no_grad():
        model(x)  # a training loop's first forward, before any model.train()
    for name, m in bns:
        if not torch.equal(m.running_mean, ref[name][0]):
            fail(f"running_mean of {name!r} moved in a forward right after the freeze: the layer is still in train "
                 f"mode; put it in eval now (m.eval()), not only at the next model.train()")
    model.train()
    with torch.no_grad():
        y_train = model(x)
    for name, m in bns:
        if not (torch.equal(m.running_mean, ref[name][0]) and torch.equal(m.running_var, ref[name][1])):
            fail(f"running_mean of {name!r} moved after model.train(): your freeze does not survive train()")
    model.eval()
    with torch.no_grad():
        y_eval = model(x)
    if y_train.shape != reference.shape:
        fail(f"the frozen model's output has shape {tuple(y_train.shape)}, the original's {tuple(reference.shape)}: "
             "FrozenBatchNorm2d is for 4-D inputs, freeze a BatchNorm1d another way")
    if not torch.allclose(y_train, y_eval, atol=1e-5):
        fail(
            "after model.train() the BN layers normalise with the batch's statistics (the buffers stay put, e.g. "
            "with momentum=0, but they are not used): keep the layers in eval mode"
        )
    if not torch.allclose(y_eval, reference, atol=1e-5):
        fail(f"the frozen model's output differs from the original's in eval mode by up to "
             f"{(y_eval - reference).abs().max():.3g}: a freeze keeps gamma, beta, the running statistics and eps "
             f"(copy all five into a FrozenBatchNorm2d)")
    for how, copied in (("copy.deepcopy", lambda: copy.deepcopy(model)), ("torch.save / torch.load", lambda: _round_trip(model))):
        twin = copied()
        twin.train()
        with torch.no_grad():
            y_twin = twin(x)
        if not torch.allclose(y_twin, y_eval, atol=1e-5):
            fail(f"after {how} and model.train() the copy's BN layers are back in train mode: the freeze must "
                 f"travel with the model")
    passed("gamma/beta frozen, running statistics frozen and used, even after model.train(), "
           "copy.deepcopy and torch.save / torch.load")


def _round_trip(model: nn.Module) -> nn.Module:
    """``torch.save(model)`` then ``torch.load``, in memory: what saving a whole frozen model does."""
    buffer = io.BytesIO()
    try:
        torch.save(model, buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=False)
    except (AttributeError, TypeError, pickle.PicklingError) as err:
        fail(f"the frozen model does not survive torch.save(model) / torch.load ({type(err).__name__}: {err}). A "
             f"method bound to a layer (stay_in_eval.__get__(m), types.MethodType) is pickled by its name, which the "
             f"layer does not have, and a function defined inside another function cannot be pickled at all: store "
             f"functools.partial(f, m), with f defined at the top level of the notebook, as the layer's train")
    raise AssertionError("unreachable")


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
        # fn replaced the BatchNorm2d at this name; original was copied from small_bn_model before fn ran
        assert isinstance(src, nn.BatchNorm2d) and src.running_mean is not None
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


def _head_model() -> nn.Module:
    """A small re-ID-like network whose names fool ECN's filter both ways: a BN layer named 'norm', a
    BatchNorm1d named 'neck_norm', and a container named 'bnneck' (a Linear and a Dropout) that is no BN."""
    return nn.Sequential(OrderedDict(
        stem=nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 8, 3), bn=nn.BatchNorm2d(8), relu=nn.ReLU())),
        block=nn.Sequential(OrderedDict(conv=nn.Conv2d(8, 8, 3), norm=nn.BatchNorm2d(8), act=nn.ReLU())),
        pool=nn.AdaptiveAvgPool2d(1),
        flat=nn.Flatten(),
        bnneck=nn.Sequential(OrderedDict(fc=nn.Linear(8, 8), drop=nn.Dropout(0.5))),
        neck_norm=nn.BatchNorm1d(8),
        classifier=nn.Linear(8, 3),
    ))


def _filter_errors(model: nn.Module, until: str) -> tuple[list[str], list[str]]:
    """The reference answer: (BN layers without 'bn' in their name, non-BN modules with 'bn' in theirs), before `until`."""
    missed, caught = [], []
    for name, m in model.named_modules():
        if name == until:
            break
        is_bn = isinstance(m, nn.modules.batchnorm._BatchNorm)
        if is_bn and "bn" not in name:
            missed.append(name)
        if not is_bn and "bn" in name:
            caught.append(name)
    return missed, caught


def _as_names(value: Any, what: str) -> list[str]:
    if value is None or isinstance(value, (str, nn.Module)):
        fail(f"{what} should be a list of names (strings), got {type(value).__name__}")
    names = list(value)
    if not all(isinstance(n, str) for n in names):
        fail(f"{what} should hold the modules' names (strings, as in named_modules()), not the modules")
    return names


def _filter_mistake(model: nn.Module, until: str, missed: list[str], caught: list[str]) -> str | None:
    want_missed, want_caught = _filter_errors(model, until)
    names = [n for n, _ in model.named_modules()]
    after = set(names[names.index(until):])
    kinds = {n: m for n, m in model.named_modules()}
    if any(n in after for n in missed + caught):
        return f"stop at the module named {until!r}: the filter never reaches it or anything after it"
    if any("bn" in n for n in missed):
        return "missed lists BN layers whose names do NOT contain 'bn' (those the filter leaves in train mode)"
    if any(isinstance(kinds.get(n), nn.modules.batchnorm._BatchNorm) for n in caught):
        return "caught_wrongly lists modules that are NOT BN layers but whose names contain 'bn'"
    lost = [n for n in want_missed if n not in missed]
    if lost and all(isinstance(kinds[n], nn.BatchNorm1d) for n in lost):
        return f"missed lacks {lost}: BatchNorm1d is a BN layer too; test isinstance(m, nn.modules.batchnorm._BatchNorm)"
    if lost:
        return f"missed lacks {lost}: every BN layer (by type) whose name has no 'bn' is missed by the filter"
    if want_caught and not caught:
        return (f"caught_wrongly is empty, but the filter also calls eval() on {want_caught}: 'bn' is in their names "
                "(a container's eval() recurses into everything inside it, e.g. a Dropout)")
    if sorted(missed) != sorted(want_missed) or sorted(caught) != sorted(want_caught):
        return f"expected missed={want_missed} and caught_wrongly={want_caught}; got {missed} and {caught}"
    return None


@checker
def check_name_filter_errors(fn: Callable[[nn.Module, str], Any]) -> None:
    """Notebook 05: ``fn(model, until)`` returns ECN's name filter's two kinds of mistake before the module ``until``.

    ``(missed, caught_wrongly)``: the names of the BN layers (any ``_BatchNorm``) whose names lack
    ``'bn'``, and of the modules that are not BN layers but whose names contain ``'bn'``, among the
    modules that come before the one named ``until`` in ``named_modules()`` order. Tried on
    torchvision's ResNet-50 (until ``layer3``), MobileNetV3-Small (until ``features.4``) and a small
    re-ID head whose names fool the filter both ways (until ``classifier``).
    """
    cases = [(torchvision.models.resnet50(weights=None), "layer3", "ResNet-50"),
             (torchvision.models.mobilenet_v3_small(weights=None), "features.4", "MobileNetV3-Small"),
             (_head_model(), "classifier", "the re-ID head")]
    for model, until, what in cases:
        result = fn(model, until)
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            fail(f"return a pair (missed, caught_wrongly), got {type(result).__name__}")
        missed, caught = _as_names(result[0], "missed"), _as_names(result[1], "caught_wrongly")
        mistake = _filter_mistake(model, until, missed, caught)
        if mistake:
            fail(f"{what}, until {until!r}: {mistake}")
    passed("both kinds of mistake of a name filter, on ResNet-50, MobileNetV3-Small and a re-ID head")
