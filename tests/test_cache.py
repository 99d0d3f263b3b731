import torch

from reidlab.files import atomic_save
from reidlab.cache import cache_path, load_or_train


def test_trains_once_then_loads(tmp_path):
    calls = []

    def train():
        calls.append(1)
        return {"weights": torch.arange(3.0), "acc": 0.5, "curve": [1.0, 0.5]}

    a = load_or_train("toy", train, {"lr": 0.1}, root=tmp_path)
    b = load_or_train("toy", train, {"lr": 0.1}, root=tmp_path)
    assert len(calls) == 1
    assert torch.equal(a["weights"], b["weights"]) and b["acc"] == 0.5 and b["curve"] == [1.0, 0.5]


def test_changed_key_or_retrain_trains_again(tmp_path):
    calls = []

    def train():
        calls.append(1)
        return {"n": len(calls)}

    load_or_train("toy", train, {"lr": 0.1}, root=tmp_path)
    assert load_or_train("toy", train, {"lr": 0.2}, root=tmp_path) == {"n": 2}
    assert load_or_train("toy", train, {"lr": 0.1}, root=tmp_path, retrain=True) == {"n": 3}
    assert cache_path("toy", {"lr": 0.1}, root=tmp_path) != cache_path("toy", {"lr": 0.2}, root=tmp_path)


def test_atomic_save_leaves_no_temporary_files(tmp_path):
    atomic_save({"a": torch.ones(2)}, tmp_path / "sub" / "f.pt")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["f.pt"]
