"""The checkers' machinery (reidlab.lessons.checks): one module per notebook, every public
``check_*`` explicitly decorated with ``checker``, the "not attempted" explanation, nothing
installed on import, ``forbid`` (the shortcuts an exercise rules out), every checker refusing an
answer that only looks right; and notebook 00's checker."""
import ast
import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import reidlab.lessons.checks as checks
import reidlab.memory as memory
from answers import Answers
from reidlab.lessons.checks import nb00

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MODULES = {
    info.name: importlib.import_module(f"reidlab.lessons.checks.{info.name}")
    for info in pkgutil.iter_modules(checks.__path__)
}
CHECKERS = sorted((mod, name) for mod, module in MODULES.items() for name in vars(module) if name.startswith("check_"))


# --- notebook 00: softmax with temperature -------------------------------------------------


def stable(scores, t):
    """Exercise 0.1's solution: divide by T, subtract each row's maximum, exp, divide by the row sum."""
    z = scores / t
    z = z - z.max(-1, keepdim=True).values
    return z.exp() / z.exp().sum(-1, keepdim=True)


def stable_over(scores, dim):
    z = scores - scores.max(dim, keepdim=True).values
    return z.exp() / z.exp().sum(dim, keepdim=True)


def pairwise(scores, t):
    """Also right: p_i = 1 / sum_j exp(z_j - z_i); a huge difference gives 1 / inf = 0, never inf / inf."""
    z = scores / t
    return 1 / torch.exp(z.unsqueeze(-2) - z.unsqueeze(-1)).sum(-1)


def shift_by(scores, t, shift):
    z = scores / t
    e = torch.exp(z - shift(z))
    return e / e.sum(-1, keepdim=True)


SOFTMAX_WRONG = (
    # the shortcut the exercise forbids: "by hand with torch.exp, not torch.softmax"
    (lambda s, t: torch.softmax(s / t, -1), "by hand, without `torch.softmax`"),
    (lambda s, t: (s / t).softmax(-1), "by hand, without `Tensor.softmax`"),
    (lambda s, t: torch.nn.functional.softmax(s / t, dim=-1), "without `torch.nn.functional.softmax`"),
    (lambda s, t: torch.nn.Softmax(dim=-1)(s / t), "without `torch.nn.functional.softmax`"),
    (lambda s, t: torch.log_softmax(s / t, -1).exp(), "without `torch.log_softmax`"),
    # the mistakes
    (lambda s, t: stable_over(s * t, -1), "temperature divides"),
    (lambda s, t: stable_over(s / t, 0), "dim=-1"),
    (lambda s, t: (s / t).exp() / (s / t).exp().sum(-1, keepdim=True), "overflows"),  # no shift
    (lambda s, t: shift_by(s, t, lambda z: z.max()), "not one maximum for the whole tensor"),  # max without dim
    (lambda s, t: shift_by(s, t, lambda z: z.mean(-1, keepdim=True)), "own maximum.*nor the mean"),
    (lambda s, t: None, "return"),
    (lambda s, t: stable(s, t)[:, :2], "shape"),
)


def test_the_softmax_is_refused_only_while_the_answer_runs():
    with pytest.raises(nb00.ExerciseError, match="row maximum|by hand"):
        nb00.check_softmax_temperature(lambda s, t: torch.softmax(s / t, -1))
    scores = torch.tensor([[1.0, 2.0]])
    assert torch.allclose(torch.softmax(scores, -1), stable(scores, 1.0))
    assert torch.allclose(scores.softmax(-1), torch.nn.functional.softmax(scores, -1))


# --- one module per notebook, every checker decorated ----------------------------------------


def undecorated_checkers(module: types.ModuleType) -> list[str]:
    """The public ``check_*`` functions of ``module`` that lack the ``@checker`` marker."""
    return [
        name for name, value in vars(module).items()
        if name.startswith("check_") and callable(value) and not getattr(value, "_explains_unattempted", False)
    ]


def test_one_checkers_module_per_notebook_and_each_notebook_imports_its_own():
    assert sorted(MODULES) == [f"nb{p.name[:2]}" for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        mod = f"nb{path.name[:2]}"
        cells = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        imports = [line for src in cells for line in src.splitlines() if "reidlab.lessons" in line and "checks" in line]
        assert imports == [f"from reidlab.lessons.checks import {mod} as checks"], (path.name, imports)
        called = {
            node.func.attr for src in cells for node in ast.walk(ast.parse(src))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name) and node.func.value.id == "checks"
        }
        assert called and called <= set(vars(MODULES[mod])), f"{path.name} calls {called - set(vars(MODULES[mod]))}"


def test_every_public_checker_is_decorated():
    assert len(CHECKERS) >= 29
    for mod, module in MODULES.items():
        assert not undecorated_checkers(module), f"add @checker to {mod}.{undecorated_checkers(module)}"
    for mod, name in CHECKERS:
        fn = getattr(MODULES[mod], name)
        assert fn.__name__ == name and fn.__doc__ == fn.__wrapped__.__doc__ and fn.__doc__, f"{mod}.{name}"
        assert inspect.signature(fn) == inspect.signature(fn.__wrapped__)
        assert fn.__module__ == f"reidlab.lessons.checks.{mod}", "each notebook's checkers live in its own module"


def test_a_checker_without_the_decorator_is_reported():
    module = types.ModuleType("reidlab.lessons.checks.nb99")

    def check_new(fn):
        fn()

    module.check_new, module.check_old = check_new, checks.checker(check_new)
    assert undecorated_checkers(module) == ["check_new"]


def test_the_package_holds_no_checker_and_imports_no_notebook_module():
    assert not [name for name in vars(checks) if name.startswith("check_")]
    tree = ast.parse(Path(checks.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {m for m in imported if m and m.startswith("reidlab")}, imported


def test_importing_the_checkers_installs_nothing():
    """In a fresh interpreter with an IPython shell: after importing every checkers module, the
    package is a plain module and the shell has no custom exception handler."""
    code = """
import importlib, pkgutil, sys, types
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
import reidlab.lessons.checks as checks
for info in pkgutil.iter_modules(checks.__path__):
    importlib.import_module(f"reidlab.lessons.checks.{info.name}")
names = [n for n in sys.modules if n == "reidlab.lessons.checks" or n.startswith("reidlab.lessons.checks.")]
assert len(names) >= 12, names
assert all(type(sys.modules[n]) is types.ModuleType for n in names), {n: type(sys.modules[n]) for n in names}
assert sys.modules["reidlab.lessons.checks"].__class__ is types.ModuleType
assert shell.custom_exceptions == (), shell.custom_exceptions
print("clean", len(names))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("clean")


# --- exercises not attempted yet -------------------------------------------------------------


@pytest.mark.parametrize("mod, name", CHECKERS, ids=[f"{m}.{n}" for m, n in CHECKERS])
def test_the_student_stub_gets_an_explanation_from_every_checker(mod, name):
    """Every checker calls the learner's function, and its stub reads as "not attempted"."""
    calls = []

    def my_answer(*args, **kwargs):
        calls.append(args)
        raise NotImplementedError()

    with pytest.raises(checks.ExerciseError) as info:
        getattr(MODULES[mod], name)(my_answer)
    assert calls, "the checker calls the learner's function"
    err = info.value
    assert str(err).startswith(checks.NOT_ATTEMPTED), str(err)
    assert "raise NotImplementedError()" in str(err) and "`my_answer`" in str(err)
    assert err.__cause__ is None and err.__suppress_context__


def test_real_errors_pass_through_unchanged():
    def torch_style(*args):
        raise NotImplementedError("Could not run 'aten::foo' with arguments from the 'Meta' backend")

    with pytest.raises(NotImplementedError, match="aten::foo"):
        nb00.check_softmax_temperature(torch_style)
    with pytest.raises(ZeroDivisionError):
        nb00.check_softmax_temperature(lambda s, t: 1 / 0)
    with pytest.raises(checks.ExerciseError, match="temperature divides"):  # checker logic unchanged
        nb00.check_softmax_temperature(lambda s, t: stable_over(s * t, -1))


def test_the_decorator_explains_the_stub_and_leaves_the_function_as_it_was():
    def check_new(fn, *, value=None):
        """Docstring."""
        return fn() if value is None else value

    decorated = checks.checker(check_new)
    assert checks.checker(decorated) is decorated, "decorating twice changes nothing"
    assert decorated.__wrapped__ is check_new and decorated.__doc__ == "Docstring."

    def stub():
        raise NotImplementedError()

    with pytest.raises(checks.ExerciseError, match=r"^exercise not attempted yet: .*`stub` still raises"):
        decorated(stub)
    class Stub:  # not a function: no name to show
        def __call__(self):
            raise NotImplementedError()

    with pytest.raises(checks.ExerciseError, match=r"^exercise not attempted yet: replace .*, then run that cell") as info:
        decorated(Stub())
    assert "still raises" not in str(info.value)
    assert decorated(stub, value=3) == 3
    with pytest.raises(NotImplementedError):
        check_new(stub)  # the plain function is untouched


# --- forbid: the shortcuts an exercise rules out ---------------------------------------------


def library_shortcut(x, *, twice=False):
    """Stands for a library function that answers an exercise in one call."""
    return 2 * x if twice else x + 1


def test_forbid_refuses_the_shortcut_under_any_name_and_restores_it():
    library = types.ModuleType("library")
    library.shortcut = library_shortcut
    bound_before = library.shortcut  # `from library import shortcut` in a notebook, before the check
    with checks.forbid((library, "shortcut"), (torch.Tensor, "softmax"), why="add 1 yourself"):
        for call in (lambda: library.shortcut(1), lambda: bound_before(1), lambda: torch.ones(2).softmax(0)):
            with pytest.raises(checks.ExerciseError, match=r"^the exercise asks you to do this by hand, without "
                                                          r"`(library\.shortcut|Tensor\.softmax)`: add 1 yourself$"):
                call()
        assert torch.exp(torch.zeros(1)).item() == 1.0  # everything else works
    assert library.shortcut is library_shortcut and library_shortcut(1) == 2 and library_shortcut(2, twice=True) == 4
    assert "softmax" not in vars(torch.Tensor) and torch.ones(2).softmax(0).sum().item() == 1.0


def test_forbid_restores_after_an_error_and_reaches_through_decorators():
    wrapped = memory.memory_update_  # decorated with torch.no_grad(): the function it wraps is refused
    with pytest.raises(ZeroDivisionError):
        with checks.forbid((memory, "memory_update_"), (torch, "softmax", "the softmax"), why="by hand"):
            with pytest.raises(checks.ExerciseError, match="without `reidlab.memory.memory_update_`"):
                wrapped(torch.zeros(2, 2), torch.tensor([0]), torch.ones(1, 2), 0.5)
            with pytest.raises(checks.ExerciseError, match="without `the softmax`: by hand"):
                torch.softmax(torch.ones(2), 0)
            1 / 0
    assert memory.memory_update_ is wrapped and torch.softmax(torch.zeros(2), 0).tolist() == [0.5, 0.5]
    assert wrapped(torch.zeros(2, 2), torch.tensor([0]), torch.ones(1, 2), 0.0)[0].tolist() == pytest.approx([0.7071, 0.7071], abs=1e-4)


# --- answers that only look right: every checker refuses them ---------------------------------


class EqualToEverything:
    """What a cheating answer returns: equal to anything, a plausible number, truthy, array- and sequence-like."""

    def __eq__(self, other):
        return True

    def __ne__(self, other):
        return False

    __hash__ = object.__hash__

    def __float__(self):
        return 0.5

    def __int__(self):
        return 1

    def __index__(self):
        return 1

    def __bool__(self):
        return True

    def __array__(self, dtype=None, copy=None):
        return np.array(0.5)

    def __len__(self):
        return 2

    def __getitem__(self, index):
        if isinstance(index, int) and not -2 <= index < 2:
            raise IndexError(index)
        return self

    def __iter__(self):
        return iter((self, self))


def _arity(check) -> int:
    """How many positional arguments ``check`` passes to the learner's function (seen on a stub)."""
    seen = []

    def stub(*args):
        seen.append(len(args))
        raise NotImplementedError()

    with pytest.raises(checks.ExerciseError):
        check(stub)
    return seen[0]


def _answer(arity: int, body):
    """A learner's function of exactly ``arity`` positional parameters that returns ``body(*args)``."""
    params = ", ".join(f"a{i}" for i in range(arity))
    namespace = {"body": body}
    exec(f"def answer({params}):\n    return body({params})", namespace)
    return namespace["answer"]


CHEATS = {
    "returns an object equal to everything": lambda *args: EqualToEverything(),
    "returns a pair of such objects": lambda *args: (EqualToEverything(), EqualToEverything()),
    "returns its first argument unchanged": lambda *args: args[0],
    "does nothing": lambda *args: None,
}


@pytest.mark.parametrize("cheat", sorted(CHEATS))
@pytest.mark.parametrize("mod, name", CHECKERS, ids=[f"{m}.{n}" for m, n in CHECKERS])
def test_every_checker_refuses_an_answer_that_only_looks_right(mod, name, cheat, capsys):
    check = getattr(MODULES[mod], name)
    answer = _answer(_arity(check), CHEATS[cheat])
    with pytest.raises(checks.ExerciseError):
        check(answer)
    assert "correct" not in capsys.readouterr().out


ANSWERS = {  # run by tests/test_answer_suites.py
    nb00.check_softmax_temperature: Answers(right=(stable, pairwise), wrong=SOFTMAX_WRONG),
}
