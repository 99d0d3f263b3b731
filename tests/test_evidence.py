"""reidlab.lessons.evidence: the cached runs, the realism targets and the CamStyle probe, on micro worlds."""
from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from reidlab.data.datasets import load_reid_dataset
from reidlab.ecn import ECNConfig
from reidlab.lessons import evidence

from ecn_micro import SMALL, make_worlds


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    return make_worlds(tmp_path_factory.mktemp("worlds"))


@pytest.fixture()
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDLAB_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def _cfg(worlds, **kw) -> ECNConfig:
    return ECNConfig.from_profile("ci", source=worlds["source"], target=worlds["target"],
                                  **{**SMALL, "epochs": 2, **kw})


def test_the_code_digest_follows_code_not_prose(tmp_path, monkeypatch):
    f = tmp_path / "m.py"
    f.write_text(textwrap.dedent('''
        """Module prose."""
        def g(x):
            """Function prose."""
            return x + 1  # a comment
    '''))
    monkeypatch.setattr(evidence, "CODE_FILES", (f,))
    before = evidence.code_digest()
    f.write_text(f.read_text().replace("Function prose.", "Other words.").replace("a comment", "another"))
    assert evidence.code_digest() == before  # docstrings and comments do not retrain anything
    f.write_text(f.read_text().replace("x + 1", "x + 2"))
    assert evidence.code_digest() != before  # code does


def test_every_library_file_a_run_depends_on_is_digested():
    names = {p.name for p in evidence.CODE_FILES}
    assert {"loop.py", "run.py", "config.py", "memory.py", "models.py", "evaluation.py", "loaders.py"} <= names


def test_ecn_run_trains_once_and_again_only_for_missing_weights(worlds, data_dir, monkeypatch):
    calls = []
    real = evidence.train_ecn

    def counted(config, out, **kw):
        calls.append(config.seed)
        return real(config, out, **kw)

    monkeypatch.setattr(evidence, "train_ecn", counted)
    config = _cfg(worlds, invariance="E")
    first = evidence.ecn_run(config)
    assert set(first) == {"history", "metrics", "distmat", "shares", "seconds"} and len(calls) == 1
    again = evidence.ecn_run(config)
    assert len(calls) == 1 and again["metrics"] == first["metrics"]  # loaded, not trained
    with_weights = evidence.ecn_run(config, keep_weights=True)
    assert len(calls) == 2 and "state_dict" in with_weights  # weights were not cached: trained again ...
    assert with_weights["metrics"] == first["metrics"]  # ... to the same bits
    evidence.ecn_run(config)  # the file now holds the weights, and serves a call without them too
    assert len(calls) == 2
    evidence.ecn_run(config.replace(seed=1))
    assert len(calls) == 3  # another setting, another run
    target = load_reid_dataset(worlds["target"])
    assert first["distmat"].shape == (len(target.query), len(target.gallery))
    assert first["shares"]["k"] == config.knn and 0 <= first["shares"]["same_person"] <= 1


class _MeanColour(nn.Module):
    """A "network" whose feature is an image's mean colour per third of its height: what a camera's
    photometric signature changes, and nothing a person is."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part.mean((2, 3)) for part in x.chunk(3, dim=2)], dim=1)


def test_the_camstyle_probe_sees_a_style_transfer_move_the_camera(worlds, data_dir):
    config = _cfg(worlds, height=64, width=32)
    probe = evidence.camstyle_probe(config, _MeanColour())
    assert probe["images"] == sum(len(v) for v in load_reid_dataset(worlds["target"]).camstyle.values())
    assert math.isclose(probe["new"] + probe["old"] + probe["other"], 1.0)
    assert probe["new"] > probe["old"] and probe["new"] > probe["chance"]  # colour follows the new camera
    oracle = evidence.camstyle_probe(config, _MeanColour(), oracle=True)
    assert oracle["new"] > oracle["old"]


def test_realism_reports_each_target_from_its_numbers(worlds, data_dir):
    config = _cfg(worlds, invariance="E+C+N")
    real = evidence.realism(config, [0, 1])
    assert set(real["mAP"]) == {"untrained", "pretrained only", "direct transfer", "target-supervised"}
    assert set(real["met"]) == set(evidence.REALISM_TARGETS)
    dt, un, sup = (np.array(real["mAP"][k]) for k in ("direct transfer", "untrained", "target-supervised"))
    assert real["over_untrained"] == pytest.approx((dt / un).tolist())
    assert real["of_supervised"] == pytest.approx((100 * dt / sup).tolist())
    r2 = bool(np.mean(dt / un) >= 2 and 20 <= np.mean(100 * dt / sup) <= 45)
    assert real["met"]["R2 ratios"] == r2
    assert real["met"]["R5 CamStyle moves the camera"] == (real["probe"]["new"] > real["probe"]["old"])
    assert set(real["below_chance_after_epoch_1"]) == {"source-only", "target-supervised"}
    # the runs realism trained are the cache entries a notebook reads
    again = evidence.ecn_run(config.replace(invariance="source-only", seed=0))
    assert 100 * again["metrics"]["mAP"] == pytest.approx(real["mAP"]["direct transfer"][0])



def test_realism_trains_nothing_it_is_given(worlds, data_dir, monkeypatch):
    config = _cfg(worlds, invariance="source-only")
    given = {(row, s): evidence.ecn_run(c.replace(seed=s)) for s in (0, 1)
             for row, c in (("source-only", config), ("target-supervised", evidence.supervised(config)))}

    def no_training(*args, **kwargs):
        raise AssertionError("realism asked for a run it was given")

    monkeypatch.setattr(evidence, "ecn_run", no_training)
    real = evidence.realism(config, [0, 1], given)
    assert real["mAP"]["direct transfer"] == pytest.approx(
        [100 * given["source-only", s]["metrics"]["mAP"] for s in (0, 1)])
    with pytest.raises(AssertionError, match="a run it was given"):
        evidence.realism(config, [0, 1, 2], given)   # seed 2 is missing: that one it must train


def test_supervised_trains_on_the_target(worlds):
    config = _cfg(worlds, invariance="E+C", control="none")
    sup = evidence.supervised(config)
    assert sup.source == sup.target == config.target and sup.invariance == "source-only"
