"""Exercise checkers: feedback that says *what* is wrong, not a bare ``assert``.

Each exercise's graded cell calls one ``check_*`` function with the learner's answer. A
wrong answer raises :class:`ExerciseError` with a sentence aimed at the usual mistake
(e.g. "running_var holds the unbiased estimate; you stored the biased one"); a right one
prints a short confirmation. nbgrader counts a graded cell as failed when it raises, so
the same checkers serve self-study and classroom grading.

The checkers live in one module per notebook, :mod:`reidlab.lessons.checks.nb00` to
:mod:`reidlab.lessons.checks.nb10`, outside the notebooks so that the student version of a
notebook can call them without seeing the solution. A notebook imports its own module::

    from reidlab.lessons.checks import nb03 as checks

    checks.check_from_keras(from_keras)   # a graded cell

This package holds only what they share: :class:`ExerciseError`, :func:`fail` and
:func:`passed`, the :func:`checker` decorator that every public ``check_*`` carries, :func:`forbid`
(the library shortcuts an exercise rules out), :func:`refuse_loops` (a Python loop where an exercise asks
for none), and helpers used by the checkers of several notebooks. Importing it, or any ``nbNN``, changes no
global state (no import hook, no IPython handler).

Every exercise is answered with a function the learner writes in the solution cell, and its
graded cell passes that function to the checker. In the student version the function's body
is nbgrader's stub ``raise NotImplementedError()``; :func:`checker` turns the stub's error into
an :class:`ExerciseError` saying that the exercise is not attempted yet.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
import numbers
import sys
import types
from collections import Counter
from typing import Any, Callable, Iterator, NoReturn, TypeVar

import numpy as np
import torch
from torch import nn

__all__ = [
    "NOT_ATTEMPTED", "ExerciseError", "as_number", "as_tensor", "checker", "expect_close",
    "fail", "forbid", "passed", "refuse_loops", "small_bn_model",
]

_Check = TypeVar("_Check", bound=Callable[..., Any])


class ExerciseError(AssertionError):
    """A wrong answer, with an explanation a learner can act on."""


def fail(message: str) -> NoReturn:
    raise ExerciseError(message)


def passed(what: str) -> None:
    print(f"correct: {what}")


# --- exercises not attempted yet ------------------------------------------------------------

#: The start of every "not attempted" message (tests look for it).
NOT_ATTEMPTED = "exercise not attempted yet"
_STUB_HINT = "replace `raise NotImplementedError()` in the solution cell above with your code"


def checker(check: _Check) -> _Check:
    """Decorate a ``check_*`` so that the student stub's ``raise NotImplementedError()`` explains itself.

    The generated student version of a notebook (``tools/assign.py``) replaces each solution
    with ``raise NotImplementedError()``; when the checker calls that stub, the learner should
    read what to do, not a traceback through the checker. Only a bare ``NotImplementedError()``
    is translated: one with a message (e.g. PyTorch's "Could not run 'aten::...'") is a real
    error and passes through, as does every other exception.

    Every public ``check_*`` of the ``nbNN`` modules carries this decorator (a test checks the
    marker ``_explains_unattempted`` it sets); calls between functions inside a module are
    unaffected apart from that translation.
    """
    if getattr(check, "_explains_unattempted", False):
        return check

    @functools.wraps(check)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return check(*args, **kwargs)
        except NotImplementedError as err:
            if err.args:
                raise
            names = [a.__name__ for a in (*args, *kwargs.values()) if inspect.isfunction(a)]
            which = f" (`{names[0]}` still raises NotImplementedError)" if names else ""
            raise ExerciseError(f"{NOT_ATTEMPTED}: {_STUB_HINT}{which}, then run that cell again") from None

    wrapper._explains_unattempted = True  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


# --- shortcuts an exercise rules out ---------------------------------------------------------


def _refuse(*_args: Any, _forbidden: tuple = (AssertionError, ""), **_kwargs: Any) -> Any:
    """The body a forbidden function runs: no global name, so it runs with any function's globals."""
    raise _forbidden[0](_forbidden[1])


@contextlib.contextmanager
def forbid(*targets: tuple, why: str) -> Iterator[None]:
    """While the block runs, calling any of ``targets`` raises an :class:`ExerciseError` naming it.

    Each target is ``(owner, name)`` or ``(owner, name, label)``: a module or class and the name of
    the attribute to refuse (``(torch, "softmax")``, ``(torch.Tensor, "softmax")``,
    ``(torch.nn.functional, "softmax")``), ``label`` what the message calls it (by default
    ``owner.name``). The message reads "the exercise asks you to do this by hand, without
    `label`: why". The attribute is replaced for the block, and a Python function's code is
    swapped too (that of the function a decorator wraps, if any), so a name bound before the
    check, e.g. ``from reidlab.bn import freeze_bn`` at the top of a notebook, is refused as well;
    everything is restored on leaving the block, whatever happened inside it.

    Wrap only the call of the learner's function: a forbidden function may also be what the
    checker computes its expected answer with, or what torch calls internally elsewhere.

    A guard against the easy shortcut, not a sandbox: a builtin bound under another name before the
    check (``from torch import softmax``), another route to the same kernel (``torch.ops.aten``) or
    an answer that catches the error gets through.
    """
    undo: list[Callable[[], None]] = []
    try:
        for owner, name, *label in targets:
            shown = label[0] if label else f"{getattr(owner, '__name__', owner)}.{name}"
            refusal = (ExerciseError, f"the exercise asks you to do this by hand, without `{shown}`: {why}")
            inner = inspect.unwrap(getattr(owner, name))
            if inspect.isfunction(inner) and not inner.__code__.co_freevars:
                saved = (inner.__code__, inner.__defaults__, inner.__kwdefaults__)
                inner.__code__, inner.__defaults__, inner.__kwdefaults__ = _refuse.__code__, None, {"_forbidden": refusal}
                undo.append(functools.partial(_restore_code, inner, saved))
            had, old = name in vars(owner), vars(owner).get(name)
            setattr(owner, name, functools.partial(_refuse, _forbidden=refusal))
            undo.append(functools.partial(setattr, owner, name, old) if had else functools.partial(delattr, owner, name))
        yield
    finally:
        for step in reversed(undo):
            step()


def _restore_code(fn: Any, saved: tuple) -> None:
    fn.__code__, fn.__defaults__, fn.__kwdefaults__ = saved


# --- Python loops an exercise rules out ------------------------------------------------------


def _most_line_runs(fn: Callable[..., Any], args: tuple) -> int:
    """Call ``fn(*args)`` and return how many times the most-run line of ``fn``'s file ran meanwhile.

    Only the code of ``fn``'s own file is counted (the notebook cell, with any helper it defines), not
    the libraries it calls. Straight-line code runs each line once or twice (a statement written over
    several lines may come back to its first one), whatever the size of the arguments; the body of a
    loop, a comprehension or a generator, or a function mapped over items, runs once per item.
    """
    code = getattr(inspect.unwrap(fn), "__code__", None)
    runs: Counter[tuple[types.CodeType, int]] = Counter()

    def count(frame: types.FrameType, event: str, _arg: Any) -> Callable[..., Any]:
        if event == "line":
            runs[frame.f_code, frame.f_lineno] += 1
        return count

    def enter(frame: types.FrameType, _event: str, _arg: Any) -> Callable[..., Any] | None:
        return count if code is not None and frame.f_code.co_filename == code.co_filename else None

    previous = sys.gettrace()
    sys.settrace(enter)
    try:
        fn(*args)
    finally:
        sys.settrace(previous)
    return max(runs.values(), default=0)


def refuse_loops(fn: Callable[..., Any], small: tuple, large: tuple, *, sizes: tuple[str, str], hint: str,
                 rule: str = "no Python loop") -> None:
    """Fail when a line of the learner's code runs more often for the ``large`` arguments than for the ``small`` ones.

    For the exercises whose text asks for no Python loop (or none over the batch): a loop over the
    items of the input runs its body once per item, so some line runs more often on a larger input,
    while vectorised code runs each line as often whatever the size (a loop over a fixed number of
    rounds too). ``fn`` is called once with each tuple of arguments; ``sizes`` says what they are
    ("a list of 4", "a list of 16"), ``hint`` what to use instead. Call it once the answer's values
    were checked, since a wrong value has a more useful message.

    Counted with :func:`sys.settrace`; the tracer in place before (a debugger's, say) is put back
    afterwards. Like :func:`forbid`, a guard against the usual loop, not a sandbox: a loop in a helper
    defined in another cell, or one run by a library (``map`` of a builtin), is not seen.
    """
    few, many = _most_line_runs(fn, small), _most_line_runs(fn, large)
    if many > few + 1:
        name = getattr(fn, "__name__", "your function")
        fail(f"the exercise asks for {rule}, but a line of `{name}` ran {few} times for {sizes[0]} and {many} times "
             f"for {sizes[1]}: {hint}")


# --- helpers shared by the checkers of several notebooks ------------------------------------


#: What a learner's answer may be for :func:`as_tensor` and :func:`as_number`: a real tensor, number,
#: array or (nested) list of numbers; anything else (an object that only says it equals everything, say)
#: is refused before it is converted or compared.
_NUMERIC = (torch.Tensor, numbers.Number, np.ndarray, np.generic, list, tuple)


def as_tensor(x: Any, name: str) -> torch.Tensor:
    """``x`` as a tensor, failing with a message naming ``name`` for ``None`` or a non-numeric value."""
    if x is None:
        fail(f"{name} is None: did the function forget to `return` its result?")
    if not isinstance(x, _NUMERIC):
        fail(f"{name} should be a tensor, got {type(x).__name__}")
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception:  # noqa: BLE001 - any conversion failure is the learner's type error
            fail(f"{name} should be a tensor, got {type(x).__name__}")
    return x


def as_number(x: Any, cast: Callable[[Any], Any], *, if_none: str, if_wrong: str, finite: bool = True) -> Any:
    """``cast(x)`` (``float`` or ``int``), failing with ``if_none`` for a missing ``return`` and
    ``if_wrong`` (``{type}`` is filled in) for something that is not one number; with ``finite``
    (the default) also for an infinite or NaN value."""
    if x is None:
        fail(if_none)
    if not isinstance(x, _NUMERIC):
        fail(if_wrong.format(type=type(x).__name__))
    try:
        value = float(x)  # type: ignore[arg-type]  # on purpose: the except below names what float() refuses
        result = cast(x)
    except (TypeError, ValueError, OverflowError, RuntimeError):
        fail(if_wrong.format(type=type(x).__name__))
    if finite and not math.isfinite(value):
        fail(f"your function returned {value}, not a finite number")
    return result


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
    actual = as_tensor(actual, name)
    if tuple(actual.shape) != tuple(expected.shape):
        fail(f"{name} has shape {tuple(actual.shape)}, expected {tuple(expected.shape)}. {hint}".strip())
    actual = actual.detach().to(expected.dtype)
    if not torch.allclose(actual, expected, atol=atol, rtol=rtol):
        diff = (actual - expected).abs().max().item()
        fail(f"{name} is off by up to {diff:.3g}. {hint}".strip())


def small_bn_model(seed: int = 0) -> nn.Module:
    """A small conv net with three BN layers (two nested, one ``BatchNorm1d``) whose parameters and
    running statistics all differ from their defaults: the model of notebooks 04 and 05's checkers."""
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
                # built above with the defaults (track_running_stats=True), so the buffers are tensors
                assert m.running_mean is not None and m.running_var is not None and m.num_batches_tracked is not None
                with torch.no_grad():
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_()
                    m.running_mean.normal_()
                    m.running_var.uniform_(0.5, 2.0)
                    m.num_batches_tracked.fill_(10)
    return model
