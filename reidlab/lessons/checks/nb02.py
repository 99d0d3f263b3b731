"""Checkers of notebook 02 (``notebooks/02_train_vs_eval.ipynb``): train vs eval mode.

Imported by the notebook as ``from reidlab.lessons.checks import nb02 as checks``.
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch

from reidlab.lessons.checks import ExerciseError, checker, fail, passed
from reidlab.lessons.toy import SmallBNNet, accuracy, make_toy_images

__all__ = ["ExerciseError", "check_depends_on_batch", "check_evaluate_fixed"]


def _bn_buffers(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b.detach().clone() for name, b in model.named_buffers() if name.rsplit(".", 1)[-1].startswith(("running_", "num_batches"))]


def _modes(model: torch.nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


@checker
def check_evaluate_fixed(fn: Callable[..., Any]) -> None:
    """Notebook 02: ``fn(model, dataset)`` must return eval-mode accuracy and leave the model as it found it.

    Tried on a small BN network (:class:`reidlab.lessons.toy.SmallBNNet`) in train mode and in eval
    mode; the running statistics must not move, the mode must be restored, and the answer
    must not depend on the batch size the function picks.
    """
    data = make_toy_images(96, seed=11, shift=0.7, gain=1.6)  # a shifted domain: train-mode stats differ a lot
    base = SmallBNNet(width=4, seed=3)
    with torch.no_grad():  # give the running stats values that differ from any batch's
        for m in base.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                assert m.running_mean is not None and m.running_var is not None  # SmallBNNet's layers track statistics
                m.running_mean.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
                m.running_var.uniform_(0.5, 2.0, generator=torch.Generator().manual_seed(2))
    expected = accuracy(copy.deepcopy(base).eval(), data)
    for start_mode in (True, False):
        model = copy.deepcopy(base).train(start_mode)
        before = _bn_buffers(model)
        got = fn(model, data)
        if got is None:
            fail("the function returned None: return the accuracy (a float between 0 and 1)")
        if isinstance(got, torch.Tensor) and got.numel() == 1:
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


class _EachSampleAlone(torch.nn.Module):
    """Runs its BN layer on each sample alone: a BN layer in train mode whose output cannot depend on the batch."""

    def __init__(self, bn: torch.nn.Module) -> None:
        super().__init__()
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.bn(sample.unsqueeze(0)) for sample in x])


class _BatchCentering(torch.nn.Module):
    """Subtracts the batch mean: no BN layer, yet every output depends on the whole batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(0, keepdim=True)


def _probe_nets(x: torch.Tensor) -> list[tuple[torch.nn.Module, bool, bool, str]]:
    """``(net, train mode?, expected answer, description)``: first the obvious cases, then networks whose
    structure (BN layers, train mode) gives the wrong answer, so that only a measurement is right."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        bn_net = SmallBNNet(width=4, seed=0)
        plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(2))
        plain(x)  # materialise the lazy layer
        untracked = copy.deepcopy(bn_net)
        for m in untracked.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):  # as track_running_stats=False builds it
                m.track_running_stats = False
                m.running_mean = m.running_var = m.num_batches_tracked = None
        head = [torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)]
        alone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), _EachSampleAlone(torch.nn.BatchNorm2d(4)), *copy.deepcopy(head))
        centred = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), _BatchCentering(), *head)
    return [(bn_net, True, True, "a BN network in train mode"), (bn_net, False, False, "a BN network in eval mode"),
            (plain, True, False, "a network without BN in train mode"),
            (untracked, False, True, "a BN network built with track_running_stats=False, in eval mode"),
            (alone, True, False, "a network in train mode whose BN layer normalises each sample on its own"),
            (centred, True, True, "a network without BN whose layer subtracts the batch mean")]


@checker
def check_depends_on_batch(fn: Callable[[torch.nn.Module, torch.Tensor], Any]) -> None:
    """Notebook 02: ``fn(model, x)`` must say whether ``model(x)[0]`` changes when the rest of the batch does.

    Tried on a BN network in train mode (True), the same network in eval mode (False) and a
    network without BN in train mode (False), then on networks whose structure misleads: an
    untracked BN network in eval mode (True), a train-mode BN layer applied to each sample alone
    (False) and a network without BN that subtracts the batch mean (True). The function must not
    change the model's running statistics or mode.
    """
    x = make_toy_images(8, seed=4).tensors[0]
    for k, (net, mode, expected, what) in enumerate(_probe_nets(x)):
        model = copy.deepcopy(net).train(mode)
        before = _bn_buffers(model)
        got = fn(model, x.clone())
        if got is None:
            fail("the function returned None: return True or False")
        if isinstance(got, torch.Tensor) and got.numel() == 1:
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
        if got == expected:
            continue
        misled = (" Whether the model has BN layers, or is in train mode, does not decide it: measure."
                  if k >= 3 else "")
        if expected:
            fail(
                f"for {what} the answer is True: compare the output for x[0] in two batches that share "
                f"x[0] but differ elsewhere (e.g. x and torch.cat([x[:1], x[1:].flip(0) * 2])).{misled}"
            )
        fail(
            f"for {what} the answer is False: did you compare with a tolerance (torch.allclose)? "
            f"Or change x[0] itself instead of only its batch-mates?{misled}"
        )
    passed("output depends on the batch in train mode with BN, not in eval mode or without BN")
