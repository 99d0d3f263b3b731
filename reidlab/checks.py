"""Exercise checkers: feedback that says *what* is wrong, not a bare ``assert``.

Each exercise's graded cell calls one ``check_*`` function with the learner's answer. A
wrong answer raises :class:`ExerciseError` with a sentence aimed at the usual mistake
(e.g. "running_var holds the unbiased estimate; you stored the biased one"); a right one
prints a short confirmation. nbgrader counts a graded cell as failed when it raises, so
the same checkers serve self-study and classroom grading.

How exercises work is shown in notebook 00; a checker lives here (not in the notebook) so
the student version of a notebook can call it without seeing the solution.
"""
from __future__ import annotations

from typing import Any, Callable

import torch


class ExerciseError(AssertionError):
    """A wrong answer, with an explanation a learner can act on."""


def fail(message: str) -> None:
    raise ExerciseError(message)


def passed(what: str) -> None:
    print(f"correct: {what}")


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if x is None:
        fail(f"{name} is None: did the function forget to `return` its result?")
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception:  # noqa: BLE001 - any conversion failure is the learner's type error
            fail(f"{name} should be a tensor, got {type(x).__name__}")
    return x


def expect_close(
    actual: Any,
    expected: torch.Tensor,
    *,
    name: str,
    hint: str = "",
    atol: float = 1e-5,
    rtol: float = 1e-4,
) -> None:
    """Fail with a message naming ``name`` unless ``actual`` matches ``expected`` (shape, then values)."""
    actual = _as_tensor(actual, name)
    if tuple(actual.shape) != tuple(expected.shape):
        fail(f"{name} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}. {hint}".strip())
    actual = actual.detach().to(expected.dtype)
    if not torch.allclose(actual, expected, atol=atol, rtol=rtol):
        diff = (actual - expected).abs().max().item()
        fail(f"{name} is off by up to {diff:.3g}. {hint}".strip())


# --- notebook 00 -------------------------------------------------------------------------


def _softmax_t(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    return torch.softmax(scores / temperature, dim=-1)


def check_softmax_temperature(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """Notebook 00: ``fn(scores, temperature)`` must return softmax(scores / temperature) over the last dim."""
    scores = torch.tensor([[2.0, 1.0, 0.5, -1.0], [0.0, 0.0, 3.0, 1.0]])
    out = fn(scores.clone(), 1.0)
    out = _as_tensor(out, "softmax(scores, 1.0)")
    if out.shape == scores.shape and torch.allclose(out.sum(-1), torch.ones(2), atol=1e-4):
        pass
    elif out.shape == scores.shape and torch.allclose(out.sum(0), torch.ones(4), atol=1e-4):
        fail("each column sums to 1: normalise over the last dimension (dim=-1), one distribution per row")
    elif out.shape == scores.shape:
        fail("the rows do not sum to 1: divide exp(scores / T) by its sum over the last dimension")
    expect_close(out, _softmax_t(scores, 1.0), name="softmax(scores, 1.0)")
    for t in (0.05, 5.0):
        got = _as_tensor(fn(scores.clone(), t), f"softmax(scores, {t})")
        if torch.allclose(got.to(scores.dtype), _softmax_t(scores, 1 / t), atol=1e-4):
            fail(f"with T={t} you computed softmax(scores * T): the temperature divides the scores")
        if torch.isnan(got).any():
            fail(f"NaN at T={t}: subtract the row maximum before exp() to avoid overflow")
        expect_close(got, _softmax_t(scores, t), name=f"softmax(scores, {t})", hint="divide the scores by T")
    big = torch.tensor([[1000.0, 999.0]])
    got = _as_tensor(fn(big, 1.0), "softmax([[1000, 999]], 1.0)")
    if not torch.isfinite(got).all():
        fail("exp(1000) overflows to inf: subtract each row's maximum before exp() (the result is unchanged)")
    passed("softmax with temperature, stable for large scores")


# --- notebook 02: train vs eval ----------------------------------------------------------


def _bn_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b.detach().clone() for name, b in model.named_buffers() if name.rsplit(".", 1)[-1].startswith(("running_", "num_batches"))]


def _modes(model: torch.nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def check_evaluate_fixed(fn: Callable[..., Any]) -> None:
    """Notebook 02: ``fn(model, dataset)`` must return eval-mode accuracy and leave the model as it found it.

    Tried on a small BN network (:class:`reidlab.toy.SmallBNNet`) in train mode and in eval
    mode; the running statistics must not move, the mode must be restored, and the answer
    must not depend on the batch size the function picks.
    """
    import copy

    from .toy import SmallBNNet, accuracy, make_toy_images

    data = make_toy_images(96, seed=11, shift=0.7, gain=1.6)  # a shifted domain: train-mode stats differ a lot
    base = SmallBNNet(width=4, seed=3)
    with torch.no_grad():  # give the running stats values that differ from any batch's
        for m in base.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
                m.running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(2))
    expected = accuracy(copy.deepcopy(base).eval(), data)
    for start_mode in (True, False):
        model = copy.deepcopy(base).train(start_mode)
        before = _bn_buffers(model)
        got = fn(model, data)
        if got is None:
            fail("the function returned None: return the accuracy (a float between 0 and 1)")
        if isinstance(got, torch.Tensor):
            got = got.item()
        if not isinstance(got, (float, int)) or not 0.0 <= float(got) <= 1.0:
            fail(f"return the accuracy as a float between 0 and 1, got {got!r}")
        changed = any(not torch.equal(a, b) for a, b in zip(before, _bn_buffers(model)))
        if changed:
            fail(
                "the BN running statistics changed during evaluation: the forward passes ran in train mode. "
                "Call model.eval() before them (torch.no_grad() alone does not switch the mode)"
            )
        if _modes(model) != [start_mode] * len(_modes(model)):
            state = "train" if start_mode else "eval"
            fail(
                f"the model came in {state} mode and left in another: remember `was_training = model.training` "
                f"and call model.train(was_training) at the end, or a training loop that evaluates every epoch "
                f"keeps training in eval mode"
            )
        if abs(float(got) - expected) > 1e-9:
            fail(f"accuracy {float(got):.4f}, expected {expected:.4f}: count correct argmax predictions over all images")
    passed("evaluation in eval mode, running statistics untouched, mode restored")


def check_depends_on_batch(fn: Callable[[torch.nn.Module, torch.Tensor], Any]) -> None:
    """Notebook 02: ``fn(model, x)`` must say whether ``model(x)[0]`` changes when the rest of the batch does.

    Tried on a BN network in train mode (True), the same network in eval mode (False) and a
    network without BN in train mode (False); the function must not change the model's
    running statistics or mode.
    """
    import copy

    from .toy import SmallBNNet, make_toy_images

    x = make_toy_images(8, seed=4).tensors[0]
    bn_net = SmallBNNet(width=4, seed=0)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    plain(x)  # materialise the lazy layer
    cases = [(bn_net, True, True, "a BN network in train mode"), (bn_net, False, False, "a BN network in eval mode"),
             (plain, True, False, "a network without BN in train mode")]
    for net, mode, expected, what in cases:
        model = copy.deepcopy(net).train(mode)
        before = _bn_buffers(model)
        got = fn(model, x.clone())
        if got is None:
            fail("the function returned None: return True or False")
        if isinstance(got, torch.Tensor):
            got = bool(got.item())
        if not isinstance(got, bool):
            fail(f"return a bool (True/False), got {type(got).__name__}")
        if any(not torch.equal(a, b) for a, b in zip(before, _bn_buffers(model))):
            fail(
                "your measurement changed the model's running statistics: run the probes on a copy "
                "(copy.deepcopy(model)) so that measuring does not alter what you measure"
            )
        if _modes(model) != [mode] * len(_modes(model)):
            fail("your function changed the model's mode: measure in the mode the model is in (that is the question)")
        if got != expected:
            if expected:
                fail(
                    f"for {what} the answer is True: compare the output for x[0] in two batches that share "
                    f"x[0] but differ elsewhere (e.g. x and torch.cat([x[:1], x[1:].flip(0) * 2]))"
                )
            fail(
                f"for {what} the answer is False: did you compare with a tolerance (torch.allclose)? "
                f"Or change x[0] itself instead of only its batch-mates?"
            )
    passed("output depends on the batch in train mode with BN, not in eval mode or without BN")


# --- notebook 04: track_running_stats -----------------------------------------------------


def _bn_norm(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, bn: torch.nn.Module) -> torch.Tensor:
    shape = [1, -1] + [1] * (x.dim() - 2)
    y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + bn.eps)
    if bn.weight is not None:
        y = y * bn.weight.detach().view(shape) + bn.bias.detach().view(shape)
    return y


def check_bn_forward(fn: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]) -> None:
    """Notebook 04: ``fn(bn, x)`` must return what ``bn(x)`` returns, in all four train/eval x tracked states.

    The learner computes it from ``bn``'s buffers and parameters without calling the layer.
    """
    import copy

    from torch import nn

    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 4, 3, 3, generator=g) * 2 + 1
    dims = [0, 2, 3]
    for track in (True, False):
        for training in (True, False):
            bn = nn.BatchNorm2d(4, eps=0.1, track_running_stats=track)
            with torch.no_grad():
                bn.weight.copy_(torch.rand(4, generator=g) + 0.5)
                bn.bias.copy_(torch.randn(4, generator=g))
                if track:
                    bn.running_mean.copy_(torch.randn(4, generator=g))
                    bn.running_var.copy_(torch.rand(4, generator=g) + 0.5)
            bn.train(training)
            expected = copy.deepcopy(bn)(x).detach()
            state = f"{'train' if training else 'eval'} mode, track_running_stats={track}"
            called: list[bool] = []
            handle = bn.register_forward_hook(lambda *_: called.append(True))
            try:
                got = fn(bn, x.clone())
            except (TypeError, AttributeError) as err:
                if not track:
                    fail(
                        f"{state}: {type(err).__name__}: {err}. running_mean is None when a layer does not track "
                        "statistics: such a layer normalises with the batch's statistics in eval mode too"
                    )
                raise
            finally:
                handle.remove()
            if called:
                fail("you called the layer itself: compute the output from its buffers and parameters instead")
            got = _as_tensor(got, f"bn_forward ({state})").detach()
            if got.shape != expected.shape:
                fail(f"{state}: output shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
            if torch.allclose(got, expected, atol=1e-4, rtol=1e-4):
                continue
            bmean, bvar = x.mean(dims), x.var(dims, unbiased=False)
            candidates = {
                "batch": _bn_norm(x, bmean, bvar, bn),
                "unbiased": _bn_norm(x, bmean, x.var(dims, unbiased=True), bn),
            }
            if track:
                candidates["running"] = _bn_norm(x, bn.running_mean, bn.running_var, bn)
            close = {k: torch.allclose(got, v, atol=1e-4, rtol=1e-4) for k, v in candidates.items()}
            if close.get("running") and training:
                fail(f"{state}: you normalised with running_mean/running_var; in train mode BN uses the batch's statistics")
            if close.get("batch") and track and not training:
                fail(
                    f"{state}: you normalised with the batch's statistics; in eval mode a layer that tracks "
                    "statistics uses running_mean/running_var"
                )
            if close.get("unbiased"):
                fail(f"{state}: normalise with the biased batch variance (unbiased=False); running_var stores the unbiased one")
            plain = (x - bmean.view(1, -1, 1, 1)) / torch.sqrt(bvar.view(1, -1, 1, 1) + bn.eps)
            if torch.allclose(got, plain, atol=1e-4, rtol=1e-4):
                fail(f"{state}: scale by bn.weight (gamma) and shift by bn.bias (beta) after normalising")
            fail(f"{state}: the output is off by up to {(got - expected).abs().max():.3g}; did you add bn.eps to the variance?")
    passed("bn_forward matches nn.BatchNorm2d in all four train/eval x track_running_stats states")


def _small_bn_model(seed: int = 0) -> torch.nn.Module:
    from torch import nn

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1, bias=False),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU()),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.BatchNorm1d(4),
            nn.Linear(4, 3),
        )
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                with torch.no_grad():
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_()
                    m.running_mean.normal_()
                    m.running_var.uniform_(0.5, 2.0)
                    m.num_batches_tracked.fill_(10)
    return model


def _apply_and_list_bns(fn: Callable[[torch.nn.Module], Any], model: torch.nn.Module):
    """Apply a learner's ``fn(model)`` and list the resulting BN layers as ``(name, module)``.

    ``fn`` may change the model in place (any return value) or return a new model.
    """
    from torch import nn

    out = fn(model)
    if isinstance(out, nn.Module):
        model = out
    return model, [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def check_make_untracked(fn: Callable[[torch.nn.Module], Any]) -> None:
    """Notebook 04: ``fn(model)`` must turn every BN layer of ``model`` into an untracked one, in place.

    Untracked means what ``nn.BatchNorm2d(..., track_running_stats=False)`` builds: the flag
    is False *and* the buffers are ``None``, so both modes use batch statistics and the
    ``state_dict`` has no running-stat keys. gamma/beta and other weights stay as they were.
    """
    model = _small_bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    model, bns = _apply_and_list_bns(fn, model)
    if len(bns) != 3:
        fail(f"the model should still have its 3 BN layers, found {len(bns)}: change them, do not remove them")
    for name, m in bns:
        if m.track_running_stats:
            fail(f"layer {name!r} still has track_running_stats=True (nested layers count too: use model.modules())")
    for name, m in bns:
        if m.running_mean is not None or m.running_var is not None:
            fail(
                f"layer {name!r}: you set track_running_stats=False but left running_mean/running_var in place; "
                "in eval mode PyTorch still normalises with them. Set them (and num_batches_tracked) to None"
            )
    extra = [k for k in model.state_dict() if "running" in k or "num_batches_tracked" in k]
    if extra:
        fail(f"the state_dict still holds {extra[:3]}: set num_batches_tracked to None as well")
    after = model.state_dict()
    for k, v in before.items():
        if k not in after or not torch.equal(after[k], v):
            fail(f"{k} changed or disappeared: keep the weights, gamma and beta as they were")
    x = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.eval()
        y_eval = model(x)
        model.train()
        y_train = model(x)
    if not torch.allclose(y_eval, y_train, atol=1e-5):
        fail("eval() and train() give different outputs: an untracked model normalises with batch statistics in both")
    passed("every BN layer is untracked: batch statistics in both modes, no running-stat keys")


# --- notebook 05: freezing BN ---------------------------------------------------------------


def check_freeze_bn(fn: Callable[[torch.nn.Module], Any]) -> None:
    """Notebook 05: ``fn(model)`` must freeze every BN layer of ``model`` in both senses, in place.

    Frozen means: gamma/beta get no gradient (``requires_grad=False``), the running statistics
    stay put *and are used* even after ``model.train()``, and nothing else is frozen.
    """
    model = _small_bn_model()
    model, bns = _apply_and_list_bns(fn, model)
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


def check_to_frozen_bn(fn: Callable[[torch.nn.Module], Any]) -> None:
    """Notebook 05: ``fn(model)`` must return ``model`` with every ``BatchNorm2d`` replaced by torchvision's ``FrozenBatchNorm2d``.

    The output must equal the original model's output in eval mode (weights, biases, running
    statistics *and eps* copied), nested layers included.
    """
    import copy

    from torch import nn
    from torchvision.ops.misc import FrozenBatchNorm2d

    model = _small_bn_model()
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


def check_fixed_bn_names(fn: Callable[[torch.nn.Module], Any]) -> None:
    """Notebook 05: ``fn(resnet)`` must return the names of all BN layers in conv1..layer2 of a torchvision ResNet-50."""
    import torchvision

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


# --- notebook 08 -------------------------------------------------------------------------


def _call_ap(fn: Callable[[Any], Any], matches: list[bool]) -> float:
    import numpy as np

    got = fn(np.array(matches, dtype=bool))
    if got is None:
        fail("your function returned None: did it forget to `return` the AP?")
    try:
        return float(got)
    except (TypeError, ValueError):
        fail(f"return one number (the AP of the list), got {type(got).__name__}")
    raise AssertionError("unreachable")  # pragma: no cover


def _ap_reference(matches: list[bool]) -> float:
    ranks = [r for r, m in enumerate(matches, start=1) if m]
    return sum(j / r for j, r in enumerate(ranks, start=1)) / len(ranks)


def check_average_precision(fn: Callable[[Any], Any]) -> None:
    """Notebook 08: ``fn(matches)`` must return the non-interpolated AP of a ranked list.

    ``matches`` is a boolean numpy array over the ranked (already filtered) gallery: True
    where the item is the query's person. AP is the mean, over the true matches, of the
    precision at the rank of each match (torchreid's ``eval_market1501``).
    """
    import math

    cases = [
        [True, False, True, False, False, True],
        [False, True, True, False, True, False, False, False],
        [True, True, False, False],
        [False, False, False, True],
    ]
    for matches in cases:
        want = _ap_reference(matches)
        got = _call_ap(fn, matches)
        if math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9):
            continue
        n = len(matches)
        hits = [r for r, m in enumerate(matches, start=1) if m]
        every_rank = sum(sum(matches[:r]) / r for r in range(1, n + 1)) / n
        if math.isclose(got, every_rank, rel_tol=1e-6):
            fail("you averaged the precision at every rank; average it only at the ranks of the true matches")
        if not math.isfinite(got) or got > 1 + 1e-9:
            fail(f"AP = {got} for {matches}: ranks start at 1 (the first item has rank 1, not 0)")
        zero_based_j = sum((j - 1) / r for j, r in enumerate(hits, start=1)) / len(hits)
        if math.isclose(got, zero_based_j, rel_tol=1e-6, abs_tol=1e-9):
            fail("at the j-th true match the list holds j matches, counting that one (j starts at 1)")
        interp = sum(max(sum(matches[:r2]) / r2 for r2 in hits if r2 >= r) for r in hits) / len(hits)
        if math.isclose(got, interp, rel_tol=1e-6):
            fail("that is interpolated AP (max precision at later ranks); re-ID uses the plain precision at each match")
        if math.isclose(got, sum(j / r for j, r in enumerate(hits, start=1)) / n, rel_tol=1e-6):
            fail("divide by the number of true matches, not by the length of the list")
        fail(f"AP of {matches} should be {want:.4f}, got {got:.4f}")
    passed("non-interpolated average precision")


_MARKET_G_PIDS = [5, 5, 5, 7, 7, -1, 0, 5, 0, 9, -1, 7]
_MARKET_G_CAMS = [0, 1, 2, 0, 1, 0, 0, 0, 2, 1, 2, 2]


def _market_keep_reference(q_pid: int, q_cam: int, g_pids, g_cams):
    import numpy as np

    g_pids, g_cams = np.asarray(g_pids), np.asarray(g_cams)
    return ~(((g_pids == q_pid) & (g_cams == q_cam)) | (g_pids == -1))


def check_market_exclusion(fn: Callable[..., Any]) -> None:
    """Notebook 08: ``fn(q_pid, q_camid, g_pids, g_camids)`` must return the gallery mask the Market protocol keeps."""
    import numpy as np

    g_pids, g_cams = np.array(_MARKET_G_PIDS), np.array(_MARKET_G_CAMS)
    for q_pid, q_cam in ((5, 0), (7, 1), (9, 2)):
        want = _market_keep_reference(q_pid, q_cam, g_pids, g_cams)
        got = fn(q_pid, q_cam, g_pids.copy(), g_cams.copy())
        if got is None:
            fail("your function returned None: return the boolean mask of gallery items to keep")
        got = np.asarray(got)
        if got.dtype != bool or got.shape != want.shape:
            fail(
                f"return a boolean mask with one entry per gallery item (shape {want.shape}), "
                f"got dtype {got.dtype} and shape {got.shape}"
            )
        if np.array_equal(got, want):
            continue
        if np.array_equal(got, ~want):
            fail("your mask is inverted: True should mark the items that are KEPT")
        same_cam = g_cams == q_cam
        same_id = g_pids == q_pid
        if (~got & (g_pids == 0) & ~same_cam).any():
            fail("distractors (pid 0) stay in the gallery as negatives; do not remove them")
        if (~got & same_cam & ~same_id & (g_pids != -1)).any():
            fail("you removed other people seen by the query's camera: only the SAME person in the same camera goes")
        if (~got & same_id & ~same_cam).any():
            fail("you removed the query's person in other cameras: those are the true matches, keep them")
        if (got & (g_pids == -1)).any():
            fail("junk images (pid -1) must be removed for every query")
        if (got & same_id & same_cam).any():
            fail("the query's person in the query's own camera must be removed")
        fail(f"wrong mask for query (pid {q_pid}, camera {q_cam}): expected {want.astype(int).tolist()}")
    passed("Market-1501 exclusion: same id AND same camera removed, junk removed, distractors kept")


def check_inp(fn: Callable[[Any], Any]) -> None:
    """Notebook 08: ``fn(matches)`` must return the INP of a ranked list: |G| / (rank of the last true match)."""
    import math

    import numpy as np

    for matches in ([True, False, True, False, False, True, False], [False, True, True], [True, False, False]):
        hits = [r for r, m in enumerate(matches, start=1) if m]
        want = len(hits) / hits[-1]
        got = fn(np.array(matches, dtype=bool))
        if got is None:
            fail("your function returned None: did it forget to `return` the INP?")
        got = float(got)
        if math.isclose(got, want, rel_tol=1e-6):
            continue
        if math.isclose(got, 1 - want, rel_tol=1e-6, abs_tol=1e-9):
            fail("that is the negative penalty NP; INP = 1 - NP = |G| / R_hard")
        if math.isclose(got, len(hits) / hits[0], rel_tol=1e-6) or math.isclose(got, 1 / hits[0], rel_tol=1e-6):
            fail("R_hard is the rank of the LAST (hardest) true match, not the first")
        if math.isclose(got, len(hits) / (hits[-1] - 1) if hits[-1] > 1 else math.inf, rel_tol=1e-6):
            fail("ranks start at 1: the last true match's rank is its position + 1")
        fail(f"INP of {matches} should be {want:.4f}, got {got:.4f}")
    passed("INP = number of true matches / rank of the hardest one")


# --- notebook 01: BatchNorm from scratch ----------------------------------------------------


def _nb01_pair(result: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        fail(f"{what} should return a pair (mean, var), got {type(result).__name__}")
    return _as_tensor(result[0], f"{what}[0] (mean)"), _as_tensor(result[1], f"{what}[1] (var)")


def _nb01_close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> bool:
    return tuple(a.shape) == tuple(b.shape) and torch.allclose(a.detach().to(b.dtype), b, atol=atol, rtol=1e-4)


def check_channel_stats(fn: Callable[[torch.Tensor], Any]) -> None:
    """Notebook 01: ``fn(x)`` for ``x`` of shape (N, C, H, W) returns BN's per-channel ``(mean, var)``.

    Both of shape ``(C,)``, reduced over dims (0, 2, 3); ``var`` is the biased variance that
    BN divides by.
    """
    gen = torch.Generator().manual_seed(101)
    for shape in ((4, 3, 5, 6), (2, 5, 3, 3)):
        n, c, h, w = shape
        x = torch.randn(shape, generator=gen) * torch.linspace(0.5, 3.0, c).view(1, c, 1, 1)
        x = x + torch.arange(c, dtype=x.dtype).view(1, c, 1, 1)
        mean, var = _nb01_pair(fn(x.clone()), f"channel_stats(x of shape {shape})")
        want_mean = x.mean(dim=(0, 2, 3))
        want_var = x.var(dim=(0, 2, 3), unbiased=False)
        got = tuple(mean.shape)
        if got != (c,):
            if got == (c, h, w):
                fail(f"mean has shape {got}: you reduced over the batch dim 0 only. BN's statistics are per "
                     "channel over the batch AND every pixel: reduce over dims (0, 2, 3)")
            if got == (n, c):
                fail(f"mean has shape {got}: those are per-image statistics (instance norm). BN also averages "
                     "over the batch: reduce over dims (0, 2, 3)")
            if got in ((n,), (n, h, w), (h, w), (n, 1, h, w)):
                fail(f"mean has shape {got}: you reduced over the channel dim 1. BN keeps one statistic per "
                     "channel: reduce over every dim except 1, i.e. (0, 2, 3)")
            if mean.numel() == c:
                fail(f"mean has shape {got}: return one value per channel as a flat vector of shape ({c},) "
                     "(keepdim=False, or .flatten())")
            fail(f"mean has shape {got}, expected ({c},): reduce over dims (0, 2, 3)")
        expect_close(mean, want_mean, name="mean", hint="the mean over dims (0, 2, 3)")
        if tuple(var.shape) != (c,):
            fail(f"var has shape {tuple(var.shape)}, expected ({c},): reduce over the same dims (0, 2, 3) as the mean")
        if _nb01_close(var, x.var(dim=(0, 2, 3), unbiased=True)):
            fail("var is the unbiased estimate (divides by n - 1). BN normalises with the biased variance: divide "
                 "by n = N*H*W (unbiased=False, or correction=0)")
        if _nb01_close(var, want_var.sqrt()):
            fail("you returned the standard deviation; return the variance (its square)")
        expect_close(var, want_var, name="var", hint="the biased variance over dims (0, 2, 3)")
    passed("per-channel mean and biased variance over (N, H, W)")


def check_running_stats_update(fn: Callable[..., Any]) -> None:
    """Notebook 01: ``fn(running_mean, running_var, x, momentum)`` returns the updated ``(mean, var)``.

    ``x`` has shape (N, C, H, W); PyTorch's rule is ``running <- (1 - momentum) * running +
    momentum * batch_stat`` with the *unbiased* batch variance in ``running_var``.
    """
    gen = torch.Generator().manual_seed(102)
    x = torch.randn(3, 2, 2, 2, generator=gen) * 2 + torch.tensor([1.0, -3.0]).view(1, 2, 1, 1)
    rm0, rv0 = torch.tensor([0.5, -0.5]), torch.tensor([2.0, 0.25])
    n = x.numel() // x.shape[1]
    mean = x.mean(dim=(0, 2, 3))
    biased = x.var(dim=(0, 2, 3), unbiased=False)
    unbiased = biased * n / (n - 1)
    for m in (0.1, 0.3):
        got_mean, got_var = _nb01_pair(fn(rm0.clone(), rv0.clone(), x.clone(), m), f"update(..., momentum={m})")
        want_mean = (1 - m) * rm0 + m * mean
        want_var = (1 - m) * rv0 + m * unbiased
        if _nb01_close(got_mean, m * rm0 + (1 - m) * mean):
            fail("momentum is the weight of the NEW batch in PyTorch: running <- (1 - momentum) * running + "
                 "momentum * batch_stat (Keras' `momentum`/decay is the opposite)")
        if _nb01_close(got_mean, mean) or _nb01_close(got_var, unbiased):
            fail("you replaced the running statistics by the batch's: blend them, "
                 "running <- (1 - momentum) * running + momentum * batch_stat")
        expect_close(got_mean, want_mean, name="running_mean", hint="(1 - momentum) * running_mean + momentum * batch mean")
        if _nb01_close(got_var, (1 - m) * rv0 + m * biased):
            fail("running_var holds the unbiased estimate; you stored the biased one (multiply the batch "
                 "variance by n / (n - 1), n = N*H*W)")
        bs = x.shape[0]
        if _nb01_close(got_var, (1 - m) * rv0 + m * biased * bs / (bs - 1)):
            fail("the n / (n - 1) correction counts every value of a channel, n = N*H*W, not the batch size N")
        expect_close(got_var, want_var, name="running_var",
                     hint="(1 - momentum) * running_var + momentum * unbiased batch variance")
    passed("running <- (1 - momentum) * running + momentum * batch stat, unbiased variance")


def check_bn_input_grad(fn: Callable[..., Any]) -> None:
    """Notebook 01: ``fn(grad_out, x, gamma, eps)`` returns dL/dx of training-mode BN for x of shape (N, C).

    The reference is autograd through ``gamma * (x - mean) / sqrt(var + eps)`` with batch
    statistics (biased variance), in float64.
    """
    gen = torch.Generator().manual_seed(103)
    x = torch.randn(6, 3, generator=gen, dtype=torch.float64) * 2 + 1
    gamma = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5
    g = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    eps = 1e-5
    xr = x.clone().requires_grad_(True)
    y = gamma * (xr - xr.mean(0)) / torch.sqrt(xr.var(0, unbiased=False) + eps)
    (want,) = torch.autograd.grad(y, xr, g)
    got = _as_tensor(fn(g.clone(), x.clone(), gamma.clone(), eps), "bn_input_grad(...)")
    if tuple(got.shape) != tuple(x.shape):
        fail(f"the gradient has shape {tuple(got.shape)}, expected {tuple(x.shape)} (one value per input)")
    got = got.detach().to(torch.float64)
    std = torch.sqrt(x.var(0, unbiased=False) + eps)
    xhat = (x - x.mean(0)) / std
    wrong = {
        "you treated the mean and variance as constants (that is the eval-mode gradient, gamma / std * grad); "
        "in training they are computed from the batch, so every input also moves them":
            gamma / std * g,
        "missing the -mean(grad_out) term: the batch mean depends on every input, so each input also receives "
        "-mean(dL/dx_hat) through it":
            gamma / std * (g - xhat * (g * xhat).mean(0)),
        "missing the -x_hat * mean(grad_out * x_hat) term: the batch variance depends on every input too":
            gamma / std * (g - g.mean(0)),
        "multiply by gamma: y = gamma * x_hat + beta, so dL/dx_hat = gamma * grad_out":
            1 / std * (g - g.mean(0) - xhat * (g * xhat).mean(0)),
    }
    for message, value in wrong.items():
        if torch.allclose(got, value, atol=1e-6):
            fail(message)
    n = x.shape[0]
    std_u = torch.sqrt(x.var(0, unbiased=True) + eps)
    xhat_u = (x - x.mean(0)) / std_u
    if torch.allclose(got, gamma / std_u * (g - g.mean(0) - xhat_u * (g * xhat_u).mean(0)), atol=1e-6) or torch.allclose(
        got, gamma / std_u * (g - g.mean(0) - xhat_u * (g * xhat_u).sum(0) / (n - 1)), atol=1e-6
    ):
        fail("BN normalises with the biased variance (divide by n), in the forward pass and so in its gradient")
    expect_close(got, want, name="dL/dx", atol=1e-6, rtol=1e-5,
                 hint="dx = gamma / std * (g - mean(g) - x_hat * mean(g * x_hat)), means over the batch dim")
    passed("the BN input gradient matches autograd")


# --- notebook 03: momentum and running statistics ----------------------------------------

#: The three batches of exercise 3.1 (8 samples x 2 features each); the notebook prints them.
EX03_BATCHES: tuple[tuple[tuple[float, float], ...], ...] = (
    ((1.0, 4.0), (3.0, 4.0), (2.0, 2.0), (2.0, 6.0), (1.0, 3.0), (3.0, 5.0), (2.0, 4.0), (2.0, 4.0)),
    ((5.0, 0.0), (7.0, 2.0), (6.0, 1.0), (6.0, 1.0), (4.0, -1.0), (8.0, 3.0), (6.0, 2.0), (6.0, 0.0)),
    ((0.0, 1.0), (-2.0, 1.0), (2.0, 1.0), (0.0, 1.0), (1.0, 1.0), (-1.0, 1.0), (0.0, 1.0), (0.0, 1.0)),
)
EX03_MOMENTUM = 0.1


def _ex03_batches() -> list[torch.Tensor]:
    return [torch.tensor(b, dtype=torch.float64) for b in EX03_BATCHES]


def check_running_mean_after_steps(answer: Any) -> None:
    """Notebook 03: ``running_mean`` of a fresh ``BatchNorm1d(2, momentum=0.1)`` after the 3 batches of ``EX03_BATCHES``."""
    bn = torch.nn.BatchNorm1d(2, momentum=EX03_MOMENTUM).double().train()
    with torch.no_grad():
        for b in _ex03_batches():
            bn(b)
    expected = bn.running_mean.clone()
    got = _as_tensor(answer, "running_mean").to(torch.float64)
    if tuple(got.shape) != (2,):
        fail(f"running_mean has one value per feature: expected shape (2,), got {tuple(got.shape)}")
    means = [b.mean(0) for b in _ex03_batches()]
    m = EX03_MOMENTUM
    keras = torch.zeros(2, dtype=torch.float64)
    for mu in means:
        keras = m * keras + (1 - m) * mu
    wrong = {
        "keras": (keras, "you weighted the new batch by 1 - momentum (Keras' convention); in PyTorch the new "
                         "batch gets weight momentum: r <- (1 - m) r + m x"),
        "cumulative": (torch.stack(means).mean(0), "that is the plain average of the three batch means "
                                                   "(momentum=None); with momentum=0.1 the update is exponential"),
        "last": (means[-1], "that is the last batch's mean: the running mean remembers earlier batches"),
        "no_init": (means[0] * (1 - m) ** 2 + means[1] * m * (1 - m) + means[2] * m,
                    "you started from the first batch's mean; a fresh BN layer starts from running_mean = 0"),
    }
    if torch.allclose(got, expected, atol=1e-4):
        passed(f"running_mean after three steps = {[round(v, 4) for v in expected.tolist()]}")
        return
    for candidate, message in wrong.values():
        if torch.allclose(got, candidate, atol=1e-4):
            fail(message)
    fail(f"running_mean is off by up to {(got - expected).abs().max().item():.3g}: apply r <- 0.9 r + 0.1 * "
         f"(batch mean over dim 0) three times, starting from r = 0")


def check_keras_to_torch(fn: Callable[[float], Any]) -> None:
    """Notebook 03: ``fn(keras_momentum)`` must return the equivalent PyTorch ``momentum`` (``1 - keras``)."""
    for keras in (0.99, 0.9, 0.999, 0.5):
        got = fn(keras)
        if got is None:
            fail("the function returned None: return the PyTorch momentum")
        got = float(got)
        if abs(got - keras) < 1e-9 and keras != 0.5:
            fail(f"for Keras momentum {keras} you returned {got}: the same number means the opposite in PyTorch "
                 f"(there it is the weight of the NEW batch)")
        if abs(got - (1 - keras)) > 1e-9:
            fail(f"for Keras momentum {keras} you returned {got}, expected {1 - keras:g}: Keras keeps momentum of "
                 f"the old value, PyTorch takes momentum of the new batch")
    passed("PyTorch momentum = 1 - Keras momentum (Keras' default 0.99 is PyTorch's 0.01)")


def check_update_running_var(fn: Callable[[torch.Tensor, torch.Tensor, float], Any]) -> None:
    """Notebook 03: ``fn(running_var, x, momentum)`` must return BN's new ``running_var`` for an (N, C) batch."""
    g = torch.Generator().manual_seed(0)
    for n, momentum in ((4, 0.1), (16, 0.3)):
        x = torch.randn(n, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
        bn = torch.nn.BatchNorm1d(3, momentum=momentum).double().train()
        bn.running_var.copy_(torch.tensor([1.5, 0.5, 2.0]))
        start = bn.running_var.clone()
        with torch.no_grad():
            bn(x)
        got = fn(start.clone(), x.clone(), momentum)
        got = _as_tensor(got, "running_var").to(torch.float64)
        if tuple(got.shape) != (3,):
            fail(f"running_var has one value per channel: expected shape (3,), got {tuple(got.shape)}")
        if torch.allclose(got, bn.running_var, atol=1e-6):
            continue
        biased = (1 - momentum) * start + momentum * x.var(0, unbiased=False)
        keras = momentum * start + (1 - momentum) * x.var(0, unbiased=True)
        if torch.allclose(got, biased, atol=1e-6):
            fail("you used the biased variance (divide by n); running_var stores the unbiased one (divide by n - 1), "
                 "even though the batch itself is normalised with the biased one")
        if torch.allclose(got, keras, atol=1e-6):
            fail("you weighted the new batch by 1 - momentum (Keras' convention); PyTorch: (1 - m) r + m var")
        if torch.allclose(got, (1 - momentum) * start + momentum * x.var(1, unbiased=True).mean(), atol=1e-6) or (
            torch.allclose(got, (1 - momentum) * start + momentum * x.var(), atol=1e-6)
        ):
            fail("take the variance per channel over the batch dimension (dim 0)")
        fail(f"running_var is off by up to {(got - bn.running_var).abs().max().item():.3g} (batch of {n}, "
             f"momentum {momentum})")
    passed("running_var update, unbiased and PyTorch-weighted, matches nn.BatchNorm1d")
