"""The synthetic re-ID world: layout, naming, counts, determinism, caching, that it is a
re-ID problem (same-identity images closer than different ones) with a real domain gap, and
that its CamStyle images are style transfers (as a GAN's are), with oracle re-renders apart."""
from __future__ import annotations

import ast
import json
import os
import re
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from PIL import Image

import reidlab.data
from reidlab.data.datasets import load_reid_dataset
from reidlab.data.layout import parse_camstyle_name, parse_reid_name
from reidlab.data.synth import DOMAINS, GENERATOR_VERSION, SCALES, Scale, make_synthetic_reid, render_identities
from reidlab.data.synth.render import render_batch
from reidlab.data.synth.restyle import transfer_style
from reidlab.data.synth.world import camera_styles, domain_rng, sample_identities, sample_poses
from reidlab.data.synth.write import DEFAULT_IMAGE_SIZE
from reidlab.lessons.viz import image_grid

MICRO = Scale(train_ids=4, train_images=12, test_ids=4, query=None, gallery_real=10, distractors=2, junk=2)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Both domains at the tiny scale, generated once for this module."""
    root = tmp_path_factory.mktemp("synth")
    return {d: make_synthetic_reid(root, d, "tiny", seed=0, workers=2) for d in DOMAINS}


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), np.float32) / 255.0


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_tiny_counts_layout_and_naming(tiny, domain):
    tree = tiny[domain]
    sc, C = SCALES["tiny"], DOMAINS[domain].num_cams
    ds = load_reid_dataset(tree)
    assert ds.num_cams == C
    assert ds.num_train_pids == sc.train_ids and len(ds.train) == sc.train_images
    # one query per (id, camera) pair, each test id seen by >= 2 cameras
    q_ids = {pid for _, pid, _ in ds.query}
    assert len(q_ids) == sc.test_ids and len(ds.query) >= 2 * sc.test_ids
    assert len({(pid, cam) for _, pid, cam in ds.query}) == len(ds.query)
    # gallery: real images + distractors (pid 0); junk (-1) dropped as torchreid does
    assert len(ds.gallery) == sc.gallery_real + sc.distractors
    assert sum(pid == 0 for _, pid, _ in ds.gallery) == sc.distractors
    assert ds.num_junk_dropped == {"train": 0, "query": 0, "gallery": sc.junk}
    assert {pid for _, pid, _ in ds.gallery} - {0} == q_ids
    assert not q_ids & set(ds.train_original_pids)  # train and test identities are disjoint
    # every query has a true match in another camera (what the Market protocol needs)
    g = {(pid, cam) for _, pid, cam in ds.gallery}
    assert all(any(p == pid and c != cam for p, c in g) for _, pid, cam in ds.query)
    # Market-1501 naming: 0002_c1s1_000451_03.jpg, unique names, images of the documented size
    names = [Path(p).name for p, _, _ in ds.train + ds.query + ds.gallery]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"(\d{4}|-1)_c\d+s\d_\d{6}_\d{2}\.jpg", n) for n in names)
    assert Image.open(ds.train[0][0]).size == (64, 128)


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_camstyle_files(tiny, domain):
    tree = tiny[domain]
    C = DOMAINS[domain].num_cams
    ds = load_reid_dataset(tree)
    files = sorted(p.name for p in (tree / "bounding_box_train_camstyle").iterdir())
    assert len(files) == len(ds.train) * (C - 1)
    # the oracle re-renders: a second folder with the same names
    assert sorted(p.name for p in (tree / "bounding_box_train_camstyle_oracle").iterdir()) == files
    assert ds.has_camstyle and ds.has_camstyle_oracle
    for path, _, cam in ds.train:
        fakes, oracles = ds.camstyle_for(path), ds.camstyle_for(path, oracle=True)
        assert sorted(fakes) == sorted(oracles) == [c for c in range(C) if c != cam]
        for c2, f in fakes.items():
            assert Path(f).name == Path(oracles[c2]).name == f"{Path(path).stem}_fake_{cam + 1}to{c2 + 1}.jpg"
            assert Path(f).parent.name == "bounding_box_train_camstyle"
            assert Path(oracles[c2]).parent.name == "bounding_box_train_camstyle_oracle"
    path, pid, cam = ds.train[0]
    c2 = (cam + 1) % C
    orig, fake = _pixels(Path(path)), _pixels(Path(ds.camstyle_for(path)[c2]))
    assert orig.shape == fake.shape and not np.array_equal(orig, fake)
    stem, target = parse_camstyle_name(ds.camstyle_for(path)[c2])
    assert stem == Path(path).stem and target == c2


def _edges(x: np.ndarray) -> np.ndarray:
    """Luminance gradient magnitudes at half resolution (2x2 means: sensor noise averaged out)."""
    lum = x.mean(-1)
    H, W = lum.shape
    lum = lum.reshape(H // 2, 2, W // 2, 2).mean((1, 3))
    return np.hypot(np.diff(lum, axis=1)[:-1], np.diff(lum, axis=0)[:, :-1]).ravel()


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_camstyle_is_a_style_transfer_not_a_rerender(tiny, domain):
    """A CamStyle image of c -> c2 keeps the original's layout (its edges: person and camera c's
    background structures) and takes camera c2's colours, like a CycleGAN image; it is not the
    oracle re-render (camera c2's background, pixel-aligned), which lies in its own folder."""
    ds = load_reid_dataset(tiny[domain])
    real_mean = {c: np.mean([_pixels(Path(p)).mean((0, 1)) for p, _, cc in ds.train if cc == c], 0)
                 for c in range(ds.num_cams)}
    to_oracle, edge_orig, edge_oracle, dist_orig, dist_fake = [], [], [], [], []
    pooled: dict[tuple[int, int], list] = {}
    for path, _, cam in ds.train[::3]:
        orig = _pixels(Path(path))
        for c2, f in ds.camstyle_for(path).items():
            fake, oracle = _pixels(Path(f)), _pixels(Path(ds.camstyle_for(path, oracle=True)[c2]))
            to_oracle.append(np.abs(fake - oracle).mean())
            edge_orig.append(np.corrcoef(_edges(fake), _edges(orig))[0, 1])
            edge_oracle.append(np.corrcoef(_edges(fake), _edges(oracle))[0, 1])
            dist_orig.append(np.linalg.norm(orig.mean((0, 1)) - real_mean[c2]))
            dist_fake.append(np.linalg.norm(fake.mean((0, 1)) - real_mean[c2]))
            pooled.setdefault((cam, c2), []).append((orig.mean((0, 1)), fake.mean((0, 1))))
    edge_orig, edge_oracle = np.array(edge_orig), np.array(edge_oracle)
    assert len(to_oracle) > 300
    assert np.mean(to_oracle) > 0.04  # not the oracle: on average 10 of 255 levels or more per pixel
    # the original's layout: its edges explain the CamStyle image's far better than the oracle's do
    assert edge_orig.mean() > 0.75 and edge_orig.mean() > edge_oracle.mean() + 0.08
    assert (edge_orig > edge_oracle).mean() > 0.95
    # camera c2's colours: per image and pooled per camera pair, closer to c2's real images than the original
    assert np.mean(dist_fake) < 0.85 * np.mean(dist_orig)
    before = [np.linalg.norm(np.mean([o for o, _ in v], 0) - real_mean[c2]) for (_, c2), v in pooled.items()]
    after = [np.linalg.norm(np.mean([f for _, f in v], 0) - real_mean[c2]) for (_, c2), v in pooled.items()]
    assert np.mean(after) < 0.7 * np.mean(before)


def _camera_batch(domain: str, cam: int, n: int = 32) -> tuple[torch.Tensor, list]:
    """``n`` fresh images of camera ``cam`` as floats (B, 3, H, W), and the domain's cameras."""
    dom = DOMAINS[domain]
    styles = camera_styles(dom)
    rng = domain_rng(dom, 0, "restyle-test")
    pose = sample_poses(np.full(n, cam), styles, rng, np.zeros(n, int))
    imgs = render_batch(sample_identities(dom, n, rng), pose, styles[cam], noise_seed=1)
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0, styles


def test_transfer_style_is_deterministic_and_moves_to_the_target_camera():
    x, styles = _camera_batch("synth_duke", 0)
    before = x.clone()
    a = transfer_style(x, styles[0], styles[4], torch.Generator().manual_seed(5))
    b = transfer_style(x, styles[0], styles[4], torch.Generator().manual_seed(5))
    c = transfer_style(x, styles[0], styles[4], torch.Generator().manual_seed(6))
    assert torch.equal(x, before)  # the input is not modified
    assert a.shape == x.shape and a.dtype == torch.float32 and 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)  # all randomness from the generator
    assert (a[0] - c[0]).abs().mean() > 0.005  # another seed: other errors, artifacts and noise
    # the mean colour moves towards camera 4's images of the same people
    target, _ = _camera_batch("synth_duke", 4)
    assert (a.mean((0, 2, 3)) - target.mean((0, 2, 3))).norm() < 0.6 * (x.mean((0, 2, 3)) - target.mean((0, 2, 3))).norm()
    with pytest.raises(ValueError, match="expected"):
        transfer_style(x[:, :1], styles[0], styles[4], torch.Generator())


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_manifest_true_ids(tiny, domain):
    tree = tiny[domain]
    man = json.loads((tree / "manifest.json").read_text())
    train_files = sorted(p.name for p in (tree / "bounding_box_train").iterdir())
    assert sorted(man["train_true_pids"]) == train_files
    for name, pid in man["train_true_pids"].items():
        assert parse_reid_name(name)[0] == pid
    assert man["domain"] == domain and man["scale"] == "tiny" and man["seed"] == 0
    assert man["num_cams"] == DOMAINS[domain].num_cams and len(man["cameras"]) == man["num_cams"]
    assert set(man["identities"]) >= {str(p) for p in man["train_true_pids"].values()}
    n_fake = len(train_files) * (man["num_cams"] - 1)
    assert man["counts"]["camstyle"] == man["counts"]["camstyle_oracle"] == n_fake
    ds = load_reid_dataset(tree)
    assert [man["train_true_pids"][Path(p).name] for p, _, _ in ds.train] == ds.train_original_pids


def test_domains_have_disjoint_and_differently_distributed_identities(tiny):
    app = {}
    for d, tree in tiny.items():
        ids = json.loads((tree / "manifest.json").read_text())["identities"]
        app[d] = np.array([v["upper"] + v["lower"] + v["hair"] + v["shoes"] for v in ids.values()])
    m, k = app["synth_market"], app["synth_duke"]
    closest = np.sqrt(((m[:, None] - k[None]) ** 2).sum(-1)).min()
    assert closest > 0.01  # no person appears in both domains



def test_the_seasons_differ_in_what_people_wear():
    """Summer and winter share clothing colours (OWN_SEASON = 0.5) but not garments: winter has the
    scarves and hats (its own identity cues) and long sleeves, summer short sleeves."""
    from reidlab.data.synth.world import OWN_SEASON

    draw = {d: sample_identities(DOMAINS[d], 4000, np.random.default_rng(0)) for d in ("synth_market", "synth_duke")}
    summer, winter = draw["synth_market"], draw["synth_duke"]
    assert winter["scarf"].mean() > 0.8 > 0.05 > summer["scarf"].mean()
    assert winter["hat"].mean() > 0.6 > 0.1 > summer["hat"].mean()
    assert summer["sleeves"].mean() > 0.6 > 0.1 > winter["sleeves"].mean()
    if OWN_SEASON == 0.5:  # one colour mixture for both seasons
        assert abs(summer["upper"].mean() - winter["upper"].mean()) < 0.02


def _hist_feature(path: str) -> np.ndarray:
    """Colour histogram of the image centre after grey-world normalisation (camera-agnostic-ish)."""
    x = _pixels(Path(path))
    H, W, _ = x.shape
    x = x[int(0.15 * H) : int(0.9 * H), int(0.3 * W) : int(0.7 * W)]
    x = x / (x.reshape(-1, 3).mean(0) + 1e-6) / 3
    h, _ = np.histogramdd(x.reshape(-1, 3), bins=(4, 4, 4), range=[(0, 1)] * 3)
    return np.sqrt(h.ravel() / h.sum())


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_same_identity_is_closer_across_cameras(tiny, domain):
    ds = load_reid_dataset(tiny[domain])
    feats = np.stack([_hist_feature(p) for p, _, _ in ds.train])
    pid = np.array([p for _, p, _ in ds.train])
    cam = np.array([c for _, _, c in ds.train])
    dist = ((feats[:, None] - feats[None]) ** 2).sum(-1)
    same = (pid[:, None] == pid[None]) & (cam[:, None] != cam[None])
    diff = pid[:, None] != pid[None]
    # the pretraining corpus's cameras cast strong green or magenta tints (its looks lie off the
    # source-target range), which a raw colour histogram cannot see through; its people are
    # still found again across cameras (rank-1 below)
    assert dist[same].mean() < (0.8 if domain != "synth_pretrain" else 1.0) * dist[diff].mean()
    dist[cam[:, None] == cam[None]] = np.inf  # retrieve from the other cameras only
    rank1 = (pid[dist.argmin(1)] == pid).mean()
    assert rank1 > 4.0 / ds.num_train_pids  # far above chance even for a colour histogram


def test_domains_differ_in_colour_statistics(tiny):
    stats = {}
    for d, tree in tiny.items():
        ds = load_reid_dataset(tree)
        px = np.stack([_pixels(Path(p)) for p, _, _ in ds.train[::4]])
        stats[d] = px.mean((0, 1, 2)), px.std()
    (m_mean, m_std), (k_mean, k_std) = stats["synth_market"], stats["synth_duke"]
    assert m_mean.mean() - k_mean.mean() > 0.2  # bright vs dark
    assert k_mean[2] / k_mean[0] > 1.2 * m_mean[2] / m_mean[0]  # cold vs warm white balance
    assert m_std > k_std  # low contrast in the dark domain


def test_determinism_and_seed(tmp_path):
    a = make_synthetic_reid(tmp_path / "a", "synth_duke", MICRO, seed=3, workers=1)
    b = make_synthetic_reid(tmp_path / "b", "synth_duke", MICRO, seed=3, workers=2)
    c = make_synthetic_reid(tmp_path / "c", "synth_duke", MICRO, seed=4, workers=1)
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    assert files_a == sorted(p.relative_to(b) for p in b.rglob("*.jpg"))
    n_query = len(list((a / "query").iterdir()))
    # train, CamStyle and oracle CamStyle (8 cameras), query, gallery
    assert len(files_a) == 12 + 12 * 7 + 12 * 7 + n_query + 10 + 2 + 2
    for f in files_a:  # the same bytes, whatever the number of threads (style transfers included)
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert files_a != sorted(p.relative_to(c) for p in c.rglob("*.jpg"))


def test_cache_and_interrupted_generation(tmp_path):
    out = make_synthetic_reid(tmp_path, "synth_market", MICRO, seed=0)
    marker = out / ".complete"
    stamp = marker.stat().st_mtime_ns
    t = time.perf_counter()
    assert make_synthetic_reid(tmp_path, "synth_market", MICRO, seed=0) == out
    assert time.perf_counter() - t < 0.5 and marker.stat().st_mtime_ns == stamp
    # an interrupted run: the tree is there but the marker is not -> generated again
    marker.unlink()
    (out / "query" / "leftover.jpg").write_bytes(b"")
    assert make_synthetic_reid(tmp_path, "synth_market", MICRO, seed=0) == out
    assert marker.is_file() and not (out / "query" / "leftover.jpg").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    # a tree from an older generator version is redrawn, not silently reused
    key = json.loads(marker.read_text())
    marker.write_text(json.dumps({**key, "version": key["version"] - 1}))
    (out / "query" / "stale.jpg").write_bytes(b"")
    assert make_synthetic_reid(tmp_path, "synth_market", MICRO, seed=0) == out
    assert json.loads(marker.read_text()) == key and not (out / "query" / "stale.jpg").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_load_by_name_generates_under_root(tmp_path):
    ds = load_reid_dataset("synth_market", tmp_path, scale=MICRO, seed=1)
    assert ds.root.parent == tmp_path and ds.num_cams == 6 and ds.num_train_pids == 4
    assert ds.has_camstyle


def test_without_camstyle_and_other_sizes(tmp_path):
    """write_camstyle=False and a non-default size: own folder names, no CamStyle folder, the size asked for."""
    assert DEFAULT_IMAGE_SIZE == (128, 64) and GENERATOR_VERSION == 5
    out = make_synthetic_reid(tmp_path, "synth_market", MICRO, seed=2, image_size=(64, 32), write_camstyle=False)
    assert out.name.endswith("-seed2-64x32-nocamstyle")
    assert not (out / "bounding_box_train_camstyle").exists()
    assert not (out / "bounding_box_train_camstyle_oracle").exists()
    man = json.loads((out / "manifest.json").read_text())
    assert man["camstyle"] is False and man["counts"]["camstyle"] == man["counts"]["camstyle_oracle"] == 0
    assert man["image_size"] == [64, 32]
    ds = load_reid_dataset(out)
    assert not ds.has_camstyle and not ds.has_camstyle_oracle and ds.num_cams == 6
    assert Image.open(ds.train[0].path).size == (32, 64)


def _data_imports() -> dict[str, set[str]]:
    """``module -> reidlab.data modules it imports``, read from the source, plus the imports placed in functions."""
    root = Path(reidlab.data.__file__).parent
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
                assert not inner, f"{name}.{node.name} imports inside the function (line {inner[0].lineno})"
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
                graph[name].add(target)
    return graph


def test_data_modules_import_one_way():
    """No import cycles in reidlab.data, no imports inside functions; synth never imports the
    parser and the colour stand-in never the loaders."""
    graph = _data_imports()
    assert graph["reidlab.data.layout"] <= {"reidlab"}  # the bottom: nothing of reidlab.data
    synth = ("reidlab.data.synth", "reidlab.data.synth.world", "reidlab.data.synth.render",
             "reidlab.data.synth.restyle", "reidlab.data.synth.write")
    for mod in synth:
        assert "reidlab.data.datasets" not in graph[mod] and "reidlab.data.loaders" not in graph[mod], mod
    assert "reidlab.data.loaders" not in graph["reidlab.data.camstyle"]

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    cycles = [m for m in graph if m != "reidlab.data" and m in reach(m)]
    assert not cycles, f"import cycles through {cycles}"


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown synthetic domain"):
        make_synthetic_reid(tmp_path, "synth_cuhk")
    with pytest.raises(ValueError, match="unknown scale"):
        make_synthetic_reid(tmp_path, "synth_market", "huge")
    with pytest.raises(ValueError, match="image_size"):
        make_synthetic_reid(tmp_path, "synth_market", MICRO, image_size=(8, 4))
    assert not os.listdir(tmp_path)


def test_render_identities_preview():
    x = render_identities("synth_duke", num_ids=3, cams=[0, 5], seed=0)
    assert x.shape == (3, 2, 128, 64, 3) and x.dtype == np.uint8
    assert np.array_equal(x, render_identities("synth_duke", num_ids=3, cams=[0, 5], seed=0))


def test_image_grid():
    x = render_identities("synth_market", num_ids=2, cams=[0, 1, 2], seed=0)
    fig = image_grid([list(x[0]), [x[1][0], None, x[1][2]]], row_titles=["a", "b"], col_titles=["1", "2", "3"])
    axes = fig.axes
    assert len(axes) == 6
    assert [len(ax.images) for ax in axes] == [1, 1, 1, 1, 0, 1]  # None leaves a cell empty
    assert np.array_equal(axes[1].images[0].get_array(), x[0][1])
    assert [ax.get_title() for ax in axes[:3]] == ["1", "2", "3"] and axes[3].get_ylabel() == "b"
    plt.close(fig)
    with pytest.raises(ValueError, match="row titles"):
        image_grid(x, row_titles=["only one"])
    with pytest.raises(ValueError, match="empty"):
        image_grid([])


#: The code of each world version (docstrings and comments left out). Caches of runs and of rendered
#: worlds are keyed on GENERATOR_VERSION, not on this code: a change to the world that keeps the
#: version would let them serve the previous world's pixels and results (it happened while world
#: versions were being tried; docs/EVIDENCE.md, section 7). Change the world, bump the version, and
#: record the new digest here. A change that keeps every pixel (type hints for mypy, shown by writing
#: the tiny worlds before and after and comparing their files) records the new digest under the same version.
WORLD_CODE = {5: "dd3f7da9997d"}


def world_code_digest() -> str:
    import hashlib

    from reidlab.lessons.evidence import _code_only

    h = hashlib.sha1()
    for path in sorted(Path(reidlab.data.__file__).resolve().parent.joinpath("synth").glob("*.py")):
        h.update(path.name.encode())
        h.update(_code_only(path))
    return h.hexdigest()[:12]


def test_a_changed_world_gets_a_new_version():
    assert WORLD_CODE.get(GENERATOR_VERSION) == world_code_digest(), (
        "the world's code changed but GENERATOR_VERSION did not: bump it (reidlab.data.synth.write) "
        "and record the new digest in WORLD_CODE"
    )


def test_world_code_digest_ignores_prose_and_sees_code(tmp_path, monkeypatch):
    """The guard must fire on a changed constant, and stay quiet on a reworded docstring."""
    import shutil

    pkg = tmp_path / "reidlab" / "data"
    shutil.copytree(Path(reidlab.data.__file__).resolve().parent / "synth", pkg / "synth")
    (pkg / "__init__.py").write_text("")
    monkeypatch.setattr(reidlab.data, "__file__", str(pkg / "__init__.py"))
    world = pkg / "synth" / "world.py"
    before = world_code_digest()
    world.write_text(world.read_text().replace('"""What the synthetic re-ID world is', '"""What the world is', 1))
    assert world_code_digest() == before
    world.write_text(world.read_text().replace("OWN_SEASON = 0.5", "OWN_SEASON = 0.6"))
    assert world_code_digest() != before
