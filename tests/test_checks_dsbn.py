"""Notebook 06: its exercise checkers, and its hand-written DSBN layer against reidlab.dsbn.

Each checker must accept a right answer and reject the typical wrong ones with the message
aimed at that mistake. The notebook's ``SplitDSBN`` (the lesson, written inline) must agree
with ``reidlab.dsbn.DSBN1d/2d`` (what later notebooks import): outputs, running statistics,
counters and gradients, in split-batch, explicit-domain and eval mode.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from answers import Answers
from reidlab.lessons.checks import NOT_ATTEMPTED
from reidlab.lessons.checks import nb06 as checks
from reidlab.dsbn import DSBN1d, DSBN2d, domain, dsbn_layers

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "06_dsbn.ipynb"
needs_notebook = pytest.mark.skipif(not NOTEBOOK.exists(), reason="notebook 06 not built")


def _notebook_namespace(marker: str) -> dict:
    """Execute the code cell of notebook 06 containing ``marker`` and return its namespace."""
    nb = json.loads(NOTEBOOK.read_text())
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "code" and marker in src:
            namespace: dict = {"torch": torch, "nn": nn, "F": F, "domain": domain}
            exec(compile(src, f"06_dsbn:{marker}", "exec"), namespace)
            return namespace
    raise AssertionError(f"notebook 06 has no code cell containing {marker!r}")


# --- exercise 6.1: the running statistics after one split batch -------------------------------


def step_solution(x, running_mean, running_var, momentum=0.1):
    half = x.shape[0] // 2
    out = []
    for part in (x[:half], x[half:]):
        out.append(((1 - momentum) * running_mean + momentum * part.mean((0, 2, 3)),
                    (1 - momentum) * running_var + momentum * part.var((0, 2, 3), unbiased=True)))
    return out[0], out[1]


def step_by_var_mean(x, running_mean, running_var, momentum=0.1):
    """Also right: both halves at once, as a (2, N/2, C, H, W) view, with torch.var_mean."""
    var, mean = torch.var_mean(x.view(2, x.shape[0] // 2, *x.shape[1:]), dim=(1, 3, 4), correction=1)
    running = [((1 - momentum) * running_mean + momentum * mean[d], (1 - momentum) * running_var + momentum * var[d])
               for d in range(2)]
    return running[0], running[1]


def step_via_modules(x, running_mean, running_var, momentum=0.1):
    """The number is right, but the exercise says: no BN module. Two real BN layers (the branches) do it."""
    half = x.shape[0] // 2
    result = []
    for part in (x[:half], x[half:]):
        bn = nn.BatchNorm2d(x.shape[1], momentum=momentum).train()
        bn.running_mean.copy_(running_mean)
        bn.running_var.copy_(running_var)
        with torch.no_grad():
            bn(part)
        result.append([bn.running_mean, bn.running_var])
    return result


def _each_half(x, rm, rv, m, update):
    half = x.shape[0] // 2
    return tuple(update(part, rm, rv, m) for part in (x[:half], x[half:]))


def step_swapped(x, rm, rv, m):
    (s, t) = _each_half(x, rm, rv, m, lambda p, rm, rv, m: ((1 - m) * rm + m * p.mean((0, 2, 3)),
                                                           (1 - m) * rv + m * p.var((0, 2, 3))))
    return t, s


def step_shared(x, rm, rv, m):
    both = ((1 - m) * rm + m * x.mean((0, 2, 3)), (1 - m) * rv + m * x.var((0, 2, 3)))
    return both, both


def step_biased(x, rm, rv, m):
    return _each_half(x, rm, rv, m, lambda p, rm, rv, m: ((1 - m) * rm + m * p.mean((0, 2, 3)),
                                                          (1 - m) * rv + m * p.var((0, 2, 3), unbiased=False)))


def step_reversed(x, rm, rv, m):
    return _each_half(x, rm, rv, m, lambda p, rm, rv, m: (m * rm + (1 - m) * p.mean((0, 2, 3)),
                                                          m * rv + (1 - m) * p.var((0, 2, 3))))


def step_replaced(x, rm, rv, m):
    return _each_half(x, rm, rv, m, lambda p, rm, rv, m: (p.mean((0, 2, 3)), p.var((0, 2, 3))))


def step_hard_coded(x, rm, rv, m):
    return step_solution(x, rm, rv, 0.1)


def step_per_image(x, rm, rv, m):
    return _each_half(x, rm, rv, m, lambda p, rm, rv, m: ((1 - m) * rm + m * p.mean((2, 3)),
                                                          (1 - m) * rv + m * p.var((2, 3))))


def step_source_untouched(x, rm, rv, m):
    return (rm, rv), step_solution(x, rm, rv, m)[1]


def step_via_dsbn(x, running_mean, running_var, momentum=0.1):
    layer = DSBN2d(x.shape[1], momentum=momentum).train()
    for bn in layer.bns:
        bn.running_mean.copy_(running_mean)
        bn.running_var.copy_(running_var)
    with torch.no_grad():
        layer(x)
    return tuple((bn.running_mean, bn.running_var) for bn in layer.bns)


def step_via_functional(x, running_mean, running_var, momentum=0.1):
    half = x.shape[0] // 2
    result = []
    for part in (x[:half], x[half:]):
        rm, rv = running_mean.clone(), running_var.clone()
        F.batch_norm(part, rm, rv, training=True, momentum=momentum)
        result.append((rm, rv))
    return result


STEP_WRONG = (
    # the shortcuts the exercise forbids: "by hand from x with tensor operations, no BN module and no F.batch_norm"
    (step_via_modules, r"without `a BN module \(nn.BatchNorm2d, DSBN2d\)`"),
    (step_via_dsbn, r"without `a BN module"),
    (step_via_functional, "without `torch.nn.functional.batch_norm`"),
    # the mistakes
    (step_swapped, "swapped"),
    (step_shared, "one shared BN"),
    (step_biased, "unbiased"),
    (step_reversed, "weighs the new batch"),
    (step_replaced, "moving average"),
    (step_hard_coded, "not the momentum passed in"),
    (step_per_image, "one value per channel"),
    (step_source_untouched, "left the source branch"),
    (lambda x, rm, rv, m: step_solution(x, rm, rv, m)[0], "two pairs|should be a pair"),
    (lambda x, rm, rv, m: None, "returned None"),
    (lambda x, rm, rv, m: tuple((a + 1, b) for a, b in step_solution(x, rm, rv, m)), "is off"),
)


def test_a_forbidden_shortcut_works_again_after_the_check():
    with pytest.raises(checks.ExerciseError):
        checks.check_split_step_stats(step_via_modules)
    assert len(step_via_modules(torch.randn(4, 2, 2, 2), torch.zeros(2), torch.ones(2))) == 2  # restored afterwards


@pytest.mark.parametrize("momentum", [0.1, 0.3])
def test_step_reference_is_what_dsbn_and_the_notebook_layer_store(momentum):
    """The checker's reference (reidlab's DSBN2d), the hand formula and the notebook's SplitDSBN agree."""
    g = torch.Generator().manual_seed(3)
    x = torch.cat([torch.randn(4, 3, 2, 3, generator=g), 2 * torch.randn(4, 3, 2, 3, generator=g) + 1])
    rm, rv = torch.randn(3, generator=g), torch.rand(3, generator=g) + 0.5
    reference = checks._layer_after_split_step(x, rm, rv, momentum)
    for (m1, v1), (m2, v2) in zip(reference, step_solution(x, rm, rv, momentum)):
        torch.testing.assert_close(m1, m2)
        torch.testing.assert_close(v1, v2)
    if NOTEBOOK.exists():
        layer = _notebook_namespace("class SplitDSBN(")["SplitDSBN"](nn.BatchNorm2d, 3).train()
        for bn in (layer.bn_source, layer.bn_target):
            bn.momentum = momentum
            bn.running_mean.copy_(rm)
            bn.running_var.copy_(rv)
        with torch.no_grad():
            layer(x)
        for bn, (mean, var) in zip((layer.bn_source, layer.bn_target), reference):
            torch.testing.assert_close(bn.running_mean, mean)
            torch.testing.assert_close(bn.running_var, var)


# --- exercise 6.2: target test features --------------------------------------------------------


def target_solution(model, images):
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), domain(model, 1):
            return model(images)
    finally:
        model.train(was)


def target_on_a_copy(model, images):
    """Also right: a copy in eval mode leaves the learner's model untouched by construction."""
    twin = copy.deepcopy(model).eval()
    with torch.no_grad(), domain(twin, 1):
        return twin(images)


def eval_only(model, images):
    model.eval()
    with torch.no_grad():
        out = model(images)
    return out


def forgot_eval(model, images):
    with torch.no_grad(), domain(model, 1):
        return model(images)


def does_not_restore_mode(model, images):
    model.eval()
    with torch.no_grad(), domain(model, 1):
        return model(images)


def sets_domain_by_hand(model, images):
    was = model.training
    model.eval()
    for layer in dsbn_layers(model):
        layer.domain = 1
    with torch.no_grad():
        out = model(images)
    model.train(was)
    return out


def resets_domain_to_none(model, images):
    out = sets_domain_by_hand(model, images)
    for layer in dsbn_layers(model):
        layer.domain = None
    return out


def source_branch(model, images):
    was = model.training
    model.eval()
    with torch.no_grad(), domain(model, 0):
        out = model(images)
    model.train(was)
    return out


def batch_stats_on_a_copy(model, images):
    twin = copy.deepcopy(model).train()
    with torch.no_grad(), domain(twin, 1):
        return twin(images)


TARGET_WRONG = (
    (eval_only, "eval_domain=0"),
    (forgot_eval, "running statistics changed"),
    (does_not_restore_mode, "left in eval mode"),
    (sets_domain_by_hand, "domain settings"),
    (resets_domain_to_none, "domain settings"),
    (source_branch, "source branch"),
    (batch_stats_on_a_copy, "batch's own statistics"),
    (lambda m, x: None, "return"),
)


def test_target_checker_model_routes_eval_to_the_source_branch():
    """The exercise is only meaningful if plain eval mode does NOT give the target branch."""
    model = checks._dsbn_model().eval()
    x = torch.randn(4, 3, 7, 7, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        default = model(x)
        with domain(model, 1):
            target = model(x)
        with domain(model, 0):
            src = model(x)
    assert torch.equal(default, src)
    assert not torch.allclose(default, target, atol=1e-3)


# --- exercise 6.3: statistics of a unified BN -------------------------------------------------


def merge_solution(ms, vs, mt, vt):
    return (ms + mt) / 2, (vs + vt) / 2 + ((ms - mt) / 2) ** 2


def merge_by_second_moments(ms, vs, mt, vt):
    """Also right: pool E[x] and E[x^2], then variance = E[x^2] - E[x]^2."""
    mean = torch.stack([ms, mt]).mean(0)
    return mean, torch.stack([vs + ms**2, vt + mt**2]).mean(0) - mean**2


MERGE_WRONG = (
    (lambda ms, vs, mt, vt: ((ms + mt) / 2, (vs + vt) / 2), "averaged the two variances only"),
    (lambda ms, vs, mt, vt: ((ms + mt) / 2, (vs + vt) / 2 + (ms - mt) ** 2), "not the squared difference"),
    (lambda ms, vs, mt, vt: ((ms + mt) / 2, ((vs.sqrt() + vt.sqrt()) / 2) ** 2), "averaged standard deviations"),
    (lambda ms, vs, mt, vt: ((ms + mt) / 2, ((vs.sqrt() + vt.sqrt()) / 2) ** 2 + ((ms - mt) / 2) ** 2),
     "standard deviations before adding"),
    (lambda ms, vs, mt, vt: ((ms + mt) / 2, (vs + vt) / 2 + (ms - mt) ** 2 / 2), "not half the squared"),
    (lambda ms, vs, mt, vt: (ms + mt, (vs + vt) / 2 + ((ms - mt) / 2) ** 2), "not their sum"),
    (lambda ms, vs, mt, vt: ((ms + mt).mean() / 2, (vs + vt) / 2), "one value per channel"),
    (lambda ms, vs, mt, vt: (vs + vt) / 2, "return two things"),
    (lambda ms, vs, mt, vt: None, "returned None"),
)


def test_merge_reference_is_the_statistics_of_pooled_data():
    """The checker's formula is what a BN fed half-source, half-target batches measures."""
    g = torch.Generator().manual_seed(5)
    xs = torch.randn(400, 3, generator=g, dtype=torch.float64) * 0.5 - 1.0
    xt = torch.randn(400, 3, generator=g, dtype=torch.float64) * 2.0 + 3.0
    mean, var = merge_solution(xs.mean(0), xs.var(0, unbiased=False), xt.mean(0), xt.var(0, unbiased=False))
    pooled = torch.cat([xs, xt])
    torch.testing.assert_close(mean, pooled.mean(0))
    torch.testing.assert_close(var, pooled.var(0, unbiased=False))
    bn = nn.BatchNorm1d(3, momentum=1.0).double().train()  # momentum 1: running stats = this batch's
    bn(pooled)
    torch.testing.assert_close(bn.running_mean, mean)
    torch.testing.assert_close(bn.running_var, var * 800 / 799)  # running_var stores the unbiased estimate


# --- the notebook's own DSBN and exercise solutions ------------------------------------------------


@needs_notebook
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_notebook_split_dsbn_matches_reidlab(seed, kind):
    SplitDSBN = _notebook_namespace("class SplitDSBN(")["SplitDSBN"]
    bn_class, lib_class, shape = {
        "1d": (nn.BatchNorm1d, DSBN1d, (4,)),
        "2d": (nn.BatchNorm2d, DSBN2d, (4, 3, 5)),
    }[kind]
    g = torch.Generator().manual_seed(seed)
    hand, lib = SplitDSBN(bn_class, 4), lib_class(4, num_domains=2)
    with torch.no_grad():
        for i, bn in enumerate((hand.bn_source, hand.bn_target)):
            bn.weight.uniform_(0.5, 1.5, generator=g)
            bn.bias.normal_(generator=g)
            lib.bns[i].load_state_dict(bn.state_dict())
    for step in range(12):
        mode = ["train", "eval"][int(torch.randint(0, 3, (), generator=g)) == 0]
        d = [None, None, 0, 1][int(torch.randint(0, 4, (), generator=g))]
        n = int(torch.randint(2, 6, (), generator=g)) * (2 if d is None and mode == "train" else 1)
        n = max(n, 2) if mode == "train" else n
        x = torch.randn(n, *shape, generator=g) * float(step % 3 + 1) + float(step)
        for layer in (hand, lib):
            layer.train(mode == "train")
            layer.domain = d
        xh, xl = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        yh, yl = hand(xh), lib(xl)
        torch.testing.assert_close(yh, yl, rtol=1e-5, atol=1e-6)
        w = torch.randn(yh.shape, generator=g)
        (yh * w).sum().backward()
        (yl * w).sum().backward()
        torch.testing.assert_close(xh.grad, xl.grad, rtol=1e-5, atol=1e-6)
    for mine, theirs in zip((hand.bn_source, hand.bn_target), lib.bns):
        for (name, a), b in zip(mine.state_dict().items(), theirs.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{name} differs")
        torch.testing.assert_close(mine.weight.grad, theirs.weight.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mine.bias.grad, theirs.bias.grad, rtol=1e-5, atol=1e-6)


@needs_notebook
def test_notebook_split_dsbn_rejects_an_odd_batch_like_reidlab():
    SplitDSBN = _notebook_namespace("class SplitDSBN(")["SplitDSBN"]
    for layer in (SplitDSBN(nn.BatchNorm2d, 3).train(), DSBN2d(3).train()):
        with pytest.raises(ValueError, match="odd batch of 5"):
            layer(torch.randn(5, 3, 2, 2))


@needs_notebook
@pytest.mark.parametrize(
    "marker, name, checker",
    [
        ("def split_step_stats(", "split_step_stats", checks.check_split_step_stats),
        ("def target_features(", "target_features", checks.check_target_features),
        ("def merge_stats(", "merge_stats", checks.check_merge_stats),
    ],
)
def test_notebook_solutions_pass_their_checkers(marker, name, checker, capsys):
    checker(_notebook_namespace(marker)[name])
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    "checker", [checks.check_split_step_stats, checks.check_target_features, checks.check_merge_stats]
)
def test_unattempted_stub_gets_a_sentence(checker):
    def stub(*args):
        raise NotImplementedError()

    with pytest.raises(checks.ExerciseError, match=NOT_ATTEMPTED):
        checker(stub)


ANSWERS = {  # run by tests/test_answer_suites.py
    checks.check_split_step_stats: Answers(right=(step_solution, step_by_var_mean), wrong=STEP_WRONG),
    checks.check_target_features: Answers(right=(target_solution, target_on_a_copy), wrong=TARGET_WRONG),
    checks.check_merge_stats: Answers(right=(merge_solution, merge_by_second_moments), wrong=MERGE_WRONG),
}
