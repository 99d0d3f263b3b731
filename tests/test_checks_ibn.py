"""Notebook 07's exercise checkers, and its hand-written IBN-a layer / Bottleneck against reidlab.ibn.

Each checker's right and wrong answers are in ``ANSWERS`` at the end (run by ``test_answer_suites.py``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from answers import Answers
from reidlab.lessons.checks import nb07 as checks
from reidlab.ibn import IBN, Bottleneck

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "07_ibn_a.ipynb"


# --- exercise 7.1: instance norm by hand ------------------------------------------------------


def in_solution(x, eps=1e-5):
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps)


def in_var_mean(x, eps=1e-5):
    """Also right: torch.var_mean, and rsqrt."""
    var, mean = torch.var_mean(x, dim=(-2, -1), keepdim=True, correction=0)
    return (x - mean) * torch.rsqrt(var + eps)


def in_by_moments(x, eps=1e-5):
    """Also right: each image's channel flattened to one row, the variance as E[x^2] - E[x]^2."""
    rows = x.flatten(2)
    mean = rows.mean(-1, keepdim=True)
    var = (rows**2).mean(-1, keepdim=True) - mean**2
    return ((rows - mean) / (var + eps).sqrt()).view_as(x)


def in_batch_stats(x, eps=1e-5):  # batch norm
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps)


def in_layer_stats(x, eps=1e-5):  # layer norm
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    var = x.var(dim=(1, 2, 3), keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps)


def in_whole_tensor(x, eps=1e-5):
    return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + eps)


def in_unbiased(x, eps=1e-5):
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(x.var(dim=(2, 3), keepdim=True) + eps)


def in_eps_outside(x, eps=1e-5):
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) / (x.std(dim=(2, 3), keepdim=True, unbiased=False) + eps)


def in_no_eps(x, eps=1e-5):
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) / x.std(dim=(2, 3), keepdim=True, unbiased=False)


def in_by_variance(x, eps=1e-5):
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) / (x.var(dim=(2, 3), keepdim=True, unbiased=False) + eps)


def in_no_keepdim(x, eps=1e-5):
    return x.mean(dim=(2, 3))


def in_image_by_image(x, eps=1e-5):
    """The right numbers, but the exercise asks for one expression per statistic: no loop over the images."""
    out = torch.empty_like(x)
    for n in range(x.shape[0]):
        out[n] = in_solution(x[n : n + 1], eps)[0]
    return out


INSTANCE_NORM_WRONG = (
    # the shortcuts the exercise rules out ("by hand"): each of these gives instance norm in one call
    (lambda x, eps: F.instance_norm(x, eps=eps), "by hand, without `torch.nn.functional.instance_norm`"),
    (lambda x, eps: nn.InstanceNorm2d(x.shape[1], eps=eps)(x), "by hand, without `torch.nn.functional.instance_norm`"),
    (lambda x, eps: IBN(x.shape[1] * 2, ratio=0.5).eval().IN(x), "by hand, without `torch.nn.functional.instance_norm`"),
    (lambda x, eps: F.layer_norm(x, x.shape[2:], eps=eps), "by hand, without `torch.nn.functional.layer_norm`"),
    (lambda x, eps: F.group_norm(x, x.shape[1], eps=eps), "by hand, without `torch.nn.functional.group_norm`"),
    (lambda x, eps: F.batch_norm(x.reshape(1, -1, *x.shape[2:]), None, None, training=True, eps=eps).view_as(x),
     "by hand, without `torch.nn.functional.batch_norm`"),
    # ... and "one expression per statistic (no loops)"
    (in_image_by_image, r"asks for no Python loop, but a line of `in_image_by_image` ran \d+ times"),
    # the mistakes
    (in_batch_stats, "that is batch norm"),
    (in_layer_stats, "that is layer norm"),
    (in_whole_tensor, "the whole tensor"),
    (in_unbiased, "unbiased variance"),
    (in_eps_outside, "eps goes inside the square root"),
    (in_no_eps, "eps goes inside the square root"),
    (in_by_variance, "not by the variance"),
    (in_no_keepdim, "keepdim"),
    (lambda x, eps=1e-5: None, "forget to `return`"),
    (lambda x, eps=1e-5: x, "off by"),
)


def test_a_forbidden_norm_works_again_after_the_check():
    with pytest.raises(checks.ExerciseError):
        checks.check_instance_norm(INSTANCE_NORM_WRONG[3][0])
    x = torch.randn(2, 3, 4, 4)
    assert torch.allclose(F.layer_norm(x, x.shape[2:]), F.instance_norm(x), atol=1e-5)  # restored afterwards


def test_instance_norm_matches_functional_and_module():
    x = torch.randn(3, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(in_solution(x), F.instance_norm(x), atol=1e-5)
    assert torch.allclose(in_solution(x), nn.InstanceNorm2d(4)(x), atol=1e-5)


# --- exercise 7.2: the IBN split -------------------------------------------------------------


def split_solution(planes, ratio=0.5):
    half = int(planes * ratio)
    return half, planes - half


def split_from_the_module(planes, ratio=0.5):
    """Also right: build reidlab's IBN layer and read its two halves (the rule of IBN-Net, as the library applies it)."""
    layer = IBN(planes, ratio)
    return layer.IN.num_features, layer.BN.num_features


def test_ibn_split_solution_is_what_the_module_builds():
    for planes, ratio in ((64, 0.5), (7, 0.5), (100, 0.3), (2048, 0.5)):
        layer = IBN(planes, ratio)
        assert split_solution(planes, ratio) == (layer.IN.num_features, layer.BN.num_features)


IBN_SPLIT_WRONG = (
    (lambda p, r=0.5: (p - int(p * r), int(p * r)), "the pair is swapped"),
    (lambda p, r=0.5: (math.ceil(p * r), p - math.ceil(p * r)), "you rounded up"),
    (lambda p, r=0.5: (round(p * r), p - round(p * r)), r"planes=14, ratio=0.25 you rounded up"),  # round(3.5) is 4
    (lambda p, r=0.5: (int(p * r), p), "add up to"),
    (lambda p, r=0.5: None, "returned None"),
    (lambda p, r=0.5: int(p * r), "pair of ints"),
    (lambda p, r=0.5: (1, 2, 3), "exactly two"),
)


# --- exercise 7.3: normalisation parameters ---------------------------------------------------


def norm_params_solution(model):
    norm_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm2d)
    return sum(p.numel() for m in model.modules() if isinstance(m, norm_types) for p in m.parameters(recurse=False))


def norm_params_from_widths(model):
    """Also right: a norm layer with affine parameters has one gamma and one beta per channel."""
    return sum(2 * m.num_features for m in model.modules()
               if isinstance(m, nn.modules.batchnorm._NormBase) and m.affine)


def norm_params_bn_only(model):
    return sum(p.numel() for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for p in m.parameters())


def norm_params_state_dict(model):
    norm_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.InstanceNorm2d)
    return sum(
        v.numel() for m in model.modules() if isinstance(m, norm_types) for v in m.state_dict().values()
    )


def norm_params_recursive(model):
    return sum(
        p.numel()
        for m in model.modules()
        if "norm" in type(m).__name__.lower() or type(m).__name__ == "IBN"
        for p in m.parameters()
    )


COUNT_NORM_PARAMS_WRONG = (
    (norm_params_bn_only, "BatchNorm layers only"),
    (norm_params_state_dict, "counted the running_mean / running_var buffers"),
    (norm_params_recursive, "counted twice"),
    (lambda m: sum(p.numel() for p in m.parameters()), "every parameter of the network"),
    (lambda m: None, "returned None"),
    (lambda m: 3, "expected"),
)

# --- the notebook's hand-written IBN-a layer and Bottleneck agree with reidlab.ibn ---------------


def _notebook_namespace() -> dict:
    """Execute the code cells of notebook 07 that define the hand-written modules."""
    nb = json.loads(NOTEBOOK.read_text())
    namespace: dict = {"torch": torch, "nn": nn, "F": F}
    found = set()
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        for name in ("IBNByHand", "BottleneckIBNaByHand"):
            if cell["cell_type"] == "code" and f"class {name}(" in src:
                exec(compile(src, f"07_ibn_a:{name}", "exec"), namespace)
                found.add(name)
    assert found == {"IBNByHand", "BottleneckIBNaByHand"}, f"notebook 07 defines only {found}"
    return namespace


@pytest.mark.skipif(not NOTEBOOK.exists(), reason="notebook 07 not built")
@pytest.mark.parametrize("planes, ratio", [(64, 0.5), (10, 0.3)])
def test_notebook_ibn_layer_matches_reidlab(planes, ratio):
    ns = _notebook_namespace()
    torch.manual_seed(0)
    ours, ref = ns["IBNByHand"](planes, ratio), IBN(planes, ratio)
    with torch.no_grad():  # non-trivial affine parameters, so a swapped half would show
        for p in ref.parameters():
            p.uniform_(0.5, 1.5)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, planes, 6, 5, generator=torch.Generator().manual_seed(1)) * 3 + 1
    assert torch.allclose(ours(x), ref(x), atol=1e-5)  # train mode: batch statistics, running stats updated
    assert torch.allclose(ours.BN.running_mean, ref.BN.running_mean, atol=1e-6)
    ours.eval(), ref.eval()
    assert torch.allclose(ours(x), ref(x), atol=1e-5)


@pytest.mark.skipif(not NOTEBOOK.exists(), reason="notebook 07 not built")
@pytest.mark.parametrize("inplanes, planes, stride", [(64, 16, 1), (32, 16, 2)])
def test_notebook_bottleneck_matches_reidlab(inplanes, planes, stride):
    ns = _notebook_namespace()
    torch.manual_seed(0)
    downsample = None
    if stride != 1 or inplanes != planes * 4:
        downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4))
    ref = Bottleneck(inplanes, planes, ibn="a", stride=stride, downsample=downsample)
    ours = ns["BottleneckIBNaByHand"](inplanes, planes, stride=stride)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, inplanes, 8, 6, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(ours(x), ref(x), atol=1e-5)
    ours.eval(), ref.eval()
    assert torch.allclose(ours(x), ref(x), atol=1e-5)


ANSWERS = {  # run by tests/test_answer_suites.py
    checks.check_instance_norm: Answers(right=(in_solution, in_var_mean, in_by_moments), wrong=INSTANCE_NORM_WRONG),
    checks.check_ibn_split: Answers(right=(split_solution, split_from_the_module), wrong=IBN_SPLIT_WRONG),
    checks.check_count_norm_params: Answers(right=(norm_params_solution, norm_params_from_widths),
                                            wrong=COUNT_NORM_PARAMS_WRONG),
}
