"""ECN's trainer and CLI (reidlab.ecn), the target loaders of its invariance switches and the
colour-statistics CamStyle stand-in (reidlab.data.camstyle), on a micro synthetic world."""
from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import reidlab.ecn.loop as ecn_loop
from reidlab.data.camstyle import camera_color_stats, lab_to_rgb, rgb_to_lab, transfer_camera_style
from reidlab.data.datasets import load_reid_dataset
from reidlab.data.layout import read_image
from reidlab.data.loaders import (
    CamStyleTargetDataset,
    ColorStyleTargetDataset,
    ImageDataset,
    TargetDataset,
    make_loader,
    target_train_dataset,
)
from reidlab.data.transforms import build_test_transform
from reidlab.evaluation import evaluate_rank, extract_features, pairwise_distance
from reidlab.memory import InvarianceLoss
from reidlab.ecn import ECNConfig, build_ecn, ecn_loss, load_checkpoint, main, train_ecn
from reidlab.ecn.rundir import LOG_COLUMNS, config_differences

from ecn_micro import CLI_SMALL, SMALL, domains, worlds  # noqa: F401 (fixtures)

@pytest.fixture(scope="module")
def cli_run(worlds, tmp_path_factory):
    """One uninterrupted 3-epoch run through the command line."""
    out = tmp_path_factory.mktemp("run_a")
    rc = main(["--source", worlds["source"], "--target", worlds["target"], "--out", str(out), *CLI_SMALL])
    assert rc == 0
    return out


def _cfg(worlds, **kw) -> ECNConfig:
    return ECNConfig.from_profile("ci", source=worlds["source"], target=worlds["target"], **{**SMALL, **kw})


def _errors(stderr: str) -> str:
    """stderr without the CLI's ``warning:`` / ``note:`` lines (e.g. freezing random weights in these runs)."""
    return "\n".join(line for line in stderr.strip().splitlines() if not line.startswith(("warning:", "note:")))


def _strip_seconds(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


# --- the trainer and the CLI ------------------------------------------------------------------------


def test_cli_trains_and_writes_logs(cli_run, capsys):
    files = {p.name for p in cli_run.iterdir()}
    assert {"checkpoint.pt", "log.csv", "history.json", "metrics.json", "config.json"} <= files
    rows = list(csv.DictReader((cli_run / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert list(rows[0]) == list(LOG_COLUMNS)
    assert [r["steps"] for r in rows] == ["3", "3", "3"]       # 24 source images in batches of 8, per epoch
    assert rows[0]["rank1"] == "" and rows[-1]["rank1"] != ""  # eval_every=0: only at the end
    for r in rows:
        assert math.isfinite(float(r["loss_src"])) and math.isfinite(float(r["loss_tgt"]))
        assert 0.0 <= float(r["knn_precision"]) <= 1.0
    metrics = json.loads((cli_run / "metrics.json").read_text())
    assert set(metrics) == {"rank1", "rank5", "rank10", "mAP", "mAP_trapezoid", "mINP",
                            "embed_rank1", "embed_mAP", "embed_mAP_trapezoid"}  # pool5 (ECN's) and the embedding
    assert 0.0 <= metrics["rank1"] <= metrics["rank5"] <= metrics["rank10"] <= 1.0
    assert 0.0 < metrics["mAP_trapezoid"] <= metrics["mAP"]  # Market-1501's rule never scores higher
    config = ECNConfig.from_dict(json.loads((cli_run / "config.json").read_text()))
    assert (config.invariance, config.epochs, config.profile, config.knn_epoch) == ("E+C+N", 3, "ci", 1)
    ckpt = load_checkpoint(cli_run / "checkpoint.pt")  # weights_only=True inside
    assert ckpt["epoch"] == 2 and ckpt["config"] == config.to_dict()
    assert ckpt["criterion"]["memory"].shape == (24, 32)
    # a finished run is returned as is, with its one-line summary
    capsys.readouterr()
    assert main(["--source", str(Path(config.source)), "--target", config.target, "--out", str(cli_run), *CLI_SMALL]) == 0
    printed = capsys.readouterr()
    out = printed.out.strip().splitlines()
    assert "nothing was trained or evaluated, the numbers are its checkpoint's" in printed.err
    assert len(out) == 1 and f"target rank-1 {100 * metrics['rank1']:.1f}%" in out[0] and "after 3 epochs" in out[0]
    assert f"trapezoid rule, ECN's: {100 * metrics['mAP_trapezoid']:.1f}%" in out[0]


def test_killed_run_resumes_with_identical_results(worlds, cli_run, tmp_path):
    out = tmp_path / "run_b"

    def kill(epoch, model, criterion, row):
        assert isinstance(criterion, InvarianceLoss) and row["epoch"] == epoch
        if epoch == 0:
            raise KeyboardInterrupt  # the run dies after its first checkpoint

    with pytest.raises(KeyboardInterrupt):
        train_ecn(_cfg(worlds), out, progress=False, callback=kill)
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 0
    assert main(["--source", worlds["source"], "--target", worlds["target"], "--out", str(out), *CLI_SMALL]) == 0

    a, b = load_checkpoint(cli_run / "checkpoint.pt"), load_checkpoint(out / "checkpoint.pt")
    assert _strip_seconds(a["history"]) == _strip_seconds(b["history"])
    assert a["metrics"] == b["metrics"]
    assert json.loads((cli_run / "metrics.json").read_text()) == json.loads((out / "metrics.json").read_text())
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert torch.equal(a["criterion"]["memory"], b["criterion"]["memory"])
    # the learning rate decays at round(40/60 * 3) = 2, as configured for the 3-epoch run
    assert [r["lr"] for r in b["history"]] == pytest.approx([0.1, 0.1, 0.01])


def test_a_checkpoint_from_before_a_setting_existed_resumes_with_its_default(worlds, cli_run, tmp_path, capsys):
    out = tmp_path / "old"
    out.mkdir()
    ckpt = load_checkpoint(cli_run / "checkpoint.pt")
    assert ckpt["config"]["control"] == "none"  # the default: the run has no negative control
    del ckpt["config"]["control"]  # as a checkpoint written before `control` was added
    torch.save(ckpt, out / "checkpoint.pt")
    assert config_differences(ckpt["config"], ECNConfig.from_dict(load_checkpoint(cli_run / "checkpoint.pt")["config"])) == []
    base = ["--source", worlds["source"], "--target", worlds["target"], "--out", str(out), *CLI_SMALL]
    capsys.readouterr()
    assert main(base) == 0  # resumed: the finished run is returned
    assert "after 3 epochs" in capsys.readouterr().out
    # a value other than the default is a real difference, named
    assert main([*base, "--control", "random-neighbours"]) == 2
    assert "control ('none' in the checkpoint, 'random-neighbours' now)" in capsys.readouterr().err


def test_mismatched_checkpoint(worlds, cli_run, tmp_path, capsys):
    out = tmp_path / "mismatch"
    out.mkdir()
    shutil.copy(cli_run / "checkpoint.pt", out / "checkpoint.pt")
    base = ["--source", worlds["source"], "--target", worlds["target"], "--out", str(out)]
    capsys.readouterr()
    assert main([*base, *CLI_SMALL, "--invariance", "E", "--lr-new", "0.05"]) == 2
    err = _errors(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and err.startswith("error:")
    assert "invariance ('E+C+N' in the checkpoint, 'E' now)" in err and "lr_new" in err and "--no-resume" in err
    # settings that do not change what is computed (evaluation schedule, workers) may differ
    assert config_differences(load_checkpoint(out / "checkpoint.pt")["config"], _cfg(worlds, eval_every=1)) == []

    # a checkpoint whose model has another shape than its (edited) settings claim
    ckpt = load_checkpoint(out / "checkpoint.pt")
    ckpt["config"]["num_features"] = 16
    torch.save(ckpt, out / "checkpoint.pt")
    with pytest.raises(ValueError, match="does not fit this run's model"):
        train_ecn(_cfg(worlds, num_features=16), out, progress=False)
    # resume=False starts over instead
    res = train_ecn(_cfg(worlds, num_features=16, epochs=1, max_steps=1), out, resume=False, progress=False)
    assert len(res.history) == 1 and load_checkpoint(out / "checkpoint.pt")["config"]["num_features"] == 16


def test_bad_inputs_give_one_line_errors(worlds, tmp_path, capsys):
    out = str(tmp_path / "out")
    cases = [
        (["--data-dir", str(tmp_path / "nowhere"), "--source", "market1501"], "data dir not found"),
        (["--source", str(tmp_path / "no_such_dataset"), "--target", worlds["target"]], "dataset folder not found"),
        (["--source", worlds["source"], "--target", worlds["target"], "--invariance", "E+X"], "unknown invariance 'E+X'"),
        (["--source", worlds["source"], "--target", worlds["target"], "--lam", "1.5"], "lam must be a number in [0, 1]"),
    ]
    capsys.readouterr()
    for args, message in cases:
        assert main([*args, "--out", out, "--profile", "ci", "--quiet"]) == 2, message
        err = _errors(capsys.readouterr().err)
        assert len(err.splitlines()) == 1 and message in err, err
    assert main(["--profile", "ci"]) == 2  # argparse: --out is required
    assert "--out" in capsys.readouterr().err


def test_nan_loss_stops_with_a_clear_error(worlds, tmp_path, monkeypatch, capsys):
    def poisoned(loss_src, loss_tgt, lam):
        return ecn_loss(loss_src, loss_tgt, lam) * float("nan")

    monkeypatch.setattr(ecn_loop, "ecn_loss", poisoned)
    message = r"ECN loss is nan at epoch 0, step 0 \(source .*, target .*\); lower the learning rates"
    with pytest.raises(FloatingPointError, match=message):
        train_ecn(_cfg(worlds), tmp_path / "a", progress=False)
    assert not (tmp_path / "a" / "checkpoint.pt").exists()  # nothing half-trained is saved
    capsys.readouterr()
    args = ["--source", worlds["source"], "--target", worlds["target"], "--out", str(tmp_path / "b"), *CLI_SMALL]
    assert main(args) == 2
    err = _errors(capsys.readouterr().err)
    assert err.startswith("error: ECN loss is nan") and len(err.splitlines()) == 1


def test_lambda_weighting(worlds, tmp_path, monkeypatch):
    src, tgt = torch.tensor(2.0), torch.tensor(10.0)
    assert ecn_loss(src, tgt, 0.3).item() == pytest.approx(0.7 * 2.0 + 0.3 * 10.0)  # ECN's (1 - lam) L_src + lam L_tgt
    assert ecn_loss(src, tgt, 0.0).item() == 2.0 and ecn_loss(src, tgt, 1.0).item() == 10.0
    assert ecn_loss(src, None, 0.3) is src  # source-only: the source loss with weight 1

    seen = []

    def spy(loss_src, loss_tgt, lam):
        total = ecn_loss(loss_src, loss_tgt, lam)
        seen.append((loss_src.item(), None if loss_tgt is None else loss_tgt.item(), lam, total.item()))
        return total

    monkeypatch.setattr(ecn_loop, "ecn_loss", spy)
    res = train_ecn(_cfg(worlds, epochs=1, max_steps=2, lam=0.4), tmp_path / "e", progress=False)
    assert len(seen) == 2 and all(lam == 0.4 and tgt is not None for _, tgt, lam, _ in seen)
    s, t, _, total = seen[0]
    assert total == pytest.approx(0.6 * s + 0.4 * t, rel=1e-6)
    assert t == pytest.approx(math.log(24), rel=1e-5)  # an all-zero memory: uniform over the 24 target slots
    assert res.history[0]["loss_src"] == pytest.approx((seen[0][0] + seen[1][0]) / 2, rel=1e-6)
    seen.clear()
    res = train_ecn(_cfg(worlds, epochs=1, max_steps=1, invariance="source-only"), tmp_path / "s", progress=False)
    assert seen[0][1] is None and seen[0][3] == seen[0][0]
    assert res.criterion is None and res.history[0]["loss_tgt"] is None and res.history[0]["knn_precision"] is None


def test_the_result_holds_the_distances_its_metrics_come_from(worlds, domains, tmp_path):
    res = train_ecn(_cfg(worlds, epochs=1, max_steps=1, invariance="source-only"), tmp_path / "d", progress=False)
    target = domains[1]
    assert res.distmat.shape == (len(target.query), len(target.gallery))
    tf = build_test_transform(res.config.height, res.config.width)
    q, g = (extract_features(res.model, make_loader(ImageDataset(items, tf), 16), "cpu", labels=True)
            for items in (target.query, target.gallery))
    np.testing.assert_allclose(res.distmat, pairwise_distance(q.features, g.features), rtol=1e-5, atol=1e-6)
    ranked = evaluate_rank(res.distmat, q.pids, g.pids, q.camids, g.camids)
    assert ranked.mAP == pytest.approx(res.metrics["mAP"]) and ranked.cmc[0] == pytest.approx(res.metrics["rank1"])


def test_a_run_in_memory_writes_nothing_and_equals_a_run_in_a_folder(worlds, tmp_path, monkeypatch):
    cfg = _cfg(worlds, epochs=2, max_steps=2, invariance="E+C+N", knn_start=1)
    on_disk = train_ecn(cfg, tmp_path / "run", resume=False, progress=False)
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path / "empty")
    in_memory = train_ecn(cfg, None, progress=False)
    assert list((tmp_path / "empty").iterdir()) == []  # nothing written, not even into the working folder
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(
        [".lock", "checkpoint.pt", "config.json", "history.json", "log.csv", "metrics.json"])
    assert in_memory.out_dir is None and on_disk.out_dir == tmp_path / "run"
    assert in_memory.metrics == on_disk.metrics
    assert _strip_seconds(in_memory.history) == _strip_seconds(on_disk.history)
    np.testing.assert_array_equal(in_memory.distmat, on_disk.distmat)
    for (name, a), b in zip(in_memory.model.state_dict().items(), on_disk.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_optimizer_takes_the_same_steps_as_a_plain_loop(worlds, domains):
    """make_optimizer batches its updates (foreach=True); that must not change a single bit."""
    parts = build_ecn(_cfg(worlds), *domains, "cpu")
    params = [p for g in parts.optimizer.param_groups for p in g["params"]]
    assert parts.optimizer.defaults["foreach"] is True
    plain = torch.optim.SGD(
        [{"params": [q for q in (p.detach().clone().requires_grad_() for p in g["params"])], "lr": g["lr"]}
         for g in parts.optimizer.param_groups],
        lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True, foreach=False,
    )
    twins = [q for g in plain.param_groups for q in g["params"]]
    before = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        for p, q in zip(params, twins):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        parts.optimizer.step()
        plain.step()
    assert all(torch.equal(p, q) for p, q in zip(params, twins))
    assert not any(torch.equal(p, b) for p, b in zip(params, before))  # every tensor moved


# --- building blocks: switches, optimizer, schedule, AMP, config --------------------------------------


@pytest.mark.parametrize(
    "invariance, dataset, knn",
    [("source-only", None, None), ("E", TargetDataset, 0), ("E+C", CamStyleTargetDataset, 0),
     ("E+N", TargetDataset, 2), ("E+C+N", CamStyleTargetDataset, 2)],
)
def test_invariance_switches_build_the_right_loader_and_criterion(worlds, domains, invariance, dataset, knn):
    parts = build_ecn(_cfg(worlds, invariance=invariance), *domains, "cpu")
    if dataset is None:
        assert parts.criterion is None and parts.target_train is None
        return
    assert type(parts.target_train.dataset) is dataset
    assert isinstance(parts.criterion, InvarianceLoss)
    assert parts.criterion.knn == knn and parts.criterion.memory.shape == (24, 32)
    assert (parts.criterion.beta, parts.criterion.alpha, parts.criterion.knn_epoch) == (0.05, 0.01, 1)
    assert parts.target_train.batch_size == parts.source_train.batch_size == 8  # target batch = source batch
    assert not parts.target_train.persistent_workers


def test_camstyle_sources(worlds, domains):
    source, target = domains
    parts = build_ecn(_cfg(worlds, invariance="E+C", camstyle="color"), source, target, "cpu")
    assert type(parts.target_train.dataset) is ColorStyleTargetDataset
    plain = load_reid_dataset(worlds["target"], with_camstyle=False)  # as a real dataset without CamStyle images
    assert type(target_train_dataset(plain, None, camstyle="auto")) is ColorStyleTargetDataset
    assert type(target_train_dataset(target, None, camstyle="auto")) is CamStyleTargetDataset
    with pytest.raises(ValueError, match="camstyle=True"):  # the old boolean vocabulary is gone
        target_train_dataset(plain, None, camstyle=True)
    with pytest.raises(ValueError, match="no bounding_box_train_camstyle"):
        target_train_dataset(plain, None, camstyle="folder")
    with pytest.raises(ValueError, match="camstyle='x'"):
        target_train_dataset(plain, None, camstyle="x")


def test_optimizer_lr_groups_and_step_decay(worlds, domains):
    parts = build_ecn(_cfg(worlds, epochs=60), *domains, "cpu")
    groups = {g["name"]: g for g in parts.optimizer.param_groups}
    assert groups["backbone"]["lr"] == pytest.approx(0.01) and groups["new"]["lr"] == pytest.approx(0.1)
    for g in groups.values():
        assert g["nesterov"] and g["momentum"] == 0.9 and g["weight_decay"] == 5e-4
    in_groups = {id(p) for g in groups.values() for p in g["params"]}
    model = parts.model
    assert not any(id(p) in in_groups for p in model.base.layer2.parameters())  # frozen: freeze='layer2'
    assert all(id(p) in in_groups for p in model.base.layer3.parameters())
    assert all(id(p) in in_groups for p in model.classifier.parameters())
    lrs = []
    for _ in range(60):
        lrs.append(tuple(g["lr"] for g in parts.optimizer.param_groups))
        parts.optimizer.step()  # no gradients: changes nothing, keeps the scheduler's call order
        parts.scheduler.step()
    assert lrs[39] == pytest.approx((0.01, 0.1)) and lrs[40] == pytest.approx((0.001, 0.01))  # ECN: epoch 40 of 60
    assert lrs[59] == lrs[40]
    assert [ECNConfig(epochs=e).decay_epoch for e in (1, 2, 3, 12, 60)] == [1, 1, 2, 8, 40]
    assert ECNConfig(epochs=60, step_epoch=10).decay_epoch == 10


def test_amp_and_channels_last_ignored_on_cpu(worlds, domains):
    cfg = _cfg(worlds, amp=True, channels_last=True)
    parts = build_ecn(cfg, *domains, "cpu")
    assert parts.amp is False and parts.model.channels_last is False
    assert next(parts.model.parameters()).dtype == torch.float32


def test_config_profiles_and_round_trip(monkeypatch):
    ci, gpu = ECNConfig.from_profile("ci"), ECNConfig.from_profile("gpu")
    assert (ci.arch, ci.height, ci.width, ci.amp, ci.synth_scale) == ("resnet18", 64, 32, False, "tiny")
    assert (gpu.arch, gpu.height, gpu.width, gpu.batch_size, gpu.epochs, gpu.amp, gpu.channels_last) == (
        "resnet50", 256, 128, 128, 60, True, True)
    d = ECNConfig()  # ECN's published settings
    assert (d.lam, d.beta, d.alpha, d.knn, d.knn_epoch, d.lr_new, d.lr_backbone, d.num_features, d.dropout) == (
        0.3, 0.05, 0.01, 6, 5, 0.1, 0.01, 4096, 0.5)
    assert (d.freeze, d.pretrained, d.invariance, d.eval_every) == ("layer2", None, "E+C+N", 0)
    cfg = ECNConfig.from_profile("ci", invariance="e+c", epochs=5, pretrained="IMAGENET1K_V1")
    assert cfg.invariance == "E+C" and cfg.uses_camstyle and not cfg.uses_knn and cfg.target_camstyle == "auto"
    assert ECNConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    monkeypatch.setenv("REIDLAB_PROFILE", "laptop")
    assert ECNConfig.from_profile().profile == "laptop"
    with pytest.raises(ValueError, match="unknown ECNConfig setting"):
        ECNConfig.from_profile("ci", lamda=0.3)
    with pytest.raises(ValueError, match="unknown invariance"):
        ECNConfig(invariance="E+K")
    with pytest.raises(ValueError, match="alpha"):
        ECNConfig(epochs=200)  # alpha*epoch would pass 1
    with pytest.raises(ValueError, match="batch_size"):
        ECNConfig(batch_size=1)


# --- the colour-statistics CamStyle stand-in ----------------------------------------------------------


def _lab(img) -> np.ndarray:
    return rgb_to_lab(np.asarray(img.convert("RGB"), np.float64) / 255.0).reshape(-1, 3)


def test_lab_conversion():
    rgb = np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    lab = rgb_to_lab(rgb)
    np.testing.assert_allclose(lab[0], [100.0, 0.0, 0.0], atol=1e-3)  # D65 white
    np.testing.assert_allclose(lab[1], [53.24, 80.09, 67.20], atol=0.01)  # sRGB red (standard tables)
    x = np.random.default_rng(0).random((500, 3))
    np.testing.assert_allclose(lab_to_rgb(rgb_to_lab(x)), x, atol=1e-9)


def test_color_transfer_matches_camera_stats_and_keeps_content(domains):
    _, target = domains
    stats = camera_color_stats(target.train, target.num_cams)
    cams = [c for c in range(target.num_cams) if stats.count[c] >= 3]
    a, b = cams[0], cams[1]
    paths = [p for p, _, c in target.train if c == a]
    out = np.concatenate([_lab(transfer_camera_style(read_image(p), a, b, stats)) for p in paths])
    # pooled over camera a's images, the result has camera b's statistics (up to clipping and 8-bit rounding)
    np.testing.assert_allclose(out.mean(0), stats.mean[b], atol=0.3)
    np.testing.assert_allclose(out.std(0), stats.std[b], rtol=0.03, atol=0.1)
    assert np.abs(stats.mean[a] - stats.mean[b]).max() > 3.0  # ... which was a real change
    for p in paths:
        orig = read_image(p)
        styled = transfer_camera_style(orig, a, b, stats)
        assert styled.size == orig.size
        # content kept: the map is monotone per channel (structure correlates), and b -> a undoes a -> b
        assert np.corrcoef(_lab(orig)[:, 0], _lab(styled)[:, 0])[0, 1] > 0.98
        back = np.asarray(transfer_camera_style(styled, b, a, stats), np.float64)
        assert np.abs(back - np.asarray(orig, np.float64)).mean() < 2.0  # in 0..255 units
    assert transfer_camera_style(read_image(paths[0]), a, a, stats).tobytes() == read_image(paths[0]).tobytes()


def test_color_transfer_approaches_the_real_camstyle_images(tmp_path):
    """On the synthetic world the oracle re-renders exist (the same person drawn by the other camera):
    the stand-in moves an image's mean colour towards that of its re-render. It matches a camera's
    colour statistics, scene included, so it is checked on a world whose images all show their own
    camera's scene (``camera_background=1``); with pooled scenes a camera's mean colour says less
    about any one image."""
    from ecn_micro import MICRO

    from reidlab.data.synth import make_synthetic_reid

    tree = make_synthetic_reid(tmp_path, "synth_duke", MICRO, seed=0, image_size=(64, 32), camera_background=1.0,
                               workers=1)
    target = load_reid_dataset(tree)
    stats = camera_color_stats(target.train, target.num_cams)
    before, after = [], []
    for p, _, c in target.train:
        img = read_image(p)
        for c2, fake in target.camstyle_for(p, oracle=True).items():
            if not stats.available(c2):
                continue
            real = _lab(read_image(fake)).mean(0)
            before.append(np.linalg.norm(_lab(img).mean(0) - real))
            after.append(np.linalg.norm(_lab(transfer_camera_style(img, c, c2, stats)).mean(0) - real))
    before, after = np.array(before), np.array(after)
    assert len(before) > 50
    assert after.mean() < 0.6 * before.mean() and (after < before).mean() > 0.75


def test_color_style_dataset_sampling(domains):
    _, target = domains
    stats = camera_color_stats(target.train, target.num_cams)
    ds = ColorStyleTargetDataset(target.train, stats, target.num_cams, build_test_transform(32, 16))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    picks = [ds.choose(i % len(ds), g1) for i in range(400)]
    assert picks == [ds.choose(i % len(ds), g2) for i in range(400)]  # deterministic given a generator
    own = [target.train[i % len(ds)][2] for i in range(400)]
    available = [c for c in range(target.num_cams) if stats.available(c)]
    assert set(picks) <= set(available)
    # the original comes back for the own camera and for cameras without statistics (no images to imitate)
    expected = (1 + target.num_cams - len(available)) / target.num_cams
    assert abs(np.mean([p == o for p, o in zip(picks, own)]) - expected) < 0.08
    i = 0
    path, _, cam = target.train[i]
    assert ds.styled(i, cam).tobytes() == read_image(path).tobytes()
    img, idx = ds[i]
    assert img.shape == (3, 32, 16) and idx == i
    partial = camera_color_stats([it for it in target.train if it[2] != 0], target.num_cams)  # camera 0 unseen
    assert not partial.available(0) and partial.count[0] == 0
    other = next(c for c in range(1, target.num_cams) if partial.available(c))
    with pytest.raises(ValueError, match="no colour statistics"):
        transfer_camera_style(Image.new("RGB", (8, 16)), other, 0, partial)


def test_freezing_random_weights_warns(worlds, domains):
    with pytest.warns(UserWarning, match="freezes randomly initialised layers"):
        build_ecn(_cfg(worlds, pretrained=None, freeze="layer2"), *domains, "cpu")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_ecn(_cfg(worlds, pretrained=None, freeze=None), *domains, "cpu")


def test_short_runs_keep_ecns_proportions():
    """The ci smoke run (2 epochs) trains with the kNN target from epoch 1: E+C+N, not silently E+C."""
    ci = ECNConfig.from_profile("ci")
    assert ci.epochs == 2 and (ci.knn_epoch, ci.decay_epoch) == (1, 1) and ci.uses_knn
    assert (ECNConfig().knn_epoch, ECNConfig().decay_epoch) == (5, 40)  # ECN's own, at 60 epochs
    assert ECNConfig(epochs=12).knn_epoch == 1 and ECNConfig(epochs=24).knn_epoch == 2
    assert ECNConfig(epochs=12, knn_start=0).knn_epoch == 0  # an explicit start wins
    longer = ECNConfig.from_profile("ci").replace(epochs=60)
    assert (longer.knn_epoch, longer.decay_epoch) == (5, 40)  # derived settings follow a new length


def test_resuming_a_finished_run_loads_no_data(worlds, cli_run, monkeypatch):
    import reidlab.ecn.run as ecn_run

    def no_data(config):
        raise AssertionError("a finished run must not load its datasets again")

    monkeypatch.setattr(ecn_run, "load_domains", no_data)
    config = _cfg(worlds)
    res = train_ecn(config, cli_run, progress=False)
    assert len(res.history) == 3 and res.metrics == json.loads((cli_run / "metrics.json").read_text())
    assert res.distmat is None  # nothing was evaluated
    assert isinstance(res.criterion, InvarianceLoss) and not res.model.training
    ckpt = load_checkpoint(cli_run / "checkpoint.pt")
    for k, v in res.model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k


# --- one trainer path: one checkpoint per epoch, one validation, lines through logging -----------------


def test_a_two_epoch_cli_run_checkpoints_twice_before_evaluating_validates_once_and_logs_its_lines(
        worlds, tmp_path, monkeypatch, capsys, caplog):
    import logging

    import reidlab.ecn.config as ecn_config
    import reidlab.ecn.run as ecn_run
    import reidlab.ecn.rundir as rundir

    events = []
    real_save, real_evaluate, real_validate = rundir.atomic_save, ecn_run.evaluate_test, ecn_config._validate

    def save(obj, path):
        events.append(("write", Path(path).name, obj["epoch"] if Path(path).name == "checkpoint.pt" else None))
        return real_save(obj, path)

    def evaluate(*args, **kwargs):
        events.append(("evaluate",))
        return real_evaluate(*args, **kwargs)

    def validate(config):
        events.append(("validate",))
        return real_validate(config)

    monkeypatch.setattr(rundir, "atomic_save", save)
    monkeypatch.setattr(ecn_run, "evaluate_test", evaluate)
    monkeypatch.setattr(ecn_config, "_validate", validate)
    out = tmp_path / "run"
    args = ["--source", worlds["source"], "--target", worlds["target"], "--out", str(out),
            *[a for a in CLI_SMALL if a != "--quiet"], "--epochs", "2", "--eval-every", "1"]
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="reidlab.ecn.run"):
        assert main(args) == 0
    # one checkpoint per epoch, each written before that epoch's evaluation; nothing written after it
    assert events == [("validate",), ("write", "checkpoint.pt", 0), ("evaluate",),
                      ("write", "checkpoint.pt", 1), ("evaluate",)]
    # the per-epoch lines come from the trainer's logger (the CLI only shows them), after each evaluation
    lines = [r.getMessage() for r in caplog.records if r.name == "reidlab.ecn.run"]
    history = json.loads((out / "history.json").read_text())
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert all(f"rank-1 {100 * row['rank1']:.1f}%" in line for line, row in zip(lines, history))
    err = capsys.readouterr().err
    assert all(line in err for line in lines)
    assert load_checkpoint(out / "checkpoint.pt")["metrics"] == {}  # the final metrics are metrics.json's
    assert set(json.loads((out / "metrics.json").read_text())) >= {"rank1", "mAP"}
    events.clear()
    assert main([*args, "--quiet"]) == 0  # finished: loaded, no checkpoint written, no line printed
    assert events == [("validate",)] and "epoch 1/2" not in capsys.readouterr().err


def test_the_pretrained_weights_are_resolved_once_and_the_file_read_once(worlds, tmp_path, monkeypatch):
    import reidlab.ecn.build as ecn_build
    import reidlab.ecn.run as ecn_run
    from reidlab.ecn.pretrain import pretrained_weights
    from reidlab.models import ReIDNet

    weights = tmp_path / "backbone.pt"
    torch.save(ReIDNet(3, "resnet18").base.state_dict(), weights)
    resolved, reads = [], []
    real_load = torch.load

    def spy(config, device="cpu", **kwargs):
        resolved.append(config.pretrained)
        return pretrained_weights(config, device, **kwargs)

    def load(f, *args, **kwargs):
        reads.append(str(f))
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(ecn_run, "pretrained_weights", spy)
    monkeypatch.setattr(ecn_build, "pretrained_weights", spy)
    monkeypatch.setattr(torch, "load", load)
    train_ecn(_cfg(worlds, epochs=1, max_steps=1, pretrained=str(weights)), tmp_path / "run", progress=False)
    assert resolved == [str(weights)] and reads.count(str(weights)) == 1


def test_a_config_cannot_be_edited_after_it_was_validated():
    import dataclasses

    cfg = ECNConfig.from_profile("ci")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lam = 2.0  # would skip the range check: replace() validates
    with pytest.raises(ValueError, match="lam must be"):
        cfg.replace(lam=2.0)


def test_an_evaluation_logged_after_the_checkpoint_survives_a_resume(worlds, tmp_path):
    """eval_every=1: epoch 0's rank-1 goes into the logs after its checkpoint; a run killed then keeps it."""
    out = tmp_path / "run"

    def kill(epoch, *_):
        if epoch == 0:
            raise KeyboardInterrupt  # after epoch 0's checkpoint, evaluation and logs

    with pytest.raises(KeyboardInterrupt):
        train_ecn(_cfg(worlds, eval_every=1), out, progress=False, callback=kill)
    logged = json.loads((out / "history.json").read_text())
    assert load_checkpoint(out / "checkpoint.pt")["history"][0]["rank1"] is None and logged[0]["rank1"] is not None
    res = train_ecn(_cfg(worlds, eval_every=1), out, progress=False)
    assert res.history[0]["rank1"] == logged[0]["rank1"] and all(r["rank1"] is not None for r in res.history)
    assert json.loads((out / "history.json").read_text())[0] == logged[0]


def test_logs_of_another_run_are_not_taken_for_the_checkpoints_evaluation(tmp_path):
    from reidlab.ecn.rundir import logged_evaluation

    row = {"epoch": 0, "steps": 3, "loss_src": 1.5, "loss_tgt": 2.0, "acc_src": 0.5, "lr": 0.1,
           "knn_precision": None, "seconds": 1.25, "rank1": None, "mAP": None}
    ckpt = {"history": [row], "metrics": {}}
    assert logged_evaluation(tmp_path, ckpt) == ([row], {})  # no logs
    (tmp_path / "history.json").write_text(json.dumps([{**row, "seconds": 9.0, "rank1": 0.5, "mAP": 0.4}]))
    (tmp_path / "metrics.json").write_text(json.dumps({"rank1": 0.5}))
    assert logged_evaluation(tmp_path, ckpt) == ([row], {})  # another run's row: not this checkpoint's
    (tmp_path / "history.json").write_text(json.dumps([{**row, "rank1": 0.5, "mAP": 0.4}]))
    assert logged_evaluation(tmp_path, ckpt) == ([{**row, "rank1": 0.5, "mAP": 0.4}], {"rank1": 0.5})
