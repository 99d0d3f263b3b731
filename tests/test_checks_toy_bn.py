"""Checkers of notebooks 02 and 03 (reidlab.lessons.checks.nb02, nb03), and the notebooks' lesson code vs reidlab.

Each checker must pass the solution and fail typical wrong answers with a message that names
the mistake: the right and wrong answers of each exercise are in ``ANSWERS`` at the end (run by
``test_answer_suites.py``). The recalibration written out in notebook 03 must equal reidlab.bn.recalibrate_bn.
"""
import ast
import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from answers import Answers
from reidlab.lessons.checks import ExerciseError, nb02, nb03
from reidlab.lessons.toy import SmallBNNet, accuracy, make_toy_images

ROOT = Path(__file__).resolve().parents[1]


def notebook_function(notebook: str, name: str, namespace: dict):
    """Define the function ``name`` exactly as written in a code cell of ``notebook``."""
    nb = json.loads((ROOT / "notebooks" / notebook).read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        for node in ast.parse(src).body:
            if isinstance(node, ast.FunctionDef) and node.name == name:
                exec(compile(ast.Module(body=[node], type_ignores=[]), notebook, "exec"), namespace)
                return namespace[name]
    raise LookupError(f"{name} not found in {notebook}")


# --- notebook 02 ---------------------------------------------------------------------------


def evaluate_fixed(model, dataset):
    """Exercise 2.1's solution."""
    was_training = model.training
    model.eval()
    try:
        return accuracy(model, dataset)
    finally:
        model.train(was_training)


def evaluate_on_a_copy(model, dataset):
    """Also right: an eval-mode copy, so that the caller's model is never touched."""
    return accuracy(copy.deepcopy(model).eval(), dataset)


def evaluate_by_hand(model, dataset):
    """Also right: its own loop, each module's mode remembered and put back."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in DataLoader(dataset, batch_size=32):
            correct += (model(images).argmax(1) == labels).sum().item()
    for m, mode in modes:
        m.training = mode
    return correct / len(dataset)


def forgot_eval(model, dataset):
    return accuracy(model, dataset)


def no_grad_only(model, dataset):
    with torch.no_grad():
        return accuracy(model, dataset, batch_size=16)


def never_restores(model, dataset):
    model.eval()
    return accuracy(model, dataset)


def returns_percent(model, dataset):
    return 100 * evaluate_fixed(model, dataset)


def returns_nothing(model, dataset):
    evaluate_fixed(model, dataset)


def restores_by_assignment(model, dataset):  # notebook 02's first lesson: this sets the top module only
    was_training = model.training
    model.eval()
    result = accuracy(model, dataset)
    model.training = was_training
    return result


def back_to_train(model, dataset):  # restores train mode, whatever mode the model came in
    model.eval()
    result = accuracy(model, dataset)
    model.train()
    return result


EVALUATE_WRONG = (
    (forgot_eval, "model.eval"),
    (no_grad_only, "no_grad"),
    (never_restores, "came in train mode and left in another.*model.train\\(was_training\\)"),
    (restores_by_assignment, "came in train mode and left in another"),
    (back_to_train, "came in eval mode and left in another"),
    (returns_percent, "between 0 and 1"),
    (returns_nothing, "returned None"),
)


def depends_on_batch(model, x):
    other = torch.cat([x[:1], x[1:].flip(0) * 2.0 + 1.0])
    probe = copy.deepcopy(model)
    with torch.no_grad():
        return not torch.allclose(probe(x)[0], probe(other)[0], atol=1e-5)


def depends_by_gradient(model, x):
    """Also right: does x[0]'s output have a gradient with respect to the other samples?"""
    probe = copy.deepcopy(model)
    xs = x.clone().requires_grad_(True)
    probe(xs)[0].sum().backward()
    return bool(xs.grad[1:].abs().max() > 1e-7)


def _has_bn(model):
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def by_structure(model, x):
    return model.training and _has_bn(model)


def by_structure_and_buffers(model, x):  # knows notebook 04's rule, still reads the structure
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return any(m.training or m.running_mean is None for m in bns)


def on_the_original(model, x):  # forgets the copy: train-mode probes move the running stats
    other = torch.cat([x[:1], x[1:].flip(0)])
    with torch.no_grad():
        return not torch.allclose(model(x)[0], model(other)[0], atol=1e-5)


def switches_to_eval(model, x):
    model.eval()
    return depends_on_batch(model, x)


def changes_the_image_itself(model, x):
    probe = copy.deepcopy(model)
    with torch.no_grad():
        return not torch.allclose(probe(x)[0], probe(x * 2)[0], atol=1e-5)


def always_true(model, x):
    return True


DEPENDS_WRONG = (
    (on_the_original, "copy"),
    (switches_to_eval, "mode"),
    (changes_the_image_itself, "share x\\[0\\]"),  # BN cancels the scaling: no change seen
    (always_true, "answer is False"),
    (lambda model, x: False, "answer is True"),
    (lambda model, x: "yes", "bool"),
    (by_structure, r"track_running_stats=False, in eval mode the answer is True.*does not decide it: measure"),
    (by_structure_and_buffers, "normalises each sample on its own the answer is False.*does not decide it"),
    (lambda model, x: _has_bn(model) and depends_on_batch(model, x),  # measures, but only where BN is
     "without BN whose layer subtracts the batch mean the answer is True"),
)


def test_notebook_02_my_train_equals_module_train():
    my_train = notebook_function("02_train_vs_eval.ipynb", "my_train", {"nn": nn})
    for mode in (False, True):
        ours, theirs = SmallBNNet(head_bn=True, dropout=0.5, seed=0), SmallBNNet(head_bn=True, dropout=0.5, seed=0)
        ours.train(not mode)
        theirs.train(not mode)
        my_train(ours, mode)
        theirs.train(mode)
        assert [m.training for m in ours.modules()] == [m.training for m in theirs.modules()] == [mode] * 22


# --- notebook 03 ---------------------------------------------------------------------------


def running_mean_after(batches, momentum):
    """Exercise 3.1's solution: PyTorch's update once per batch, from a fresh layer's zeros."""
    r = torch.zeros(batches[0].shape[1])
    for b in batches:
        r = (1 - momentum) * r + momentum * b.mean(0)
    return r


def _ema(batches, weight_new, r):
    for b in batches:
        r = (1 - weight_new) * r + weight_new * b.mean(0)
    return r


def test_the_running_mean_checker_prints_the_worked_example(capsys):
    nb03.check_running_mean_after_steps(lambda batches, m: running_mean_after(batches, m).tolist())  # a list is fine
    out = capsys.readouterr().out
    assert "correct" in out and "[0.702, 0.514]" in out


def running_mean_in_place(batches, momentum):
    """Also right: the update in place, as the layer does it."""
    r = torch.zeros(batches[0].shape[1], dtype=torch.float64)
    for b in batches:
        r.mul_(1 - momentum).add_(b.double().mean(0), alpha=momentum)
    return r


def running_mean_closed_form(batches, momentum):
    """Also right: unrolled, batch k of K keeps weight momentum * (1 - momentum) ** (K - 1 - k); the zeros add nothing."""
    k = len(batches)
    return sum(momentum * (1 - momentum) ** (k - 1 - i) * b.mean(0) for i, b in enumerate(batches))


def with_a_layer(batches, momentum):  # the number is right, but the exercise says: without running a BN layer
    bn = nn.BatchNorm1d(batches[0].shape[1], momentum=momentum).train()
    with torch.no_grad():
        for b in batches:
            bn(b)
    return bn.running_mean


def with_the_function(batches, momentum):
    rm, rv = torch.zeros(batches[0].shape[1]), torch.ones(batches[0].shape[1])
    for b in batches:
        torch.nn.functional.batch_norm(b, rm, rv, training=True, momentum=momentum)
    return rm


def test_a_bn_layer_works_again_after_the_running_mean_check():
    with pytest.raises(ExerciseError):
        nb03.check_running_mean_after_steps(with_a_layer)
    assert with_a_layer([torch.ones(2, 2), torch.zeros(2, 2)], 0.5).tolist() == [0.25, 0.25]  # restored afterwards


def test_running_mean_expected_value_is_the_worked_example():
    # batch means (2, 4), (6, 1), (0, 1): r = 0.1 * [0.81 * mu1 + 0.9 * mu2 + mu3]
    expected = torch.tensor([0.1 * (0.81 * 2 + 0.9 * 6 + 0), 0.1 * (0.81 * 4 + 0.9 * 1 + 1)])
    batches = [torch.tensor(b) for b in nb03.EX03_BATCHES]
    torch.testing.assert_close(running_mean_after(batches, nb03.EX03_MOMENTUM), expected)


RUNNING_MEAN_WRONG = (
    # the shortcut the exercise forbids: "without running a BN layer"
    (with_a_layer, r"without `a BN layer \(nn.BatchNorm1d\(...\)\(x\)\)`"),
    (with_the_function, "without `torch.nn.functional.batch_norm`"),
    (lambda bs, m: torch.batch_norm(bs[0], None, None, None, None, True, m, 1e-5, False), "without `torch.batch_norm`"),
    # the mistakes
    (lambda bs, m: _ema(bs, 1 - m, torch.zeros(bs[0].shape[1])), "Keras"),
    (lambda bs, m: torch.stack([b.mean(0) for b in bs]).mean(0), "momentum=None"),
    (lambda bs, m: bs[-1].mean(0), "last batch"),
    (lambda bs, m: _ema(bs[1:], m, bs[0].mean(0)), "running_mean = 0"),
    (lambda bs, m: running_mean_after(bs, 0.1), "use the `momentum` argument"),
    (lambda bs, m: _ema(bs, m, torch.zeros(2)), r"batches\[0\]\.shape\[1\]"),
    (lambda bs, m: running_mean_after(bs, m) + 0.01, "off by"),
    (lambda bs, m: _ema([b.T for b in bs], m, 0.0), r"shape \(2,\), got \(8,\); take each batch's mean over dim 0"),
    (lambda bs, m: None, "return"),
)


def from_keras(weights, config):
    """Exercise 3.2's solution."""
    bn = nn.BatchNorm2d(len(weights["gamma"]), eps=config["epsilon"], momentum=1 - config["momentum"])
    with torch.no_grad():
        bn.weight.copy_(weights["gamma"])
        bn.bias.copy_(weights["beta"])
        bn.running_mean.copy_(weights["moving_mean"])
        bn.running_var.copy_(weights["moving_variance"])
    return bn


def _port(weights, config, *, eps=True, momentum="right", swap_affine=False, swap_stats=False):
    bn = from_keras(weights, config)
    if not eps:
        bn.eps = 1e-5
    bn.momentum = {"right": 1 - config["momentum"], "copied": config["momentum"], "none": None, "default": 0.1}[momentum]
    with torch.no_grad():
        if swap_affine:
            bn.weight.copy_(weights["beta"])
            bn.bias.copy_(weights["gamma"])
        if swap_stats:
            bn.running_mean.copy_(weights["moving_variance"])
            bn.running_var.copy_(weights["moving_mean"].abs())
    return bn


def from_keras_by_state_dict(weights, config):
    """Also right: a default layer, its settings changed afterwards, the four tensors loaded as a state_dict."""
    bn = nn.BatchNorm2d(weights["gamma"].numel())
    bn.eps, bn.momentum = config["epsilon"], 1 - config["momentum"]
    bn.load_state_dict({"weight": weights["gamma"], "bias": weights["beta"], "running_mean": weights["moving_mean"],
                        "running_var": weights["moving_variance"], "num_batches_tracked": torch.tensor(0)})
    return bn


def test_the_port_matches_a_keras_layer_written_out():
    """Keras' rule (moving = m * moving + (1 - m) * batch mean; output gamma (x - mean) / sqrt(var + eps) + beta)
    against the ported nn.BatchNorm2d, over 20 training batches: the mean matches, the variance differs by the
    n / (n - 1) of section 2 (Keras 3 averages the biased batch variance)."""
    g = torch.Generator().manual_seed(0)
    w = {"gamma": torch.rand(3, generator=g) + 0.5, "beta": torch.randn(3, generator=g),
         "moving_mean": torch.zeros(3), "moving_variance": torch.ones(3)}
    bn = from_keras(w, {"momentum": 0.9, "epsilon": 1e-3}).train()
    mean, var = w["moving_mean"].clone(), w["moving_variance"].clone()
    for _ in range(200):
        x = torch.randn(4, 3, 2, 2, generator=g) * 2 + 1
        with torch.no_grad():
            bn(x)
        mean = 0.9 * mean + 0.1 * x.mean((0, 2, 3))
        var = 0.9 * var + 0.1 * x.var((0, 2, 3), unbiased=False)
    torch.testing.assert_close(bn.running_mean, mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bn.running_var / var, torch.full((3,), 16 / 15), atol=1e-4, rtol=1e-4)


def porting(**kwargs):
    """A learner's from_keras with the mistakes ``kwargs`` switch on (see ``_port``)."""
    return lambda w, c: _port(w, c, **kwargs)


def _eps_written_in(weights, config):  # Keras' default epsilon, not the config's
    return from_keras(weights, {**config, "epsilon": 1e-3})


def _momentum_written_in(weights, config):  # Keras' default momentum, not the config's
    return from_keras(weights, {**config, "momentum": 0.99})


KERAS_WRONG = (
    (porting(eps=False), r"eps: Keras adds its own `epsilon`.*your layer 1e-05"),
    (_eps_written_in, r"eps: Keras adds its own `epsilon` \(config\['epsilon'\], 0.05 here\).*your layer 0.001"),
    (porting(momentum="copied"), "OLD value"),
    (porting(momentum="none"), "cumulative"),
    (porting(momentum="default"), r"set momentum = 1 - config\['momentum'\]"),
    (_momentum_written_in, r"set momentum = 1 - config\['momentum'\]"),
    (porting(swap_affine=True), "gamma .the scale. goes into weight"),
    (porting(swap_stats=True), "moving_mean goes into running_mean"),
    (lambda w, c: None, "returned None"),
    (lambda w, c: nn.Identity(), "BN layer"),
    (lambda w, c: nn.BatchNorm2d(4, affine=False), "affine=True"),
)


def pooled(means, variances, sizes):
    """Exercise 3.3's solution."""
    n = sizes.to(means.dtype)[:, None]
    total = n.sum()
    mean = (n * means).sum(0) / total
    ss = ((n - 1) * variances).sum(0) + (n * (means - mean) ** 2).sum(0)
    return mean, ss / (total - 1)


def pooled_from_moments(means, variances, sizes):
    """Also right: rebuild each batch's sum and sum of squares, add them up, var = (S2 - N mean^2) / (N - 1)."""
    n = sizes.to(means.dtype)[:, None]
    total = n.sum()
    mean = (n * means).sum(0) / total
    sum_sq = ((n - 1) * variances + n * means**2).sum(0)
    return mean, (sum_sq - total * mean**2) / (total - 1)


def pooled_pairwise(means, variances, sizes):
    """Also right: merge the batches one at a time (Chan et al.'s parallel update)."""
    n, mean, m2 = float(sizes[0]), means[0], (sizes[0] - 1) * variances[0]
    for k in range(1, len(sizes)):
        nk, delta = float(sizes[k]), means[k] - mean
        mean = mean + delta * nk / (n + nk)
        m2 = m2 + (nk - 1) * variances[k] + delta**2 * n * nk / (n + nk)
        n += nk
    return mean, m2 / (n - 1)


def test_pooled_is_what_recalibration_would_need():
    """momentum=None keeps the plain averages; the pooled statistics are those of all samples (section 3)."""
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(n, 2, generator=g, dtype=torch.float64) + i for i, n in enumerate((4, 16, 8))]
    bn = nn.BatchNorm1d(2, momentum=None).double()
    for b in batches:
        bn(b)
    means, variances = torch.stack([b.mean(0) for b in batches]), torch.stack([b.var(0) for b in batches])
    torch.testing.assert_close(bn.running_var, variances.mean(0))
    mean, var = pooled(means, variances, torch.tensor([4, 16, 8]))
    everything = torch.cat(batches)
    torch.testing.assert_close(mean, everything.mean(0))
    torch.testing.assert_close(var, everything.var(0))


def _n(sizes, like):
    return sizes.to(like.dtype)[:, None]


POOLED_WRONG = (
    (lambda m, v, n: (m.mean(0), v.mean(0)), "equal weights"),
    (lambda m, v, n: ((_n(n, m) * m).sum(0) / n.sum(), v.mean(0)), "plain average of the batch variances"),
    (lambda m, v, n: ((_n(n, m) * m).sum(0) / n.sum(), ((_n(n, m) - 1) * v).sum(0) / (n.sum() - 1)), "spread between"),
    (lambda m, v, n: (pooled(m, v, n)[0], pooled(m, v, n)[1] * (n.sum() - 1) / n.sum()), "biased variance"),
    (lambda m, v, n: (pooled(m, v, n)[0], ((_n(n, m) * v).sum(0) + (_n(n, m) * (m - pooled(m, v, n)[0]) ** 2).sum(0))
                      / (n.sum() - 1)), r"\(n_k - 1\) \* var_k"),
    (lambda m, v, n: (pooled(m, v, n)[0] + 0.1, pooled(m, v, n)[1]), "mean is off"),
    (lambda m, v, n: (pooled(m, v, n)[0], pooled(m, v, n)[1] + 0.1), "var is off"),
    (lambda m, v, n: pooled(m, v, n)[0], "pair"),
    (lambda m, v, n: (m, v), "shape"),
)


def test_notebook_03_recalibration_equals_reidlab():
    """The recalibration written out in notebook 03 and reidlab.bn.recalibrate_bn agree on every buffer."""
    from reidlab.bn import recalibrate_bn

    recalibrate = notebook_function("03_momentum_running_stats.ipynb", "recalibrate", {"nn": nn, "torch": torch})
    data = make_toy_images(80, seed=2, shift=(1.0, -0.5, 0.3), gain=1.5)
    net = SmallBNNet(width=4, head_bn=True, dropout=0.0, seed=0)
    for mode in (True, False):
        a, b = copy.deepcopy(net).train(mode), copy.deepcopy(net).train(mode)
        recalibrate(a, data.tensors[0].split(16))
        recalibrate_bn(b, DataLoader(data, batch_size=16))
        for (name, x), (_, y) in zip(a.named_buffers(), b.named_buffers()):
            torch.testing.assert_close(x, y, msg=name)
        assert [m.training for m in a.modules()] == [m.training for m in b.modules()] == [mode] * len(list(a.modules()))
        assert [m.momentum for m in a.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] == [0.1] * 4
        # and both really changed the statistics: the first BN now holds this data's channel means
        first = a.features[0]
        z = first[0](data.tensors[0]).detach()
        torch.testing.assert_close(first[1].running_mean, z.mean(dim=(0, 2, 3)), atol=1e-5, rtol=1e-4)


ANSWERS = {  # run by tests/test_answer_suites.py
    nb02.check_evaluate_fixed: Answers(right=(evaluate_fixed, evaluate_on_a_copy, evaluate_by_hand), wrong=EVALUATE_WRONG),
    nb02.check_depends_on_batch: Answers(right=(depends_on_batch, depends_by_gradient), wrong=DEPENDS_WRONG),
    nb03.check_running_mean_after_steps: Answers(
        right=(running_mean_after, running_mean_in_place, running_mean_closed_form), wrong=RUNNING_MEAN_WRONG),
    nb03.check_from_keras: Answers(right=(from_keras, from_keras_by_state_dict), wrong=KERAS_WRONG),
    nb03.check_pooled_mean_var: Answers(right=(pooled, pooled_from_moments, pooled_pairwise), wrong=POOLED_WRONG),
}
