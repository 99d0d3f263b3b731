"""The re-ID datasets and loaders: (image, index) target datasets, CamStyle sampling, the
camstyle modes (the oracle re-renders only when asked for), make_loader and its share of the
data for one of several processes, and the image cache (each image decoded once per run, also
with worker processes)."""
from __future__ import annotations

import multiprocessing
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

import reidlab.data.loaders as loaders
from reidlab.data.datasets import ReIDDataset, load_reid_dataset
from reidlab.data.layout import Item, read_image
from reidlab.data.loaders import (
    CAMSTYLE_MODES,
    CamStyleTargetDataset,
    ColorStyleTargetDataset,
    ImageDataset,
    TargetDataset,
    make_loader,
    make_reid_loaders,
    target_train_dataset,
)
from reidlab.data.synth import Scale, make_synthetic_reid
from reidlab.data.transforms import build_test_transform
from reidlab.ecn.loop import _cycle, epoch_seed, seed_epoch


def _img(h=128, w=64, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.fixture
def items(tmp_path):
    """Six images in 3 cameras, each with CamStyle images for the 2 other cameras."""
    out, style = [], {}
    for i in range(6):
        cam = i % 3
        p = tmp_path / f"{i:04d}_c{cam + 1}s1_000001_01.jpg"
        _img(32, 16, seed=i).save(p)
        out.append((str(p), i // 2, cam))
        style[str(p)] = {}
        for c2 in range(3):
            if c2 != cam:
                f = tmp_path / f"{p.stem}_fake_{cam + 1}to{c2 + 1}.jpg"
                _img(32, 16, seed=100 + 10 * i + c2).save(f)
                style[str(p)][c2] = str(f)
    return out, style


def test_image_and_target_datasets(items):
    it, _ = items
    tf = build_test_transform(32, 16)
    img, pid, cam, idx = ImageDataset(it, tf)[4]
    assert img.shape == (3, 32, 16) and (pid, cam, idx) == (2, 1, 4)
    timg, tidx = TargetDataset(it, tf)[5]
    assert tidx == 5 and torch.equal(timg, tf(Image.open(it[5][0]).convert("RGB")))
    cached = ImageDataset(it, tf, cache=True)
    assert torch.equal(cached[0][0], cached[0][0])
    with pytest.raises(ValueError, match="empty"):
        ImageDataset([], tf)
    with pytest.raises(FileNotFoundError, match="image not found"):
        ImageDataset([("/nonexistent/x.jpg", 0, 0)], tf)[0]


def test_camstyle_selection_statistics(items):
    it, style = items
    ds = CamStyleTargetDataset(it, style, num_cams=3)
    gen = torch.Generator().manual_seed(0)
    n = 3000
    counts = np.zeros(3)
    original = 0
    for k in range(n):
        i = k % len(it)
        path, chosen = ds.choose(i, gen)
        counts[chosen] += 1
        if chosen == it[i][2]:
            assert path == it[i][0]
            original += 1
        else:
            assert path == style[it[i][0]][chosen] and f"to{chosen + 1}" in Path(path).name
    assert np.all(np.abs(counts / n - 1 / 3) < 0.04)  # uniform over cameras
    assert abs(original / n - 1 / 3) < 0.04  # own camera -> original image
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert [ds.choose(i % 6, g1) for i in range(30)] == [ds.choose(i % 6, g2) for i in range(30)]
    img, idx = CamStyleTargetDataset(it, style, 3, build_test_transform(32, 16))[2]
    assert img.shape == (3, 32, 16) and idx == 2


def test_camstyle_missing(items):
    it, style = items
    partial = {k: dict(list(v.items())[:1]) for k, v in style.items()}
    with pytest.raises(ValueError, match="CamStyle images missing"):
        CamStyleTargetDataset(it, partial, 3)
    ds = CamStyleTargetDataset(it, partial, 3, missing="original")
    gen = torch.Generator().manual_seed(0)
    for k in range(60):
        path, _ = ds.choose(k % 6, gen)
        assert path == it[k % 6][0] or path in partial[it[k % 6][0]].values()


def test_make_loader(items):
    it, _ = items
    ds = TargetDataset(it, build_test_transform(32, 16))
    a = make_loader(ds, 4, shuffle=True, seed=5)
    b = make_loader(ds, 4, shuffle=True, seed=5)
    assert not a.pin_memory
    ia = torch.cat([idx for _, idx in a])
    ib = torch.cat([idx for _, idx in b])
    assert torch.equal(ia, ib) and sorted(ia.tolist()) == list(range(6))
    imgs, idx = next(iter(make_loader(ds, 4, drop_last=True)))
    assert imgs.shape == (4, 3, 32, 16) and idx.tolist() == [0, 1, 2, 3]
    assert make_loader(ds, 4, device="cuda").pin_memory
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(ds, 0)


def _shard_streams(n, world, seed, epoch, passes):
    """Each rank's indices from a ``shard=`` loader: ``passes`` passes of ECN's target cycle in ``epoch``."""
    out = []
    for rank in range(world):
        loader = make_loader(TensorDataset(torch.arange(n)), 1, shuffle=True, seed=seed, shard=(rank, world))
        seed_epoch(seed, epoch, [None, loader], rank=rank)  # the target loader's slot (2) in ECN's trainer
        next_batch = _cycle(loader)
        out.append([[next_batch()[0].item() for _ in range(len(loader))] for _ in range(passes)])
    return out


@pytest.mark.parametrize("n, world, seed", [(10, 2, 0), (17, 3, 5), (33, 4, 12345), (100, 8, 2**31 - 1)])
def test_a_shard_loader_keeps_the_permutation_rule_of_the_hand_written_sampler(n, world, seed):
    """``shard=`` is torch's DistributedSampler(drop_last=True); each epoch it gives what reidlab's own
    sampler gave (checked equal over 16,000 cases when it was replaced): one permutation seeded with
    the epoch's seed, alike on every rank, and every world-th index of it from position rank."""
    for epoch in (0, 3):
        first_pass = [passes[0] for passes in _shard_streams(n, world, seed, epoch, passes=1)]
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch, 2)))
        assert first_pass == [perm[rank::world][: n // world].tolist() for rank in range(world)]


def test_a_shard_loader_cycled_within_an_epoch_draws_a_new_permutation_alike_on_every_rank():
    """ECN cycles the target loader; a restarted DistributedSampler would repeat its permutation."""
    n, world = 30, 3
    streams = _shard_streams(n, world, seed=4, epoch=1, passes=3)
    for p in range(3):
        shares = [set(passes[p]) for passes in streams]
        assert sum(map(len, shares)) == n and set.union(*shares) == set(range(n))  # disjoint, the whole set
    assert len({tuple(tuple(passes[p]) for passes in streams) for p in range(3)}) == 3  # each pass its own order
    assert _shard_streams(n, world, seed=4, epoch=1, passes=3) == streams  # a function of (seed, epoch)


def test_a_shard_loader_refuses_what_it_cannot_share():
    ds = TensorDataset(torch.arange(3))
    with pytest.raises(ValueError, match="3 samples cannot be shared by 4 processes"):
        make_loader(ds, 1, shuffle=True, shard=(0, 4))
    with pytest.raises(ValueError, match="shuffled training loaders"):
        make_loader(ds, 1, shard=(0, 2))
    with pytest.raises(ValueError, match="rank"):
        make_loader(ds, 1, shuffle=True, shard=(2, 2))


# ---------------------------------------------------------------------------------------
# camstyle modes
# ---------------------------------------------------------------------------------------


def _dataset(items, style=None, oracle=None) -> ReIDDataset:
    it = [Item(*x) for x in items]
    return ReIDDataset(
        name="toy", root=Path(it[0].path).parent, train=it, query=it[:3], gallery=it[3:], num_train_pids=3,
        num_cams=3, camstyle=style or {}, camstyle_oracle=oracle or {}, train_original_pids=[x.pid for x in it],
    )


def _oracle_of(style: dict[str, dict[int, str]]) -> dict[str, dict[int, str]]:
    """Another set of files for the same (image, camera) pairs, as the oracle folder of a synthetic tree."""
    out: dict[str, dict[int, str]] = {}
    for path, fakes in style.items():
        for c2, f in fakes.items():
            g = Path(f).with_name(Path(f).stem + "_oracle.jpg")
            _img(32, 16, seed=len(out) + 7 * c2).save(g)
            out.setdefault(path, {})[c2] = str(g)
    return out


def test_camstyle_modes(items):
    it, style = items
    oracle = _oracle_of(style)
    with_folder, plain = _dataset(it, style), _dataset(it)
    both, only_oracle = _dataset(it, style, oracle), _dataset(it, oracle=oracle)
    assert CAMSTYLE_MODES == ("none", "folder", "oracle", "color", "auto")
    assert type(target_train_dataset(plain, None)) is ColorStyleTargetDataset  # default 'auto', no folder
    assert type(target_train_dataset(with_folder, None)) is CamStyleTargetDataset  # default 'auto', folder
    assert type(target_train_dataset(with_folder, None, camstyle="none")) is TargetDataset
    assert type(target_train_dataset(with_folder, None, camstyle="color")) is ColorStyleTargetDataset
    with pytest.raises(ValueError, match="camstyle='folder' but .* no bounding_box_train_camstyle"):
        target_train_dataset(plain, None, camstyle="folder")
    # 'oracle' reads the oracle re-renders; 'auto' and 'folder' never do, even when they are there
    assert target_train_dataset(both, None, camstyle="oracle").camstyle_paths == oracle
    assert target_train_dataset(both, None, camstyle="auto").camstyle_paths == style
    assert target_train_dataset(both, None, camstyle="folder").camstyle_paths == style
    assert type(target_train_dataset(only_oracle, None)) is ColorStyleTargetDataset  # 'auto': no folder -> colour
    for tree in (plain, with_folder):  # a real dataset: no oracle folder
        with pytest.raises(ValueError, match="camstyle='oracle' but .* no bounding_box_train_camstyle_oracle"):
            target_train_dataset(tree, None, camstyle="oracle")
    # the booleans are not modes any more: a clear error, not a silent guess
    for old in (True, False):
        with pytest.raises(ValueError, match=rf"camstyle={old}: choose one of 'none', 'folder', 'oracle', 'color', 'auto'"):
            target_train_dataset(with_folder, None, camstyle=old)
    with pytest.raises(ValueError, match="camstyle='x'"):
        make_reid_loaders(plain, plain, height=32, width=16, batch_size=2, camstyle="x")


def test_make_reid_loaders_default_mode_is_auto(items):
    it, style = items
    plain = _dataset(it)
    out = make_reid_loaders(plain, plain, height=32, width=16, batch_size=2)
    assert type(out.target_train.dataset) is ColorStyleTargetDataset  # 'auto' without a folder
    out = make_reid_loaders(plain, _dataset(it, style), height=32, width=16, batch_size=2, cache=True)
    assert type(out.target_train.dataset) is CamStyleTargetDataset
    assert all(loader.dataset.cached for loader in out)
    imgs, idx = next(iter(out.target_train))
    assert imgs.shape == (2, 3, 32, 16) and idx.shape == (2,)


def test_oracle_mode_on_a_synthetic_tree(tmp_path):
    """On a written tree: 'oracle' loads the re-renders, 'auto' and 'folder' the style transfers."""
    micro = Scale(train_ids=3, train_images=9, test_ids=2, query=None, gallery_real=6, distractors=1, junk=1)
    tree = load_reid_dataset(make_synthetic_reid(tmp_path, "synth_market", micro, seed=0, image_size=(64, 32), workers=1))
    folders = {}
    for mode in ("oracle", "auto", "folder"):
        ds = target_train_dataset(tree, None, camstyle=mode)
        gen = torch.Generator().manual_seed(0)
        picked = [(k % len(ds), *ds.choose(k % len(ds), gen)) for k in range(60)]
        fakes = [path for i, path, chosen in picked if chosen != ds.items[i].camid]
        assert len(fakes) > 20
        folders[mode] = {Path(path).parent.name for path in fakes}
        for i in range(len(ds)):  # what a sample loads is the file its draw picks
            torch.manual_seed(i)
            img, index = ds[i]
            torch.manual_seed(i)
            assert index == i and img.tobytes() == read_image(ds.choose(i)[0]).tobytes()
    assert folders == {"oracle": {"bounding_box_train_camstyle_oracle"}, "auto": {"bounding_box_train_camstyle"},
                       "folder": {"bounding_box_train_camstyle"}}
    out = make_reid_loaders(tree, tree, height=32, width=16, batch_size=2, camstyle="oracle")
    assert out.target_train.dataset.camstyle_paths == tree.camstyle_oracle
    plain = load_reid_dataset(tree.root, with_camstyle=False)  # as a real dataset without CamStyle images
    with pytest.raises(ValueError, match="camstyle='oracle' but"):
        target_train_dataset(plain, None, camstyle="oracle")


# ---------------------------------------------------------------------------------------
# the image cache
# ---------------------------------------------------------------------------------------


@pytest.fixture
def decode_log(tmp_path, monkeypatch):
    """Count decodes in every process: each call of the loaders' read_image appends its path to a file."""
    log = tmp_path / "decodes.log"
    log.touch()

    def counting_read_image(path):
        with open(log, "a") as f:  # O_APPEND: whole lines, from any worker process
            f.write(f"{path}\n")
        return read_image(path)

    monkeypatch.setattr(loaders, "read_image", counting_read_image)
    return lambda: Counter(log.read_text().splitlines())


needs_fork = pytest.mark.skipif(
    multiprocessing.get_start_method(allow_none=False) != "fork",
    reason="counts decodes with a monkeypatched function, which only fork-started workers inherit",
)


@needs_fork
def test_cache_decodes_each_image_once_with_workers(items, decode_log):
    """cache=True with num_workers=2 and no persistent workers (the trainer's setting): two
    epochs decode every image exactly once, and yield what an uncached loader yields."""
    it, _ = items
    tf = build_test_transform(32, 16)
    kw = dict(shuffle=True, num_workers=2, seed=3, persistent_workers=False)
    cached = make_loader(ImageDataset(it, tf, cache=True), 2, **kw)
    epochs = [[b for b in cached] for _ in range(2)]
    counts = decode_log()
    assert set(counts) == {p for p, _, _ in it}
    assert max(counts.values()) == 1, f"decoded more than once: {counts}"
    plain = make_loader(ImageDataset(it, tf), 2, **kw)
    for epoch in epochs:
        for (a, pa, ca, ia), (b, pb, cb, ib) in zip(epoch, plain):
            assert torch.equal(a, b) and torch.equal(ia, ib) and torch.equal(pa, pb) and torch.equal(ca, cb)


@needs_fork
def test_cache_holds_the_camstyle_images_too(items, decode_log):
    """ECN's CamStyle target set reads one of several files per image: every one is decoded once."""
    it, style = items
    ds = CamStyleTargetDataset(it, style, 3, build_test_transform(32, 16), cache=True)
    assert len(ds.cache_paths()) == 6 * 3  # originals and 2 CamStyle images each
    loader = make_loader(ds, 3, shuffle=True, num_workers=2, persistent_workers=False)
    for _ in range(3):
        assert sum(len(idx) for _, idx in loader) == 6
    counts = decode_log()
    assert set(counts) == set(ds.cache_paths()) and max(counts.values()) == 1


def test_cache_without_workers_and_global_rng(items, decode_log):
    """Without workers the cache fills on first use (once); filling never draws from the global RNG."""
    it, _ = items
    ds = ImageDataset(it, build_test_transform(32, 16), cache=True)
    loader = make_loader(ds, 4, shuffle=True)
    for _ in range(2):
        list(loader)
    assert max(decode_log().values()) == 1 and len(decode_log()) == 6
    torch.manual_seed(0)
    fresh = ImageDataset(it, None, cache=True)
    assert fresh.fill_cache(num_workers=2) == 6 and fresh.fill_cache(num_workers=2) == 0
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))
    assert fresh[0][0].tobytes() == read_image(it[0][0]).tobytes()
    assert ImageDataset(it, None).fill_cache(2) == 0  # no cache: nothing to fill
