import pytest
import torch

from reidlab.lessons import checks


def stable(scores, t):
    z = scores / t
    z = z - z.max(-1, keepdim=True).values
    return z.exp() / z.exp().sum(-1, keepdim=True)


def test_correct_softmax_passes(capsys):
    checks.check_softmax_temperature(stable)
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, message",
    [
        (lambda s, t: torch.softmax(s * t, -1), "temperature divides"),
        (lambda s, t: torch.softmax(s / t, 0), "dim=-1"),
        (lambda s, t: (s / t).exp() / (s / t).exp().sum(-1, keepdim=True), "overflows"),
        (lambda s, t: None, "return"),
        (lambda s, t: torch.softmax(s / t, -1)[:, :2], "shape"),
    ],
)
def test_wrong_answers_get_a_specific_message(wrong, message):
    with pytest.raises(checks.ExerciseError, match=message):
        checks.check_softmax_temperature(wrong)


# --- exercises not attempted yet: every checker, and graded cells in a kernel ---------------

import inspect  # noqa: E402

import nbformat  # noqa: E402

CHECKERS = sorted(name for name in dir(checks) if name.startswith("check_"))


def test_every_public_checker_is_wrapped():
    assert len(CHECKERS) >= 10
    for name in CHECKERS:
        fn = getattr(checks, name)
        assert getattr(fn, "_explains_unattempted", False), name
        assert fn is getattr(checks, name), "the wrapper is cached: the same object every time"
        assert fn.__name__ == name and fn.__doc__ == fn.__wrapped__.__doc__
        assert inspect.signature(fn) == inspect.signature(fn.__wrapped__)


@pytest.mark.parametrize("name", CHECKERS)
def test_the_student_stub_gets_an_explanation_from_every_checker(name):
    """A checker that calls the stub says "not attempted", never lets NotImplementedError out."""
    calls = []

    def my_answer(*args, **kwargs):
        calls.append(args)
        raise NotImplementedError()

    try:
        getattr(checks, name)(my_answer)
    except checks.ExerciseError as err:
        if calls:
            assert str(err).startswith(checks.NOT_ATTEMPTED), str(err)
            assert "raise NotImplementedError()" in str(err) and "`my_answer`" in str(err)
            assert err.__cause__ is None and err.__suppress_context__
    # a checker that takes a value, not a function, never calls the stub: any error but
    # NotImplementedError is its business (the value case is covered by the kernel test below)


def test_real_errors_pass_through_unchanged():
    def torch_style(*args):
        raise NotImplementedError("Could not run 'aten::foo' with arguments from the 'Meta' backend")

    with pytest.raises(NotImplementedError, match="aten::foo"):
        checks.check_softmax_temperature(torch_style)
    with pytest.raises(ZeroDivisionError):
        checks.check_softmax_temperature(lambda s, t: 1 / 0)
    with pytest.raises(checks.ExerciseError, match="temperature divides"):  # checker logic unchanged
        checks.check_softmax_temperature(lambda s, t: torch.softmax(s * t, -1))


def test_a_new_checker_is_wrapped_without_a_decorator(monkeypatch):
    def check_new(fn):
        fn()

    monkeypatch.setattr(checks, "check_new", check_new, raising=False)

    def stub():
        raise NotImplementedError()

    with pytest.raises(checks.ExerciseError, match="not attempted"):
        checks.check_new(stub)
    with pytest.raises(NotImplementedError):
        check_new(stub)  # the plain function is untouched


def _run_cells(sources, tmp_path):
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = []
    for cell in nb.cells:
        err = [o for o in cell.outputs if o.output_type == "error"]
        errors.append((err[0].ename, err[0].evalue) if err else None)
    return errors


def test_graded_cells_in_a_kernel_explain_the_stub_and_only_it(tmp_path):
    """IPython side: a top-level solution stub (NameError in the graded cell) and a stub called
    directly in a graded cell read as ExerciseError; every other error looks as it always did."""
    errors = _run_cells([
        "from reidlab.lessons import checks",
        "# YOUR CODE HERE\nraise NotImplementedError()",                      # 1 solution cell (top level)
        "checks.check_running_mean_after_steps(running_mean_after)",          # 2 its graded cell
        "def keras_to_torch(m):\n    # YOUR CODE HERE\n    raise NotImplementedError()",
        "checks.check_keras_to_torch(keras_to_torch)",                        # 4 checker calls the stub
        "assert keras_to_torch(0.9) == 0.1\nchecks.check_keras_to_torch(keras_to_torch)",  # 5 hidden-test style
        "print(undefined_name)",                                              # 6 not a graded cell
        "checks.check_keras_to_torch(lambda m: 1 - m)\nprint(other_undefined)",  # 7 name not a checker argument
        "raise NotImplementedError('a library feature')\ncheckz = checks.check_inp",  # 8 has a message
        "checks.check_keras_to_torch(lambda m: m)",                           # 9 a wrong answer
        "checks.check_keras_to_torch(lambda m: 1 - m)",                       # 10 a right one
    ], tmp_path)
    assert errors[0] is None and errors[10] is None
    assert errors[1] == ("NotImplementedError", "")
    for i in (2, 4, 5):
        assert errors[i][0] == "ExerciseError" and errors[i][1].startswith("exercise not attempted yet"), errors[i]
    assert "`running_mean_after` is not defined" in errors[2][1]
    assert "`keras_to_torch` still raises" in errors[4][1]
    assert errors[6] == ("NameError", "name 'undefined_name' is not defined")
    assert errors[7] == ("NameError", "name 'other_undefined' is not defined")
    assert errors[8] == ("NotImplementedError", "a library feature")
    assert errors[9][0] == "ExerciseError" and "opposite" in errors[9][1]
