"""No run lost, no fault silent: the trainer, the memory and the cache under bad input, kills,
full disks and concurrent runs. Command-line cases run ``python -m reidlab.ecn`` in a subprocess
and check its exit code and its one-line message."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import reidlab.files
from reidlab.ecn import ECNConfig, load_checkpoint, main, train_ecn, train_source
from reidlab.ecn.pretrain import state_digest
from reidlab.ecn.rundir import run_lock
from reidlab.cache import cache_path, load_or_train
from reidlab.memory import InvarianceLoss
from reidlab.models import ReIDNet

from ecn_micro import CLI_SMALL, ROOT, SMALL, make_worlds, run_cli


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    return make_worlds(tmp_path_factory.mktemp("worlds"))


@pytest.fixture(scope="module")
def finished(worlds, tmp_path_factory):
    """A finished 3-epoch run (in-process), copied by the tests that need one."""
    out = tmp_path_factory.mktemp("finished")
    assert main(["--source", worlds["source"], "--target", worlds["target"], "--out", str(out), *CLI_SMALL]) == 0
    return out


def _args(worlds, out, *extra):
    return ["--source", worlds["source"], "--target", worlds["target"], "--out", str(out), *CLI_SMALL, *extra]


def _error(proc) -> str:
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr[-2000:])
    return lines[0]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != ".lock"}


# --- 1. --no-resume checks everything first; an empty --out is refused ---------------------------


def test_no_resume_with_a_typo_keeps_the_finished_run(worlds, finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = _files(out)
    proc = run_cli("--source", str(tmp_path / "typo"), "--target", worlds["target"], "--out", str(out), *CLI_SMALL,
                   "--no-resume")
    assert "dataset folder not found" in _error(proc)
    assert _files(out) == before  # nothing deleted, nothing moved
    # a valid --no-resume starts over and moves the old run aside instead of deleting it
    proc = run_cli(*_args(worlds, out, "--no-resume", "--epochs", "1", "--max-steps", "1"))
    assert proc.returncode == 0, proc.stderr
    aside = [p for p in out.iterdir() if p.name.startswith("replaced-")]
    assert len(aside) == 1 and _files(aside[0]) == before
    assert "note: the previous run" in proc.stderr and len(json.loads((out / "history.json").read_text())) == 1


@pytest.mark.parametrize("extra, message", [
    (["--pretrained", "BAD"], "holds a Tensor"),  # the file is only read when the model is built
    (["--knn", "1000"], "knn must be in"),       # the memory checks k against its number of slots
])
def test_no_resume_checks_the_weights_and_the_memory_before_moving_the_old_run(worlds, finished, tmp_path,
                                                                               extra, message):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = _files(out)
    if "BAD" in extra:
        torch.save(torch.zeros(3), tmp_path / "bad.pt")
        extra = ["--pretrained", str(tmp_path / "bad.pt")]
    proc = run_cli(*_args(worlds, out, "--no-resume", *extra))
    assert message in _error(proc)
    assert _files(out) == before and not any(p.name.startswith("replaced-") for p in out.iterdir())


def _weights_file(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    torch.save(ReIDNet(3, "resnet18").base.state_dict(), path)
    return path


def test_config_and_checkpoint_name_the_backbone_the_run_started_from(worlds, tmp_path):
    weights = _weights_file(tmp_path / "backbone.pt", seed=1)
    started = state_digest(torch.load(weights, weights_only=True))
    out, cfg = tmp_path / "run", ECNConfig.from_profile(
        "ci", source=worlds["source"], target=worlds["target"], **{**SMALL, "pretrained": str(weights)})

    def kill(epoch, *_):
        raise KeyboardInterrupt  # the run dies after its first checkpoint

    with pytest.raises(KeyboardInterrupt):
        train_ecn(cfg, out, progress=False, callback=kill)
    assert json.loads((out / "config.json").read_text())["backbone_digest"] == started
    assert load_checkpoint(out / "checkpoint.pt")["backbone_digest"] == started
    # the weights file changes (a cache rebuilt elsewhere); the resumed run still names where it started
    _weights_file(weights, seed=2)
    assert state_digest(torch.load(weights, weights_only=True)) != started
    res = train_ecn(cfg, out, progress=False)
    assert res.backbone_digest == started == load_checkpoint(out / "checkpoint.pt")["backbone_digest"]
    record = json.loads((out / "config.json").read_text())
    assert record["backbone_digest"] == started and ECNConfig.from_dict(record) == cfg


def test_sigterm_stops_like_ctrl_c_and_the_run_resumes(worlds, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "reidlab.ecn", *_args(worlds, out, "--epochs", "40")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    deadline = time.monotonic() + 240
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)  # a scheduler's stop, or `kill`
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted; rerun the same command to resume" in err and "Traceback" not in err
    epoch = load_checkpoint(out / "checkpoint.pt")["epoch"]
    assert 0 <= epoch < 39
    done = run_cli(*_args(worlds, out, "--epochs", "40"))  # the same command resumes and finishes
    assert done.returncode == 0, done.stderr[-2000:]
    history = load_checkpoint(out / "checkpoint.pt")["history"]
    assert [r["epoch"] for r in history] == list(range(40))


def test_an_empty_out_is_refused(worlds, tmp_path):
    proc = run_cli("--source", worlds["source"], "--target", worlds["target"], "--out", "", *CLI_SMALL, cwd=tmp_path)
    assert "output folder is empty" in _error(proc)
    assert list(tmp_path.iterdir()) == []  # nothing written into the current directory


def test_an_out_that_is_a_file_or_under_a_file_is_refused(worlds, tmp_path):
    (tmp_path / "f").write_text("x")
    assert "is a file, not a folder" in _error(run_cli(*_args(worlds, tmp_path / "f")))
    assert "a part of its path is a file" in _error(run_cli(*_args(worlds, tmp_path / "f" / "run")))


# --- 2. the last epoch is saved before it is evaluated ----------------------------------------------


def test_a_failing_evaluation_loses_no_training(worlds, tmp_path):
    target = tmp_path / "target"
    shutil.copytree(worlds["target"], target)
    broken = next(p for p in sorted((target / "bounding_box_test").glob("*.jpg"))
                  if not p.name.startswith(("-1", "0000")))  # a real identity's image (junk is never read)
    good = broken.read_bytes()
    broken.write_bytes(b"")  # a zero-byte gallery image
    out = tmp_path / "run"
    args = ["--source", worlds["source"], "--target", str(target), "--out", str(out), *CLI_SMALL]
    message = _error(run_cli(*args))
    assert f"cannot read image {broken}" in message and "gallery split, bounding_box_test/" in message
    assert "the file is empty" in message
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["epoch"] == 2 and ckpt["metrics"] == {}  # the last epoch is trained and saved
    assert not (out / "metrics.json").exists() and len(json.loads((out / "history.json").read_text())) == 3
    saved = (out / "checkpoint.pt").read_bytes()
    broken.write_bytes(good)
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert (out / "checkpoint.pt").read_bytes() == saved  # not trained again, not even saved again: only evaluated
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rank1"] == json.loads((out / "history.json").read_text())[-1]["rank1"]
    assert f"target rank-1 {100 * metrics['rank1']:.1f}%" in proc.stdout
    again = run_cli(*args)  # now finished: returned as it is, nothing evaluated
    assert again.returncode == 0 and "nothing was trained or evaluated" in again.stderr
    assert json.loads((out / "metrics.json").read_text()) == metrics


def test_an_unreadable_training_image_is_named_through_worker_processes(worlds, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(worlds["source"], source)
    broken = sorted((source / "bounding_box_train").glob("*.jpg"))[3]
    broken.write_bytes(broken.read_bytes()[:200])  # a truncated JPEG
    proc = run_cli("--source", str(source), "--target", worlds["target"], "--out", str(tmp_path / "run"),
                   *CLI_SMALL, "--num-workers", "2")
    message = _error(proc)
    assert f"cannot read image {broken}" in message and "train split, bounding_box_train/" in message
    assert "Traceback" not in proc.stderr


# --- 3. one run per folder ------------------------------------------------------------------------


def test_a_second_run_on_the_same_folder_is_refused(worlds, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with run_lock(out):
        message = _error(run_cli(*_args(worlds, out)))
    assert f"{out} is in use by another run (pid" in message
    assert not (out / "checkpoint.pt").exists()
    assert run_cli(*_args(worlds, out, "--epochs", "1", "--max-steps", "1")).returncode == 0  # free again


# --- 4. settings that change the batches cannot change on resume ------------------------------------


def test_resuming_with_other_data_loader_workers_is_refused(worlds, tmp_path):
    out = tmp_path / "run"

    def stop(epoch, *_):
        raise KeyboardInterrupt

    config = ECNConfig.from_profile("ci", source=worlds["source"], target=worlds["target"], **SMALL)
    with pytest.raises(KeyboardInterrupt):
        train_ecn(config, out, progress=False, callback=stop)
    message = _error(run_cli(*_args(worlds, out, "--num-workers", "1")))
    assert "num_workers (0 in the checkpoint, 1 now)" in message


# --- 5. every number finite and in range -------------------------------------------------------------


@pytest.mark.parametrize(
    "flag, value, message",
    [("--beta", "inf", "beta must be a finite number > 0, got inf"),
     ("--weight-decay", "nan", "weight_decay must be a finite number >= 0, got nan"),
     ("--momentum", "1.5", "momentum must be a number in [0, 1), got 1.5"),
     ("--gamma", "0", "gamma must be a number in (0, 1], got 0.0"),
     ("--lr-new", "-0.1", "lr_new must be a finite number >= 0, got -0.1")],
)
def test_non_finite_or_out_of_range_settings_are_refused(worlds, tmp_path, flag, value, message):
    assert message in _error(run_cli(*_args(worlds, tmp_path / "run", flag, value)))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


# --- 6. a neighbourhood term that never starts --------------------------------------------------------


def test_a_knn_target_that_never_starts_is_announced(worlds, tmp_path):
    proc = run_cli(*_args(worlds, tmp_path / "run", "--epochs", "2", "--knn-start", "2", "--max-steps", "1"))
    assert proc.returncode == 0, proc.stderr
    assert ("warning: invariance E+C+N but the kNN target starts at epoch 2 of a 2-epoch run (epochs 0..1): "
            "it never starts, so this run trains E+C") in proc.stderr


# --- 7. weights of another architecture -----------------------------------------------------------------


@pytest.mark.parametrize("file_arch, arch", [("resnet18", "resnet34"), ("resnet34", "resnet18")])
def test_a_weights_file_of_another_architecture_is_refused(tmp_path, file_arch, arch):
    """resnet18 -> resnet34 leaves tensors random; resnet34 -> resnet18 fits every tensor but drops whole blocks."""
    path = tmp_path / f"{file_arch}.pth"
    torch.save(ReIDNet(5, file_arch, num_features=0, freeze=None).base.state_dict(), path)
    with pytest.raises(ValueError, match="another network"):
        ReIDNet(5, arch, pretrained=str(path), num_features=0)
    ReIDNet(5, file_arch, pretrained=str(path), num_features=0)  # its own architecture loads


# --- 8. the memory cannot be poisoned -------------------------------------------------------------------


def test_a_nan_feature_never_enters_the_memory():
    crit = InvarianceLoss(6, 4, knn=0)
    feats = F.normalize(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    crit(feats.clone().requires_grad_(), torch.tensor([0, 1, 2]), 0).backward()
    before = crit.memory.clone()
    bad = feats.clone()
    bad[1, 2] = float("nan")
    loss = crit(bad.requires_grad_(), torch.tensor([3, 4, 5]), 1)
    assert not torch.isfinite(loss)  # the trainer stops on it
    loss.backward()
    assert torch.isfinite(crit.memory).all()
    assert torch.equal(crit.memory[4], before[4]) and crit.memory[[3, 5]].abs().sum() > 0  # only that row skipped


def test_all_zero_features_at_epoch_zero_leave_zero_rows_not_nan():
    crit = InvarianceLoss(4, 3, knn=0)
    crit(torch.zeros(2, 3, requires_grad=True), torch.tensor([0, 1]), 0).backward()
    assert torch.equal(crit.memory, torch.zeros(4, 3))
    feats = F.normalize(torch.ones(2, 3), dim=1).requires_grad_()
    loss = crit(feats, torch.tensor([0, 1]), 1)
    loss.backward()
    assert torch.isfinite(loss) and torch.allclose(crit.memory[:2].norm(dim=1), torch.ones(2))


# --- 9. load_or_train caches only what it can load again ---------------------------------------------


def test_load_or_train_refuses_what_it_could_not_load_again(tmp_path):
    with pytest.raises(TypeError, match=r"result\['curve'\] is a numpy.ndarray"):
        load_or_train("bad", lambda: {"w": torch.ones(2), "curve": np.zeros(3)}, root=tmp_path)
    assert not cache_path("bad", root=tmp_path).exists()


def test_a_corrupt_cache_is_named_and_trained_again(tmp_path):
    path = cache_path("toy", {"a": 1}, root=tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x80\x02truncated")
    with pytest.warns(UserWarning, match=f"cache file {path} cannot be read"):
        assert load_or_train("toy", lambda: {"n": 1}, {"a": 1}, root=tmp_path) == {"n": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_or_train("toy", lambda: {"n": 2}, {"a": 1}, root=tmp_path) == {"n": 1}  # rewritten and read


# --- one-line errors where tracebacks were --------------------------------------------------------------


def test_a_full_disk_keeps_the_last_good_checkpoint(worlds, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    saves = []
    real_save = torch.save

    def save(obj, f, *a, **k):
        saves.append(1)
        if len(saves) > 1:  # epoch 0's checkpoint is written, then the disk fills up
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(reidlab.files.torch, "save", save)
    assert main(_args(worlds, out)) == 2
    err = capsys.readouterr().err
    assert f"error: disk full while writing {out / 'checkpoint.pt'}; the previous version is kept" in err
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 0
    assert not list(out.glob("*.tmp"))


def test_a_checkpoint_with_missing_keys_or_wrong_shapes_says_which(worlds, finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    ckpt = load_checkpoint(out / "checkpoint.pt")
    del ckpt["optimizer"]
    torch.save(ckpt, out / "checkpoint.pt")
    assert "is incomplete: it lacks optimizer" in _error(run_cli(*_args(worlds, out)))
    ckpt = load_checkpoint(finished / "checkpoint.pt")
    ckpt["model"]["feat.weight"] = ckpt["model"]["feat.weight"][:, :5]
    ckpt["model"]["classifier.weight"] = ckpt["model"]["classifier.weight"][:3]
    torch.save(ckpt, out / "checkpoint.pt")
    message = _error(run_cli(*_args(worlds, out)))
    assert "does not fit this run's model" in message  # PyTorch's whole message, on one line:
    assert "size mismatch for feat.weight" in message and "size mismatch for classifier.weight" in message


def test_temporaries_of_a_killed_write_are_removed_and_writes_are_fsynced(worlds, finished, tmp_path, monkeypatch):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    stale = out / "checkpoint.pt.k3x9a1.tmp"
    stale.write_bytes(b"half a checkpoint")
    mine = out / "notes.txt.tmp"
    mine.write_text("not ours")
    synced = []
    real_fsync = reidlab.files.os.fsync
    monkeypatch.setattr(reidlab.files.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    config = ECNConfig.from_profile("ci", source=worlds["source"], target=worlds["target"], **SMALL)
    train_ecn(config, out, progress=False)
    assert not stale.exists() and mine.exists()  # only the run's own temporaries are touched
    assert synced  # the finished run rewrote its logs through the atomic writer, with fsync


def test_a_batch_of_one_sample_is_skipped_with_a_reason():
    images = torch.randn(17, 3, 8, 8)
    labels = torch.arange(17) % 4
    loader = DataLoader(TensorDataset(images, labels), batch_size=8)  # 8 + 8 + 1
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 4))
    with pytest.warns(UserWarning, match="skipped a batch of 1 sample .* drop_last=True"):
        hist = train_source(model, loader, epochs=1, lr_backbone=0.1, lr_new=0.1, progress=False)
    assert len(hist["step_loss"]) == 2


def test_an_out_that_cannot_be_written_is_refused(worlds, tmp_path, monkeypatch, capsys):
    """Simulated (the tests may run as root, who can write anywhere): the probe write is denied."""
    import reidlab.ecn.rundir as rundir

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rundir.tempfile, "TemporaryFile", denied)
    assert main(_args(worlds, tmp_path / "run")) == 2
    assert f"error: cannot write to output folder {tmp_path / 'run'}: permission denied" in capsys.readouterr().err
