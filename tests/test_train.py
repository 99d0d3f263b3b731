"""train_source: the supervised source baseline's loop (notebook 08)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from reidlab.models import ReIDNet
from reidlab.ecn import split_batch, train_source


def _loader(n=16, classes=4, h=32, w=16, seed=0, batch_size=8):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    # each class a different mean colour, so there is something to learn
    images = torch.randn(n, 3, h, w, generator=g) + labels.view(-1, 1, 1, 1).float() * 0.5
    ds = TensorDataset(images, labels, torch.zeros(n, dtype=torch.long), torch.arange(n))  # like ImageDataset
    return DataLoader(ds, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


def _run(seed=0, epochs=4):
    torch.manual_seed(seed)
    model = ReIDNet(4, "resnet18", num_features=32, dropout=0.0, freeze=None)
    hist = train_source(model, _loader(), epochs=epochs, lr_backbone=0.01, lr_new=0.1, progress=False)
    return model, hist


def test_a_few_epochs_lower_the_loss():
    _, hist = _run()
    assert len(hist["loss"]) == 4 and len(hist["step_loss"]) == 8
    assert hist["loss"][-1] < 0.7 * hist["loss"][0]
    assert hist["acc"][-1] >= hist["acc"][0]


def test_deterministic_on_cpu_for_a_seed():
    m1, h1 = _run(seed=0, epochs=2)
    m2, h2 = _run(seed=0, epochs=2)
    assert h1 == h2
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(a, b), k
    _, h3 = _run(seed=1, epochs=2)
    assert h3["step_loss"] != h1["step_loss"]


def test_step_decay_and_frozen_layers_untouched():
    torch.manual_seed(0)
    model = ReIDNet(4, "resnet18", num_features=16)  # ECN freezing: conv1..layer2
    frozen = copy.deepcopy(model.base.layer2.state_dict())
    hist = train_source(model, _loader(), epochs=3, lr_backbone=0.01, lr_new=0.1, step_size=2, progress=False)
    assert hist["lr"] == pytest.approx([0.1, 0.1, 0.01])
    for k, v in model.base.layer2.state_dict().items():
        assert torch.equal(v, frozen[k]), k  # weights AND running statistics
    assert not torch.equal(model.base.layer3[0].bn1.running_mean, torch.zeros_like(model.base.layer3[0].bn1.running_mean))


def test_label_smoothing_is_the_loss_used():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 16, 4))
    loader = _loader(batch_size=16)
    img, pid = next(iter(loader))[:2]
    expected = F.cross_entropy(model(img), pid, label_smoothing=0.2).item()
    plain = F.cross_entropy(model(img), pid).item()
    hist = train_source(model, loader, epochs=1, lr_backbone=0.0, lr_new=0.01, label_smoothing=0.2, progress=False)
    assert hist["step_loss"][0] == pytest.approx(expected, rel=1e-5)
    assert abs(expected - plain) > 1e-3


def test_split_batch_forms_and_errors():
    x, y = torch.zeros(2, 3, 4, 4), torch.tensor([0, 1])
    assert split_batch((x, y, y, y))[1] is y
    assert split_batch({"img": x, "pid": y})[0] is x
    with pytest.raises(TypeError, match="training batch"):
        split_batch(x)


def test_bad_settings_and_nan_loss():
    with pytest.raises(ValueError, match="epochs"):
        train_source(nn.Linear(2, 2), [], epochs=0, lr_backbone=0.1, lr_new=0.1)
    with pytest.raises(ValueError, match="no batch"):
        train_source(nn.Linear(2, 2), [], epochs=1, lr_backbone=0.1, lr_new=0.1, progress=False)
    bad = [(torch.full((2, 2), float("nan")), torch.tensor([0, 1]))]
    with pytest.raises(FloatingPointError, match="loss is nan"):
        train_source(nn.Linear(2, 2), bad, epochs=1, lr_backbone=0.1, lr_new=0.1, progress=False)


def test_source_and_ecn_training_step_the_lr_at_the_same_epoch():
    """One scaling rule (ECN's epoch 40 of 60, rounded): train_source and ECNConfig agree for every length."""
    from reidlab.ecn import ECNConfig, scaled_schedule

    for epochs in (1, 2, 3, 5, 8, 12, 60):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 16, 4))
        hist = train_source(model, _loader(), epochs=epochs, lr_backbone=0.1, lr_new=0.1, progress=False)
        decay = scaled_schedule(epochs)[1]
        assert hist["lr"] == pytest.approx([0.1 if e < decay else 0.01 for e in range(epochs)]), epochs
        assert ECNConfig(epochs=epochs).decay_epoch == decay
    assert scaled_schedule(2) == (1, 1) and scaled_schedule(60) == (5, 40)  # ceil(2/3 * 2) = 2 was the old rule


def test_a_late_check_still_names_the_first_non_finite_step():
    """With a check every few steps (what CUDA does, to avoid a GPU sync per step) the error names the step."""
    from reidlab.ecn import run_epoch
    from reidlab.ecn.loop import make_optimizer

    model = nn.Linear(2, 2)
    good = (torch.ones(2, 2), torch.tensor([0, 1]))
    bad = (torch.full((2, 2), float("nan")), torch.tensor([0, 1]))
    opt = make_optimizer(model, lr_backbone=0.1, lr_new=0.1)
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 0, step 1 \(source nan\)"):
        run_epoch(model, opt, [good, bad, good, good, good], device=torch.device("cpu"), check_every=3)
    with pytest.raises(FloatingPointError, match="step 4"):  # the tail after the last full check is checked too
        run_epoch(nn.Linear(2, 2), opt, [good, good, good, good, bad], device=torch.device("cpu"), check_every=3)
