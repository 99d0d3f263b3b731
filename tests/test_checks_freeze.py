"""Checkers of notebooks 04 (track_running_stats) and 05 (freezing BN): right answers pass,
typical wrong answers fail with a message that names the mistake.

The right and wrong answers of each graded exercise are in ``ANSWERS`` at the end (run by
``test_answer_suites.py``); what needs more than "accepted" or "refused with this message" is tested here.
"""
import ast
import copy
import functools
import itertools
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from answers import Answers
from reidlab import bn as rbn
from reidlab.bn import freeze_bn
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


def bn_forward_functional(bn, x):
    """Also right: F.batch_norm with PyTorch's own rule, buffers on copies so that nothing is updated."""
    use_batch = bn.training or (bn.running_mean is None and bn.running_var is None)
    rm = None if use_batch else bn.running_mean.clone()
    rv = None if use_batch else bn.running_var.clone()
    return torch.nn.functional.batch_norm(x, rm, rv, bn.weight, bn.bias, use_batch, 0.0, bn.eps)


def bn_forward_by_flag(bn, x):
    """Right for a layer built tracked or untracked, wrong for one whose flag was flipped afterwards."""
    return _affine(bn, x, *_stats(bn, x, bn.training or not bn.track_running_stats))


def test_pytorch_decides_by_the_buffers_not_by_the_flag():
    """What the checker's flag-flipped state rests on (torch/nn/modules/batchnorm.py, _BatchNorm.forward)."""
    bn = nn.BatchNorm2d(2)
    with torch.no_grad():
        bn.running_mean.fill_(3.0)
    bn.track_running_stats = False
    x = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(bn.eval()(x), _affine(bn, x, bn.running_mean, bn.running_var).detach())
    torch.testing.assert_close(bn.train()(x), _affine(bn, x, *_stats(bn, x, True)).detach())
    assert bn.running_mean.tolist() == [3.0, 3.0] and int(bn.num_batches_tracked) == 0  # train mode updated nothing


def _a_new_layer(bn, x):
    """A fresh BN layer with the same state: calling a BN layer all the same."""
    twin = nn.BatchNorm2d(bn.num_features, eps=bn.eps, track_running_stats=bn.running_mean is not None)
    twin.load_state_dict(bn.state_dict())
    twin.track_running_stats = bn.track_running_stats
    return twin.train(bn.training)(x)


def test_the_layer_works_again_after_the_bn_forward_check():
    with pytest.raises(ExerciseError):
        nb04.check_bn_forward(lambda bn, x: bn(x))
    torch.testing.assert_close(nn.BatchNorm2d(2).eval()(torch.ones(1, 2, 1, 1)), torch.full((1, 2, 1, 1), (1 + 1e-5) ** -0.5))


CALLED = r"by hand, without `calling the layer \(bn\(x\), bn\.forward\(x\), a copy or a new BN layer\)`"

BN_FORWARD_WRONG = (
    # the shortcut the exercise forbids: "without calling the layer"
    (lambda bn, x: bn(x), CALLED),
    (lambda bn, x: bn.forward(x), CALLED),
    (lambda bn, x: copy.deepcopy(bn)(x), CALLED),
    (_a_new_layer, CALLED),
    # the mistakes
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
    # the flag decides instead of the buffers: wrong for a flag flipped after construction, in eval mode
    (bn_forward_by_flag, r"eval mode, track_running_stats=False \(set after construction.*PyTorch decides by "
                         r"whether running_mean/running_var exist, not by the flag \(notebook 04, the flag-flipped"),
    # the flag stops the updates, not the use of the buffers in train mode
    (lambda bn, x: _affine(bn, x, *_stats(bn, x, bn.running_mean is None or (bn.training and bn.track_running_stats))),
     r"train mode, track_running_stats=False \(set after construction.*in train mode BN uses the batch"),
)


# --- notebook 04: track_again (exercise 4.2) -------------------------------------------------


def track_again_right(model, state_dict):
    for m in model.modules():
        if isinstance(m, BN):
            m.track_running_stats = True
            m.running_mean = torch.zeros(m.num_features)
            m.running_var = torch.ones(m.num_features)
            m.num_batches_tracked = torch.tensor(0, dtype=torch.long)
    model.load_state_dict(state_dict)
    return model


def _replace_layers(model, state_dict):
    """Another right answer: fresh tracked BN layers in place of the untracked ones, then load."""
    def swap(module):
        for name, child in module.named_children():
            if isinstance(child, BN):
                setattr(module, name, type(child)(child.num_features, eps=child.eps, momentum=child.momentum))
            else:
                swap(child)
    swap(model)
    model.load_state_dict(state_dict)


def _strict_false(model, state_dict):
    model.load_state_dict(state_dict, strict=False)


def _flag_only_again(model, state_dict):
    for m in model.modules():
        if isinstance(m, BN):
            m.track_running_stats = True
    model.load_state_dict(state_dict, strict=False)


def _no_counter(model, state_dict):
    for m in model.modules():
        if isinstance(m, BN):
            m.track_running_stats = True
            m.running_mean, m.running_var = torch.zeros(m.num_features), torch.ones(m.num_features)
    model.load_state_dict(state_dict)


def _not_loaded(model, state_dict):
    track_again_right(model, state_dict)
    for m in model.modules():
        if isinstance(m, BN):
            m.reset_running_stats()


def _buffers_but_flag_false(model, state_dict):
    track_again_right(model, state_dict)
    for m in model.modules():
        if isinstance(m, BN):
            m.track_running_stats = False


def _top_level_only_again(model, state_dict):
    for m in model.children():
        if isinstance(m, BN):
            m.track_running_stats = True
            m.running_mean, m.running_var = torch.zeros(m.num_features), torch.ones(m.num_features)
            m.num_batches_tracked = torch.tensor(0)
    model.load_state_dict(state_dict, strict=False)


def _buffers_by_hand(model, state_dict):
    """Copies the checkpoint's BN buffers into place, but not its weights (gamma, beta, the convs)."""
    for name, m in model.named_modules():
        if isinstance(m, BN):
            m.track_running_stats = True
            for key in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(m, key, state_dict[f"{name}.{key}"].clone())
    return model


TRACK_WRONG = (
    (_strict_false, "strict=False"),
    (_flag_only_again, "running_mean is None"),
    (_no_counter, "num_batches_tracked"),
    (_not_loaded, "all zeros"),
    (_buffers_but_flag_false, "track_running_stats is still False"),
    (_top_level_only_again, "no running statistics"),
    (_buffers_by_hand, r"\['0.weight', '1.weight', '1.bias'\] differ from the checkpoint: load all of it"),
    (lambda model, sd: nn.Sequential(nn.Linear(2, 2)), "3 BN layers"),
)


def test_notebook_04_make_untracked_builds_what_the_flag_builds():
    """Section 2's make_untracked: every BN layer of the copy behaves like one built with
    track_running_stats=False (same outputs in both modes, no buffer keys), weights kept."""
    notebook = ROOT / "notebooks" / "04_track_running_stats.ipynb"
    make_untracked = _notebook_function(notebook, "make_untracked")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.BatchNorm2d(4)), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    model(x)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    make_untracked(model)
    built = nn.BatchNorm2d(4, track_running_stats=False)
    built.load_state_dict(model[1][0].state_dict())
    for mode in (True, False):
        model.train(mode), built.train(mode)
        torch.testing.assert_close(model[1][0](model[0](x)), built(model[0](x)))
    assert model.state_dict().keys() == weights.keys()


# --- notebook 05: freeze_bn ------------------------------------------------------------------


def test_freeze_bn_works_again_after_the_check():
    with pytest.raises(ExerciseError):
        nb05.check_freeze_bn(freeze_bn)
    assert rbn.freeze_bn(nn.Sequential(nn.BatchNorm2d(2))) == ["0"]  # restored after the check


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


def _stay_in_eval(module, mode=True):
    return nn.Module.train(module, False)


def freeze_with_partial(model):
    """Exercise 5.1's solution: a top-level function bound with functools.partial pickles by name."""
    for m in _bn_modules(model):
        m.requires_grad_(False)
        m.train = functools.partial(_stay_in_eval, m)
        m.eval()
    return model


def _bound_method(model):
    """The old reference solution: torch.save works, torch.load fails (the method is pickled by its name)."""
    def stay_in_eval(module, mode=True):
        return nn.Module.train(module, False)

    for m in _bn_modules(model):
        m.requires_grad_(False)
        m.train = stay_in_eval.__get__(m)
        m.eval()
    return model


def _partial_of_a_local_function(model):
    def stay_in_eval(module, mode=True):
        return nn.Module.train(module, False)

    for m in _bn_modules(model):
        m.requires_grad_(False)
        m.train = functools.partial(stay_in_eval, m)
        m.eval()
    return model


def test_the_freeze_solution_survives_a_save_load_round_trip(tmp_path):
    model = freeze_with_partial(nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2)))
    torch.save(model, tmp_path / "frozen.pt")
    loaded = torch.load(tmp_path / "frozen.pt", weights_only=False).train()
    assert not loaded[1].training and loaded[0].training


def test_the_old_bound_method_solution_saves_but_does_not_load(tmp_path):
    """What the issue found: torch.save(model) works, torch.load raises AttributeError."""
    model = _bound_method(nn.Sequential(nn.BatchNorm2d(2)))
    torch.save(model, tmp_path / "frozen.pt")
    with pytest.raises(AttributeError, match="stay_in_eval"):
        torch.load(tmp_path / "frozen.pt", weights_only=False)


def _freeze_everything(model):
    model.requires_grad_(False)
    freeze_with_partial(model)


def _stats_only(model):
    for m in _bn_modules(model):
        m.train = functools.partial(_stay_in_eval, m)
        m.eval()


def freeze_by_conversion(model):
    """Also right: each BatchNorm2d becomes torchvision's FrozenBatchNorm2d (section 4), the BatchNorm1d is frozen
    in place (FrozenBatchNorm2d is for 4-D inputs)."""
    _convert(model)
    return freeze_with_partial(model)


def _convert_every_bn(model):
    return _convert(model, all_bn=True)  # the BatchNorm1d too


def _convert_without_stats(model):
    return freeze_with_partial(_convert(model, copy_stats=False))


def _drop_the_layers(model):
    model[1] = nn.Identity()
    return freeze_with_partial(model)


def _not_in_eval_yet(model):
    """A train() that keeps the layers in eval, but they stay in train mode until the next model.train()."""
    for m in _bn_modules(model):
        m.requires_grad_(False)
        m.train = functools.partial(_stay_in_eval, m)
    return model


def _flag_off(model):
    """Notebook 04's flag: it stops the updates, but train mode still normalises with the batch's statistics."""
    for m in _bn_modules(model):
        m.requires_grad_(False)
        m.track_running_stats = False
    return model


FREEZE_WRONG = (
    # the shortcut the exercise forbids: "Without freeze_bn" (notebook 05 imports it by name at its top)
    (rbn.freeze_bn, "by hand, without `reidlab.bn.freeze_bn`"),
    (lambda model: rbn.freeze_bn(model), "by hand, without `reidlab.bn.freeze_bn`"),
    (lambda model: freeze_bn(model), "by hand, without `reidlab.bn.freeze_bn`"),
    # the mistakes
    (_assignment_bug, "requires_grad_ is no longer a method"),
    (_grad_only, "moved in a forward right after the freeze: the layer is still in train mode"),
    (_not_in_eval_yet, "moved in a forward right after the freeze.*put it in eval now"),
    (_flag_off, "after model.train\\(\\) the BN layers normalise with the batch's statistics"),
    (_eval_not_sticky, "does not survive train"),
    (_momentum_zero, "normalise with the batch's statistics"),
    (_freeze_everything, "freeze only the BN layers"),
    (_stats_only, "still has requires_grad=True"),
    (lambda model: _convert(model), r"layer '6': gamma \(weight\) still has requires_grad=True"),  # BatchNorm1d
    (_convert_every_bn, "FrozenBatchNorm2d is for 4-D inputs"),
    (_convert_without_stats, "differs from the original's in eval mode.*the running statistics"),
    (_drop_the_layers, "the BN layer '1' is now a Identity"),
    (_bound_method, "torch.save.*AttributeError.*functools.partial"),
    (_partial_of_a_local_function, "torch.save.*defined inside another function"),
)


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


def name_filter_errors(model, until):
    """Exercise 5.2's solution: one pass over named_modules(), stopping at `until`."""
    missed, caught = [], []
    for name, m in model.named_modules():
        if name == until:
            break
        is_bn = isinstance(m, BN)
        if is_bn and "bn" not in name:
            missed.append(name)
        elif not is_bn and "bn" in name:
            caught.append(name)
    return missed, caught


def name_filter_errors_by_takewhile(model, until):
    """Also right: the modules before `until` first, then one list comprehension for each kind of mistake."""
    before = list(itertools.takewhile(lambda item: item[0] != until, model.named_modules()))
    return ([name for name, m in before if isinstance(m, BN) and "bn" not in name],
            [name for name, m in before if not isinstance(m, BN) and "bn" in name])


def test_the_exercise_answer_on_resnet50_is_the_two_downsample_bns():
    import torchvision

    assert name_filter_errors(torchvision.models.resnet50(weights=None), "layer3") == (
        ["layer1.0.downsample.1", "layer2.0.downsample.1"], [])


def _only_2d(model, until):
    missed, caught = name_filter_errors(model, until)
    return [n for n in missed if isinstance(model.get_submodule(n), nn.BatchNorm2d)], caught


def _no_stop(model, until):
    missed, caught = [], []
    for name, m in model.named_modules():
        if isinstance(m, BN) and "bn" not in name:
            missed.append(name)
        elif not isinstance(m, BN) and "bn" in name:
            caught.append(name)
    return missed, caught


def _caught_with_the_bns(model, until):
    """Every module with 'bn' in its name, BN layers included: what the filter catches, not what it gets wrong."""
    names = [n for n, _ in model.named_modules()]
    return name_filter_errors(model, until)[0], [n for n in names[: names.index(until)] if "bn" in n]


NAME_FILTER_WRONG = (
    (lambda model, until: (name_filter_errors(model, until)[0], []), "caught_wrongly is empty"),
    (_only_2d, "BatchNorm1d is a BN layer too"),
    (_no_stop, "stop at the module named"),
    (lambda model, until: ([n for n, m in model.named_modules() if isinstance(m, BN) and "bn" in n][:2], []),
     "do NOT contain 'bn'"),
    (_caught_with_the_bns, "NOT BN layers"),
    (lambda model, until: (name_filter_errors(model, until)[0][:1], []), "every BN layer"),
    (lambda model, until: [m for n, m in model.named_modules() if isinstance(m, BN)][:2], "names"),
    (lambda model, until: None, "pair"),
    (lambda model, until: ("layer1.0.downsample.1", []), "list of names"),
)


def test_set_bn_eval_selects_what_the_checker_expects():
    """reidlab.bn.set_bn_eval (used in notebook 05) returns the exercise's answer."""
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    names = rbn.set_bn_eval(model, until="layer3")
    by_type = [n for n, m in model.named_modules() if isinstance(m, BN)][:24]
    assert names == by_type and name_filter_errors(model, "layer3")[0] == [n for n in names if "bn" not in n]


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


ANSWERS = {  # run by tests/test_answer_suites.py
    nb04.check_bn_forward: Answers(right=(bn_forward_right, bn_forward_functional), wrong=BN_FORWARD_WRONG),
    nb04.check_track_again: Answers(right=(track_again_right, _replace_layers), wrong=TRACK_WRONG),
    nb05.check_freeze_bn: Answers(right=(freeze_with_partial, freeze_by_conversion), wrong=FREEZE_WRONG),
    nb05.check_name_filter_errors: Answers(right=(name_filter_errors, name_filter_errors_by_takewhile),
                                           wrong=NAME_FILTER_WRONG),
}
