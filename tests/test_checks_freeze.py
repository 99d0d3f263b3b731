"""Checkers of notebooks 04 (track_running_stats) and 05 (freezing BN): right answers pass,
typical wrong answers fail with a message that names the mistake."""
import ast
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from reidlab import bn as rbn
from reidlab.lessons.checks import ExerciseError, nb04, nb05

ROOT = Path(__file__).resolve().parents[1]
BN = nn.modules.batchnorm._BatchNorm


# --- notebook 04: bn_forward ----------------------------------------------------------------


def _stats(bn, x, use_batch, unbiased=False):
    if use_batch:
        return x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=unbiased)
    return bn.running_mean, bn.running_var


def _affine(bn, x, mean, var, eps=None, affine=True):
    s = (1, -1, 1, 1)
    y = (x - mean.view(s)) / torch.sqrt(var.view(s) + (bn.eps if eps is None else eps))
    return y * bn.weight.view(s) + bn.bias.view(s) if affine else y


def bn_forward_right(bn, x):
    mean, var = _stats(bn, x, bn.training or bn.running_mean is None)
    return _affine(bn, x, mean, var)


def test_bn_forward_right_answer_passes(capsys):
    nb04.check_bn_forward(bn_forward_right)
    assert "correct" in capsys.readouterr().out


def test_bn_forward_must_not_call_the_layer():
    with pytest.raises(ExerciseError, match="called the layer"):
        nb04.check_bn_forward(lambda bn, x: bn(x))


@pytest.mark.parametrize(
    "wrong, message",
    [
        # always the running stats: crashes on an untracked layer, or wrong in train mode
        (lambda bn, x: _affine(bn, x, bn.running_mean, bn.running_var), "in train mode BN uses the batch"),
        # always the batch's statistics: wrong for a tracked layer in eval mode
        (lambda bn, x: _affine(bn, x, *_stats(bn, x, True)), "in eval mode a layer that tracks"),
        # only bn.training decides: an untracked layer in eval has running_mean None
        (lambda bn, x: _affine(bn, x, *_stats(bn, x, bn.training)), "running_mean is None"),
        (lambda bn, x: _affine(bn, x, *_stats(bn, x, bn.training or bn.running_mean is None, unbiased=True)), "biased"),
        (lambda bn, x: _affine(bn, x, *_stats(bn, x, bn.training or bn.running_mean is None), affine=False), "gamma"),
        (lambda bn, x: _affine(bn, x, *_stats(bn, x, bn.training or bn.running_mean is None), eps=1e-5), "eps"),
        (lambda bn, x: None, "return"),
    ],
)
def test_bn_forward_wrong_answers(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nb04.check_bn_forward(wrong)


# --- notebook 04: make_untracked --------------------------------------------------------------


def untrack_right(model):
    for m in model.modules():
        if isinstance(m, BN):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None
    return model


def test_make_untracked_right_answer_passes(capsys):
    nb04.check_make_untracked(untrack_right)
    assert "correct" in capsys.readouterr().out


def test_untracked_layer_equals_one_built_untracked():
    """The exercise's answer turns a layer into exactly what track_running_stats=False builds."""
    g = torch.Generator().manual_seed(0)
    built = nn.BatchNorm2d(3, track_running_stats=False)
    changed = untrack_right(nn.Sequential(nn.BatchNorm2d(3)))[0]
    x = torch.randn(4, 3, 2, 2, generator=g)
    for mode in (True, False):
        built.train(mode), changed.train(mode)
        torch.testing.assert_close(changed(x), built(x))
    assert list(changed.state_dict()) == list(built.state_dict()) == ["weight", "bias"]


def _flag_only(model):
    for m in model.modules():
        if isinstance(m, BN):
            m.track_running_stats = False


def _top_level_only(model):
    for m in model.children():
        if isinstance(m, BN):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None


def _keeps_counter(model):
    for m in model.modules():
        if isinstance(m, BN):
            m.track_running_stats = False
            m.running_mean = m.running_var = None


def _fresh_layers(model):
    for name, m in list(model.named_children()):
        if isinstance(m, BN):
            setattr(model, name, type(m)(m.num_features, track_running_stats=False))
        else:
            _fresh_layers(m)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (_flag_only, "left running_mean/running_var in place"),
        (_top_level_only, "nested layers count too"),
        (_keeps_counter, "num_batches_tracked"),
        (_fresh_layers, "keep the weights, gamma and beta"),
    ],
)
def test_make_untracked_wrong_answers(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nb04.check_make_untracked(wrong)


# --- notebook 05: freeze_bn ------------------------------------------------------------------


def test_reidlab_freeze_bn_passes_the_exercise(capsys):
    nb05.check_freeze_bn(rbn.freeze_bn)
    assert "correct" in capsys.readouterr().out


def _bn_modules(model):
    return [m for m in model.modules() if isinstance(m, BN)]


def _assignment_bug(model):
    for m in _bn_modules(model):
        m.eval()
        m.requires_grad_ = False


def _grad_only(model):
    for m in _bn_modules(model):
        m.requires_grad_(False)


def _eval_not_sticky(model):
    for m in _bn_modules(model):
        m.eval()
        m.requires_grad_(False)


def _momentum_zero(model):
    for m in _bn_modules(model):
        m.momentum = 0.0
        m.requires_grad_(False)


def _freeze_everything(model):
    model.requires_grad_(False)
    rbn.freeze_bn(model)


@pytest.mark.parametrize(
    "wrong, message",
    [
        (_assignment_bug, "requires_grad_ is no longer a method"),
        (_grad_only, "does not survive train"),
        (_eval_not_sticky, "does not survive train"),
        (_momentum_zero, "normalise with the batch's statistics"),
        (_freeze_everything, "freeze only the BN layers"),
        (lambda model: rbn.freeze_bn(model, affine=False), "still has requires_grad=True"),
    ],
)
def test_freeze_bn_wrong_answers(wrong, message):
    with pytest.raises(ExerciseError, match=message):
        nb05.check_freeze_bn(wrong)


# --- notebook 05: FrozenBatchNorm2d conversion -------------------------------------------------


def _convert(module, *, copy_eps=True, copy_stats=True, recurse=True, all_bn=False):
    kinds = (BN,) if all_bn else (nn.BatchNorm2d,)
    for name, child in module.named_children():
        if isinstance(child, kinds):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps if copy_eps else 1e-5)
            with torch.no_grad():
                frozen.weight.copy_(child.weight)
                frozen.bias.copy_(child.bias)
                if copy_stats:
                    frozen.running_mean.copy_(child.running_mean)
                    frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        elif recurse:
            _convert(child, copy_eps=copy_eps, copy_stats=copy_stats, recurse=recurse, all_bn=all_bn)
    return module


def _notebook_function(path: Path, name: str):
    """The function `name` as defined in a notebook's code cell (only its `def` is executed)."""
    nb = json.loads(path.read_text())
    namespace: dict = {}
    exec("import torch\nfrom torch import nn\nfrom torchvision.ops.misc import FrozenBatchNorm2d", namespace)
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        tree = ast.parse("".join(cell["source"]))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == name:
                exec(compile(ast.Module(body=[node], type_ignores=[]), path.name, "exec"), namespace)
                return namespace[name]
    raise LookupError(f"{name} not found in {path.name}")


def test_to_frozen_right_answers_pass(capsys):
    nb05.check_to_frozen_bn(_convert)
    notebook = ROOT / "notebooks" / "05_freezing_bn.ipynb"
    if notebook.exists():  # the notebook's own conversion (section 4) passes too
        nb05.check_to_frozen_bn(_notebook_function(notebook, "convert_to_frozen"))
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"copy_eps": False}, "eps"),
        ({"copy_stats": False}, "copy running_mean and running_var"),
        ({"recurse": False}, "convert nested layers"),
        ({"all_bn": True}, "convert only BatchNorm2d"),
    ],
)
def test_to_frozen_wrong_answers(kwargs, message):
    with pytest.raises(ExerciseError, match=message):
        nb05.check_to_frozen_bn(lambda m: _convert(m, **kwargs))


def test_to_frozen_must_return_the_model():
    with pytest.raises(ExerciseError, match="return the converted model"):
        nb05.check_to_frozen_bn(lambda m: None)


# --- notebook 05: ECN's fixed BN layers ----------------------------------------------------------


def _by_name(model):
    names = []
    for name, _ in model.named_modules():
        if "layer3" in name:
            break
        if "bn" in name:
            names.append(name)
    return names


def test_fixed_bn_names(capsys):
    nb05.check_fixed_bn_names(lambda m: [n for n, x in m.named_modules() if isinstance(x, nn.BatchNorm2d)][:24])
    assert "all 24" in capsys.readouterr().out
    # the reference code's name filter finds 22 and misses exactly the two downsample BNs
    with pytest.raises(ExerciseError, match="downsample") as err:
        nb05.check_fixed_bn_names(_by_name)
    assert "found 22" in str(err.value)
    with pytest.raises(ExerciseError, match="stop at layer3"):
        nb05.check_fixed_bn_names(lambda m: [n for n, x in m.named_modules() if isinstance(x, nn.BatchNorm2d)])
    with pytest.raises(ExerciseError, match="names"):
        nb05.check_fixed_bn_names(lambda m: [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)][:24])


def test_set_bn_eval_selects_what_the_checker_expects():
    """reidlab.bn.set_bn_eval (used in notebook 05) returns the exercise's answer."""
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    names = rbn.set_bn_eval(model, until="layer3")
    nb05.check_fixed_bn_names(lambda m: names)


def test_notebook_04_make_untracked_passes_the_exercise_checker(capsys):
    notebook = ROOT / "notebooks" / "04_track_running_stats.ipynb"
    if not notebook.exists():
        pytest.skip("notebook 04 not present")
    nb04.check_make_untracked(_notebook_function(notebook, "make_untracked"))
    assert "correct" in capsys.readouterr().out


def test_notebook_05_name_filter_is_set_bn_eval_minus_the_downsample_bns():
    """The reference code's filter restated in notebook 05 vs reidlab.bn.set_bn_eval (by type)."""
    import torchvision

    notebook = ROOT / "notebooks" / "05_freezing_bn.ipynb"
    if not notebook.exists():
        pytest.skip("notebook 05 not present")
    name_filter = _notebook_function(notebook, "ecn_name_filter")
    model = torchvision.models.resnet50(weights=None).train()
    by_name = name_filter(model)
    assert [m.training for n, m in model.named_modules() if n in by_name] == [False] * 22
    model.train()
    by_type = rbn.set_bn_eval(model, until="layer3")
    assert len(by_type) == 24
    assert sorted(set(by_type) - set(by_name)) == ["layer1.0.downsample.1", "layer2.0.downsample.1"]
    assert set(by_name) <= set(by_type)
