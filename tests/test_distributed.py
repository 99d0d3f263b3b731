"""BatchNorm and ECN across processes, on the CPU with gloo: SyncBN equals BN over the global batch
(the conversion picks PyTorch's layer only on CUDA with NCCL), the exemplar memory stays identical
on every process and equals one process's update on the concatenated batch, and
``torchrun ... -m reidlab.ecn`` trains, writes once, and resumes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from reidlab.distributed import all_gather_cat, dist_timeout
from reidlab.ecn import ECNConfig
from reidlab.ecn.loop import ECNForward, make_optimizer, run_epoch
from reidlab.ecn.rundir import check_resumable, load_checkpoint
from reidlab.memory import InvarianceLoss, memory_update_
from reidlab.models import ReIDNet
import reidlab.syncbn
from reidlab.syncbn import SyncBatchNorm, _torch_layer_fits, convert_sync_bn

from ecn_micro import CLI_SMALL, ROOT, make_worlds
from gloo import spawn

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


# --- SyncBN = BN over the global batch --------------------------------------------------------------------


def _syncbn_rank(rank, world, x, weights, out):
    bn = SyncBatchNorm(3)
    bn.weight.data.copy_(weights[0])
    bn.bias.data.copy_(weights[1])
    part = x.chunk(world)[rank].clone().requires_grad_()
    y = bn(part)
    (y * torch.linspace(-1, 1, x.numel()).view_as(x).chunk(world)[rank]).sum().backward()  # an uneven loss
    torch.save({"y": y.detach(), "gx": part.grad, "gw": bn.weight.grad, "gb": bn.bias.grad,
                "rm": bn.running_mean, "rv": bn.running_var}, out / f"rank{rank}.pt")


def test_syncbn_equals_batchnorm_over_the_global_batch(tmp_path):
    """Outputs and gradients agree to float32 rounding (5e-6); the running statistics are identical on both ranks."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 4, 4, generator=g) * 2 + 1
    weights = (torch.rand(3, generator=g) + 0.5, torch.randn(3, generator=g))
    spawn(_syncbn_rank, x, weights, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    bn = nn.BatchNorm2d(3)
    bn.weight.data.copy_(weights[0])
    bn.bias.data.copy_(weights[1])
    xa = x.clone().requires_grad_()
    y = bn(xa)
    (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
    torch.testing.assert_close(torch.cat([r["y"] for r in ranks]), y.detach(), atol=5e-6, rtol=0)
    torch.testing.assert_close(torch.cat([r["gx"] for r in ranks]), xa.grad, atol=5e-6, rtol=0)
    # each rank holds the gradient of its own part of the loss; DDP averages them, so their sum is BN's
    torch.testing.assert_close(ranks[0]["gw"] + ranks[1]["gw"], bn.weight.grad, atol=5e-6, rtol=0)
    torch.testing.assert_close(ranks[0]["gb"] + ranks[1]["gb"], bn.bias.grad, atol=5e-6, rtol=0)
    for key, ref in (("rm", bn.running_mean), ("rv", bn.running_var)):
        assert torch.equal(ranks[0][key], ranks[1][key])
        torch.testing.assert_close(ranks[0][key], ref, atol=1e-6, rtol=0)


def test_sync_conversion_leaves_frozen_layers_and_the_state_dict_alone():
    net = ReIDNet(5, "resnet18", num_features=16, freeze="layer2").train()
    keys = list(net.state_dict())
    convert_sync_bn(net)
    synced = {n for n, m in net.named_modules() if isinstance(m, SyncBatchNorm)}
    assert synced and all(not n.startswith(("base.bn1", "base.layer1", "base.layer2")) for n in synced)
    assert "base.layer3.0.bn1" in synced and "feat_bn" in synced
    assert list(net.state_dict()) == keys  # checkpoints move freely between SyncBN and BN
    net.eval()
    out = net(torch.randn(2, 3, 32, 16))  # outside a process group, SyncBN is a plain BN
    assert out.shape == (2, 512)


def test_the_conversion_picks_torchs_layer_on_cuda_with_nccl_and_the_written_out_one_elsewhere():
    assert _torch_layer_fits(torch.device("cuda", 0), "nccl")
    assert _torch_layer_fits(torch.device("cuda", 1), "cpu:gloo,cuda:nccl")
    assert not _torch_layer_fits(torch.device("cpu"), "gloo")  # nn.SyncBatchNorm does not run on the CPU
    assert not _torch_layer_fits(torch.device("cpu"), "cpu:gloo,cuda:nccl")
    assert not _torch_layer_fits(torch.device("cuda", 0), "gloo")
    assert not _torch_layer_fits(torch.device("cuda", 0), None)  # outside a process group
    net = convert_sync_bn(nn.Sequential(nn.BatchNorm2d(3), nn.SyncBatchNorm(3)).train())  # CPU, no group
    assert [type(m) for m in net] == [SyncBatchNorm, SyncBatchNorm]


def test_where_torchs_layer_fits_the_conversion_gives_it_the_same_layers_parameters_and_flags(monkeypatch):
    """The CUDA + NCCL branch, with the device check answered yes on the CPU (no GPU here): which layers
    change, and what they keep; that PyTorch's layer then synchronises is PyTorch's to test."""
    ours = convert_sync_bn(ReIDNet(5, "resnet18", num_features=16, freeze="layer2").train())  # the CPU's layer
    net = ReIDNet(5, "resnet18", num_features=16, freeze="layer2").train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    grads = {n: p.requires_grad for n, p in net.named_parameters()}
    monkeypatch.setattr(reidlab.syncbn, "_torch_layer_fits", lambda device, backend: True)
    convert_sync_bn(net)
    theirs = {n for n, m in net.named_modules() if isinstance(m, nn.SyncBatchNorm)}
    assert theirs and theirs == {n for n, m in ours.named_modules() if isinstance(m, SyncBatchNorm)}
    assert not any(isinstance(m, SyncBatchNorm) for m in net.modules())
    assert all(net.get_submodule(n).training for n in theirs)
    assert list(net.state_dict()) == list(state)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert {n: p.requires_grad for n, p in net.named_parameters()} == grads


# --- the memory under DDP ------------------------------------------------------------------------------


def _memory_rank(rank, world, feats, idx, out):
    crit = InvarianceLoss(10, 4, knn=0)
    crit.gather = all_gather_cat
    crit.memory.copy_(F.normalize(torch.ones(10, 4), dim=1))
    mine = feats.chunk(world)[rank].clone().requires_grad_()
    crit(mine, idx.chunk(world)[rank], 3).backward()
    torch.save(crit.memory, out / f"memory{rank}.pt")


def test_the_memory_is_identical_on_every_process_and_equals_one_process_on_the_concatenated_batch(tmp_path):
    g = torch.Generator().manual_seed(1)
    feats = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    idx = torch.tensor([0, 7, 3, 7, 2, 0])  # slots 0 and 7 are written by both processes
    spawn(_memory_rank, feats, idx, tmp_path)
    m0, m1 = (torch.load(tmp_path / f"memory{r}.pt") for r in range(2))
    assert torch.equal(m0, m1)
    reference = memory_update_(F.normalize(torch.ones(10, 4), dim=1), idx, feats, 0.03)
    assert torch.equal(m0, reference)  # the same function on the same rows, in rank order: bit for bit
    assert not torch.equal(m0[7], memory_update_(F.normalize(torch.ones(10, 4), dim=1), idx[3:], feats[3:], 0.03)[7])


def _gather_rank(rank, world, out):
    mine = torch.arange(3 - rank, dtype=torch.float32).view(-1, 1) + 10 * rank  # 3 rows on rank 0, 2 on rank 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = all_gather_cat(mine)
        indices = all_gather_cat(torch.arange(2 * rank) + 5)  # none on rank 0, two on rank 1
    try:
        all_gather_cat(torch.zeros(2, 1 + rank))
        refused = ""
    except ValueError as err:
        refused = str(err)
    torch.save({"got": got, "indices": indices, "refused": refused, "warned": [str(w.message) for w in caught]},
               out / f"gather{rank}.pt")


def test_gathering_unequal_batches_keeps_each_rows_and_other_shapes_are_refused_on_every_rank(tmp_path):
    """Gathered into one tensor per collective (all_gather_single, or all_gather_into_tensor before it
    existed), without the deprecation warning the latter gives in recent torch."""
    spawn(_gather_rank, tmp_path)
    for rank in range(2):
        res = torch.load(tmp_path / f"gather{rank}.pt")
        assert res["got"].flatten().tolist() == [0.0, 1.0, 2.0, 10.0, 11.0]  # rank order, no padding left
        assert res["indices"].dtype == torch.long and res["indices"].tolist() == [5, 6]
        assert res["warned"] == []
        assert "differ beyond dim 0" in res["refused"] and "(2, 1), (2, 2)" in res["refused"]


# --- one DDP step with SyncBN = one step on the global batch -------------------------------------------


def _net() -> ReIDNet:
    torch.manual_seed(0)
    return ReIDNet(4, "resnet18", num_features=16, dropout=0.0, freeze="layer1")


def _batches():
    g = torch.Generator().manual_seed(2)
    src = [(torch.randn(8, 3, 32, 16, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(2)]
    tgt = [(torch.randn(8, 3, 32, 16, generator=g), torch.randperm(12, generator=g)[:8]) for _ in range(2)]
    return src, tgt


def _train(model, forward, crit, src, tgt):
    opt = make_optimizer(model, lr_backbone=0.01, lr_new=0.1)
    targets = iter(tgt)
    run_epoch(model, opt, src, device=torch.device("cpu"), criterion=crit, next_target=lambda: next(targets),
              epoch=2, lam=0.3, forward=forward)


def _ddp_rank(rank, world, out):
    src, tgt = _batches()
    mine = lambda batches: [(a.chunk(world)[rank], b.chunk(world)[rank]) for a, b in batches]  # noqa: E731
    model = _net().train()
    convert_sync_bn(model)
    crit = InvarianceLoss(12, 16, knn=2, knn_epoch=1)
    crit.gather = all_gather_cat
    _train(model, DistributedDataParallel(ECNForward(model)), crit, mine(src), mine(tgt))
    layers = sorted({f"{type(m).__module__}.{type(m).__name__}" for m in model.modules() if "SyncBatchNorm" in type(m).__name__})
    torch.save({"model": model.state_dict(), "memory": crit.memory, "layers": layers}, out / f"ddp{rank}.pt")


def test_a_ddp_step_with_syncbn_equals_a_step_on_the_global_batch(tmp_path):
    """No dropout, SyncBN, the same data: 2 processes x 4 images train what 1 process x 8 trains
    (within 1e-4: float sums in another order, through two SGD steps of ECN's loss)."""
    spawn(_ddp_rank, tmp_path)
    r0, r1 = (torch.load(tmp_path / f"ddp{r}.pt") for r in range(2))
    assert r0["layers"] == r1["layers"] == ["reidlab.syncbn.SyncBatchNorm"]  # gloo on the CPU: the written-out layer
    for k in r0["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), k  # every process ends with the same weights
    assert torch.equal(r0["memory"], r1["memory"])
    model = _net()
    crit = InvarianceLoss(12, 16, knn=2, knn_epoch=1)
    _train(model, None, crit, *_batches())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(r0["model"][k].float(), v.float(), atol=1e-4, rtol=1e-4, msg=k)
    torch.testing.assert_close(r0["memory"], crit.memory, atol=1e-4, rtol=0)


# --- torchrun -m reidlab.ecn ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    return make_worlds(tmp_path_factory.mktemp("worlds"))


def _torchrun(*args, timeout=600, **extra_env):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "REIDLAB_DIST_TIMEOUT": "120", **extra_env}
    return subprocess.run([*TORCHRUN, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def test_torchrun_trains_writes_once_and_resumes(worlds, tmp_path):
    args = ["--source", worlds["source"], "--target", worlds["target"], *CLI_SMALL, "--sync-bn"]
    a = tmp_path / "a"
    proc = _torchrun("-m", "reidlab.ecn", *args, "--out", str(a))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("target rank-1") == 1  # rank 0 alone reports
    config = json.loads((a / "config.json").read_text())
    assert (config["world_size"], config["batch_size"], config["batch_per_process"]) == (2, 8, 4)
    ckpt = load_checkpoint(a / "checkpoint.pt")
    assert torch.allclose(ckpt["criterion"]["memory"].norm(dim=1), torch.ones(24))  # every slot written
    assert sorted(p.name for p in a.iterdir()) == [".lock", "checkpoint.pt", "config.json", "history.json",
                                                   "log.csv", "metrics.json"]
    # killed after epoch 0, then resumed under torchrun: the same bits as the uninterrupted run
    b = tmp_path / "b"
    script = tmp_path / "stop_after_epoch0.py"
    script.write_text(
        "import sys\nfrom reidlab.ecn import train_ecn\nfrom reidlab.ecn.cli import build_parser, config_from_args\n"
        "args = build_parser().parse_args(sys.argv[1:])\n"
        "def stop(epoch, *_):\n    raise SystemExit(3)\n"
        "train_ecn(config_from_args(args), args.out, progress=False, callback=stop)\n"
    )
    proc = _torchrun(str(script), *args, "--out", str(b))
    assert proc.returncode != 0 and load_checkpoint(b / "checkpoint.pt")["epoch"] == 0
    proc = _torchrun("-m", "reidlab.ecn", *args, "--out", str(b))
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = load_checkpoint(b / "checkpoint.pt")
    for k, v in ckpt["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    assert torch.equal(ckpt["criterion"]["memory"], resumed["criterion"]["memory"])
    assert ckpt["metrics"] == resumed["metrics"]


def test_a_batch_that_two_processes_cannot_share_and_another_world_size_are_refused(worlds, tmp_path):
    with pytest.raises(ValueError, match="batch_size 9 cannot be shared by 2 processes"):
        ECNConfig(batch_size=9, world_size=2)
    proc = _torchrun("-m", "reidlab.ecn", "--source", worlds["source"], "--target", worlds["target"], *CLI_SMALL,
                     "--batch-size", "9", "--out", str(tmp_path / "odd"))
    assert proc.returncode != 0 and "error: ECNConfig: batch_size 9 cannot be shared by 2 processes" in proc.stderr
    saved = {"config": ECNConfig(world_size=2).to_dict()}
    with pytest.raises(ValueError, match="cannot resume with another number of processes"):
        check_resumable(saved, ECNConfig(world_size=1), Path("checkpoint.pt"))


@pytest.mark.parametrize("raw", ["abc", "0", "-5", "inf", "nan", "1e10"])
def test_a_bad_dist_timeout_is_named(raw, monkeypatch):
    monkeypatch.setenv("REIDLAB_DIST_TIMEOUT", raw)
    with pytest.raises(ValueError, match=f"REIDLAB_DIST_TIMEOUT='{raw}': give the seconds"):
        dist_timeout()
    monkeypatch.setenv("REIDLAB_DIST_TIMEOUT", "90")
    assert dist_timeout() == 90.0


def test_a_bad_dist_timeout_under_torchrun_is_one_line_on_every_rank(worlds, tmp_path):
    proc = _torchrun("-m", "reidlab.ecn", "--source", worlds["source"], "--target", worlds["target"], *CLI_SMALL,
                     "--out", str(tmp_path / "run"), timeout=120, REIDLAB_DIST_TIMEOUT="abc")
    assert proc.returncode != 0
    assert proc.stderr.count("REIDLAB_DIST_TIMEOUT='abc'") == 2, proc.stderr[-2000:]  # each rank says it once
    assert "reidlab/distributed.py" not in proc.stderr, proc.stderr[-2000:]  # no rank's traceback (torchrun prints its own)


def test_a_crashed_process_stops_the_others_instead_of_hanging(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(
        "from reidlab.distributed import barrier, init_from_env\n"
        "with init_from_env('cpu') as info:\n"
        "    if info.rank == 1:\n        raise RuntimeError('rank 1 crashed')\n"
        "    barrier()  # rank 0 waits for a process that is gone\n"
    )
    t0 = time.perf_counter()
    proc = _torchrun(str(script), timeout=120)
    assert proc.returncode != 0 and "rank 1 crashed" in proc.stderr
    assert time.perf_counter() - t0 < 60
