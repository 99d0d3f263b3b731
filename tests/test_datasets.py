"""Parsing Market-1501, DukeMTMC-reID and MSMT17 trees built from their real file-name patterns."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from reidlab.data.datasets import load_reid_dataset
from reidlab.data.layout import Item, camstyle_name, parse_camstyle_name, parse_reid_name


def _blank(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 16), (120, 120, 120)).save(path)


def _tree(root: Path, splits: dict[str, list[str]]) -> Path:
    for split, names in splits.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for n in names:
            _blank(root / split / n)
    return root


MARKET = {
    "bounding_box_train": [
        "0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg", "0002_c2s1_000601_02.jpg",
        "0007_c3s3_076444_02.jpg", "0007_c6s1_000276_01.jpg",
        "0010_c5s1_002301_04.jpg",
    ],
    "query": ["0001_c1s1_001051_00.jpg", "0003_c2s1_000301_01.jpg", "0003_c4s1_000351_02.jpg"],
    "bounding_box_test": [
        "0001_c2s1_000976_01.jpg", "0001_c5s1_000301_01.jpg", "0003_c2s1_000326_01.jpg",
        "0003_c1s1_001151_02.jpg", "0000_c3s1_000151_01.jpg", "0000_c6s1_000226_03.jpg",
        "-1_c3s1_000301_02.jpg", "-1_c1s1_000401_03.jpg", "-1_c4s2_000651_01.jpg",
    ],
    "bounding_box_train_camstyle": [
        f"0002_c1s1_000451_03_fake_1to{c}.jpg" for c in range(2, 7)
    ] + ["0007_c3s3_076444_02_fake_3to1.jpg"],
}


@pytest.fixture
def market(tmp_path) -> Path:
    root = _tree(tmp_path / "Market-1501-v15.09.15", MARKET)
    (root / "bounding_box_test" / "Thumbs.db").write_bytes(b"\0")  # the real archive ships these
    return tmp_path


def test_parse_names():
    assert parse_reid_name("0002_c1s1_000451_03.jpg") == (2, 0)
    assert parse_reid_name("-1_c3s1_000301_02.jpg") == (-1, 2)
    assert parse_reid_name("0000_c6s1_000226_03.jpg") == (0, 5)
    assert parse_reid_name("0001_c2_f0046182.jpg") == (1, 1)
    assert parse_reid_name("0000_c14_0030.jpg") == (0, 13)  # MSMT17: two-digit camera
    assert parse_camstyle_name("0002_c1s1_000451_03_fake_1to2.jpg") == ("0002_c1s1_000451_03", 1)
    assert parse_camstyle_name("0000_c14_0030_fake_3.jpg") == ("0000_c14_0030", 2)
    for bad in ("img_001.jpg", "0002_1s1_000451.jpg", "0002_c0s1_000451_03.jpg", "-2_c1s1_000001_01.jpg"):
        with pytest.raises(ValueError, match="cannot parse re-ID file name"):
            parse_reid_name(bad)
    with pytest.raises(ValueError, match="cannot parse CamStyle"):
        parse_camstyle_name("0002_c1s1_000451_03.jpg")
    # the writer's names are what the parser reads
    fake = camstyle_name("0002_c1s1_000451_03.jpg", 0, 1)
    assert fake == "0002_c1s1_000451_03_fake_1to2.jpg"
    assert parse_camstyle_name(fake) == ("0002_c1s1_000451_03", 1)


def test_market_counts_relabel_junk_distractors(market):
    ds = load_reid_dataset("market1501", market)
    assert ds.num_cams == 6
    assert ds.root.name == "Market-1501-v15.09.15"
    # train: 3 ids relabelled in sorted order of the original pids
    assert ds.num_train_pids == 3
    assert [(Path(p).name, pid, cam) for p, pid, cam in ds.train] == [
        ("0002_c1s1_000451_03.jpg", 0, 0), ("0002_c2s1_000551_01.jpg", 0, 1), ("0002_c2s1_000601_02.jpg", 0, 1),
        ("0007_c3s3_076444_02.jpg", 1, 2), ("0007_c6s1_000276_01.jpg", 1, 5), ("0010_c5s1_002301_04.jpg", 2, 4),
    ]
    assert ds.train_original_pids == [2, 2, 2, 7, 7, 10]
    # items are Item records: fields by name, and still 3-tuples
    assert all(type(it) is Item for it in ds.train + ds.query + ds.gallery)
    assert ds.train[3].pid == 1 and ds.train[3].camid == 2 and ds.train[3] == tuple(ds.train[3])
    # query/gallery keep original pids; junk (-1) dropped, distractors (0) kept, Thumbs.db ignored
    assert sorted(pid for _, pid, _ in ds.query) == [1, 3, 3]
    assert len(ds.gallery) == 6
    assert sorted(pid for _, pid, _ in ds.gallery) == [0, 0, 1, 1, 3, 3]
    assert ds.num_junk_dropped == {"train": 0, "query": 0, "gallery": 3}
    assert all(Path(p).is_absolute() and Path(p).is_file() for p, _, _ in ds.train + ds.query + ds.gallery)
    assert "gallery" in ds.summary()


def test_market_camstyle_lookup(market):
    ds = load_reid_dataset("market1501", market)
    first = ds.train[0][0]
    fakes = ds.camstyle_for(first)
    assert sorted(fakes) == [1, 2, 3, 4, 5]  # every camera except its own (c1 -> 0)
    assert Path(fakes[1]).name == "0002_c1s1_000451_03_fake_1to2.jpg"
    seventh = [p for p, _, _ in ds.train if Path(p).name.startswith("0007_c3")][0]
    assert list(ds.camstyle_for(seventh)) == [0]
    assert ds.camstyle_for(ds.train[-1][0]) == {}
    assert load_reid_dataset("market1501", market, with_camstyle=False).camstyle == {}


def test_oracle_camstyle_folder(tmp_path):
    """A synthetic tree's second CamStyle folder (the oracle re-renders, same names) is parsed
    apart from the first; a real tree has none."""
    names = MARKET["bounding_box_train_camstyle"]
    root = _tree(tmp_path / "synth", {**MARKET, "bounding_box_train_camstyle_oracle": names[:3]})
    ds = load_reid_dataset(root)
    first = ds.train[0].path
    assert ds.has_camstyle and ds.has_camstyle_oracle
    assert sorted(ds.camstyle_for(first)) == [1, 2, 3, 4, 5] and sorted(ds.camstyle_for(first, oracle=True)) == [1, 2, 3]
    for c2, f in ds.camstyle_for(first, oracle=True).items():
        assert Path(f).parent.name == "bounding_box_train_camstyle_oracle"
        assert Path(f).name == Path(ds.camstyle_for(first)[c2]).name
        assert Path(ds.camstyle_for(first)[c2]).parent.name == "bounding_box_train_camstyle"
    bare = load_reid_dataset(root, with_camstyle=False)
    assert bare.camstyle == {} and bare.camstyle_oracle == {} and not bare.has_camstyle_oracle
    market = load_reid_dataset(_tree(tmp_path / "market", MARKET))
    assert market.has_camstyle and not market.has_camstyle_oracle
    bad = _tree(tmp_path / "bad", {**MARKET, "bounding_box_train_camstyle_oracle": ["0002_c1s1_000451_03.jpg"]})
    with pytest.raises(ValueError, match="cannot parse CamStyle"):
        load_reid_dataset(bad)


def test_junk_dropped_from_train(tmp_path):
    splits = dict(MARKET)
    splits["bounding_box_train"] = MARKET["bounding_box_train"] + ["-1_c1s1_000001_01.jpg"]
    ds = load_reid_dataset(_tree(tmp_path / "m", splits))
    assert len(ds.train) == 6 and ds.num_junk_dropped["train"] == 1
    assert min(pid for _, pid, _ in ds.train) == 0


def test_duke(tmp_path):
    root = _tree(
        tmp_path / "DukeMTMC-reID",
        {
            "bounding_box_train": ["0001_c2_f0046182.jpg", "0001_c5_f0051341.jpg", "0003_c8_f0007142.jpg"],
            "query": ["0005_c2_f0046985.jpg", "0005_c7_f0100322.jpg"],
            "bounding_box_test": ["0005_c1_f0043902.jpg", "0005_c3_f0117219.jpg", "0019_c4_f0065401.jpg"],
        },
    )
    ds = load_reid_dataset("dukemtmc-reid", tmp_path)
    assert ds.root == root and ds.num_cams == 8
    assert ds.num_train_pids == 2
    assert [(pid, cam) for _, pid, cam in ds.train] == [(0, 1), (0, 4), (1, 7)]
    assert [(pid, cam) for _, pid, cam in ds.query] == [(5, 1), (5, 6)]
    assert len(ds.gallery) == 3 and not ds.has_camstyle


def test_msmt17_ecn_layout(tmp_path):
    root = _tree(
        tmp_path / "msmt17",
        {
            "bounding_box_train": ["0000_c14_0030.jpg", "0000_c3_0031.jpg", "0001_c15_0002.jpg"],
            "query": ["3060_c10_0001.jpg"],
            "bounding_box_test": ["3060_c2_0007.jpg", "3061_c11_0004.jpg"],
            "bounding_box_train_camstyle": [f"0000_c14_0030_fake_{c}.jpg" for c in range(1, 16) if c != 14],
        },
    )
    ds = load_reid_dataset("msmt17", tmp_path)
    assert ds.num_cams == 15
    assert [(pid, cam) for _, pid, cam in ds.train] == [(0, 13), (0, 2), (1, 14)]
    assert sorted(ds.camstyle_for(str((root / "bounding_box_train" / "0000_c14_0030.jpg").resolve()))) == [
        c for c in range(15) if c != 13
    ]


def test_path_form_infers_cameras(tmp_path):
    root = _tree(tmp_path / "mine", {k: v for k, v in MARKET.items() if k != "bounding_box_train_camstyle"})
    ds = load_reid_dataset(str(root))
    assert ds.num_cams == 6 and ds.name == "mine"
    assert load_reid_dataset("mine", tmp_path).root == root  # relative to root


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset folder not found: .*nowhere"):
        load_reid_dataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="needs root="):
        load_reid_dataset("market1501")
    with pytest.raises(FileNotFoundError, match="market1501 not found under"):
        load_reid_dataset("market1501", tmp_path)
    # wrong layout: a folder of images without the split folders
    flat = tmp_path / "flat"
    _blank(flat / "0002_c1s1_000451_03.jpg")
    with pytest.raises(ValueError, match=r"not a Market-1501-style layout: .*flat lacks bounding_box_train/"):
        load_reid_dataset(flat)
    # unparseable name: the message names the file and the folder
    bad = _tree(tmp_path / "bad", {**MARKET, "query": ["person_01.jpg"]})
    with pytest.raises(ValueError, match=r"person_01\.jpg.*in .*query"):
        load_reid_dataset(bad)
    # empty split
    empty = _tree(tmp_path / "empty", {**MARKET, "bounding_box_test": []})
    with pytest.raises(ValueError, match=r"empty split: .*bounding_box_test"):
        load_reid_dataset(empty)
    only_junk = _tree(tmp_path / "junk", {**MARKET, "query": ["-1_c1s1_000001_01.jpg"]})
    with pytest.raises(ValueError, match="only junk"):
        load_reid_dataset(only_junk)
    badstyle = _tree(tmp_path / "badstyle", {**MARKET, "bounding_box_train_camstyle": ["0002_c1s1_000451_03_x.jpg"]})
    with pytest.raises(ValueError, match="cannot parse CamStyle"):
        load_reid_dataset(badstyle)
