import errno
import io

import pytest
import torch

import reidlab.files
from reidlab.files import DiskFullError, atomic_save
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


def test_a_disk_that_fills_during_torch_save_is_named_and_the_old_file_kept(tmp_path, monkeypatch):
    """torch.save turns the failed write into RuntimeError('unexpected pos ...'): still 'disk full'."""
    target = tmp_path / "checkpoint.pt"
    atomic_save({"epoch": 0}, target)
    real_fdopen = reidlab.files.os.fdopen

    class Fills(io.RawIOBase):
        def __init__(self, fh):
            self.fh, self.written = fh, 0

        def writable(self):
            return True

        def write(self, b):
            self.written += len(b)
            if self.written > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(b)

        def close(self):
            self.fh.close()

    monkeypatch.setattr(reidlab.files.os, "fdopen", lambda fd, mode: Fills(real_fdopen(fd, mode)))
    with pytest.raises(DiskFullError, match=f"disk full while writing {target}"):
        atomic_save({"epoch": 1, "weights": torch.randn(10_000)}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"epoch": 0} and list(tmp_path.iterdir()) == [target]
