"""reidlab.lessons.toy: the small classification world of the BN notebooks (02-05)."""
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from reidlab.lessons.toy import (
    DEFAULT_NOISE, PATTERNS, STANDARD_TRAINING, SmallBNNet, accuracy, make_toy_images, mean_ci95, standard_net,
    train_classifier,
)


def test_same_seed_same_images_other_seed_other_images():
    a, b, c = (make_toy_images(64, seed=s) for s in (3, 3, 4))
    assert torch.equal(a.tensors[0], b.tensors[0]) and torch.equal(a.tensors[1], b.tensors[1])
    assert not torch.equal(a.tensors[0], c.tensors[0])


def test_global_random_state_is_untouched():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_toy_images(16, seed=0)
    SmallBNNet(seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_shapes_dtypes_and_balanced_labels():
    x, y = make_toy_images(60, num_classes=6, size=12).tensors
    assert x.shape == (60, 3, 12, 12) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    assert torch.bincount(y, minlength=6).tolist() == [10] * 6
    assert len(PATTERNS) == 6


def test_style_is_a_per_channel_affine_map_of_the_same_images():
    plain = make_toy_images(32, seed=5).tensors
    shift, gain = torch.tensor([1.0, -0.5, 0.2]), torch.tensor([2.0, 0.5, 1.5])
    styled = make_toy_images(32, seed=5, shift=shift, gain=gain).tensors
    assert torch.equal(plain[1], styled[1])  # the class does not change
    torch.testing.assert_close(styled[0], gain.view(3, 1, 1) * plain[0] + shift.view(3, 1, 1))
    # and it moves the per-channel statistics a BN layer would see
    means = styled[0].mean(dim=(0, 2, 3)) - plain[0].mean(dim=(0, 2, 3))
    assert (means - shift).abs().max() < 0.3


def test_same_seed_same_net():
    a, b, c = SmallBNNet(seed=1), SmallBNNet(seed=1), SmallBNNet(seed=2)
    for (ka, va), (_, vb), (_, vc) in zip(a.state_dict().items(), b.state_dict().items(), c.state_dict().items()):
        assert torch.equal(va, vb), ka
    assert not torch.equal(a.head[0].weight, c.head[0].weight)


def test_net_options_add_the_layers_they_name():
    net = SmallBNNet(num_classes=5, width=4, head_bn=True, dropout=0.3)
    kinds = [type(m) for m in net.head]
    assert kinds == [nn.BatchNorm1d, nn.Dropout, nn.Linear]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 3
    assert net(torch.randn(4, 3, 16, 16)).shape == (4, 5)


@pytest.fixture
def one_thread():
    """The toy net is tiny: one thread is as fast and does not fight other processes for cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_training_is_deterministic_and_learns_the_task(one_thread):
    train, test = make_toy_images(1024, seed=0, noise=1.0), make_toy_images(512, seed=1, noise=1.0)  # an easy world
    runs = []
    for _ in range(2):
        net = SmallBNNet(seed=0)
        runs.append((train_classifier(net, train, epochs=2, seed=0), net))
    assert runs[0][0] == runs[1][0]
    assert len(runs[0][0]) == 2 * (1024 // 64)
    net = runs[0][1]
    assert net.training  # left in train mode: eval() is the caller's choice
    before = accuracy(SmallBNNet(seed=0).eval(), test)
    net.eval()
    after = accuracy(net, test)
    assert before < 0.5 < 0.9 < after
    assert sum(runs[0][0][-5:]) / 5 < 0.5 * runs[0][0][0]


def test_the_standard_training_stays_off_the_ceiling(one_thread):
    """The default noise is tuned so that the standard training reaches about 0.9, not 1.0: a network
    at 100 % would hide what BN misuse costs (notebooks 02-04 compare accuracies and logits)."""
    net, losses, train_set, test_set = standard_net("ci")
    n_train, epochs = STANDARD_TRAINING["ci"]
    assert len(train_set) == n_train and len(test_set) == 1000 and len(losses) == epochs * (n_train // 64)
    assert net.training, "left in train mode, like train_classifier"
    acc = accuracy(net.eval(), test_set)
    assert 0.85 < acc < 0.97, acc
    assert acc > accuracy(SmallBNNet(seed=0).eval(), test_set) + 0.5
    easy = make_toy_images(64, seed=1, noise=1.0).tensors[0]
    assert torch.equal(make_toy_images(64, seed=1).tensors[0], make_toy_images(64, seed=1, noise=DEFAULT_NOISE).tensors[0])
    assert not torch.equal(easy, make_toy_images(64, seed=1).tensors[0])
    with pytest.raises(ValueError, match="profile"):
        standard_net("desktop")


def test_annealing_lets_the_learning_rate_fall_to_zero(one_thread):
    """anneal=True (the default) scales each step's learning rate by 1 - step / total: the first step is the
    constant-rate run's, the later ones differ."""
    data = make_toy_images(256, seed=0)
    constant = train_classifier(SmallBNNet(seed=0, width=4), data, epochs=2, anneal=False, seed=0)
    annealed = train_classifier(SmallBNNet(seed=0, width=4), data, epochs=2, seed=0)
    assert constant[0] == annealed[0] and constant[1:] != annealed[1:]


def test_other_shuffling_seed_gives_another_run():
    data = make_toy_images(256, seed=0)
    a = train_classifier(SmallBNNet(seed=0, width=4), data, epochs=1, seed=0)
    b = train_classifier(SmallBNNet(seed=0, width=4), data, epochs=1, seed=1)
    assert a[0] != b[0]


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_accuracy_leaves_the_mode_alone(mode):
    net = SmallBNNet(width=4, seed=0)
    getattr(net, mode)()
    data = make_toy_images(64, seed=0)
    accuracy(net, data, batch_size=16)
    assert all(m.training == (mode == "train") for m in net.modules())


def test_accuracy_in_train_mode_updates_running_stats_in_eval_mode_does_not():
    data = make_toy_images(64, seed=0, shift=2.0)
    net = SmallBNNet(width=4, seed=0).eval()
    accuracy(net, data)
    bn = net.features[0][1]
    assert torch.equal(bn.running_mean, torch.zeros(4)) and int(bn.num_batches_tracked) == 0
    net.train()
    accuracy(net, data, batch_size=16)
    assert int(bn.num_batches_tracked) == 4 and not torch.equal(bn.running_mean, torch.zeros(4))


def test_accuracy_matches_a_hand_count_and_accepts_a_loader():
    class Fixed(nn.Module):
        def forward(self, x):  # predicts class 0 for every image
            return torch.stack([torch.ones(len(x)), torch.zeros(len(x))], dim=1)

    data = TensorDataset(torch.zeros(10, 1), torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1, 1]))
    assert accuracy(Fixed(), data, batch_size=3) == pytest.approx(0.3)
    assert accuracy(Fixed(), DataLoader(data, batch_size=4)) == pytest.approx(0.3)


def test_mean_ci95_is_students_t_interval():
    mean, half = mean_ci95([1.0, 2.0, 3.0])  # sd 1, n 3: t(0.975, 2) = 4.303
    assert mean == pytest.approx(2.0) and half == pytest.approx(4.303 / 3**0.5, rel=1e-4)
    mean, half = mean_ci95([0.9, 0.9, 0.9, 0.9, 0.9])
    assert mean == pytest.approx(0.9) and half == pytest.approx(0.0, abs=1e-12)
    data = torch.tensor([0.81, 0.88, 0.87, 0.75, 0.75])  # t(0.975, 4) = 2.776
    mean, half = mean_ci95(data.tolist())
    assert half == pytest.approx(2.776 * data.std().item() / 5**0.5, rel=1e-4)
    for bad in ([1.0], [1.0] * 40, [1.0, float("nan")]):
        with pytest.raises(ValueError):
            mean_ci95(bad)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: make_toy_images(0), "n must"),
        (lambda: make_toy_images(10, num_classes=7), "num_classes"),
        (lambda: make_toy_images(10, size=4), "size"),
        (lambda: make_toy_images(10, shift=[1.0, 2.0]), "shift"),
        (lambda: make_toy_images(10, gain=0.0), "gain"),
        (lambda: make_toy_images(10, gain=float("nan")), "gain"),
        (lambda: make_toy_images(10, noise=-1.0), "noise"),
        (lambda: SmallBNNet(num_classes=1), "num_classes"),
        (lambda: SmallBNNet(width=0), "width"),
        (lambda: SmallBNNet(dropout=1.0), "dropout"),
        (lambda: train_classifier(SmallBNNet(width=2), make_toy_images(8), epochs=0), "epochs"),
        (lambda: train_classifier(SmallBNNet(width=2), make_toy_images(8), epochs=1, batch_size=1), "batch of one"),
        (lambda: train_classifier(SmallBNNet(width=2), make_toy_images(8), epochs=1, batch_size=16), "fewer than"),
        (lambda: train_classifier(SmallBNNet(width=2), make_toy_images(8), epochs=1, batch_size=4, lr=0), "lr"),
        (lambda: accuracy(SmallBNNet(width=2), make_toy_images(8), batch_size=0), "batch_size"),
        (lambda: accuracy(SmallBNNet(width=2), []), "no batches"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()
