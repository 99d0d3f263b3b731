"""Exercise checkers: feedback that says *what* is wrong, not a bare ``assert``.

Each exercise's graded cell calls one ``check_*`` function with the learner's answer. A
wrong answer raises :class:`ExerciseError` with a sentence aimed at the usual mistake
(e.g. "running_var holds the unbiased estimate; you stored the biased one"); a right one
prints a short confirmation. nbgrader counts a graded cell as failed when it raises, so
the same checkers serve self-study and classroom grading.

How exercises work is shown in notebook 00; a checker lives here (not in the notebook) so
the student version of a notebook can call it without seeing the solution.

An exercise not attempted yet gets a sentence too, not a bare traceback (no decorator
needed: this works for every ``check_*`` in this module, wherever it is defined):

* every public ``check_*`` read from this module comes wrapped by
  :func:`explain_unattempted`, which turns the student stub's ``raise NotImplementedError()``
  into an :class:`ExerciseError` saying what to do;
* inside IPython/Jupyter, importing this module installs a handler for the graded cell of a
  solution written at the top level: the stub stops the solution cell, so the graded cell
  finds the answer's name undefined (``NameError``); that, and a stub called directly in a
  graded cell, are shown as an :class:`ExerciseError` too. Other errors are shown as usual.
"""
from __future__ import annotations

import ast
import functools
import inspect
import linecache
import sys
import traceback
import types
from typing import Any, Callable

import torch


class ExerciseError(AssertionError):
    """A wrong answer, with an explanation a learner can act on."""


def fail(message: str) -> None:
    raise ExerciseError(message)


def passed(what: str) -> None:
    print(f"correct: {what}")


# --- exercises not attempted yet (applies to every check_* in this module) ------------------

#: The start of every "not attempted" message (tests look for it).
NOT_ATTEMPTED = "exercise not attempted yet"
_STUB_HINT = "replace `raise NotImplementedError()` in the solution cell above with your code"


def explain_unattempted(checker: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``checker`` so that the student stub's ``raise NotImplementedError()`` explains itself.

    The generated student version of a notebook (``tools/assign.py``) replaces each solution
    with ``raise NotImplementedError()``; when the checker calls that stub, the learner should
    read what to do, not a traceback through the checker. Only a bare ``NotImplementedError()``
    is translated: one with a message (e.g. PyTorch's "Could not run 'aten::...'") is a real
    error and passes through, as does every other exception. This module applies the wrapper
    to each public ``check_*`` automatically (see :class:`_CheckersModule`).
    """
    if getattr(checker, "_explains_unattempted", False):
        return checker

    @functools.wraps(checker)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return checker(*args, **kwargs)
        except NotImplementedError as err:
            if err.args:
                raise
            names = [a.__name__ for a in (*args, *kwargs.values()) if inspect.isfunction(a)]
            which = f" (`{names[0]}` still raises NotImplementedError)" if names else ""
            raise ExerciseError(f"{NOT_ATTEMPTED}: {_STUB_HINT}{which}, then run that cell again") from None

    wrapper._explains_unattempted = True  # type: ignore[attr-defined]
    return wrapper


_WRAPPED: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {}


class _CheckersModule(types.ModuleType):
    """The type of this module: each public ``check_*`` is read through :func:`explain_unattempted`.

    Wrapping on attribute access (``checks.check_x``, ``from reidlab.checks import check_x``)
    rather than with a decorator covers every checker, including sections appended later,
    without anyone having to remember the decorator. Calls between functions inside this
    module are unaffected.
    """

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if name.startswith("check_") and inspect.isfunction(value):
            hit = _WRAPPED.get(name)
            if hit is None or hit[0] is not value:
                hit = _WRAPPED[name] = (value, explain_unattempted(value))
            return hit[1]
        return value


sys.modules[__name__].__class__ = _CheckersModule


def _graded_cell_hint(value: BaseException, tb: types.TracebackType | None) -> str | None:
    """The explanation for an error in a cell that calls a ``check_*``, or None to show it as usual."""
    cell = next((f for f, _ in traceback.walk_tb(tb) if f.f_code.co_name == "<module>"), None)
    if cell is None:
        return None
    try:
        tree = ast.parse("".join(linecache.getlines(cell.f_code.co_filename)))
    except (SyntaxError, ValueError):
        return None
    calls = [
        node for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", getattr(node.func, "id", "")).startswith("check_")
    ]
    if not calls:
        return None
    if isinstance(value, NotImplementedError):
        return None if value.args else f"{NOT_ATTEMPTED}: {_STUB_HINT}, then run that cell again"
    name = getattr(value, "name", None)
    arguments = {
        node.id
        for call in calls
        for arg in (*call.args, *(k.value for k in call.keywords))
        for node in ast.walk(arg)
        if isinstance(node, ast.Name)
    }
    if isinstance(value, NameError) and name in arguments:
        return (
            f"{NOT_ATTEMPTED} (or its solution cell not run): `{name}` is not defined. {_STUB_HINT[0].upper()}"
            f"{_STUB_HINT[1:]} that sets `{name}`, then run that cell"
        )
    return None


def _show_in_graded_cell(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None) -> None:
    """IPython custom-exception handler: see the module docstring."""
    try:
        message = _graded_cell_hint(value, tb)
    except Exception:  # noqa: BLE001 - a hint must never hide the real error
        message = None
    if message is None:
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset, running_compiled_code=True)
    else:
        shell.showtraceback((ExerciseError, ExerciseError(message), tb), tb_offset=tb_offset)


def _install_ipython_hint() -> None:
    ipython = sys.modules.get("IPython")  # not imported: not running in IPython
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or not hasattr(shell, "set_custom_exc"):
        return
    ours = (NameError, NotImplementedError)
    if tuple(shell.custom_exceptions) not in ((), ours):
        return  # the user installed a handler of their own: leave it alone
    shell.set_custom_exc(ours, _show_in_graded_cell)


_install_ipython_hint()


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if x is None:
        fail(f"{name} is None: did the function forget to `return` its result?")
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception:  # noqa: BLE001 - any conversion failure is the learner's type error
            fail(f"{name} should be a tensor, got {type(x).__name__}")
    return x


def _as_number(x: Any, cast: Callable[[Any], Any], *, if_none: str, if_wrong: str) -> Any:
    """``cast(x)`` (``float`` or ``int``), failing with ``if_none`` for a missing ``return`` and
    ``if_wrong`` (``{type}`` is filled in) for something that is not one number."""
    if x is None:
        fail(if_none)
    try:
        return cast(x)
    except (TypeError, ValueError):
        fail(if_wrong.format(type=type(x).__name__))


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

    from reidlab.lessons.toy import SmallBNNet, accuracy, make_toy_images

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

    from reidlab.lessons.toy import SmallBNNet, make_toy_images

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

    return _as_number(
        fn(np.array(matches, dtype=bool)), float,
        if_none="your function returned None: did it forget to `return` the AP?",
        if_wrong="return one number (the AP of the list), got {type}",
    )


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


# --- notebook 07 -------------------------------------------------------------------------


def check_instance_norm(fn: Callable[..., Any]) -> None:
    """Notebook 07: ``fn(x, eps)`` must return instance norm of an (N, C, H, W) tensor, no affine.

    Each image's channel is normalised by *its own* mean and biased variance over (H, W),
    as ``torch.nn.functional.instance_norm`` does; the answer is compared with it on
    several batches, including a batch of one image and a per-image colour change.
    """
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(7)
    cases = [
        torch.randn(4, 3, 5, 6, generator=g, dtype=torch.float64) * 2.0 + 1.0,
        torch.rand(1, 2, 4, 4, generator=g, dtype=torch.float64),
        torch.randn(3, 5, 2, 7, generator=g, dtype=torch.float64) * torch.tensor([0.1, 1.0, 3.0, 0.5, 2.0],
                                                                                  dtype=torch.float64).view(1, 5, 1, 1),
    ]
    for x in cases:
        eps = 1e-5
        want = F.instance_norm(x, eps=eps)
        got = fn(x.clone(), eps)
        got = _as_tensor(got, "instance_norm(x)").to(torch.float64)
        if tuple(got.shape) != tuple(x.shape):
            fail(f"instance norm keeps the input's shape {tuple(x.shape)}, got {tuple(got.shape)}: "
                 "use keepdim=True so the statistics broadcast")
        if torch.allclose(got, want, atol=1e-6):
            continue
        stat = {
            "(N, H, W) per channel: that is batch norm, whose statistics mix the images of the batch": (0, 2, 3),
            "(C, H, W) per image: that is layer norm, which mixes the channels (and so the colours)": (1, 2, 3),
            "the whole tensor: one mean and variance for every image and channel": (0, 1, 2, 3),
        }
        for msg, dims in stat.items():
            mu = x.mean(dims, keepdim=True)
            var = x.var(dims, keepdim=True, unbiased=False)
            if torch.allclose(got, (x - mu) / torch.sqrt(var + eps), atol=1e-6):
                fail(f"you took the statistics over {msg}; instance norm uses each image's channel alone, dims (2, 3)")
        mu = x.mean((2, 3), keepdim=True)
        var_u = x.var((2, 3), keepdim=True, unbiased=True)
        var_b = x.var((2, 3), keepdim=True, unbiased=False)
        if torch.allclose(got, (x - mu) / torch.sqrt(var_u + eps), atol=1e-6):
            fail("you normalised with the unbiased variance (divide by H*W - 1); normalisation uses the biased one "
                 "(unbiased=False), as BN does (notebook 01)")
        if torch.allclose(got, (x - mu) / torch.sqrt(var_b), atol=1e-6) or torch.allclose(
            got, (x - mu) / (torch.sqrt(var_b) + eps), atol=1e-6
        ):
            fail("eps goes inside the square root: (x - mean) / sqrt(var + eps)")
        if torch.allclose(got, (x - mu) / var_b, atol=1e-6) or torch.allclose(got, (x - mu) / (var_b + eps), atol=1e-6):
            fail("divide by the standard deviation sqrt(var + eps), not by the variance")
        fail(f"instance_norm(x) is off by up to {(got - want).abs().max().item():.3g} for a batch of shape "
             f"{tuple(x.shape)}")
    passed("instance norm by hand matches F.instance_norm (each image's channels by their own statistics)")


def _ibn_split_reference(planes: int, ratio: float) -> tuple[int, int]:
    half = int(planes * ratio)
    return half, planes - half


def check_ibn_split(fn: Callable[[int, float], Any]) -> None:
    """Notebook 07: ``fn(planes, ratio)`` must return ``(IN channels, BN channels)`` of an IBN-a layer.

    IBN-Net (and :class:`reidlab.ibn.IBN`) gives IN ``int(planes * ratio)`` channels (rounded
    down) and BN the rest.
    """
    import math

    cases = [(64, 0.5), (128, 0.5), (256, 0.5), (10, 0.25), (7, 0.5), (100, 0.3)]
    for planes, ratio in cases:
        want = _ibn_split_reference(planes, ratio)
        got = fn(planes, ratio)
        if got is None:
            fail("your function returned None: return a pair (IN channels, BN channels)")
        try:
            got = tuple(int(v) for v in got)
        except (TypeError, ValueError):
            fail(f"return a pair of ints (IN channels, BN channels), got {got!r}")
        if len(got) != 2:
            fail(f"return exactly two numbers (IN channels, BN channels), got {len(got)}")
        if got == want:
            continue
        if got == want[::-1]:
            fail(f"for planes={planes}, ratio={ratio} the pair is swapped: IN takes the first int(planes * ratio) "
                 "channels, BN the rest")
        if sum(got) != planes:
            fail(f"for planes={planes} the two parts add up to {sum(got)}: every channel goes to exactly one of IN "
                 "and BN")
        if got[0] in (round(planes * ratio), math.ceil(planes * ratio)):
            fail(f"for planes={planes}, ratio={ratio} you rounded up; IBN-Net uses int(planes * ratio), which rounds down")
        fail(f"for planes={planes}, ratio={ratio} expected {want}, got {got}")
    passed("IBN-a channel split: int(planes * ratio) channels to IN, the rest to BN")


def _norm_affine_reference(model: torch.nn.Module) -> int:
    from torch.nn.modules.batchnorm import _NormBase

    total = 0
    for m in model.modules():
        if isinstance(m, (_NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)):
            total += sum(p.numel() for p in m.parameters(recurse=False))
    return total


def check_count_norm_params(fn: Callable[[torch.nn.Module], Any]) -> None:
    """Notebook 07: ``fn(model)`` must count the learnable scalars (gamma and beta) of all normalisation layers.

    Checked on torchvision's ``resnet18``, on ``reidlab.ibn.resnet18_ibn_a`` (whose counts
    must agree: IN's gamma/beta replace the BN's on the same channels) and on a small model
    with an IN layer without affine parameters and a BatchNorm1d.
    """
    import torchvision

    from reidlab.ibn import resnet18_ibn_a

    small = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.InstanceNorm2d(8), torch.nn.BatchNorm2d(8),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4),
    )
    models = {
        "torchvision resnet18": torchvision.models.resnet18(weights=None),
        "resnet18_ibn_a": resnet18_ibn_a(),
        "a small model (IN without affine, BN2d, BN1d)": small,
    }
    for what, model in models.items():
        want = _norm_affine_reference(model)
        got = _as_number(fn(model), int, if_none="your function returned None: return the number of scalars",
                         if_wrong="return one integer, got {type}")
        if got == want:
            continue
        bn_only = sum(p.numel() for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                      for p in m.parameters(recurse=False))
        with_buffers = want + sum(
            b.numel() for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)
            for b in m.buffers(recurse=False)
        )
        with_counter = want + sum(
            b.numel() for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)
            for n, b in m.named_buffers(recurse=False) if n != "num_batches_tracked"
        )
        recursive = sum(p.numel() for m in model.modules() if "norm" in type(m).__name__.lower() or
                        type(m).__name__ == "IBN" for p in m.parameters())
        if got == bn_only and bn_only != want:
            fail(f"{what}: you counted BatchNorm layers only; the InstanceNorm halves of the IBN layers have "
                 "gamma and beta too")
        if got in (with_buffers, with_counter) and got != want:
            fail(f"{what}: you counted the running_mean / running_var buffers; they are statistics, not "
                 "learnable parameters (use .parameters(), not .state_dict())")
        if got == recursive and recursive != want:
            fail(f"{what}: the IBN layers' gamma and beta are counted twice, once in the IBN module and once in "
                 "its IN/BN children; use m.parameters(recurse=False), or count only the norm layers themselves")
        if got == sum(p.numel() for p in model.parameters()):
            fail(f"{what}: that is every parameter of the network; count only the normalisation layers' gamma and beta")
        fail(f"{what}: expected {want} normalisation parameters, got {got}")
    passed("normalisation parameters counted; resnet18 and resnet18_ibn_a have the same number")


# --- notebook 09 -------------------------------------------------------------------------


def _ex09_soft_target_reference(logits: torch.Tensor, indices: torch.Tensor, k: int) -> torch.Tensor:
    """The published ``smooth_hot``: 1/k on the top-k slots of each row, then 1 on the own slot."""
    top = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :k]
    target = torch.zeros_like(logits)
    target.scatter_(1, top, 1.0 / k)
    target.scatter_(1, indices.view(-1, 1), 1.0)
    return target


def _ex09_soft_target_cases() -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    """Logits (no ties) whose own slot is the top-1, inside the top-k, and outside it."""
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(4, 10, generator=g, dtype=torch.float64) * 3
    indices = torch.tensor([2, 7, 0, 5])
    order = torch.sort(logits, dim=1, descending=True).indices
    # row 0: own slot is the largest; row 1: own slot 2nd; rows 2, 3: own slot at rank 6 and 9
    for row, rank in ((0, 0), (1, 1), (2, 5), (3, 8)):
        own, other = int(indices[row]), int(order[row, rank])
        logits[row, own], logits[row, other] = logits[row, other].clone(), logits[row, own].clone()
    return [(logits, indices, 3), (logits[:2], indices[:2], 1), (logits, indices, 6)]


def check_soft_target(fn: Callable[[torch.Tensor, torch.Tensor, int], Any]) -> None:
    """Notebook 09: ``fn(logits, indices, k)`` must return ECN's neighbourhood target (``smooth_hot``).

    Each row: ``1/k`` on the ``k`` slots with the largest logits, then ``1`` on the image's own
    slot (``indices``), overriding its ``1/k`` when it is among them; no renormalisation.
    """
    for logits, indices, k in _ex09_soft_target_cases():
        want = _ex09_soft_target_reference(logits, indices, k)
        given = logits.clone()
        got = _as_tensor(fn(given, indices.clone(), k), f"soft_target(logits, indices, k={k})")
        if not torch.equal(given, logits):
            fail("your function changed the logits in place: work on a new tensor (e.g. torch.zeros_like)")
        if tuple(got.shape) != tuple(want.shape):
            fail(f"the target has shape {tuple(got.shape)}, expected {tuple(want.shape)}: one row per image, "
                 "one column per memory slot")
        got = got.detach().to(torch.float64)
        if torch.allclose(got, want, atol=1e-6):
            continue
        n = logits.shape[0]
        rows = torch.arange(n)
        own = torch.zeros_like(want)
        own[rows, indices] = 1.0
        top = torch.sort(logits, dim=1, descending=True).indices[:, :k]
        spread = torch.zeros_like(want).scatter_(1, top, 1.0 / k)
        masked = logits.clone()
        masked[rows, indices] = float("-inf")
        others = torch.zeros_like(want).scatter_(1, torch.sort(masked, dim=1, descending=True).indices[:, :k], 1.0 / k)
        bottom = torch.zeros_like(want).scatter_(1, torch.sort(logits, dim=1).indices[:, :k], 1.0 / k)
        wrong = [
            (want / want.sum(dim=1, keepdim=True),
             "you renormalised the row to sum 1; ECN's smooth_hot does not: a row sums to 1 + (k-1)/k when the own "
             "slot is among the top-k and to 2 when it is not"),
            (spread + own,
             "you added 1 to the own slot; the published code overwrites it (scatter_ of 1 after the 1/k), so the "
             "own slot holds exactly 1"),
            (torch.where(own > 0, own, others),
             "you kept the own slot out of the top-k; the published smooth_hot takes the top-k over all slots, so "
             "the own slot (usually the largest logit) uses up one of the k places"),
            (torch.where(own > 0, own, bottom), "you took the k smallest logits; sort in descending order"),
            (spread, "the own slot must get weight 1 (exemplar invariance), whatever its rank"),
            (torch.where(spread > 0, spread * k, own),
             "each of the k neighbours gets 1/k, not 1 (the reference's softmax of a row of ones)"),
            (torch.where(spread > 0, spread, own),
             "you wrote the 1/k after the 1, so an own slot inside the top-k ends up with 1/k; write the 1 last"),
        ]
        for candidate, message in wrong:
            if torch.allclose(got, candidate, atol=1e-6):
                fail(f"(k={k}) {message}")
        bad = int(((got - want).abs() > 1e-6).any(dim=1).nonzero()[0])
        fail(f"(k={k}) row {bad} differs: expected weights {[round(v, 4) for v in want[bad].tolist()]}, got "
             f"{[round(v, 4) for v in got[bad].tolist()]}")
    passed("ECN's soft target: 1/k on the top-k, 1 on the own slot, rows not renormalised")


def _ex09_update_reference(memory: torch.Tensor, indices: torch.Tensor, features: torch.Tensor, rate: float) -> torch.Tensor:
    memory = memory.clone()
    for x, y in zip(features, indices.tolist()):
        memory[y] = rate * memory[y] + (1.0 - rate) * x
        memory[y] /= memory[y].norm()
    return memory


def check_memory_update(fn: Callable[..., Any], *, repeated_indices: bool = False) -> None:
    """Notebook 09: ``fn(memory, indices, features, alpha, epoch)`` must return the updated memory.

    ``M[i] <- a * M[i] + (1 - a) * f`` with ``a = alpha * epoch``, then ``M[i]`` L2-normalised,
    for each (index, feature) of the batch in order (the published ``ExemplarMemory.backward``).
    ``repeated_indices=True`` also checks a batch in which one index occurs three times.
    """
    g = torch.Generator().manual_seed(90)
    memory = torch.nn.functional.normalize(torch.randn(8, 5, generator=g, dtype=torch.float64), dim=1)
    features = 2.0 * torch.randn(4, 5, generator=g, dtype=torch.float64)  # not unit length, on purpose
    cases = [(torch.tensor([6, 1, 3, 4]), 0.01, 30), (torch.tensor([0, 5, 2, 7]), 0.01, 0)]
    if repeated_indices:
        cases.append((torch.tensor([2, 6, 2, 2]), 0.02, 20))
    for indices, alpha, epoch in cases:
        rate = alpha * epoch
        want = _ex09_update_reference(memory, indices, features, rate)
        got = fn(memory.clone(), indices.clone(), features.clone(), alpha, epoch)
        if got is None:
            fail("your function returned None: return the updated memory")
        got = _as_tensor(got, "memory").detach().to(torch.float64)
        what = f"(alpha={alpha}, epoch={epoch}, indices {indices.tolist()})"
        if tuple(got.shape) != tuple(memory.shape):
            fail(f"{what} the memory has shape {tuple(got.shape)}, expected {tuple(memory.shape)}")
        if torch.allclose(got, want, atol=1e-6):
            continue
        untouched = torch.ones(memory.shape[0], dtype=torch.bool)
        untouched[indices] = False
        if not torch.allclose(got[untouched], memory[untouched], atol=1e-9):
            fail(f"{what} you changed rows that are not in the batch; only the rows of `indices` are updated")
        if indices.unique().numel() < indices.numel():
            naive = memory.clone()
            mixed = rate * naive[indices] + (1 - rate) * features
            naive[indices] = mixed / mixed.norm(dim=1, keepdim=True)
            distinct = torch.tensor([(indices == i).sum() == 1 for i in indices.tolist()])
            if torch.allclose(got[indices[distinct]], want[indices[distinct]], atol=1e-6) or torch.allclose(got, naive, atol=1e-6):
                fail(f"{what} an index that occurs more than once in a batch must be updated once per occurrence, in "
                     "batch order, each update starting from the row the previous one wrote (the published loop); a "
                     "one-shot `memory[indices] = ...` keeps only one of them")
        wrong = [
            (_ex09_update_reference(memory, indices, features, alpha) if rate != alpha else None,
             "you used alpha instead of alpha*epoch as the weight of the old row"),
            (_ex09_update_reference(memory, indices, features, 1.0 - rate),
             "the weights are swapped: the old row gets alpha*epoch and the new feature 1 - alpha*epoch"),
        ]
        for candidate, message in wrong:
            if candidate is not None and torch.allclose(got, candidate, atol=1e-6):
                fail(f"{what} {message}")
        norms = got[indices].norm(dim=1)
        if not torch.allclose(norms, torch.ones_like(norms), atol=1e-6):
            fail(f"{what} you forgot to L2-normalise the updated row (row norms {[round(v, 3) for v in norms.tolist()]}); "
                 "normalise after mixing: even a mix of two unit vectors is shorter than 1")
        fail(f"{what} the updated rows are off by up to {(got - want).abs().max().item():.3g}: "
             "M[i] <- a*M[i] + (1-a)*f with a = alpha*epoch, then M[i] /= ||M[i]||")
    passed("memory update: rate alpha*epoch (0 at epoch 0: rows replaced), rows L2-normalised"
           + (", repeated indices applied in order" if repeated_indices else ""))


def check_temperature_for(fn: Callable[[float, float], Any]) -> None:
    """Notebook 09: ``fn(gap, ratio)`` must return the temperature ``beta = gap / ln(ratio)``.

    In ``softmax(f @ M.T / beta)`` two slots whose cosines with ``f`` differ by ``gap`` have
    probabilities in the ratio ``exp(gap / beta)``, whatever the other slots; the temperature at
    which that ratio is ``ratio`` is ``gap / ln(ratio)``.
    """
    import math

    for gap, ratio in ((0.1, math.exp(2.0)), (0.3, 100.0), (0.05, 10.0), (0.5, 2.0)):
        got = _as_number(fn(gap, ratio), float, if_none="your function returned None: return the temperature beta",
                         if_wrong="return one number, got {type}")
        want = gap / math.log(ratio)
        if math.isclose(got, want, rel_tol=1e-6):
            continue
        wrong = [
            (gap * math.log(ratio), "you multiplied by ln(ratio): the ratio is exp(gap / beta), so beta = gap / ln(ratio)"),
            (math.log(ratio) / gap, "that is 1 / beta: the ratio is exp(gap / beta), so beta = gap / ln(ratio)"),
            (gap / ratio, "you divided by the ratio itself; the probabilities differ by exp(gap / beta), so take its log"),
            (gap / math.log10(ratio), "use the natural logarithm (math.log), the inverse of exp in the softmax"),
            (gap / math.log2(ratio), "use the natural logarithm (math.log), the inverse of exp in the softmax"),
        ]
        for candidate, message in wrong:
            if math.isclose(got, candidate, rel_tol=1e-6):
                fail(f"(gap={gap}, ratio={ratio:.4g}) {message}")
        fail(f"(gap={gap}, ratio={ratio:.4g}) expected beta = {want:.4g}, got {got:.4g}: p_own / p_j = "
             "exp((cos_own - cos_j) / beta)")
    passed("beta = gap / ln(ratio): ECN's 0.05 makes a cosine gap of 0.1 worth a factor e^2 = 7.4")


# --- notebook 10 ---------------------------------------------------------------------------

#: ECN's schedule (Zhong et al. 2019, published code): 60 epochs, lr step at epoch 40, the
#: neighbourhood (kNN) term from epoch 5 on (the code's ``epoch > 4``, 0-based).
ECN_EPOCHS, ECN_DECAY_EPOCH, ECN_KNN_EPOCH = 60, 40, 5


def _ex10_schedule_reference(epochs: int) -> tuple[int, int]:
    """(first kNN epoch, LR decay epoch) for a run of ``epochs`` epochs, ECN's 60-epoch schedule scaled."""
    knn = max(1, round(ECN_KNN_EPOCH * epochs / ECN_EPOCHS))
    decay = max(1, round(ECN_DECAY_EPOCH * epochs / ECN_EPOCHS))
    return knn, decay


def check_ecn_total_loss(fn: Callable[..., Any]) -> None:
    """Notebook 10: ``fn(loss_src, loss_tgt, lam)`` must return ECN's ``(1 - lam) * loss_src + lam * loss_tgt``.

    ``loss_tgt=None`` stands for the source-only baseline: the source loss alone, weight 1.
    The result must stay a tensor in the autograd graph (``backward()`` trains on it).
    """
    import math

    cases = ((2.0, 6.0, 0.3), (1.5, 0.5, 0.5), (4.0, 1.0, 0.1))
    for src_v, tgt_v, lam in cases:
        src = torch.tensor(src_v, dtype=torch.float64, requires_grad=True)
        tgt = torch.tensor(tgt_v, dtype=torch.float64, requires_grad=True)
        got = fn(src, tgt, lam)
        if got is None:
            fail("your function returned None: did it forget to `return` the loss?")
        if not isinstance(got, torch.Tensor):
            fail(f"return a tensor, not a {type(got).__name__}: `loss.backward()` needs the graph "
                 "(calling .item() or float() cuts it)")
        if got.grad_fn is None:
            fail("the returned tensor is not connected to the two losses: compute it from loss_src and loss_tgt "
                 "(no .detach(), no torch.tensor(...) of a number)")
        value = float(got.detach())
        want = (1 - lam) * src_v + lam * tgt_v
        if math.isclose(value, want, rel_tol=1e-9, abs_tol=1e-12):
            gs, gt = torch.autograd.grad(got, (src, tgt))
            if not (math.isclose(float(gs), 1 - lam) and math.isclose(float(gt), lam)):
                fail("the value is right but the gradients are not (1 - lam, lam): did you mix detached copies in?")
            continue
        wrong = {
            "that is the usual `L_src + lam * L_tgt`; ECN (paper Sec. 3.5 and its trainers.py) uses a convex "
            "combination: the source loss is weighted by 1 - lam":
                src_v + lam * tgt_v,
            "the weights are swapped: lam weighs the TARGET (invariance) loss, 1 - lam the source loss":
                lam * src_v + (1 - lam) * tgt_v,
            "lam is a weight between the two losses; a plain average ignores it":
                (src_v + tgt_v) / 2,
            "a plain sum ignores lam: (1 - lam) * L_src + lam * L_tgt":
                src_v + tgt_v,
        }
        for message, value_wrong in wrong.items():
            if math.isclose(value, value_wrong, rel_tol=1e-9, abs_tol=1e-12):
                fail(message)
        fail(f"for L_src={src_v}, L_tgt={tgt_v}, lam={lam} expected {want:.4f}, got {value:.4f}")
    # the source-only baseline
    src = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    try:
        got = fn(src, None, 0.3)
    except TypeError as err:
        fail(f"source-only (loss_tgt=None) raised TypeError ({err}): without a target loss return the source "
             "loss alone")
    if not isinstance(got, torch.Tensor) or got.grad_fn is None and got is not src:
        fail("source-only (loss_tgt=None): return the source loss tensor itself (weight 1)")
    if math.isclose(float(got.detach()), 0.7 * 2.0):
        fail("source-only (loss_tgt=None) trains L_src alone with weight 1 (ECN's baseline, lam = 0), not 1 - lam")
    if not math.isclose(float(got.detach()), 2.0):
        fail(f"source-only (loss_tgt=None): expected the source loss 2.0, got {float(got.detach())}")
    passed("ECN's loss (1 - lam) * L_src + lam * L_tgt, and L_src alone without a target")


def check_scaled_schedule(fn: Callable[[int], Any]) -> None:
    """Notebook 10: ``fn(epochs)`` must return ``(knn_epoch, decay_epoch)``: ECN's 5 and 40 of 60, scaled.

    Both are 0-based epochs rounded to the nearest integer (as :attr:`reidlab.ecn.ECNConfig.decay_epoch`
    does); the kNN term never starts before epoch 1, because during epoch 0 the memory is still
    being filled (its update rate ``alpha * epoch`` is 0 and unvisited slots are zeros).
    """
    cases = (60, 12, 10, 24, 3, 100, 40)
    for epochs in cases:
        want = _ex10_schedule_reference(epochs)
        got = fn(epochs)
        if got is None:
            fail("your function returned None: return the pair (knn_epoch, decay_epoch)")
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            fail(f"return two numbers, (knn_epoch, decay_epoch); got {got!r}")
        try:
            knn, decay = (int(v) for v in got)
        except (TypeError, ValueError):
            fail(f"return two whole epoch numbers, got {got!r}")
        if any(float(v) != int(v) for v in got):
            fail(f"epochs are whole numbers: round the scaled values (got {got!r} for {epochs} epochs)")
        if (knn, decay) == want:
            continue
        if (decay, knn) == want:
            fail("the order is (knn_epoch, decay_epoch): the kNN epoch first")
        if (knn, decay) == (ECN_KNN_EPOCH, ECN_DECAY_EPOCH):
            fail(f"for a {epochs}-epoch run you returned ECN's own (5, 40): scale them by epochs / 60")
        if (knn, decay) == (want[0] + 1, want[1] + 1):
            fail("epochs are counted from 0, as in the code: ECN's `epoch > 4` is epoch 5, its decay `epoch // 40` "
                 "starts at epoch 40")
        if epochs == 3 and knn == 0:
            fail("for a short run the kNN term would start at epoch 0, while the memory is still being filled "
                 "(alpha * epoch = 0, unvisited slots are zeros): start it at epoch 1 at the earliest")
        if epochs == 10 and decay == 6:
            fail("round to the NEAREST epoch (40/60 * 10 = 6.67 -> 7); int() and // round down")
        if epochs == 60 and (knn, decay) == want:
            continue
        if epochs != 60 and (knn, decay) == (round(5 * 60 / epochs), round(40 * 60 / epochs)):
            fail("scaled the wrong way: the run is shorter than ECN's 60 epochs, so multiply by epochs / 60")
        fail(f"for {epochs} epochs expected (knn_epoch, decay_epoch) = {want}, got {(knn, decay)}")
    passed("ECN's schedule scaled: kNN from round(5/60 * E) (at least 1), LR step at round(40/60 * E)")


def check_relative_gain(fn: Callable[..., Any]) -> None:
    """Notebook 10: ``fn(table)`` must return ``{method: (points, percent)}``, each method's mAP gain over source-only.

    ``table`` maps a method name to ``{'rank1': ..., 'mAP': ...}`` in percent. ``points`` is
    ``mAP - mAP_source_only`` (percentage points), ``percent`` the same relative to the
    baseline, ``100 * points / mAP_source_only``. The baseline itself may be left out or
    given ``(0, 0)``.
    """
    import math

    tables = (
        {"source-only": {"rank1": 40.0, "mAP": 20.0}, "E": {"rank1": 50.0, "mAP": 25.0},
         "E+C": {"rank1": 62.0, "mAP": 33.0}, "E+C+N": {"rank1": 75.0, "mAP": 43.0}},
        {"source-only": {"rank1": 10.0, "mAP": 8.0}, "E": {"rank1": 9.0, "mAP": 6.0},
         "E+N": {"rank1": 20.0, "mAP": 14.0}},
    )
    for table in tables:
        got = fn({k: dict(v) for k, v in table.items()})
        if got is None:
            fail("your function returned None: return a dict {method: (points, percent)}")
        if not isinstance(got, dict):
            fail(f"return a dict {{method: (points, percent)}}, got {type(got).__name__}")
        base = table["source-only"]["mAP"]
        for name, row in table.items():
            if name == "source-only":
                if name in got and any(abs(float(v)) > 1e-9 for v in got[name]):
                    fail("source-only is the baseline: its gain over itself is (0, 0); or leave it out")
                continue
            if name not in got:
                fail(f"no entry for {name!r}: give every method except the baseline")
            try:
                points, percent = (float(v) for v in got[name])
            except (TypeError, ValueError):
                fail(f"the entry for {name!r} should be a pair (points, percent), got {got[name]!r}")
            want_pts = row["mAP"] - base
            want_pct = 100 * want_pts / base
            if math.isclose(points, want_pts, abs_tol=1e-6) and math.isclose(percent, want_pct, abs_tol=1e-6):
                continue
            r1_pts = row["rank1"] - table["source-only"]["rank1"]
            if math.isclose(points, r1_pts, abs_tol=1e-6):
                fail("that is the rank-1 gain: the exercise asks for mAP")
            if math.isclose(points, -want_pts, abs_tol=1e-6):
                fail("the sign is reversed: gain = method - source-only (positive when the method is better)")
            if not math.isclose(points, want_pts, abs_tol=1e-6):
                fail(f"{name}: the gain in points is mAP({name}) - mAP(source-only) = {want_pts:.2f}, got {points:.2f}")
            if math.isclose(percent, want_pct / 100, abs_tol=1e-6):
                fail("the relative gain is asked in percent: multiply the fraction by 100")
            if math.isclose(percent, 100 * want_pts / row["mAP"], abs_tol=1e-6):
                fail("divide by the BASELINE's mAP (source-only), not by the method's own")
            if math.isclose(percent, want_pts, abs_tol=1e-6):
                fail("the percent value is the gain relative to the baseline, 100 * points / mAP(source-only), "
                     "not the points again")
            fail(f"{name}: expected ({want_pts:.2f} points, {want_pct:.2f} %), got ({points:.2f}, {percent:.2f})")
    passed("mAP gain over source-only, in points and relative to the baseline")


# --- notebook 06 ---------------------------------------------------------------------------
# Domain-specific BN: the split-batch forward, routing target test data through the target
# branch with its running statistics, and the statistics a single BN learns from mixed batches.


def _ex06_bn_pair(bn_class: type, c: int, seed: int) -> list[torch.nn.Module]:
    """Two BN layers (source, target) with distinct, non-default gamma/beta and running statistics."""
    g = torch.Generator().manual_seed(seed)
    pair = []
    for shift in (0.0, 2.0):
        bn = bn_class(c)
        with torch.no_grad():
            bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(c, generator=g))
            bn.running_mean.copy_(torch.randn(c, generator=g) + shift)
            bn.running_var.copy_(torch.rand(c, generator=g) + 0.5 + shift)
        pair.append(bn)
    return pair


def _ex06_state(bns: list[torch.nn.Module]) -> list[torch.Tensor]:
    return [b.detach().clone() for bn in bns for b in bn.buffers()]


def _ex06_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.allclose(x.double(), y.double(), atol=1e-6) for x, y in zip(a, b))


def _ex06_call_split(fn: Callable[..., Any], x: torch.Tensor, pair: list[torch.nn.Module], what: str) -> torch.Tensor:
    out = fn(x.clone(), pair[0], pair[1])
    out = _as_tensor(out, what)
    if tuple(out.shape) != tuple(x.shape):
        fail(f"{what} has shape {tuple(out.shape)}, expected {tuple(x.shape)}: the output has one row per input "
             f"sample, the two halves concatenated back along dim 0")
    return out.detach()


def check_split_dsbn_forward(fn: Callable[[torch.Tensor, torch.nn.Module, torch.nn.Module], Any]) -> None:
    """Notebook 06: ``fn(x, bn_source, bn_target)`` is the split-batch DSBN forward.

    Training mode (``bn_source.training``): first half through ``bn_source``, second half through
    ``bn_target``, concatenated in the input order, both modules' running statistics updated; an
    odd batch raises ``ValueError``. Eval mode: every sample through ``bn_target``.
    """
    import copy

    g = torch.Generator().manual_seed(61)
    for bn_class, shape in ((torch.nn.BatchNorm2d, (6, 3, 4, 4)), (torch.nn.BatchNorm1d, (8, 3))):
        half = shape[0] // 2
        x = torch.cat([torch.randn(half, *shape[1:], generator=g),
                       3.0 * torch.randn(half, *shape[1:], generator=g) + 5.0])   # source, then target
        pair = [bn.train() for bn in _ex06_bn_pair(bn_class, shape[1], 62)]

        def run(how: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
            s, t = copy.deepcopy(pair)
            with torch.no_grad():
                if how == "right":
                    y = torch.cat([s(x[:half]), t(x[half:])])
                elif how == "swapped":
                    y = torch.cat([t(x[:half]), s(x[half:])])
                elif how == "reordered":
                    y = torch.cat([t(x[half:]), s(x[:half])])
                elif how == "all_target":
                    y = t(x)
                elif how == "all_source":
                    y = s(x)
                else:  # "running": the halves normalised with the stored statistics (eval behaviour)
                    y = torch.cat([s.eval()(x[:half]), t.eval()(x[half:])])
            return y, _ex06_state([s, t])

        want, want_state = run("right")
        given = copy.deepcopy(pair)
        got = _ex06_call_split(fn, x, given, f"split_dsbn_forward(x of shape {tuple(x.shape)}) in training")
        if not torch.allclose(got, want, atol=1e-5):
            hints = {
                "swapped": "the first half of the batch is the source half: it goes through bn_source, the second "
                           "half through bn_target (you swapped them)",
                "reordered": "concatenate the outputs in the input order (source half first), or every sample ends "
                             "up in another sample's row",
                "all_target": "in training the batch is split: only the second half goes through bn_target; you "
                              "sent the whole batch through it",
                "all_source": "in training the batch is split: only the first half goes through bn_source; you "
                              "sent the whole batch through it",
                "running": "in training each half is normalised with its own batch statistics; you used the stored "
                           "running statistics (is a branch in eval mode?)",
            }
            for how, message in hints.items():
                if torch.allclose(got, run(how)[0], atol=1e-5):
                    fail(message)
            fail(f"the training output is off by up to {(got - want).abs().max().item():.3g}: bn_source(first half) "
                 f"and bn_target(second half), concatenated with torch.cat along dim 0")
        if not _ex06_same(_ex06_state(given), want_state):
            fail("the output is right but the branches' running statistics did not update as BN's do: call the "
                 "modules bn_source(...) and bn_target(...) themselves, once each per step")

        # eval mode: everything through the target branch, odd batches included
        for n in (5, 4):
            xe = torch.randn(n, *shape[1:], generator=g) + 1.0
            s, t = (bn.eval() for bn in copy.deepcopy(pair))
            with torch.no_grad():
                want_e = t(xe)
                split_e = torch.cat([s(xe[: n // 2]), t(xe[n // 2:])])
                source_e = s(xe)
            given = [bn.eval() for bn in copy.deepcopy(pair)]
            try:
                got = _ex06_call_split(fn, xe, given, f"split_dsbn_forward in eval mode (batch of {n})")
            except ValueError:
                fail(f"in eval mode a batch of {n} raised ValueError: eval does not split, every sample goes "
                     f"through bn_target, so odd batches are fine")
            if torch.allclose(got, want_e, atol=1e-5):
                continue
            if torch.allclose(got, split_e, atol=1e-5):
                fail("in eval mode do not split the batch: every sample goes through bn_target (check "
                     "bn_source.training)")
            if torch.allclose(got, source_e, atol=1e-5):
                fail("in eval mode the samples go through bn_target, not bn_source")
            fail(f"the eval-mode output is off by up to {(got - want_e).abs().max().item():.3g}: return "
                 f"bn_target(x) with both modules in eval mode")

    # an odd batch in training
    pair = [bn.train() for bn in _ex06_bn_pair(torch.nn.BatchNorm1d, 3, 63)]
    odd = torch.randn(7, 3, generator=g)
    try:
        fn(odd, pair[0], pair[1])
    except ValueError:
        pass
    except AssertionError:
        fail("an odd batch raised AssertionError: raise ValueError instead (`assert` is removed under python -O, "
             "and then the batch would be split unevenly without a word)")
    except Exception as e:  # noqa: BLE001 - any other error is the wrong kind
        fail(f"an odd batch raised {type(e).__name__} ({e}); check n % 2 yourself and raise a ValueError that "
             f"says the batch cannot be split into two halves")
    else:
        fail("an odd batch of 7 in training went through without an error; it cannot be cut into a source "
             "half and a target half of equal size: raise ValueError")
    passed("split-batch DSBN: source half -> bn_source, target half -> bn_target, eval -> bn_target, "
           "odd batches rejected")


def _ex06_model() -> torch.nn.Module:
    """A small two-branch DSBN network (converted with eval_domain=0) whose branches hold different statistics."""
    from reidlab.dsbn import convert_dsbn, dsbn_layers

    g = torch.Generator().manual_seed(64)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(5),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
    convert_dsbn(model, 2, eval_domain=0)
    with torch.no_grad():
        for layer in dsbn_layers(model):
            for d, bn in enumerate(layer.bns):
                c = bn.num_features
                bn.running_mean.copy_(torch.randn(c, generator=g) + 2.0 * d)
                bn.running_var.copy_(torch.rand(c, generator=g) + 0.5 + d)
                bn.weight.add_(0.3 * d)
    return model


def check_target_features(fn: Callable[[torch.nn.Module, torch.Tensor], Any]) -> None:
    """Notebook 06: ``fn(model, images)`` returns target-branch features with running statistics.

    The model (converted with ``eval_domain=0``, so a plain ``model.eval()`` would use the
    *source* branch) must come back with its mode, every DSBN layer's ``domain`` and every
    running statistic exactly as they were.
    """
    import copy

    from reidlab.dsbn import domain, dsbn_layers

    images = torch.randn(6, 3, 7, 7, generator=torch.Generator().manual_seed(65)) * 1.5 + 0.5
    reference = _ex06_model().eval()
    with torch.no_grad():
        with domain(reference, 1):
            want = reference(images)
        with domain(reference, 0):
            source_branch = reference(images)
        batch_stats = copy.deepcopy(reference).train()
        with domain(batch_stats, 1):
            batch_target = batch_stats(images)

    for start_training, preset in ((True, None), (False, 0)):
        model = _ex06_model().train(start_training)
        layers = dsbn_layers(model)
        if preset is not None:
            layers[0].domain = preset            # someone chose the source branch for this layer earlier
        domains = [layer.domain for layer in layers]
        buffers = [b.clone() for b in model.buffers()]
        got = fn(model, images.clone())
        got = _as_tensor(got, "target_features(model, images)")
        if tuple(got.shape) != tuple(want.shape):
            fail(f"the features have shape {tuple(got.shape)}, expected {tuple(want.shape)} (one row per image)")
        got = got.detach().float()
        changed = not all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
        if changed:
            fail("the model's running statistics changed: you ran it in train mode, so BN normalised with the "
                 "test batch's statistics and updated its buffers; call model.eval() first (and restore the mode)")
        if not torch.allclose(got, want, atol=1e-5):
            if torch.allclose(got, source_branch, atol=1e-5):
                fail("these are the source branch's features: this model was converted with eval_domain=0, so "
                     "model.eval() alone routes through branch 0; choose the target branch explicitly with "
                     "`with domain(model, 1):`")
            if torch.allclose(got, batch_target, atol=1e-5):
                fail("the target branch normalised with the batch's own statistics (train mode); the test asks "
                     "for its running statistics: eval mode")
            fail(f"the features are off by up to {(got - want).abs().max().item():.3g}: eval mode, every DSBN "
                 f"layer on branch 1")
        if model.training != start_training:
            fail(f"the model came in {'train' if start_training else 'eval'} mode and left in "
                 f"{'train' if model.training else 'eval'} mode: remember model.training and restore it "
                 f"(model.train(was_training))")
        now = [layer.domain for layer in layers]
        if now != domains:
            fail(f"the layers' domain settings were {domains} before the call and {now} after: restore them "
                 f"(the `with domain(model, 1):` context manager does)")
    passed("target test features: eval mode, branch 1 chosen explicitly, model left as found")


def check_merge_stats(fn: Callable[..., Any]) -> None:
    """Notebook 06: ``fn(mean_s, var_s, mean_t, var_t)`` returns the 50/50 mixture's per-channel ``(mean, var)``."""
    g = torch.Generator().manual_seed(66)
    f64 = torch.float64
    mean_s, mean_t = torch.randn(5, generator=g, dtype=f64), torch.randn(5, generator=g, dtype=f64) + 2
    var_s, var_t = torch.rand(5, generator=g, dtype=f64) + 0.2, torch.rand(5, generator=g, dtype=f64) * 3 + 0.5
    want_mean = (mean_s + mean_t) / 2
    want_var = (var_s + var_t) / 2 + ((mean_s - mean_t) / 2) ** 2
    result = fn(mean_s.clone(), var_s.clone(), mean_t.clone(), var_t.clone())
    if result is None:
        fail("the function returned None: return the tuple (mean, var)")
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        fail(f"return two things, (mean, var), each with one value per channel; got {type(result).__name__}")
    mean = _as_tensor(result[0], "mean").to(torch.float64)
    var = _as_tensor(result[1], "var").to(torch.float64)
    for name, t in (("mean", mean), ("var", var)):
        if tuple(t.shape) != (5,):
            fail(f"{name} should have one value per channel, shape (5,), got {tuple(t.shape)}: do not reduce over "
                 f"the channels")
    if not torch.allclose(mean, want_mean, atol=1e-8):
        if torch.allclose(mean, mean_s + mean_t, atol=1e-8):
            fail("the mixture's mean is the average of the two means (each domain is half of the data), not their sum")
        fail(f"the mean is off by up to {(mean - want_mean).abs().max().item():.3g}: (mean_s + mean_t) / 2")
    if torch.allclose(var, want_var, atol=1e-8):
        passed("mixture statistics: mean of the means; mean of the variances + variance of the means")
        return
    wrong = {
        "you averaged the two variances only: the mixture is also spread by the distance between the two means; "
        "add the variance of the means, ((mean_s - mean_t) / 2) ** 2":
            (var_s + var_t) / 2,
        "the spread term is the variance of the two means, ((mean_s - mean_t) / 2) ** 2 = (mean_s - mean_t) ** 2 / 4, "
        "not the squared difference itself":
            (var_s + var_t) / 2 + (mean_s - mean_t) ** 2,
        "you averaged standard deviations: average the variances (and add the variance of the means)":
            ((var_s.sqrt() + var_t.sqrt()) / 2) ** 2,
        "you averaged the standard deviations before adding the spread term: average the variances, then add "
        "((mean_s - mean_t) / 2) ** 2":
            ((var_s.sqrt() + var_t.sqrt()) / 2) ** 2 + ((mean_s - mean_t) / 2) ** 2,
        "the spread term is the variance of the two means, ((mean_s - mean_t) / 2) ** 2, not half the squared "
        "difference":
            (var_s + var_t) / 2 + (mean_s - mean_t) ** 2 / 2,
    }
    for message, value in wrong.items():
        if torch.allclose(var, value, atol=1e-8):
            fail(message)
    fail(f"the variance is off by up to {(var - want_var).abs().max().item():.3g}: (var_s + var_t) / 2 + "
         f"((mean_s - mean_t) / 2) ** 2")
